"""Runs in a separate process (multiprocessing spawn): races another process on one registry."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def race(
    uri: str,
    release: str,
    version: str,
    trust: dict[str, Any],
    audit_path: str,
    barrier: Any,
    results: Any,
) -> None:
    """Push `release` as version "rc", then promote `version` to production from v1.

    `trust` holds what a deployment's settings give a racer: "public_keys" (the trusted key
    files), "roles" (the policy's `roles:`), "approver_key" (the private key that signs
    production moves) and "policy" (the policy file).

    Each step starts at the barrier so both processes really act at the same moment; the
    outcome of each ("won", "conflict" or "error") goes to `results`.
    """
    # Everything slow (imports, torch above all, key loading, connections) happens before the
    # start line, or the racer that imports faster simply arrives first.
    import os

    import secmlops.evaluation.gate
    import secmlops.supplychain.provenance  # noqa: F401
    from secmlops.audit import AuditLog
    from secmlops.policy import load_policy
    from secmlops.registry import Registry, RegistryConflict
    from secmlops.supplychain.keys import Keyring, load_private_key

    registry = Registry.open(uri, os.environ.get("SECMLOPS_S3_ENDPOINT_URL"))
    keyring = Keyring.from_paths(trust["public_keys"]).with_roles(trust["roles"])
    approver = load_private_key(Path(trust["approver_key"]))
    policy = load_policy(trust["policy"])
    audit = AuditLog(Path(audit_path), actor=f"racer-{version}")
    registry.list("pds")

    def promote() -> None:
        registry.promote("pds", version, "production", keyring, audit, key=approver,
                         policy=policy, expected_current="v1")  # fmt: skip

    steps = [
        ("push", lambda: registry.push(Path(release), "pds", "rc", keyring, audit)),
        ("promote", promote),
    ]
    for step, action in steps:
        barrier.wait(timeout=120)
        try:
            action()
            results.put((step, version, "won", ""))
        except RegistryConflict as exc:
            results.put((step, version, "conflict", str(exc)))
        except Exception as exc:  # reported to the parent, which fails the test with it
            results.put((step, version, "error", repr(exc)))
