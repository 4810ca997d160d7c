"""The data-stage controls in order, each decision written to the audit log; fails closed.

verify (signed manifest) -> validate (annotations, images, leakage) -> screen (poisoning).
Verification comes first because the other checks read the files: they must be the signed ones.
Every check appends a `pass` or `fail` entry, with its evidence, to the hash-chained audit log
before the result reaches the caller, so a failure cannot go unrecorded.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from secmlops.audit import AuditLog
from secmlops.data.manifest import DatasetIdentity
from secmlops.errors import SecMLOpsError
from secmlops.fsutil import atomic_write_json
from secmlops.policy import DataPolicy
from secmlops.supplychain.keys import Keyring

T = TypeVar("T")
STAGE = "data"


def audited(
    audit: AuditLog,
    action: str,
    subject: str,
    run: Callable[[], T],
    evidence: Callable[[T], dict[str, Any]],
) -> T:
    """Run one check and append its decision (pass with evidence, or fail with the error)."""
    try:
        result = run()
    except SecMLOpsError as exc:
        details: dict[str, Any] = {"error": str(exc)}
        for attribute in ("problems", "flagged"):
            if getattr(exc, attribute, None):
                details[attribute] = list(getattr(exc, attribute))[:200]
        audit.append(STAGE, action, "fail", subject, details)
        raise
    audit.append(STAGE, action, "pass", subject, evidence(result))
    return result


def verify_signed_dataset(
    root: Path,
    keyring: Keyring,
    audit: AuditLog,
    expected: DatasetIdentity | None = None,
) -> dict[str, Any]:
    """Verify the dataset's signed manifest: signed by a key of the policy's data_owner role
    (`keyring` carries the roles), and (given `expected`, the version pulled) signed as that
    dataset version.

    Returns:
        {"manifest_digest", "signer", "files", "bytes", "dataset"}

    Raises:
        IntegrityError: any tampering, an unsigned dataset, a signer that is not trusted or holds
            another role, or another dataset version than `expected`.
    """
    from secmlops.data.manifest import verify_dataset

    def run() -> dict[str, Any]:
        verified = verify_dataset(Path(root), keyring, expected=expected)
        return {
            "manifest_digest": verified.digest,
            "signer": verified.key_id,
            "files": verified.file_count,
            "bytes": verified.total_bytes,
            "dataset": verified.dataset.tag if verified.dataset else None,
        }

    return audited(audit, "verify_manifest", str(root), run, lambda r: r)


def validate(
    root: Path, policy: DataPolicy, audit: AuditLog, report_path: Path | None = None
) -> dict[str, Any]:
    """Validate annotations and images against the policy; write the report; raise on problems."""
    from secmlops.data.validation import raise_if_failed, validate_dataset

    def run() -> dict[str, Any]:
        report = validate_dataset(Path(root), policy)
        if report_path is not None:
            atomic_write_json(report_path, report.to_dict())
        raise_if_failed(report)
        return report.to_dict()

    return audited(audit, "validate", str(root), run, lambda r: {"statistics": r.get("statistics")})


def screen(
    root: Path, policy: DataPolicy, audit: AuditLog, report_path: Path | None = None
) -> dict[str, Any]:
    """Screen the training split for poisoning; raise if more is flagged than the policy allows.

    `max_flagged_fraction: 0` (the default policy) fails on any flagged image; a larger value
    tolerates that share of flagged images (they stay listed in the report and the audit entry).
    """
    from secmlops.data.poisoning import screen_dataset

    def run() -> dict[str, Any]:
        report = screen_dataset(Path(root), threshold=policy.poisoning_score_threshold)
        if report_path is not None:
            atomic_write_json(report_path, report.to_dict())
        if report.flagged and report.summary()["flagged_fraction"] > policy.max_flagged_fraction:
            report.raise_if_flagged()
        return report.to_dict()

    return audited(audit, "screen_poisoning", str(root), run, _screen_evidence)


def _screen_evidence(report: dict[str, Any]) -> dict[str, Any]:
    # Per-image scores stay in the report file; the audit entry keeps the decision's evidence.
    return {k: v for k, v in report.items() if k != "scores"}
