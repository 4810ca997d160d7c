"""Dead Simple Signing Envelope (DSSE v1): sign and verify any payload with Ed25519.

Threat: a signed artifact (data manifest, model provenance statement) is replaced, edited, or
presented as a different kind of document than the one that was signed. DSSE signs the
Pre-Authentication Encoding of (payload type, payload), so neither the bytes nor their declared
meaning can change without breaking the signature, and the verifier never parses a payload
before its signature checks out.

Spec: https://github.com/secure-systems-lab/dsse (protocol.md, envelope.md)::

    PAE(type, body) = "DSSEv1" SP LEN(type) SP type SP LEN(body) SP body
    envelope = {"payloadType": type, "payload": b64(body), "signatures": [{"keyid", "sig"}]}

`keyid` is an unauthenticated hint: it only narrows which trusted key is tried first; the
signer reported back is always the key that actually verified.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from secmlops.errors import IntegrityError
from secmlops.supplychain.keys import Keyring, key_id


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 Pre-Authentication Encoding: the exact bytes that get signed.

    Lengths are decimal byte counts, so no choice of type or body can shift the boundary
    between them (the ambiguity that breaks naive "type + body" signing).
    """
    type_bytes = payload_type.encode("utf-8")
    return b"DSSEv1 %d %b %d %b" % (len(type_bytes), type_bytes, len(payload), payload)


def sign_envelope(payload: bytes, payload_type: str, private_key: Ed25519PrivateKey) -> dict:
    """Sign `payload` as `payload_type` and wrap it in a DSSE JSON envelope.

    Args:
        payload: the serialized document (signed byte for byte).
        payload_type: a media type naming encoding and schema, e.g.
            "application/vnd.secmlops.manifest+json".
        private_key: the Ed25519 signing key.

    Returns:
        {"payloadType", "payload": base64, "signatures": [{"keyid", "sig": base64}]}.
    """
    signature = private_key.sign(pae(payload_type, payload))
    return {
        "payloadType": payload_type,
        "payload": base64.b64encode(payload).decode("ascii"),
        "signatures": [
            {
                "keyid": key_id(private_key.public_key()),
                "sig": base64.b64encode(signature).decode("ascii"),
            }
        ],
    }


@dataclass(frozen=True)
class VerifiedPayload:
    """A payload whose signature verified, and the trusted key that signed it."""

    payload: bytes
    payload_type: str
    key_id: str


def verify_envelope(
    envelope: Any, keyring: Keyring, expected_type: str, *, role: str | tuple[str, ...] | None
) -> bytes:
    """Check a DSSE envelope and return its payload.

    Args:
        envelope: the parsed JSON envelope.
        keyring: the trusted keys (with their roles, `Keyring.with_roles`).
        expected_type: the payload type the caller is about to parse.
        role: the role whose keys sign this kind of payload (`keys.ROLES`), or several roles
            that may; None only for a payload no role owns (a verifier's own test documents).

    Returns:
        The payload bytes (only after a trusted key's signature verified).

    Raises:
        IntegrityError: malformed envelope, wrong payload type, no signatures, signer key not
            trusted (naming its key id), bad signature, or a signer of another role.
    """
    return verify_envelope_signer(envelope, keyring, expected_type, role=role).payload


