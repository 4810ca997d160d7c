"""Audit anchors: the log's head, signed and kept beside the releases, written without manual steps.

Threat: someone who may rewrite the audit log (a compromised worker, an operator covering a
bad release) cuts its last entries off, or rewrites the chain from some entry on and re-hashes
everything after it. The chain itself cannot reveal either (`secmlops.audit`): only a hash kept
where the log's writer cannot rewrite it can. So at every promotion the lifecycle signs the
log's head (sequence number and entry hash) and stores it in the model registry as a write-once
object (`audit-anchors/<seq>-<hash>.json`; on S3 with Object Lock it cannot even be deleted).
`secmlops audit verify` looks up the newest anchor whose signature a trusted key made and
requires the log to hold exactly that entry at that sequence number.

What it cannot see: entries appended after the newest anchor (since the last promotion) may
still be cut off; an attacker holding the signing key can sign a new, shorter head; one who can
delete objects from a registry without Object Lock can remove anchors (the verification then
falls back to the newest one left, or says that none was found).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from secmlops.audit import AuditLog, read_audit_log
from secmlops.errors import AuditError, IntegrityError
from secmlops.supplychain.dsse import (
    envelope_from_bytes,
    envelope_to_bytes,
    sign_envelope,
    verify_envelope_signer,
)
from secmlops.supplychain.keys import Keyring, key_id

if TYPE_CHECKING:
    from secmlops.registry import Registry

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
ANCHOR_PREDICATE_TYPE = "https://secmlops.dev/audit-anchor/v1"
PAYLOAD_TYPE = "application/vnd.in-toto+json"
ANCHOR_ROLES = ("gate", "approver")


@dataclass(frozen=True)
class Anchor:
    """A verified audit head: the entry `seq` of the log had hash `hash` when `signer` signed."""

    seq: int
    hash: str
    time: str
    signer: str
    name: str


def anchor_name(seq: int, entry_hash: str) -> str:
    """The anchor's object name: sortable by sequence number."""
    return f"{seq:012d}-{entry_hash[:16]}.json"


def write_anchor(registry: Registry, audit: AuditLog, key: Ed25519PrivateKey) -> Anchor | None:
    """Sign the audit log's current head and store it in the registry (once per head: a head
    anchored before is left as it is).

    Returns:
        The anchor, or None for an empty log (nothing to anchor).

    Raises:
        AuditError: the log's last entry is broken (nothing is anchored).
        RegistryError: the registry cannot be written.
    """
    last = audit.last_entry()
    if last is None:
        return None
    statement = {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": str(audit.path.name), "digest": {"sha256": last["hash"]}}],
        "predicateType": ANCHOR_PREDICATE_TYPE,
        "predicate": {
            "seq": last["seq"],
            "hash": last["hash"],
            "time": datetime.now(UTC).isoformat(timespec="seconds"),
        },
    }
    payload = json.dumps(statement, sort_keys=True, separators=(",", ":")).encode()
    name = anchor_name(last["seq"], last["hash"])
    if registry.store.read_anchor(name) is None:
        envelope = sign_envelope(payload, PAYLOAD_TYPE, key)
        registry.store.create_anchor(name, envelope_to_bytes(envelope))
    return _anchor(statement, key_id(key.public_key()), name)


def latest_anchor(registry: Registry, keyring: Keyring) -> tuple[Anchor | None, list[str]]:
    """The newest anchor in the registry that a trusted key signed.

    Returns:
        (the anchor or None, why each newer stored anchor was passed over: a signature that
        does not verify, a malformed statement). A planted anchor cannot hide a real one; the
        reasons are for the report.
    """
    skipped: list[str] = []
    for name in reversed(registry.store.list_anchors()):
        data = registry.store.read_anchor(name)
        if data is None:
            continue
        try:
            # The roles that move aliases sign anchors (promotion writes them).
            verified = verify_envelope_signer(
                envelope_from_bytes(data, name), keyring, PAYLOAD_TYPE, role=ANCHOR_ROLES,
                what="audit anchor",
            )  # fmt: skip
            statement = json.loads(verified.payload)
            anchor = _anchor(statement, verified.key_id, name)
        except (IntegrityError, ValueError, KeyError, TypeError) as exc:
            skipped.append(f"{name}: {exc}")
            continue
        if name != anchor_name(anchor.seq, anchor.hash):
            skipped.append(f"{name}: names another head than it signs (seq {anchor.seq})")
            continue
        return anchor, skipped
    return None, skipped


def verify_with_anchor(path: Path, anchor: Anchor) -> int:
    """Check the log's chain and that its entry `anchor.seq` has the anchored hash.

    Returns:
        The number of entries.

    Raises:
        AuditError: the chain is broken, the log ends before the anchor (its tail was cut
            off), or the entry at the anchor's sequence number differs (the chain was
            rewritten).
    """
    entries = read_audit_log(path)
    where = f"{path}: anchor {anchor.name} (seq {anchor.seq}, signed by {anchor.signer})"
    if len(entries) < anchor.seq:
        raise AuditError(
            f"{where}: the log ends at seq {len(entries)}: entries after it were removed "
            "(tail truncation) or the log was replaced"
        )
    if entries[anchor.seq - 1]["hash"] != anchor.hash:
        raise AuditError(
            f"{where}: entry {anchor.seq} has another hash: the chain was rewritten at or before it"
        )
    return len(entries)


def _anchor(statement: Any, signer: str, name: str) -> Anchor:
    if not isinstance(statement, dict) or statement.get("predicateType") != ANCHOR_PREDICATE_TYPE:
        raise ValueError("not an audit anchor statement")
    predicate = statement["predicate"]
    seq, entry_hash = predicate["seq"], predicate["hash"]
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
        raise ValueError(f"bad sequence number {seq!r}")
    if not isinstance(entry_hash, str) or len(entry_hash) != 64:
        raise ValueError("bad entry hash")
    return Anchor(seq, entry_hash, str(predicate["time"]), signer, name)
