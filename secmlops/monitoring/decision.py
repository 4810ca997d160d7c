"""Turn drift and attack signals into a retraining request, with a cooldown.

A retraining run costs hours of compute; a signal that persists across consecutive windows
must not start one per window. Each reason ("drift", "attack") has its own cooldown: a reason
requested within `cooldown_s` is suppressed (and the suppression audited, so a suppressed
attack alarm is still on record), while a new reason inside another reason's cooldown still
fires. State lives in a small JSON file written atomically; an unreadable state file raises
rather than resetting, because a reset would silently lift the cooldown.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from secmlops.audit import AuditLog
from secmlops.errors import DataError
from secmlops.fsutil import atomic_write_json
from secmlops.monitoring.drift import AttackResult, DriftResult

STAGE = "monitoring"
# Attack first: when both fire, the request is labelled by the security-relevant cause.
REASONS = ("attack", "drift")


@dataclass(frozen=True)
class RetrainingRequest:
    """A request to retrain, emitted as the `retraining-request` asset's extra."""

    reason: str
    reasons: tuple[str, ...]
    time: str
    evidence: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        """A plain dict for the asset extra and the audit log."""
        return {
            "reason": self.reason,
            "reasons": list(self.reasons),
            "time": self.time,
            "evidence": self.evidence,
        }


def decide(
    drift: DriftResult | None,
    attack: AttackResult | None,
    state_path: Path,
    audit: AuditLog,
    now: dt.datetime,
    cooldown_s: float,
    subject: str = "monitoring",
) -> RetrainingRequest | None:
    """Decide whether this window's signals request retraining.

    Args:
        drift: the window's drift result (None: not checked).
        attack: the window's attack-rate result (None: not checked).
        state_path: JSON file with the last request time per reason (created when absent).
        audit: the audit log; every outcome (request, suppression, quiet window) is recorded.
        now: the decision time, timezone-aware.
        cooldown_s: seconds during which a reason already requested is suppressed.
        subject: what the decision is about (the serving model version), for the audit log.

    Returns:
        The request, or None when nothing fired or every firing reason is cooling down.

    Raises:
        ValueError: `now` is naive, or `cooldown_s` is negative.
        DataError: the state file is unreadable or malformed.
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware (use datetime.now(UTC))")
    if cooldown_s < 0:
        raise ValueError(f"cooldown_s must be >= 0, got {cooldown_s!r}")
    evidence = _evidence(drift, attack)
    fired = [r for r in REASONS if (r == "attack" and attack and attack.alarm)
             or (r == "drift" and drift and drift.detected)]  # fmt: skip
    if not fired:
        audit.append(STAGE, "check_window", "pass", subject, evidence)
        return None
    state = _read_state(Path(state_path))
    last = state.get("last_by_reason", {})
    cooling = {
        r: last[r] for r in fired if r in last and _age_s(last[r], now, state_path) < cooldown_s
    }
    active = tuple(r for r in fired if r not in cooling)
    if cooling:
        audit.append(
            STAGE, "suppress_retraining_request", "info", subject,
            {**evidence, "suppressed": sorted(cooling), "last_requested": cooling,
             "cooldown_s": cooldown_s, "requested": list(active)},
        )  # fmt: skip
    if not active:
        return None
    stamp = now.astimezone(dt.UTC).isoformat()
    request = RetrainingRequest(active[0], active, stamp, evidence)
    state = {
        "last_request_time": stamp,
        "last_reason": request.reason,
        "last_by_reason": {**last, **dict.fromkeys(active, stamp)},
    }
    # Audit before the state: if the state write fails, the request is still on record and the
    # next window requests again instead of staying silent.
    audit.append(STAGE, "request_retraining", "fail", subject, request.to_json())
    atomic_write_json(Path(state_path), state)
    return request


def _evidence(drift: DriftResult | None, attack: AttackResult | None) -> dict[str, Any]:
    evidence: dict[str, Any] = {}
    if drift is not None:
        evidence["drift"] = {
            "detected": drift.detected,
            "drifted_share": drift.drifted_share,
            "drifted_columns": list(drift.drifted_columns),
            "p_values": drift.p_values,
            "embedding_drift_share": drift.embedding_drift_share,
            "embedding_drifted": drift.embedding_drifted,
            "prediction_drifted_columns": list(drift.prediction_drifted_columns),
            "window_size": drift.window_size,
            "html_report": drift.html_report,
            "json_report": drift.json_report,
        }
    if attack is not None:
        evidence["attack"] = attack.to_json()
    return evidence


def _read_state(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: unreadable monitoring state ({exc})") from None
    by_reason = state.get("last_by_reason") if isinstance(state, dict) else None
    if not isinstance(by_reason, dict) or not all(isinstance(v, str) for v in by_reason.values()):
        raise DataError(f"{path}: malformed monitoring state (no 'last_by_reason' object)")
    return state


def _age_s(stamp: str, now: dt.datetime, path: Path) -> float:
    try:
        then = dt.datetime.fromisoformat(stamp)
    except ValueError:
        raise DataError(f"{path}: bad timestamp {stamp!r} in monitoring state") from None
    if then.tzinfo is None:
        raise DataError(f"{path}: timestamp {stamp!r} has no timezone")
    # A request stamped in the future (clock skew) reads as age 0: still cooling, not expired.
    return max(0.0, (now - then).total_seconds())
