"""A real key per role of the release chain (and a rogue key no policy trusts), for tests.

`RolePKI.keyring` trusts the four role keys, each in its role, as `Settings.keyring()` would
build it from the policy; `policy_dict` gives a policy whose `roles:` pin them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from secmlops.supplychain.keys import (
    ROLES,
    Keyring,
    generate_keypair,
    key_id,
    load_private_key,
)

REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class RoleKey:
    """One generated key pair."""

    key: Ed25519PrivateKey
    private: Path
    public: Path

    @property
    def id(self) -> str:
        return key_id(self.key.public_key())


@dataclass(frozen=True)
class RolePKI:
    """Keys by role name (`data_owner`, `trainer`, `gate`, `approver`) plus `rogue`."""

    keys: dict[str, RoleKey]
    folder: Path

    def __getitem__(self, role: str) -> RoleKey:
        return self.keys[role]

    @property
    def roles(self) -> dict[str, list[str]]:
        """The policy's `roles:` section for these keys."""
        return {role: [self.keys[role].id] for role in ROLES}

    @property
    def keyring(self) -> Keyring:
        """The four role keys, trusted, each in its role (the rogue key is not trusted)."""
        return self.trusted_keyring().with_roles(self.roles)

    def trusted_keyring(self) -> Keyring:
        """The four role keys without roles (as `$SECMLOPS_TRUSTED_KEYS` lists them)."""
        return Keyring.from_paths([self.keys[role].public for role in ROLES])

    @property
    def trusted_keys(self) -> str:
        """`SECMLOPS_TRUSTED_KEYS` for these keys."""
        import os

        return os.pathsep.join(str(self.keys[role].public) for role in ROLES)

    def env(self) -> dict[str, str]:
        """The settings' key variables: trusted keys and the pipeline roles' private keys."""
        return {
            "SECMLOPS_TRUSTED_KEYS": self.trusted_keys,
            "SECMLOPS_TRAINER_KEY": str(self.keys["trainer"].private),
            "SECMLOPS_GATE_KEY": str(self.keys["gate"].private),
            "SECMLOPS_APPROVER_KEY": str(self.keys["approver"].private),
        }

    def policy_dict(self, source: Path | None = None) -> dict[str, Any]:
        """The repository's policy (or `source`) with `roles:` set to these keys."""
        content = yaml.safe_load((source or REPO_ROOT / "policy.yaml").read_text())
        content["roles"] = self.roles
        return content

    def write_policy(self, path: Path, **sections: Any) -> Path:
        """Write `policy_dict()`, with whole sections replaced by `sections`, to `path`."""
        content = self.policy_dict()
        content.update(sections)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(content))
        return path


def make_pki(folder: Path) -> RolePKI:
    """Generate a key per role and a rogue key in `folder` (files named `<role>.key/.pub`)."""
    keys = {}
    for name in (*ROLES, "rogue"):
        private, public = generate_keypair(folder, name.replace("_", "-"))
        keys[name] = RoleKey(load_private_key(private), private, public)
    return RolePKI(keys, folder)
