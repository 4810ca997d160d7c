"""The release trust chain, verified whole wherever a model is used.

Threat: an intruder with write access to the registry store but no signing key (a leaked bucket
credential, a compromised CI runner) chooses what production serves: points the alias at a
version whose gate failed, at one never gated, at another signed version, or replays an older
signed alias record; or a holder of one role's key acts in another role. Every link is signed by
the role that owns it, and a consumer (serving at start and every reload, `registry pull`,
promotion) walks the whole chain, refusing at the first broken link and naming it:

    alias record (approver for production, gate for other aliases; sequence never lower than
    the highest this consumer accepted)
      -> version (weights digest the registry recorded at push = the alias record's)
      -> provenance (trainer: every file's digest)
      -> gate record (gate: passed, for these weights, the digest the alias record names, made
         under the current policy or an override the approver accepted, still valid when moved)
      -> dataset (the provenance names a manifest signed by a data_owner key)

An alias move is an in-toto Statement v1 in a DSSE envelope (`sign_alias_move`); a rollback is an
ordinary forward move (higher sequence) to a version from the signed history.

Not covered: an attacker holding the approver key (with registry write access) can promote any
gated release; a consumer with no state accepts the first record it sees (trust on first use).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from secmlops.errors import IntegrityError, PolicyError
from secmlops.fsutil import atomic_write_bytes, sha256_file
from secmlops.registry.releases import GATE_RECORD_FILE, verify_release
from secmlops.settings import PRODUCTION_ALIAS
from secmlops.supplychain.dsse import sign_envelope, verify_envelope_signer
from secmlops.supplychain.keys import Keyring, key_id

if TYPE_CHECKING:
    from secmlops.policy import Policy
    from secmlops.supplychain.provenance import VerifiedModel

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
ALIAS_PREDICATE_TYPE = "https://secmlops.dev/alias-move/v1"
PAYLOAD_TYPE = "application/vnd.in-toto+json"
# The fields of a move the registry keeps unsigned beside the envelope (for listing); a
# consumer checks they equal the signed ones and otherwise reads only the signed payload.
LISTED_FIELDS = ("version", "weights_sha256", "previous", "generation", "moved_at", "moved_by")


def alias_role(alias: str) -> str:
    """The role whose key signs moves of `alias`: approver for production, gate otherwise."""
    return "approver" if alias == PRODUCTION_ALIAS else "gate"


class ChainBroken(IntegrityError):
    """A link of the release chain does not hold; `link` names it (audited with the refusal)."""

    def __init__(self, link: str, message: str) -> None:
        super().__init__(f"trust chain broken at the {link}: {message}")
        self.link = link


@dataclass(frozen=True)
class AliasMove:
    """A verified, signed alias move."""

    name: str
    alias: str
    version: str
    weights_sha256: str
    gate_record_sha256: str
    policy_digest: str
    sequence: int  # = the record's generation: only grows
    previous: tuple[str, ...]
    moved_at: str
    moved_by: str
    kind: str  # "promote" or "rollback"
    policy_exception: str | None  # the approver's reason to accept another policy's gate record
    approved_by: str | None  # the person who approved the move (an Airflow user, a key holder)
    signer: str
    digest: str  # sha256 of the signed payload: names this move exactly


@dataclass(frozen=True)
class VerifiedRelease:
    """A release whose whole chain verified: provenance, gate record, dataset, and the move."""

    model: VerifiedModel
    gate: dict[str, Any]
    move: AliasMove | None


def sign_alias_move(move: dict[str, Any], private_key: Ed25519PrivateKey) -> dict[str, Any]:
    """The registry's alias record for `move` (AliasMove's fields but `signer` and `digest`):
    the listed fields, and the DSSE envelope that signs all of them."""
    subject = {
        "name": f"{move['name']}@{move['version']}",
        "digest": {"sha256": move["weights_sha256"]},
    }
    statement = {
        "_type": STATEMENT_TYPE,
        "subject": [subject],
        "predicateType": ALIAS_PREDICATE_TYPE,
        "predicate": {k: list(v) if isinstance(v, tuple) else v for k, v in move.items()},
    }
    payload = json.dumps(statement, sort_keys=True, separators=(",", ":")).encode()
    record = {
        "version": move["version"],
        "weights_sha256": move["weights_sha256"],
        "previous": list(move["previous"]),
        "generation": move["sequence"],
        "moved_at": move["moved_at"],
        "moved_by": move["moved_by"],
        "envelope": sign_envelope(payload, PAYLOAD_TYPE, private_key),
    }
    return record


def verify_alias_move(record: dict[str, Any], keyring: Keyring, name: str, alias: str) -> AliasMove:
    """Check an alias record's signature (by the alias's role) and that it is for this alias.

    Raises:
        ChainBroken: unsigned, signed by an untrusted key or one of another role, for another
            model or alias, or its listed fields differ from the signed ones (edited).
    """
    envelope = record.get("envelope")
    if envelope is None:
        raise ChainBroken(
            "alias record", f"{name}@{alias} is unsigned; only a signed move is followed"
        )
    try:
        verified = verify_envelope_signer(
            envelope, keyring, PAYLOAD_TYPE, role=alias_role(alias), what="alias record"
        )
        statement = json.loads(verified.payload)
        if statement.get("predicateType") != ALIAS_PREDICATE_TYPE:
            raise IntegrityError(f"not an alias move ({statement.get('predicateType')!r})")
        fields = statement["predicate"]
        move = AliasMove(
            **{f.name: fields.get(f.name) for f in dataclasses.fields(AliasMove)
               if f.name not in ("signer", "digest")},
            signer=verified.key_id, digest=hashlib.sha256(verified.payload).hexdigest(),
        )  # fmt: skip
        if not isinstance(move.sequence, int) or not isinstance(move.previous, list):
            raise IntegrityError("malformed alias move (sequence, previous)")
        move = dataclasses.replace(move, previous=tuple(move.previous))
    except (IntegrityError, ValueError, TypeError, KeyError) as exc:
        raise ChainBroken("alias record", f"{name}@{alias}: {exc}") from None
    if (move.name, move.alias) != (name, alias):
        raise ChainBroken(
            "alias record",
            f"{name}@{alias} holds a move signed for {move.name}@{move.alias}: copied from "
            "another alias or model",
        )
    listed = {**{k: record.get(k) for k in LISTED_FIELDS}}
    signed = {
        "version": move.version, "weights_sha256": move.weights_sha256,
        "previous": list(move.previous), "generation": move.sequence,
        "moved_at": move.moved_at, "moved_by": move.moved_by,
    }  # fmt: skip
    if listed != signed:
        changed = sorted(k for k in LISTED_FIELDS if listed[k] != signed[k])
        raise ChainBroken(
            "alias record",
            f"{name}@{alias}: {', '.join(changed)} differ from what the {alias_role(alias)} "
            "signed: the record was edited in the store",
        )
    return move


class SequenceState:
    """The highest alias move this consumer accepted, per registry, model and alias: its
    sequence and the digest of its signed payload.

    A file (`Settings.trust_state`) shared by the consumers of one installation, or None for
    memory only (a test, a one-off check). A move with a lower sequence is a replayed old one;
    another move with the same sequence is a fork (an approver without this state signed over a
    record an intruder had rolled back): both are refused, fail closed.
    """

    def __init__(self, path: Path | None) -> None:
        self.path = Path(path) if path is not None else None
        self._memory: dict[str, dict[str, Any]] = {}

    def _read(self) -> dict[str, dict[str, Any]]:
        state: dict[str, dict[str, Any]] = {}
        if self.path is not None and self.path.is_file():
            try:
                state = json.loads(self.path.read_text())
            except (OSError, ValueError) as exc:
                raise IntegrityError(
                    f"{self.path}: unreadable alias sequence state ({exc})"
                ) from None
            if not isinstance(state, dict) or not all(
                isinstance(v, dict) and isinstance(v.get("sequence"), int) for v in state.values()
            ):
                raise IntegrityError(f"{self.path}: malformed alias sequence state")
        for key, seen in self._memory.items():
            if seen["sequence"] > state.get(key, {}).get("sequence", 0):
                state[key] = seen
        return state

    @staticmethod
    def _key(registry_uri: str, name: str, alias: str) -> str:
        return f"{registry_uri}#{name}@{alias}"

    def highest(self, registry_uri: str, name: str, alias: str) -> int:
        """The highest sequence accepted for this alias (0: none yet)."""
        seen = self._read().get(self._key(registry_uri, name, alias), {})
        return int(seen.get("sequence", 0))

    def check(self, registry_uri: str, move: AliasMove) -> None:
        """Refuse a move older than the one already accepted, or another one in its place.

        Raises:
            ChainBroken: a lower sequence (replay), or the same sequence for another move (fork).
        """
        seen = self._read().get(self._key(registry_uri, move.name, move.alias))
        if seen is None:
            return
        if move.sequence < seen["sequence"]:
            raise ChainBroken(
                "alias record",
                f"{move.name}@{move.alias} sequence {move.sequence} is lower than "
                f"{seen['sequence']}, already accepted here: a replayed older record",
            )
        if move.sequence == seen["sequence"] and move.digest != seen.get("digest"):
            raise ChainBroken(
                "alias record",
                f"{move.name}@{move.alias} sequence {move.sequence} names another move than the "
                "one accepted here with that sequence: a forked or replayed record",
            )

    def accept(self, registry_uri: str, move: AliasMove) -> None:
        """Remember `move` as the newest accepted (written atomically when file-backed)."""
        state = self._read()
        key = self._key(registry_uri, move.name, move.alias)
        if move.sequence < state.get(key, {}).get("sequence", 0):
            return
        state[key] = self._memory[key] = {"sequence": move.sequence, "digest": move.digest}
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            text = json.dumps(state, indent=2, sort_keys=True) + "\n"
            atomic_write_bytes(self.path, text.encode())


def gate_policy_is_current(gate: dict[str, Any], policy: Policy) -> bool:
    """Whether the gate record was made under `policy` plus the overrides it lists (each with
    its written reason), i.e. replaying them on `policy` gives the digest the record names."""
    from secmlops.policy import apply_override, policy_digest

    replayed = policy
    try:
        for override in gate.get("overrides") or []:
            replayed, _ = apply_override(
                replayed, override["path"], override["new"], override["reason"]
            )
    except (PolicyError, KeyError, TypeError):
        return False
    return policy_digest(replayed) == gate.get("policy_digest")


def gate_valid_until(gate: dict[str, Any]) -> datetime:
    """When the gate record stops being usable for a promotion.

    Raises:
        ChainBroken: the record names no validity (made before records expired).
    """
    try:
        return datetime.fromisoformat(gate["valid_until"])
    except (KeyError, TypeError, ValueError):
        raise ChainBroken(
            "gate record", "it names no validity period (made by an older gate): re-run the gate"
        ) from None


def verify_chain(
    model_dir: Path,
    keyring: Keyring,
    policy: Policy,
    *,
    registry_weights: str,
    move: AliasMove | None = None,
    promoting_at: datetime | None = None,
    policy_exception: str | None = None,
) -> VerifiedRelease:
    """Walk the chain of a fetched release, from its provenance to its dataset.

    Args:
        model_dir: the fetched version's files.
        keyring: the trusted keys with their roles.
        policy: the policy in force (its digest judges the gate record).
        registry_weights: the weights digest the registry recorded at push.
        move: the alias move that points here, when the release is used through an alias.
        promoting_at: set when about to sign a move: the gate record must still be valid then,
            and made under `policy` unless `policy_exception` says why not.
        policy_exception: the approver's written reason to accept another policy's record.

    Raises:
        ChainBroken: the first link that does not hold, named.
    """
    from secmlops.evaluation.gate import verify_gate_record

    try:
        model = verify_release(model_dir, keyring)
    except IntegrityError as exc:
        raise ChainBroken("provenance", str(exc)) from None
    if model.weights_sha256 != registry_weights:
        raise ChainBroken("version", "weights differ from the registry's version record")
    check_openssf_bundle(model_dir, model.subjects, model.predicate)
    if move is not None and move.weights_sha256 != model.weights_sha256:
        raise ChainBroken(
            "alias record",
            f"it names weights {move.weights_sha256[:16]}..., the version holds "
            f"{model.weights_sha256[:16]}...",
        )
    try:
        gate = verify_gate_record(model_dir / GATE_RECORD_FILE, keyring, model.weights_sha256)
    except IntegrityError as exc:
        raise ChainBroken("gate record", str(exc)) from None
    gate_sha = sha256_file(model_dir / GATE_RECORD_FILE)
    if model.predicate.get("gate_record_sha256") != gate_sha:
        raise ChainBroken("gate record", "not the record the provenance signed")
    _check_operating_point(model_dir, gate)
    data = model.predicate.get("data") or {}
    if not data.get("manifest_digest") or not data.get("signer"):
        raise ChainBroken("dataset", "the provenance names no verified dataset manifest")
    try:
        keyring.require_role(data["signer"], "data_owner", "the training dataset's manifest")
    except IntegrityError as exc:
        raise ChainBroken("dataset", str(exc)) from None

    valid_until = gate_valid_until(gate)
    current = gate_policy_is_current(gate, policy)
    if promoting_at is not None:
        if promoting_at > valid_until:
            raise ChainBroken(
                "gate record", f"expired at {valid_until.isoformat()}: re-run the gate"
            )
        if not current and not policy_exception:
            raise ChainBroken(
                "gate record",
                f"made under policy {gate.get('policy_digest')}, not the policy in force "
                "(nor it plus the overrides the record lists); re-run the gate, or accept it "
                "with a written policy exception",
            )
    if move is not None:
        if move.gate_record_sha256 != gate_sha or move.policy_digest != gate.get("policy_digest"):
            raise ChainBroken("alias record", "it names another gate record than the version's")
        if move.kind == "promote" and datetime.fromisoformat(move.moved_at) > valid_until:
            raise ChainBroken("alias record", "moved after its gate record expired")
        if not current and not move.policy_exception:
            raise ChainBroken(
                "gate record",
                f"made under policy {gate.get('policy_digest')}, not the policy in force, and "
                "the approver accepted no exception",
            )
    return VerifiedRelease(model, gate, move)


def _check_operating_point(model_dir: Path, gate: dict[str, Any]) -> None:
    """The score threshold serving will act on (signed in model.json) is the one the gate judged
    recall and false alarms at: a release cannot be gated at one threshold and served at another.

    Raises:
        ChainBroken: at the "gate record" link.
    """
    from secmlops.errors import ModelError
    from secmlops.models import read_card

    judged = gate.get("operating_point")
    judged = judged.get("score_threshold") if isinstance(judged, dict) else None
    try:
        served = read_card(model_dir).operating_point
    except ModelError as exc:
        raise ChainBroken("provenance", str(exc)) from None
    if served is None or judged != served.score_threshold:
        serves = "no threshold" if served is None else f"score >= {served.score_threshold}"
        raise ChainBroken(
            "gate record",
            f"it judged the model at score threshold {judged!r}; model.json serves at {serves}",
        )


def check_openssf_bundle(
    model_dir: Path, subjects: dict[str, str], predicate: dict[str, Any]
) -> None:
    """When the release carries an OpenSSF bundle (`model.sig`), it must verify with the key the
    trainer's provenance names; a bundle nobody vouched for is refused too.

    Raises:
        ChainBroken: at the "openssf bundle" link.
    """
    from secmlops.supplychain.openssf import SIGNATURE_FILE, verify_openssf

    named = predicate.get("openssf") or {}
    if SIGNATURE_FILE not in subjects and not named:
        return
    if not isinstance(named, dict) or not named.get("public_key"):
        raise ChainBroken(
            "openssf bundle", f"{SIGNATURE_FILE} present, but the provenance names no key for it"
        )
    try:
        verify_openssf(model_dir, named["public_key"])
    except IntegrityError as exc:
        raise ChainBroken("openssf bundle", str(exc)) from None


def signer_holds(keyring: Keyring, private_key: Ed25519PrivateKey, role: str, what: str) -> None:
    """Refuse before signing when `private_key` is not a trusted key of `role`.

    Raises:
        IntegrityError: the key is not trusted, or holds another role (named).
    """
    kid = key_id(private_key.public_key())
    if kid not in keyring:
        raise IntegrityError(f"{what}: key {kid} is not a trusted key; it cannot sign as {role}")
    keyring.require_role(kid, role, what)
