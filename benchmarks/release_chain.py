"""A release with its whole trust chain, for the benchmarks that need one (not a benchmark).

One generated key per role pinned in a copy of the repository's policy, a gate record that
passes that policy (signed by the gate key), provenance signed by the trainer key naming a data
owner's manifest: what `Registry.pull` and `secmlops serve` verify.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from secmlops.evaluation.gate import run_gate
from secmlops.models import read_card
from secmlops.supplychain.keys import ROLES, Keyring, generate_keypair, key_id, load_private_key
from secmlops.supplychain.provenance import sign_model

REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class RoleKeys:
    """Keys by role, the keyring that trusts each in its role, and the policy that pins them."""

    keys: dict[str, Any]
    keyring: Keyring
    policy: Path
    private_paths: dict[str, Path]
    public_paths: list[Path]

    def env(self) -> dict[str, str]:
        """The settings a `secmlops` process needs to verify (and sign) with these keys."""
        return {
            "SECMLOPS_TRUSTED_KEYS": os.pathsep.join(str(p) for p in self.public_paths),
            "SECMLOPS_POLICY": str(self.policy),
            "SECMLOPS_TRAINER_KEY": str(self.private_paths["trainer"]),
            "SECMLOPS_GATE_KEY": str(self.private_paths["gate"]),
            "SECMLOPS_APPROVER_KEY": str(self.private_paths["approver"]),
        }


def role_keys(root: Path) -> RoleKeys:
    """Generate a key per role under `root/keys` and write `root/policy.yaml` pinning them."""
    keys, privates, pubs = {}, {}, []
    for role in ROLES:
        private, public = generate_keypair(root / "keys", role)
        keys[role], privates[role] = load_private_key(private), private
        pubs.append(public)
    roles = {role: [key_id(keys[role].public_key())] for role in ROLES}
    content = yaml.safe_load((REPO_ROOT / "policy.yaml").read_text())
    content["roles"] = roles
    policy = root / "policy.yaml"
    policy.write_text(yaml.safe_dump(content))
    return RoleKeys(keys, Keyring.from_paths(pubs).with_roles(roles), policy, privates, pubs)


def gate_report(
    weights_sha256: str, suite: dict[str, Any], gated: list[str], operating_point: dict[str, Any]
) -> dict[str, Any]:
    """A robustness report that passes the repository's gate (figures well above every floor),
    scored at the model's own operating point."""
    names = set(gated) | {
        f"{kind}_linf_{level}" for level in suite["linf_eps_levels"] for kind in ("fgsm", "pgd")
    }
    attacks = {
        name: {"family": "evasion", "library": "art", "mAP50": 0.9, "recall": 0.9, "mr2": 0.1,
               "seconds": 1.0}
        for name in sorted(names)
    }  # fmt: skip
    largest = max(suite["linf_eps_levels"])
    levels = sorted({*suite["linf_eps_levels"], *suite["sanity_eps_levels"]})
    # Working attacks: recall falls to 0 at the largest eps; more effort and transfer find no more.
    sweep = [
        {
            "eps": k,
            "vanishing": 0.9 * (1 - i / (len(levels) - 1)),
            "worst_case": 0.9 * (1 - i / (len(levels) - 1)),
        }
        for i, k in enumerate(levels)
    ]
    white = next(row["vanishing"] for row in sweep if row["eps"] == largest)
    sanity = {
        "images": suite["sanity_images"], "people": 5 * suite["sanity_images"], "threshold": 0.4,
        "sweep": sweep,
        "effort": {"eps": largest, "recall": white, "more_steps": {"recall": white},
                   "more_restarts": {"recall": white}},
        "transfer": {"eps": largest, "white_box_recall": white, "transfer_recall": 1.0,
                     "source": {"dir": "bench-plain", "weights_sha256": "7" * 64}},
    }  # fmt: skip
    return {
        "schema": "secmlops.robustness/v1",
        "model": {"dir": "bench", "weights_sha256": weights_sha256,
                  "architecture": "compact_centernet",
                  "defence": {"adversarial": {"method": "fgsm-rs", "eps": 4 / 255}}},
        "data": {"dir": "bench", "split": "test", "images": 100, "boxes": 500},
        "suite": suite,
        "operating_point": operating_point,
        "clean": {"mAP50": 0.9, "mAP50_95": 0.5, "recall": 0.9, "fppi": 0.1},
        "attacks": attacks,
        "cross_check": {"attack": "pgd_linf_4", "art_mAP50": 0.9, "ours_mAP50": 0.9,
                        "difference": 0.0, "tolerance": 0.03, "passed": True},
        "sanity": sanity,
        "baseline": {"dir": "bench-plain", "weights_sha256": "7" * 64, "clean_mAP50": 0.92},
        "seconds": 1.0,
    }  # fmt: skip


def sign_release(model_dir: Path, work: Path, keys: RoleKeys) -> Path:
    """Gate `model_dir` (a passing record signed by the gate key) and sign its provenance."""
    card = read_card(model_dir)
    if card.operating_point is None:
        raise ValueError(f"{model_dir}: save the model with an operating point to gate it")
    content = yaml.safe_load(keys.policy.read_text())
    report = gate_report(
        card.weights_sha256, content["gate"]["attacks"],
        [*content["gate"]["min_robust_map50"], *content["gate"]["min_robust_recall"],
         *content["gate"]["max_robust_mr2"]],
        card.operating_point.model_dump(mode="json"),
    )  # fmt: skip
    label = model_dir.name
    (work / f"{label}-report.json").write_text(json.dumps(report))
    record = work / f"{label}-gate-record.json"
    run_gate(work / f"{label}-report.json", keys.policy, signing_key=keys.keys["gate"],
             audit_log=work / "gate-audit.jsonl", record_path=record)  # fmt: skip
    sign_model(model_dir, keys.keys["trainer"], gate_record=record,
               data_manifest_digest="sha256:" + "5" * 64,
               data_signer=key_id(keys.keys["data_owner"].public_key()))  # fmt: skip
    return model_dir
