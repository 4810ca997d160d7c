"""Our DSSE envelopes are the standard format: the reference implementation (securesystemslib)
verifies what we sign (manifests, provenance, gate records, alias moves all use this code), and
we verify what it signs; a changed byte fails both."""

from __future__ import annotations

import base64
import copy

import pytest
from securesystemslib.dsse import Envelope
from securesystemslib.exceptions import VerificationError
from securesystemslib.signer import CryptoSigner, SSlibKey

from secmlops.errors import IntegrityError
from secmlops.supplychain.dsse import pae, sign_envelope, verify_envelope
from secmlops.supplychain.keys import Keyring, key_id

TYPE = "application/vnd.in-toto+json"
PAYLOAD = b'{"_type":"https://in-toto.io/Statement/v1"}'


def sslib_key(key) -> SSlibKey:
    """The public key as securesystemslib names it: under our key id."""
    return SSlibKey.from_crypto(key.public_key(), keyid=key_id(key.public_key()))


def test_securesystemslib_verifies_our_envelope_and_refuses_a_changed_byte(pki):
    key = pki["gate"].key
    ours = sign_envelope(PAYLOAD, TYPE, key)
    envelope = Envelope.from_dict(copy.deepcopy(ours))  # from_dict consumes its argument
    assert envelope.pae() == pae(TYPE, PAYLOAD)
    assert list(envelope.verify([sslib_key(key)], threshold=1)) == [key_id(key.public_key())]
    tampered = {**ours, "payload": base64.b64encode(PAYLOAD.replace(b"v1", b"v2")).decode()}
    with pytest.raises(VerificationError):
        Envelope.from_dict(tampered).verify([sslib_key(key)], threshold=1)


def test_we_verify_an_envelope_securesystemslib_signed(pki):
    key = pki["gate"].key
    envelope = Envelope(payload=PAYLOAD, payload_type=TYPE, signatures={})
    envelope.sign(CryptoSigner(key, sslib_key(key)))
    ring = Keyring([key.public_key()]).with_roles({"gate": [key_id(key.public_key())]})
    assert verify_envelope(envelope.to_dict(), ring, TYPE, role="gate") == PAYLOAD
    changed = envelope.to_dict()
    changed["payloadType"] = "application/vnd.other+json"
    with pytest.raises(IntegrityError, match="wrong payload type"):
        verify_envelope(changed, ring, TYPE, role="gate")
