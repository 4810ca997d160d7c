"""Alias records and the audit trail of every registry change.

An alias record is `{"version", "weights_sha256", "previous", "generation", "moved_at",
"moved_by", "envelope"}`: `previous` is the rollback history, newest first; `generation` counts
moves (the signed sequence), so two records that name the same version are still told apart;
`envelope` signs all of it (`trust_chain.sign_alias_move`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from secmlops.audit import AuditLog
from secmlops.errors import SecMLOpsError
from secmlops.registry.store import RegistryConflict

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
