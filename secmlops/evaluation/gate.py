"""The robustness validation gate: a model passes only on complete, comparable, signed evidence.

Threat: a pedestrian detector that is accurate on clean frames but blind under a small adversarial
perturbation, a printed patch or bad weather ships because nobody measured it, because the
evidence came from a weaker attack suite than the policy asks for, or because the attack itself
was broken (gradient masking makes a failed gradient attack look like robustness). The gate
judges the report of `secmlops evaluate --attacks` (schema `secmlops.robustness/v1`) against the
policy's `gate:` section; anything missing or malformed fails, nothing defaults to a pass:

- evidence: the schema and every section are there; metrics on training images are not evidence;
- clean mAP@0.5 and each gated attack's robust mAP@0.5 reach the policy's floors;
- the report's attack suite is the policy's (eps levels, PGD steps, patch size, severity);
- the ART reference attack and our own agree (else: a weak attack, or gradient masking);
- a defence costs at most `max_defence_cost` clean mAP@0.5 against its undefended baseline;
- against the production model's report on the same data and suite, no gated metric falls by
  more than `max_regression`.

`evaluate_gate` is the pure decision. `run_gate` adds the policy and its audited overrides, a
signed in-toto statement of the decision (written on pass AND fail, so a failed re-run replaces
an earlier pass) and an audit entry, then raises `GateFailed`. `verify_gate_record` is what
promotion calls: only a passed record, signed by a trusted key, for exactly the weights being
promoted, lets a model through.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from secmlops.audit import AuditLog
from secmlops.errors import DataError, GateFailed, IntegrityError, PolicyError
from secmlops.evaluation.gate_checks import (
    REPORT_SCHEMA,
    GateCheck,
    GateDecision,
    evaluate_gate,
    get_path,
)
from secmlops.fsutil import atomic_write_bytes
from secmlops.names import SHA256_HEX, matches
from secmlops.policy import apply_override, load_policy, policy_digest
from secmlops.supplychain.dsse import (
    envelope_from_bytes,
    envelope_to_bytes,
    sign_envelope,
    verify_envelope_signer,
)
from secmlops.supplychain.keys import Keyring, load_private_key

__all__ = [
    "REPORT_SCHEMA",
    "GateCheck",
    "GateDecision",
    "evaluate_gate",
    "run_gate",
    "verify_gate_record",
]

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
RECORD_PREDICATE_TYPE = "https://secmlops.dev/gate-record/v1"
RECORD_PAYLOAD_TYPE = "application/vnd.in-toto+json"
RECORD_SUBJECT = "model.safetensors"
RECORD_NAME = "gate-record.json"
STAGE = "gate"


def run_gate(
    report_path: Path | str,
    policy_path: Path | str,
    *,
    signing_key: Path | str | Ed25519PrivateKey | None,
    audit_log: AuditLog | Path | str,
    record_path: Path | str | None = None,
    production_report: Path | str | None = None,
    overrides: Sequence[tuple[str, Any, str]] = (),
    applied_overrides: Sequence[dict[str, Any]] = (),
    expected_policy_digest: str | None = None,
) -> GateDecision:
    """Judge a report under the policy (with overrides), sign and record the decision, audit it.

    Args:
        report_path: the candidate's robustness report (JSON).
        policy_path: the policy file (a run's effective policy, in the lifecycle).
        signing_key: the private key (or its PEM file) that signs the gate record.
        audit_log: the audit log (or its path).
        record_path: where the signed record goes (default: `gate-record.json` beside the report).
        production_report: the production model's report on the same data, if there is one.
        overrides: (key path, value, reason) per threshold changed for this run; each is audited.
        applied_overrides: the override records an effective run policy was made with
            (`secmlops.lifecycle.resolve_run_policy` audited them); named in the record.
        expected_policy_digest: the digest the policy file must have (a run's effective
            policy, resolved at the start of the run): anything else is refused.

    Returns:
        The passing decision.

    Raises:
        DataError: no signing key, or a report file missing, unreadable or not a JSON object
            (checked before anything is decided or written).
        PolicyError: the policy is invalid or not the expected one, or an override lacks a
            reason or is invalid.
        GateFailed: a threshold failed; the signed record and the audit entry are written first.
        AuditError: the audit log cannot be appended to (its chain is broken).
    """
    if signing_key is None:
        raise DataError(
            "no signing key: the gate record must be signed; pass --key or set SECMLOPS_GATE_KEY"
        )
    key = (
        signing_key
        if isinstance(signing_key, Ed25519PrivateKey)
        else load_private_key(Path(signing_key))
    )
    policy = load_policy(policy_path)
    if expected_policy_digest is not None and policy_digest(policy) != expected_policy_digest:
        raise PolicyError(
            f"{policy_path}: policy digest {policy_digest(policy)}, the run resolved "
            f"{expected_policy_digest}: the policy changed during the run"
        )
    applied = []
    for path, value, reason in overrides:
        policy, record = apply_override(policy, path, value, reason)
        applied.append(record)
    report_path = Path(report_path)
    record_path = Path(record_path) if record_path is not None else report_path.parent / RECORD_NAME
    if record_path.resolve() == report_path.resolve():
        raise DataError(f"{record_path}: the gate record would overwrite the report it judges")
    report_bytes, report = _read_report(report_path)
    production_bytes, production = (
        _read_report(Path(production_report)) if production_report is not None else (None, None)
    )

    decision = evaluate_gate(report, policy.gate, production)
    weights = get_path(report, "model", "weights_sha256")
    weights = weights if matches(SHA256_HEX, weights) else None
    digest = policy_digest(policy)
    decided_at = datetime.now(UTC)
    statement: dict[str, Any] = {
        "_type": STATEMENT_TYPE,
        # No subject when the report names no valid digest: the failed record binds nothing.
        "subject": [{"name": RECORD_SUBJECT, "digest": {"sha256": weights}}] if weights else [],
        "predicateType": RECORD_PREDICATE_TYPE,
        "predicate": {
            **decision.to_dict(),
            "report_path": str(report_path),
            "report_sha256": hashlib.sha256(report_bytes).hexdigest(),
            "policy_digest": digest,
            "policy_path": str(policy_path),
            # The threshold recall was judged at; the chain holds serving to it.
            "operating_point": (
                report["operating_point"]
                if isinstance(report.get("operating_point"), dict)
                else None
            ),
            "overrides": [*applied_overrides, *applied],
            "production_report_path": str(production_report) if production_report else None,
            "production_report_sha256": (
                hashlib.sha256(production_bytes).hexdigest()
                if production_bytes is not None
                else None
            ),
            "decided_at": decided_at.isoformat(timespec="seconds"),
            # Promotion refuses the record after this (policy gate.record_validity_days).
            "valid_until": gate_validity(decided_at, policy.gate.record_validity_days),
        },
    }
    payload = json.dumps(statement, sort_keys=True, separators=(",", ":")).encode()
    envelope = envelope_to_bytes(sign_envelope(payload, RECORD_PAYLOAD_TYPE, key))

    audit = audit_log if isinstance(audit_log, AuditLog) else AuditLog(Path(audit_log))
    model_dir = get_path(report, "model", "dir")
    subject = weights or (model_dir if isinstance(model_dir, str) else str(report_path))
    # Audit before writing the record: a record without its audit entry could promote a model
    # with no trace, while an audit entry whose record failed to write blocks promotion.
    for record in applied:
        audit.append(STAGE, "override", "override", subject, {**record, "policy": str(policy_path)})
    audit.append(
        STAGE,
        "robustness_gate",
        "pass" if decision.passed else "fail",
        subject,
        {
            "failed": [check.describe() for check in decision.failures],
            # What a person reads first: the people found, clean and under attack.
            "figures": {
                check.name: check.measured
                for check in decision.checks
                if check.name == "clean_recall" or check.name.startswith("robust_recall.")
                if isinstance(check.measured, float)
            },
            "record": str(record_path),
            "record_sha256": hashlib.sha256(envelope).hexdigest(),
            "policy_digest": digest,
            "report_sha256": statement["predicate"]["report_sha256"],
            "overrides": [record["path"] for record in [*applied_overrides, *applied]],
        },
    )
    atomic_write_bytes(record_path, envelope)
    if not decision.passed:
        failures = [check.to_dict() for check in decision.failures]
        checks = [check.to_dict() for check in decision.checks]
        raise GateFailed(decision.message(), failures, checks, str(record_path))
    return decision


def gate_validity(decided_at: datetime, days: int) -> str:
    """`valid_until` of a gate record decided at `decided_at` under a validity of `days`."""
    return (decided_at + timedelta(days=days)).astimezone(UTC).isoformat(timespec="seconds")


def _read_report(path: Path) -> tuple[bytes, dict[str, Any]]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: robustness report not found") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read the robustness report ({exc.strerror})") from None
    try:
        report = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: robustness report is not valid JSON ({exc})") from None
    if not isinstance(report, dict):
        raise DataError(
            f"{path}: expected a JSON object ({REPORT_SCHEMA}), got a {type(report).__name__}"
        )
    return data, report


def verify_gate_record(
    record_path: Path | str, keyring: Keyring, weights_sha256: str
) -> dict[str, Any]:
    """Check that a model passed the gate: a trusted signature on a passed record for its digest.

    Args:
        record_path: the signed gate record (DSSE envelope).
        keyring: the keys trusted to sign gate decisions.
        weights_sha256: SHA-256 hex of the `model.safetensors` about to be promoted
            ("sha256:" prefix allowed).

    Returns:
        The record's predicate (checks, report and policy digests, overrides, time).

    Raises:
        IntegrityError: the record is missing or malformed, its signature does not verify with a
            trusted key, it is not a gate record, it is for other weights, or the gate failed.
    """
    path = Path(record_path)
    want = weights_sha256.lower().removeprefix("sha256:")
    if not matches(SHA256_HEX, want):
        raise IntegrityError(f"{weights_sha256!r} is not a SHA-256 hex digest")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise IntegrityError(f"{path}: no gate record: the model has not passed the gate") from None
    except OSError as exc:
        raise IntegrityError(f"{path}: cannot read the gate record ({exc.strerror})") from None
    envelope = envelope_from_bytes(data, str(path))  # its errors name the file already
    try:
        statement = json.loads(
            verify_envelope_signer(
                envelope, keyring, RECORD_PAYLOAD_TYPE, role="gate", what="gate record"
            ).payload
        )
    except IntegrityError as exc:
        raise IntegrityError(f"{path}: {exc}") from None
    except ValueError:
        raise IntegrityError(f"{path}: signed payload is not JSON") from None
    if not isinstance(statement, dict) or statement.get("_type") != STATEMENT_TYPE:
        raise IntegrityError(f"{path}: not an in-toto statement")
    if statement.get("predicateType") != RECORD_PREDICATE_TYPE:
        raise IntegrityError(f"{path}: not a gate record ({statement.get('predicateType')!r})")
    subject = [{"name": RECORD_SUBJECT, "digest": {"sha256": want}}]
    if statement.get("subject") != subject:
        raise IntegrityError(f"{path}: the gate record is for other weights, not sha256:{want}")
    predicate = statement.get("predicate")
    if not isinstance(predicate, dict):
        raise IntegrityError(f"{path}: the model failed the robustness gate")
    checks = predicate.get("checks")
    if not isinstance(checks, list) or not checks or predicate.get("passed") is not True:
        raise IntegrityError(f"{path}: the model failed the robustness gate")
    if not all(isinstance(c, dict) and c.get("passed") is True for c in checks):
        raise IntegrityError(f"{path}: the record says passed but lists failed checks")
    return predicate
