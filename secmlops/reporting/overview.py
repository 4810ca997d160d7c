"""What an operator checks first: registry versions with their signatures, and gate decisions.

Each function reads one source and returns a frozen result whose `message` says, in a sentence,
why the result is empty or partial (nothing there yet, unreadable, refused). Nothing raises for
a missing or malformed source: a dashboard that shows "audit log chain broken at line 7" is
useful, one that answers 500 is not.

Fail closed where trust is at stake: a registry version is "verified" only when its files match
the record and its signed provenance verifies with a trusted key NOW; without trusted keys it is
"unverified", never "verified". An audit log whose hash chain is broken shows no history at all,
only where it broke: entries after an edit cannot be told from forgeries.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from secmlops.errors import AuditError, SecMLOpsError
from secmlops.supplychain.keys import Keyring

GATE_ACTIONS = frozenset(
    {
        ("gate", "robustness_gate"),
        ("gate", "override"),
        ("registry", "push"),
        ("registry", "promote"),
        ("registry", "rollback"),
    }
)
# Registry.show / promote verify in `tempfile` folders named so; their paths mean nothing later.
_TEMP_FOLDER = re.compile(r"\S*/secmlops-(?:registry|promote|push)-[^/\s]+/")


@dataclass(frozen=True)
class VersionStatus:
    """One registry version as it stands now.

    `signature` is "verified" (files match the record and the provenance verifies with a trusted
    key; `signature_detail` names the signer), "refused" (the detail says why) or "unverified"
    (no trusted keys). `gate` is "passed", "refused", "missing" or "unverified" likewise.
    """

    model: str
    version: str
    aliases: tuple[str, ...]
    weights_sha256: str
    pushed_at: str
    pushed_by: str
    signer: str
    signature: str
    signature_detail: str
    gate: str
    gate_detail: str


@dataclass(frozen=True)
class RegistryOverview:
    """Every version of every model in one registry, oldest push first."""

    uri: str
    versions: tuple[VersionStatus, ...]
    message: str | None = None

    def to_json(self) -> dict[str, Any]:
        """A plain dict for the JSON API."""
        return asdict(self)


@dataclass(frozen=True)
class GateEvent:
    """One gate decision or registry change from the audit log."""

    seq: int
    time: str
    actor: str
    stage: str
    action: str
    decision: str
    subject: str
    summary: str


@dataclass(frozen=True)
class GateHistory:
    """The latest gate and registry decisions, newest first, from a verified audit log."""

    audit_log: str
    entries: int
    chain_verified: bool
    events: tuple[GateEvent, ...]
    message: str | None = None

    def to_json(self) -> dict[str, Any]:
        """A plain dict for the JSON API."""
        return asdict(self)


def registry_overview(
    registry_uri: str, keyring: Keyring | None, s3_endpoint_url: str | None = None
) -> RegistryOverview:
    """List every version with its aliases, digest, push time and signature status.

    Args:
        registry_uri: `file://`, a folder, or `s3://bucket/prefix`.
        keyring: keys trusted to sign models; None lists versions as "unverified". With keys,
            each version is fetched and verified (`Registry.show`), so a tampered file or an
            untrusted signer shows as "refused" with the reason.

    Returns:
        The overview; `message` says why it is empty (no registry, unreadable records).
    """
    from secmlops.registry import Registry

    try:
        registry = Registry.open(registry_uri, s3_endpoint_url)
        names = registry.models()
    except (SecMLOpsError, OSError) as exc:
        return RegistryOverview(str(registry_uri), (), f"registry unreadable: {exc}")
    versions: list[VersionStatus] = []
    problems: list[str] = []
    for name in names:
        try:
            rows = registry.list(name)
        except (SecMLOpsError, OSError) as exc:
            problems.append(f"{name}: {exc}")
            continue
        versions.extend(_version_status(registry, name, row, keyring) for row in rows)
    message = "; ".join(problems) or None
    if not versions and message is None:
        message = f"no model versions in {registry.uri} yet"
    return RegistryOverview(registry.uri, tuple(versions), message)


def _version_status(
    registry: Any, name: str, row: dict[str, Any], keyring: Keyring | None
) -> VersionStatus:
    base = {
        "model": name,
        "version": row["version"],
        "aliases": tuple(row["aliases"]),
        "weights_sha256": row["weights_sha256"],
        "pushed_at": row["pushed_at"],
        "pushed_by": row["pushed_by"],
        "signer": row["signer"],
    }
    if keyring is None:
        return VersionStatus(
            **base,
            signature="unverified",
            signature_detail="no trusted keys configured",
            gate="unverified" if row["gate_record"] else "missing",
            gate_detail="" if row["gate_record"] else "no gate record was signed with the model",
        )
    try:
        info = registry.show(name, row["version"], keyring)
    except (SecMLOpsError, OSError) as exc:
        info = {"verified": False, "verify_error": str(exc), "gate": {"status": "unverified"}}
    verified = info["verified"]
    if not verified:
        # Files that fail their digests or signature vouch for nothing, their gate record included.
        return VersionStatus(
            **base,
            signature="refused",
            signature_detail=_untemp(str(info.get("verify_error"))),
            gate="unverified",
            gate_detail="not checked: the version does not verify",
        )
    gate = info.get("gate") or {}
    return VersionStatus(
        **base,
        signature="verified",
        signature_detail=f"signed by {verified}",
        gate=str(gate.get("status", "unverified")),
        gate_detail=_untemp(str(gate.get("detail", ""))),
    )


def _untemp(text: str) -> str:
    """Drop the throw-away folder the registry verified a version in from a message."""
    return _TEMP_FOLDER.sub("", text)


def gate_history(audit_log_path: Path, limit: int = 50) -> GateHistory:
    """The last `limit` gate decisions, overrides and registry changes, newest first.

    The whole hash chain is verified first (`read_audit_log`); a broken chain returns no events
    and a message naming the line where it breaks.

    Args:
        audit_log_path: the JSON-lines audit log.
        limit: how many events to return at most (>= 1).

    Returns:
        The history; `message` says why it is empty (no log yet, broken chain, no decisions).
    """
    from secmlops.audit import read_audit_log

    path = Path(audit_log_path)
    if not path.exists():
        return GateHistory(str(path), 0, False, (), f"no audit log at {path} yet")
    try:
        entries = read_audit_log(path)
    except AuditError as exc:
        return GateHistory(str(path), 0, False, (), f"audit log refused: {exc}")
    chosen = [e for e in entries if (e["stage"], e["action"]) in GATE_ACTIONS]
    events = tuple(
        GateEvent(
            seq=e["seq"],
            time=e["time"],
            actor=e["actor"],
            stage=e["stage"],
            action=e["action"],
            decision=e["decision"],
            subject=e["subject"],
            summary=_summary(e),
        )
        for e in reversed(chosen[-max(1, limit) :])
    )
    message = None if events else f"no gate or registry decisions among {len(entries)} entries"
    return GateHistory(str(path), len(entries), True, events, message)


def _summary(entry: dict[str, Any]) -> str:
    """One line of evidence for an audit entry, from its details."""
    details = entry["details"]
    action = entry["action"]
    if action == "robustness_gate":
        failed = details.get("failed") or []
        overrides = details.get("overrides") or []
        text = "; ".join(str(f) for f in failed) if failed else "all checks passed"
        figures = details.get("figures") or {}
        if not failed and isinstance(figures, dict) and figures:
            shown = ", ".join(
                f"{'clean' if name == 'clean_recall' else name.removeprefix('robust_recall.')} "
                f"{value:.2f}"
                for name, value in figures.items()
                if isinstance(value, int | float)
            )
            text += f"; recall at the operating point: {shown}"
        return text + (f" (overrides: {', '.join(map(str, overrides))})" if overrides else "")
    if action == "override":
        return (
            f"{details.get('path')}: {details.get('old')} -> {details.get('new')} "
            f"({details.get('reason')})"
        )
    error = f": {details['error']}" if details.get("error") else ""
    if action in ("promote", "rollback"):
        old = details.get("old_version") or "(none)"
        new = details.get("new_version") or "?"
        return _untemp(f"{details.get('alias')}: {old} -> {new}{error}")
    if action == "push":
        signer = f"signed by {details['signer']}" if details.get("signer") else "refused"
        return f"{signer}{error}"
    return error.removeprefix(": ")