def verify_envelope_signer(
    envelope: Any, keyring: Keyring, expected_type: str, *,
    role: str | tuple[str, ...] | None, what: str | None = None,
) -> VerifiedPayload:  # fmt: skip
    """As `verify_envelope`, also reporting which trusted key signed.

    `what` names the document in a role refusal (default: its payload type).

    One valid signature by a trusted key of `role` suffices; other signatures (for example by
    keys this verifier does not know) are ignored, as the envelope spec allows. A valid signature
    by a trusted key of another role is refused, naming that role.

    Raises:
        IntegrityError: as `verify_envelope`.
    """
    payload_type, payload, signatures = _parse(envelope)
    if payload_type != expected_type:
        raise IntegrityError(
            f"wrong payload type {payload_type!r} (expected {expected_type!r}): "
            "refusing to interpret this document as another kind"
        )
    if not signatures:
        raise IntegrityError("envelope has no signatures")
    if len(keyring) == 0:
        raise IntegrityError("no trusted keys configured: cannot verify any signature")

    message = pae(payload_type, payload)
    untrusted: list[str] = []
    failed: list[str] = []
    wrong_role: list[IntegrityError] = []
    for claimed, sig in signatures:
        trusted = keyring.get(claimed)
        # keyid is a hint only: with no hint, or an unknown one, every trusted key is tried.
        candidates = [(claimed, trusted)] if trusted is not None else list(keyring)
        for kid, public_key in candidates:
            try:
                public_key.verify(sig, message)
            except InvalidSignature:
                continue
            try:
                if role is not None:
                    keyring.require_role(kid, role, what or f"a {payload_type} document")
            except IntegrityError as exc:
                wrong_role.append(exc)  # another signature may still be by the right role
                break
            return VerifiedPayload(payload=payload, payload_type=payload_type, key_id=kid)
        else:
            (failed if trusted is not None else untrusted).append(claimed or "<no keyid>")

    if wrong_role:
        raise wrong_role[0]
    if failed:
        raise IntegrityError(
            f"bad signature by trusted key {failed[0]}: the payload or the signature was "
            "altered after signing"
        )
    trusted_ids = ", ".join(keyring.ids)
    raise IntegrityError(
        f"untrusted key {', '.join(untrusted)}: no signature by a trusted key "
        f"(trusted: {trusted_ids})"
    )


def _parse(envelope: Any) -> tuple[str, bytes, list[tuple[str, bytes]]]:
    """Validate the envelope's shape and decode its base64 fields."""
    if not isinstance(envelope, dict):
        raise IntegrityError(f"malformed envelope: expected a JSON object, got {_kind(envelope)}")
    for field in ("payloadType", "payload", "signatures"):
        if field not in envelope:
            raise IntegrityError(f"malformed envelope: missing field {field!r}")
    payload_type, payload_b64, signatures = (
        envelope["payloadType"],
        envelope["payload"],
        envelope["signatures"],
    )
    if not isinstance(payload_type, str):
        raise IntegrityError("malformed envelope: 'payloadType' must be a string")
    if not isinstance(payload_b64, str):
        raise IntegrityError("malformed envelope: 'payload' must be a base64 string")
    if not isinstance(signatures, list):
        raise IntegrityError("malformed envelope: 'signatures' must be a list")
    payload = _b64decode(payload_b64, "payload")
    decoded: list[tuple[str, bytes]] = []
    for index, entry in enumerate(signatures):
        where = f"signatures[{index}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("sig"), str):
            raise IntegrityError(f"malformed envelope: {where} needs a base64 'sig' string")
        claimed = entry.get("keyid") or ""
        if not isinstance(claimed, str):
            raise IntegrityError(f"malformed envelope: {where}.keyid must be a string")
        decoded.append((claimed, _b64decode(entry["sig"], f"{where}.sig")))
    return payload_type, payload, decoded


def _b64decode(text: str, field: str) -> bytes:
    # The envelope spec allows standard and URL-safe alphabets, padded or not.
    normalized = text.strip().replace("-", "+").replace("_", "/")
    normalized += "=" * (-len(normalized) % 4)
    try:
        return base64.b64decode(normalized, validate=True)
    except (binascii.Error, ValueError):
        raise IntegrityError(f"malformed envelope: {field} is not valid base64") from None


def _kind(value: Any) -> str:
    return type(value).__name__


def envelope_to_bytes(envelope: dict) -> bytes:
    """Serialize an envelope for a `.sig` file (indented, key-sorted JSON, final newline)."""
    return (json.dumps(envelope, indent=2, sort_keys=True) + "\n").encode()


def envelope_from_bytes(data: bytes, source: str = "envelope") -> dict:
    """Parse an envelope file's bytes.

    Raises:
        IntegrityError: not UTF-8 JSON, or not a JSON object (message names `source`).
    """
    try:
        envelope = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise IntegrityError(f"{source}: malformed envelope, not valid JSON ({exc})") from None
    if not isinstance(envelope, dict):
        raise IntegrityError(f"{source}: malformed envelope, expected a JSON object")
    return envelope
