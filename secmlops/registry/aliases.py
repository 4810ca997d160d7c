"""Alias records and the audit trail of every registry change.

An alias record is `{"version", "weights_sha256", "previous", "generation", "moved_at",
"moved_by"}`: `previous` is the rollback history, newest first; `generation` counts moves, so two
records that name the same version are still told apart.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from secmlops.audit import AuditLog, default_actor
from secmlops.errors import SecMLOpsError
from secmlops.registry.store import RegistryConflict, now_iso

STAGE = "registry"
MAX_PREVIOUS = 20  # rollback history kept per alias; older entries fall off
T = TypeVar("T")


def check_expected(
    name: str, alias: str, current: dict[str, Any] | None, expected: str | None
) -> None:
    """Refuse when the caller's idea of the alias (`expected`, "" = absent) is out of date.

    Raises:
        RegistryConflict: the alias points elsewhere (naming where).
    """
    if expected is None:
        return
    actual = current["version"] if current else ""
    if actual != expected:
        raise RegistryConflict(
            f"{name}: alias {alias} points at {actual or '(nothing)'}, not the expected "
            f"{expected or '(nothing)'}: someone else moved it"
        )


def next_alias_record(
    version: str,
    weights_sha256: str,
    previous: list[str],
    current: dict[str, Any] | None,
    audit: AuditLog,
) -> dict[str, Any]:
    """The record that moves an alias from `current` to `version`."""
    history = [v for v in dict.fromkeys(previous) if v != version][:MAX_PREVIOUS]
    return {
        "version": version,
        "weights_sha256": weights_sha256,
        "previous": history,
        "generation": (current["generation"] + 1) if current else 1,
        "moved_at": now_iso(),
        "moved_by": audit.actor or default_actor(),
    }


def audited(
    audit: AuditLog,
    action: str,
    subject: Callable[[], str],
    details: dict[str, Any],
    work: Callable[[], T],
) -> T:
    """Run `work`, then audit its outcome: "pass", or "fail" with the error (re-raised).

    The log is checked before any change (`head` validates the last entry), so a broken chain
    stops the change instead of letting it happen unrecorded. `subject` and `details` are read
    after `work`, which fills in what it learnt (old and new version, digest).

    Raises:
        AuditError: the audit log's last entry is broken (nothing is attempted).
        SecMLOpsError: whatever `work` raised, after its "fail" entry is written.
    """
    audit.head()
    try:
        result = work()
    except SecMLOpsError as exc:
        failure = {**details, "error": str(exc), "conflict": isinstance(exc, RegistryConflict)}
        audit.append(STAGE, action, "fail", subject(), failure)
        raise
    audit.append(STAGE, action, "pass", subject(), details)
    return result
