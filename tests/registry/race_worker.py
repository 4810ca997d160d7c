"""Runs in a separate process (multiprocessing spawn): races another process on one registry."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def race(
    uri: str,
    release: str,
    version: str,
    public_key: str,
    audit_path: str,
    barrier: Any,
    results: Any,
) -> None:
    """Push `release` as version "rc", then promote `version` to production from v1.

    Each step starts at the barrier so both processes really act at the same moment; the
    outcome of each ("won", "conflict" or "error") goes to `results`.
    """
    # Everything slow (imports, torch above all, key loading, connections) happens before the
    # start line, or the racer that imports faster simply arrives first.
    import os

    import secmlops.evaluation.gate
    import secmlops.supplychain.provenance  # noqa: F401
    from secmlops.audit import AuditLog
    from secmlops.registry import Registry, RegistryConflict
    from secmlops.supplychain.keys import Keyring

    registry = Registry.open(uri, os.environ.get("SECMLOPS_S3_ENDPOINT_URL"))
    keyring = Keyring.from_paths([public_key])
    audit = AuditLog(Path(audit_path), actor=f"racer-{version}")
    registry.list("pds")
    steps = [
        ("push", lambda: registry.push(Path(release), "pds", "rc", keyring, audit)),
        (
            "promote",
            lambda: registry.promote(
                "pds", version, "production", keyring, audit, expected_current="v1"
            ),
        ),
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
