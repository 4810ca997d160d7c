"""Hash-chained, append-only audit log of every lifecycle decision.

Threat: after a bad model ships, someone hides how (a failed gate that was overridden, a
dataset whose check was skipped) by editing, deleting or reordering audit entries. Each entry
carries the SHA-256 of its own canonical JSON (`hash`) and the hash of the entry before it
(`prev`); `seq` counts from 1. An edit breaks the entry's own hash (or, if the editor
re-hashes it, the next entry's `prev`); a deleted, inserted or moved entry breaks the `seq`
run and the `prev` links. `verify_audit_log` names the first line where the chain breaks.

Limitation: cutting entries off the END of the file leaves a shorter chain that is still
perfectly valid; nothing inside the file can reveal it, and neither can anyone who may
rewrite the whole file (they can rebuild every hash). Remedy: the head kept somewhere the log's
writer cannot rewrite. The lifecycle does that at every promotion without manual steps
(`secmlops.audit_anchors`: a signed head in the model registry, which `secmlops audit verify`
finds); `verify_audit_log(path, expected_head=...)` also takes a hash exported by hand (an
Airflow XCom, a ticket) and requires it to still be in the chain.

Concurrency: appenders on one host serialize on `fcntl.flock` (advisory; every writer must
use `AuditLog`), read the last entry under the lock to chain onto it, and fsync each line.
flock over NFS is not reliable: keep the log on a local disk, or one writer per log.

Canonical JSON: `json.dumps(entry_without_hash, sort_keys=True, separators=(",", ":"))`
(ASCII escapes); each line of the file is the whole entry in the same form, byte for byte: a
line that parses to a valid entry but is not its canonical form (a repeated key, other spacing)
is refused, so every reader of the file sees what the hash covers.
"""

from __future__ import annotations

import contextlib
import fcntl
import getpass
import hashlib
import json
import os
import socket
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from secmlops.errors import AuditError

GENESIS = "0" * 64
DECISIONS = ("pass", "fail", "override", "info")
_FIELDS = {
    "seq": int,
    "time": str,
    "actor": str,
    "stage": str,
    "action": str,
    "decision": str,
    "subject": str,
    "details": dict,
    "prev": str,
    "hash": str,
}
_TAIL_BLOCK = 8192


def default_actor() -> str:
    """user@host: who acts when the deployment names no actor (`Settings.actor`)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry, as in some containers
        user = f"uid{os.getuid()}"
    return f"{user}@{socket.gethostname()}"


def canonical_json(obj: Any) -> str:
    """The one serialization that hashes are computed over."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def entry_hash(entry: dict[str, Any]) -> str:
    """SHA-256 hex of the canonical JSON of `entry` without its "hash" field."""
    body = {k: v for k, v in entry.items() if k != "hash"}
    return hashlib.sha256(canonical_json(body).encode()).hexdigest()


