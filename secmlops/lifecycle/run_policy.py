"""One effective policy per run: the policy file plus the run's overrides, resolved once.

A training run's stages (evaluate, gate, sign) must judge under the same thresholds: an attack
suite evaluated under one policy and gated under another is refused by the gate (its suite
check), and worse, a gate that re-reads a policy file edited mid-run would judge under rules
nobody chose for the run. So the run's first task applies the overrides (each with its written
reason, each audited), writes the result into the run folder as `policy.effective.yaml` with its
digest, and every later stage loads that file through `load_run_policy`, which refuses it if its
digest is no longer the one resolved.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import yaml

from secmlops.errors import PolicyError
from secmlops.fsutil import atomic_write_bytes
from secmlops.lifecycle.contracts import RunPolicy
from secmlops.policy import Policy, apply_override, load_policy, parse_overrides, policy_digest
from secmlops.settings import Settings

EFFECTIVE_POLICY_FILE = "policy.effective.yaml"
STAGE = "policy"


def resolve_run_policy(
    settings: Settings, run_id: str, overrides: Sequence[str] = (), reason: str = ""
) -> RunPolicy:
    """Apply the run's overrides to the policy file and write the result into the run folder.

    Args:
        overrides: `KEY.PATH=VALUE` assignments, e.g. `gate.attacks.pgd_steps=3`.
        reason: why (required with overrides); recorded with each override.

    Returns:
        The effective policy's path and digest, the source file and the applied overrides.

    Raises:
        PolicyError: the policy is invalid, an override names no threshold, has an invalid
            value, or comes without a reason.
    """
    policy = load_policy(settings.policy)
    applied = []
    for path, value, why in parse_overrides(list(overrides), reason):
        policy, record = apply_override(policy, path, value, why)
        applied.append(record)
    digest = policy_digest(policy)
    target = settings.run_dir(run_id) / EFFECTIVE_POLICY_FILE
    header = f"# Effective policy of run {run_id}: {settings.policy} + {len(applied)} override(s)\n"
    body = yaml.safe_dump(policy.model_dump(mode="json"), sort_keys=True)
    atomic_write_bytes(target, (header + body).encode())
    if policy_digest(load_policy(target)) != digest:  # the file must say what was resolved
        raise PolicyError(f"{target}: the written policy does not read back as resolved")
    audit = settings.audit()
    for record in applied:
        audit.append(STAGE, "override", "override", run_id, {**record, "policy": digest})
    audit.append(
        STAGE, "resolve_policy", "info", run_id,
        {"source": str(settings.policy), "effective": str(target), "policy_digest": digest,
         "overrides": [record["path"] for record in applied]},
    )  # fmt: skip
    return {"path": str(target), "digest": digest, "source": str(settings.policy),
            "overrides": applied}  # fmt: skip


def load_run_policy(run_policy: RunPolicy) -> Policy:
    """The run's effective policy, refused if its file no longer has the resolved digest.

    Raises:
        PolicyError: the file is missing, invalid, or was changed since it was resolved.
    """
    policy = load_policy(Path(run_policy["path"]))
    digest = policy_digest(policy)
    if digest != run_policy["digest"]:
        raise PolicyError(
            f"{run_policy['path']}: the run's effective policy changed after it was resolved "
            f"({digest}, resolved {run_policy['digest']})"
        )
    return policy
