"""An embedded workspace for the whole lifecycle on one machine: one key per role of the release
chain, a signed synthetic dataset published to a local DVC data registry, a policy whose
`roles:` pin those keys, and the environment the DAGs read (`secmlops.settings.Settings`).

This is what `make demo` and the end-to-end tests start from; `make ui` reads its env file back
(`read_workspace_env`). A production deployment makes the
same things by other means: keys from a KMS or an Airflow Connection, real data published by its
owners, the S3 registries (docs/operations.md).
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass
from pathlib import Path

import yaml

from secmlops.errors import SecMLOpsError
from secmlops.fsutil import atomic_write_bytes

ENV_FILE = "secmlops.env"
OPENSSF_KEY = "trainer-openssf"  # the trainer's ECDSA P-256 key for OpenSSF bundles


class WorkspaceError(SecMLOpsError):
    """There is no workspace at the folder given (no env file), or its env file is malformed."""


@dataclass(frozen=True)
class Workspace:
    """What `create_workspace` made; `env` is what the DAGs' workers need."""

    root: Path
    data_rev: str
    env: dict[str, str]


def create_workspace(
    root: Path,
    *,
    images: int = 1000,
    seed: int = 0,
    width: int = 320,
    height: int = 240,
    policy_source: Path = Path("policy.yaml"),
    policy_overrides: dict[str, object] | None = None,
    reason: str = "",
) -> Workspace:
    """Create (or reuse) keys, publish a signed synthetic dataset, write the policy and env file.

    Args:
        root: the workspace folder (becomes `$SECMLOPS_WORKDIR`).
        images, seed, width, height: the synthetic dataset.
        policy_source: the policy to start from; its `roles:` are set to the workspace's keys.
        policy_overrides: more thresholds to change (dotted path -> value); audited with `reason`.
        reason: why the overrides (required with them).

    Returns:
        The workspace, with the published data revision and the environment.

    Raises:
        PolicyError: an invalid override or a missing reason.
        DataError: the dataset cannot be generated, signed or published.
    """
    from secmlops.audit import AuditLog
    from secmlops.data.manifest import DatasetIdentity, sign_dataset
    from secmlops.data.synthetic import generate_scenes
    from secmlops.data.versioning import next_version, publish_dataset
    from secmlops.policy import apply_override, load_policy
    from secmlops.supplychain.keys import ROLES, generate_keypair, key_id, load_public_key
    from secmlops.supplychain.openssf import generate_openssf_keypair

    root = Path(root).resolve()
    keys = root / "keys"
    for role in ROLES:
        if not (keys / f"{role_file(role)}.key").is_file():
            generate_keypair(keys, role_file(role))
    if not (keys / f"{OPENSSF_KEY}.key").is_file():  # the trainer's ECDSA key for model.sig
        generate_openssf_keypair(keys, OPENSSF_KEY)
    audit = AuditLog(root / "audit" / "audit.jsonl", actor="workspace")
    policy = load_policy(policy_source)
    changes: list[tuple[str, object, str]] = [
        (f"roles.{role}", [key_id(load_public_key(keys / f"{role_file(role)}.pub"))],
         f"embedded workspace: its {role} key")
        for role in ROLES
    ]  # fmt: skip
    changes += [(path, value, reason) for path, value in (policy_overrides or {}).items()]
    for path, value, why in changes:
        policy, record = apply_override(policy, path, value, why, roles=True)
        audit.append("policy", "override", "override", str(root / "policy.yaml"), record)
    header = f"# Derived from {policy_source} for the embedded workspace {root}\n"
    text = yaml.safe_dump(policy.model_dump(mode="json"), sort_keys=False)
    atomic_write_bytes(root / "policy.yaml", (header + text).encode())

    source = generate_scenes(
        root / "incoming" / "street", images, seed, width=width, height=height, overwrite=True
    )
    registry = root / "data-registry"
    identity = DatasetIdentity("street", next_version(registry, "street"))
    sign_dataset(source, keys / f"{role_file('data_owner')}.key", identity=identity)
    published = publish_dataset(source, "street", root / "data-registry", str(root / "dvc-remote"))
    env = {
        "SECMLOPS_WORKDIR": str(root),
        "SECMLOPS_POLICY": str(root / "policy.yaml"),
        "SECMLOPS_AUDIT_LOG": str(root / "audit" / "audit.jsonl"),
        "SECMLOPS_DATA_REGISTRY": str(root / "data-registry"),
        "SECMLOPS_DVC_REMOTE": str(root / "dvc-remote"),
        "SECMLOPS_REGISTRY": (root / "registry").as_uri(),
        "SECMLOPS_TRUSTED_KEYS": os.pathsep.join(
            str(keys / f"{role_file(role)}.pub") for role in ROLES
        ),
        # The pipeline's keys. The data owner's stays out of the environment: data is signed
        # before it is published, not by the lifecycle.
        **{
            f"SECMLOPS_{role.upper()}_KEY": str(keys / f"{role_file(role)}.key")
            for role in ("trainer", "gate", "approver")
        },
        "SECMLOPS_TRAINER_OPENSSF_KEY": str(keys / f"{OPENSSF_KEY}.key"),
        "SECMLOPS_INFERENCE_LOG": str(root / "inference-log"),
        "SECMLOPS_MONITORING_REPORTS": str(root / "runs" / "monitoring" / "reports"),
    }
    lines = [f"export {name}={shlex.quote(value)}" for name, value in env.items()]
    atomic_write_bytes(root / ENV_FILE, ("\n".join(lines) + "\n").encode())
    return Workspace(root, published.tag, env)


def role_file(role: str) -> str:
    """The base name of a role's key files in a workspace: `data_owner` -> `data-owner`."""
    return role.replace("_", "-")


def read_workspace_env(root: Path) -> dict[str, str]:
    """The environment that `create_workspace` wrote to `<root>/secmlops.env`.

    Raises:
        WorkspaceError: the file is missing (no workspace there yet) or is not `export NAME=value`
            lines.
    """
    path = Path(root).resolve() / ENV_FILE
    if not path.is_file():
        raise WorkspaceError(
            f"no workspace at {Path(root)} ({ENV_FILE} is missing): run `make demo` first"
        )
    env = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        words = shlex.split(line)
        name, equals, value = words[-1].partition("=") if words else ("", "", "")
        if len(words) != 2 or words[0] != "export" or not equals or not name.isidentifier():
            raise WorkspaceError(f"{path}:{number}: not an `export NAME=value` line")
        env[name] = value
    return env