class AuditLog:
    """An append-only JSON-lines audit log at `path` (created on first append)."""

    def __init__(self, path: Path | str, actor: str | None = None) -> None:
        self.path = Path(path)
        self.actor = actor

    def append(
        self,
        stage: str,
        action: str,
        decision: str,
        subject: str,
        details: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Record one decision, chained to the current last entry.

        Args:
            stage: lifecycle stage, e.g. "data", "validation", "deployment".
            action: what was decided, e.g. "verify_manifest", "robustness_gate".
            decision: "pass", "fail", "override" or "info".
            subject: what it was about (dataset path or digest, model version).
            details: evidence (JSON-serializable; other values are stored as str()).

        Returns:
            The written entry, including its `seq` and `hash` (export the hash as an anchor).

        Raises:
            AuditError: unknown decision, or the current last line is incomplete or edited
                (appending to a broken chain would bless it).
        """
        if decision not in DECISIONS:
            raise AuditError(f"decision must be one of {', '.join(DECISIONS)}, got {decision!r}")
        # Round-trip details so the stored entry is exactly what the hash covers.
        clean_details = json.loads(json.dumps(details or {}, default=str))
        if not isinstance(clean_details, dict):
            raise AuditError(f"details must be a mapping, got {type(details).__name__}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._locked() as fd:
            last = _last_entry(fd, self.path)
            entry: dict[str, Any] = {
                "seq": last["seq"] + 1 if last else 1,
                "time": datetime.now(UTC).isoformat(timespec="microseconds"),
                "actor": self.actor or default_actor(),
                "stage": str(stage),
                "action": str(action),
                "decision": decision,
                "subject": str(subject),
                "details": clean_details,
                "prev": last["hash"] if last else GENESIS,
            }
            entry["hash"] = entry_hash(entry)
            _write_all(fd, (canonical_json(entry) + "\n").encode())
            os.fsync(fd)
        return entry

    def head(self) -> str:
        """Hash of the last entry (GENESIS for an empty or absent log): the anchor to export."""
        last = self.last_entry()
        return last["hash"] if last else GENESIS

    def last_entry(self) -> dict[str, Any] | None:
        """The last entry, its own hash and form checked; None for an empty or absent log.

        Raises:
            AuditError: the last line is incomplete, garbled, edited or not canonical.
        """
        if not self.path.exists():
            return None
        with self._locked() as fd:
            return _last_entry(fd, self.path)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[int]:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield fd
        finally:
            os.close(fd)  # closing releases the lock


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _last_entry(fd: int, path: Path) -> dict[str, Any] | None:
    """The last entry of the log open at `fd`, after checking its own hash; None if empty."""
    end = os.fstat(fd).st_size
    if end == 0:
        return None
    tail = b""
    offset = end
    while offset > 0:
        step = min(_TAIL_BLOCK, offset)
        offset -= step
        tail = os.pread(fd, step, offset) + tail
        if tail.count(b"\n") >= 2 or offset == 0:
            break
    if not tail.endswith(b"\n"):
        raise AuditError(
            f"{path}: last line is incomplete (an append was cut off); "
            "run `secmlops audit verify` and repair before appending"
        )
    line = tail[:-1].rsplit(b"\n", 1)[-1]
    try:
        entry = json.loads(line)
        if not isinstance(entry, dict) or not isinstance(entry.get("seq"), int):
            raise ValueError("not an audit entry")
    except ValueError:
        raise AuditError(
            f"{path}: last line is not a valid audit entry; refusing to append"
        ) from None
    if entry_hash(entry) != entry.get("hash"):
        raise AuditError(f"{path}: last entry (seq {entry['seq']}) was edited; refusing to append")
    _require_canonical(line + b"\n", entry, f"{path}: last line (seq {entry['seq']})")
    return entry


def read_audit_log(path: Path, expected_head: str | None = None) -> list[dict[str, Any]]:
    """Verify the whole chain and return its entries (for reports and the UI).

    Raises:
        AuditError: as `verify_audit_log`.
    """
    path = Path(path)
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        raise AuditError(f"{path}: audit log not found") from None
    except OSError as exc:
        raise AuditError(f"{path}: cannot read audit log ({exc.strerror})") from None
    entries: list[dict[str, Any]] = []
    prev_hash, prev_seq = GENESIS, 0
    with handle:
        for lineno, raw in enumerate(handle, start=1):
            entry = _parse_line(raw, lineno, path)
            seq = entry["seq"]
            where = f"{path}: line {lineno} (seq {seq})"
            if entry_hash(entry) != entry["hash"]:
                raise AuditError(f"{where}: hash mismatch: the entry was edited after writing")
            if seq > prev_seq + 1:
                raise AuditError(
                    f"{where}: seq jumps from {prev_seq} to {seq}: "
                    f"{seq - prev_seq - 1} entries deleted (or entries reordered)"
                )
            if seq <= prev_seq:
                raise AuditError(
                    f"{where}: seq {seq} follows seq {prev_seq}: entries reordered or duplicated"
                )
            if entry["prev"] != prev_hash:
                before = f"line {lineno - 1}" if lineno > 1 else "the start of the log"
                raise AuditError(
                    f"{where}: prev does not match the hash of {before}: an entry was "
                    "edited and re-hashed, deleted, inserted or reordered"
                )
            entries.append(entry)
            prev_hash, prev_seq = entry["hash"], seq
    anchored = expected_head is None or expected_head == GENESIS
    if not anchored and not any(e["hash"] == expected_head for e in entries):
        raise AuditError(
            f"{path}: anchor {expected_head} not found: the log ends at seq {prev_seq} "
            f"(head {prev_hash}); entries after the anchor were removed (tail truncation) "
            "or the log was rewritten"
        )
    return entries


def verify_audit_log(path: Path, expected_head: str | None = None) -> int:
    """Check the hash chain of an audit log.

    Args:
        path: the JSON-lines log.
        expected_head: an entry hash exported earlier (see the module docstring). It must still
            be in the chain; the log may have grown since. None skips the check, and then
            deleting the last entries goes unnoticed.

    Returns:
        The number of entries.

    Raises:
        AuditError: the file is missing or unreadable, or a line is truncated or garbled, was
            edited (hash mismatch), deleted (seq gap / prev mismatch), reordered, or the anchor
            `expected_head` is missing. The message names the line.
    """
    return len(read_audit_log(path, expected_head))


def _parse_line(raw: bytes, lineno: int, path: Path) -> dict[str, Any]:
    where = f"{path}: line {lineno}"
    if not raw.endswith(b"\n"):
        raise AuditError(f"{where}: truncated (no end of line): an append was cut off")
    try:
        entry = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise AuditError(f"{where}: garbled: not valid JSON") from None
    if not isinstance(entry, dict):
        raise AuditError(f"{where}: garbled: not a JSON object")
    for name, kind in _FIELDS.items():
        value = entry.get(name)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise AuditError(
                f"{where}: malformed entry: field {name!r} missing or not {kind.__name__}"
            )
    if entry["decision"] not in DECISIONS:
        raise AuditError(f"{where}: malformed entry: unknown decision {entry['decision']!r}")
    _require_canonical(raw, entry, where)
    return entry


def _require_canonical(raw: bytes, entry: dict[str, Any], where: str) -> None:
    """A line must be byte-equal to the canonical JSON of the entry it parses to.

    The hash covers the parsed object, so without this a line with a repeated key (`json.loads`
    keeps the last one, other readers the first), other spacing or escapes would verify while
    a reader of the raw file sees different content.
    """
    if raw != (canonical_json(entry) + "\n").encode():
        raise AuditError(
            f"{where}: not canonical JSON: the line's bytes are not the canonical form of its "
            "entry (a repeated key, other spacing, key order or escapes): edited by hand"
        )
