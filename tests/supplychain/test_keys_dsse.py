"""Ed25519 keys, the trusted keyring, and DSSE envelopes: round trips and every refusal."""

from __future__ import annotations

import base64
import copy
import os
import re
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from secmlops.errors import DataError, IntegrityError
from secmlops.supplychain.dsse import (
    envelope_from_bytes,
    envelope_to_bytes,
    pae,
    sign_envelope,
    verify_envelope,
    verify_envelope_signer,
)
from secmlops.supplychain.keys import (
    Keyring,
    generate_keypair,
    key_id,
    load_private_key,
    load_public_key,
)

TYPE = "application/vnd.secmlops.test+json"


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    return generate_keypair(tmp_path / "keys", "signer")


def write_ec_public_key(path: Path) -> Path:
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    path.write_bytes(
        key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return path


# --- keys ---------------------------------------------------------------------------------


def test_generate_keypair_writes_pem_files_private_one_owner_only(keys: tuple[Path, Path]) -> None:
    private_path, public_path = keys
    assert private_path.name == "signer.key" and public_path.name == "signer.pub"
    assert stat.S_IMODE(private_path.stat().st_mode) == 0o600
    assert b"BEGIN PRIVATE KEY" in private_path.read_bytes()
    assert b"BEGIN PUBLIC KEY" in public_path.read_bytes()
    assert not [p for p in private_path.parent.iterdir() if p.name.startswith(".")]


def test_key_id_is_stable_and_shared_by_both_halves(keys: tuple[Path, Path]) -> None:
    private_path, public_path = keys
    kid = key_id(load_public_key(public_path))
    assert re.fullmatch(r"ed25519:[0-9a-f]{32}", kid)
    assert key_id(load_private_key(private_path).public_key()) == kid


def test_generate_keypair_refuses_to_overwrite(keys: tuple[Path, Path], tmp_path: Path) -> None:
    private_path, _ = keys
    before = private_path.read_bytes()
    with pytest.raises(DataError, match=r"signer\.key: already exists"):
        generate_keypair(tmp_path / "keys", "signer")
    assert private_path.read_bytes() == before


def test_generate_keypair_refuses_when_only_the_public_half_exists(tmp_path: Path) -> None:
    (tmp_path / "ci.pub").write_text("placeholder")
    with pytest.raises(DataError, match=r"ci\.pub: already exists"):
        generate_keypair(tmp_path, "ci")
    assert not (tmp_path / "ci.key").exists()


def test_passphrase_encrypts_the_private_key(tmp_path: Path) -> None:
    private_path, public_path = generate_keypair(tmp_path, "enc", passphrase="correct horse")
    assert b"ENCRYPTED PRIVATE KEY" in private_path.read_bytes()
    loaded = load_private_key(private_path, "correct horse")
    assert key_id(loaded.public_key()) == key_id(load_public_key(public_path))

    with pytest.raises(DataError, match="wrong passphrase"):
        load_private_key(private_path, passphrase="wrong")
    with pytest.raises(
        DataError, match=r"enc\.key: private key is encrypted; set its passphrase in SECMLOPS_KEY"
    ):
        load_private_key(private_path)


def test_the_settings_passphrase_decrypts_the_signing_key(tmp_path: Path) -> None:
    from secmlops.settings import Settings

    private_path, public_path = generate_keypair(tmp_path, "enc", passphrase="correct horse")
    env = {"SECMLOPS_GATE_KEY": str(private_path), "SECMLOPS_KEY_PASSPHRASE": "correct horse"}
    loaded = Settings.from_env(env).private_key("gate")
    assert key_id(loaded.public_key()) == key_id(load_public_key(public_path))
    with pytest.raises(DataError, match="no trainer key: set SECMLOPS_TRAINER_KEY"):
        Settings.from_env(env).private_key("trainer")


def test_unencrypted_key_loads_with_a_passphrase_set(keys: tuple[Path, Path]) -> None:
    load_private_key(keys[0], "unused")


def test_key_loading_errors_name_the_file(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    with pytest.raises(DataError, match=r"nope\.key: key file not found"):
        load_private_key(tmp_path / "nope.key")
    garbage = tmp_path / "garbage.pub"
    garbage.write_text("hello")
    with pytest.raises(DataError, match=r"garbage\.pub: no PEM public key"):
        load_public_key(garbage)
    ec_pub = write_ec_public_key(tmp_path / "ec.pub")
    with pytest.raises(IntegrityError, match=r"ec\.pub: not an Ed25519 public key"):
        load_public_key(ec_pub)
    ec_key = tmp_path / "ec.key"
    ec_key.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(IntegrityError, match=r"ec\.key: not an Ed25519 private key"):
        load_private_key(ec_key)


# --- keyring ------------------------------------------------------------------------------


def test_keyring_from_file_concatenated_file_and_folder(tmp_path: Path) -> None:
    pubs = [generate_keypair(tmp_path / "dir", name)[1] for name in ("a", "b", "c")]
    ids = {key_id(load_public_key(p)) for p in pubs}

    single = Keyring.from_paths([pubs[0]])
    assert single.ids == (key_id(load_public_key(pubs[0])),)
    assert single.get(single.ids[0]) is not None and single.get("ed25519:nope") is None

    bundle = tmp_path / "trusted.pem"
    bundle.write_bytes(b"".join(p.read_bytes() for p in pubs))
    assert set(Keyring.from_paths([bundle]).ids) == ids
    assert set(Keyring.from_paths([tmp_path / "dir"]).ids) == ids


def test_keyring_refuses_private_keys_empty_folders_and_other_algorithms(
    tmp_path: Path, keys: tuple[Path, Path]
) -> None:
    with pytest.raises(DataError, match=r"signer\.key: contains a private key"):
        Keyring.from_paths([keys[0]])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty: no \*\.pub"):
        Keyring.from_paths([tmp_path / "empty"])
    with pytest.raises(IntegrityError, match=r"ec\.pub: not an Ed25519"):
        Keyring.from_paths([write_ec_public_key(tmp_path / "ec.pub")])
    with pytest.raises(DataError, match=r"missing\.pub: key file not found"):
        Keyring.from_paths([tmp_path / "missing.pub"])


def test_keyring_from_a_setting_of_pem_text_or_paths(tmp_path: Path) -> None:
    from secmlops.settings import Settings

    _, pub_a = generate_keypair(tmp_path, "a")
    _, pub_b = generate_keypair(tmp_path / "other", "b")
    want = {key_id(load_public_key(p)) for p in (pub_a, pub_b)}

    assert set(Keyring.from_setting(pub_a.read_text() + pub_b.read_text()).ids) == want
    paths = os.pathsep.join([str(pub_a), str(tmp_path / "other")])
    assert set(Keyring.from_setting(paths).ids) == want
    assert set(Settings.from_env({"SECMLOPS_TRUSTED_KEYS": paths}).keyring().ids) == want
    with pytest.raises(DataError, match="no trusted keys: set SECMLOPS_TRUSTED_KEYS"):
        Settings.from_env({}).keyring()


# --- DSSE ---------------------------------------------------------------------------------


@pytest.fixture
def signer(keys: tuple[Path, Path]):
    return load_private_key(keys[0])


@pytest.fixture
def ring(keys: tuple[Path, Path]) -> Keyring:
    return Keyring.from_paths([keys[1]])


def test_pae_matches_the_spec_example() -> None:
    assert (
        pae("http://example.com/HelloWorld", b"hello world")
        == b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    )


def test_round_trip_through_a_file(signer, ring: Keyring) -> None:
    envelope = sign_envelope(b'{"a": 1}', TYPE, signer)
    parsed = envelope_from_bytes(envelope_to_bytes(envelope))
    assert verify_envelope(parsed, ring, TYPE, role=None) == b'{"a": 1}'
    verified = verify_envelope_signer(parsed, ring, TYPE, role=None)
    assert verified.key_id == ring.ids[0] and verified.payload_type == TYPE


def test_wrong_payload_type_is_refused(signer, ring: Keyring) -> None:
    envelope = sign_envelope(b"x", TYPE, signer)
    with pytest.raises(IntegrityError, match="wrong payload type"):
        verify_envelope(envelope, ring, "application/vnd.other+json", role=None)
    # Relabelling the type without re-signing breaks the signature (the type is authenticated).
    envelope["payloadType"] = "application/vnd.other+json"
    with pytest.raises(IntegrityError, match="bad signature"):
        verify_envelope(envelope, ring, "application/vnd.other+json", role=None)


def test_no_signatures_is_refused(signer, ring: Keyring) -> None:
    envelope = sign_envelope(b"x", TYPE, signer)
    envelope["signatures"] = []
    with pytest.raises(IntegrityError, match="no signatures"):
        verify_envelope(envelope, ring, TYPE, role=None)


def test_untrusted_signer_is_named(tmp_path: Path, ring: Keyring) -> None:
    attacker_path, _ = generate_keypair(tmp_path / "attacker", "evil")
    attacker = load_private_key(attacker_path)
    envelope = sign_envelope(b"x", TYPE, attacker)
    with pytest.raises(IntegrityError, match=f"untrusted key {key_id(attacker.public_key())}"):
        verify_envelope(envelope, ring, TYPE, role=None)


def test_altered_payload_or_signature_is_a_bad_signature(signer, ring: Keyring) -> None:
    envelope = sign_envelope(b"pay me 10", TYPE, signer)
    altered = copy.deepcopy(envelope)
    altered["payload"] = base64.b64encode(b"pay me 99").decode()
    with pytest.raises(IntegrityError, match=f"bad signature by trusted key {ring.ids[0]}"):
        verify_envelope(altered, ring, TYPE, role=None)
    sig = bytearray(base64.b64decode(envelope["signatures"][0]["sig"]))
    sig[0] ^= 1
    envelope["signatures"][0]["sig"] = base64.b64encode(bytes(sig)).decode()
    with pytest.raises(IntegrityError, match="bad signature"):
        verify_envelope(envelope, ring, TYPE, role=None)


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda e: [1, 2], "expected a JSON object"),
        (lambda e: {k: v for k, v in e.items() if k != "payload"}, "missing field 'payload'"),
        (lambda e: {**e, "payload": "not base64!"}, "payload is not valid base64"),
        (lambda e: {**e, "signatures": "nope"}, "'signatures' must be a list"),
        (lambda e: {**e, "signatures": [{"keyid": "k"}]}, r"signatures\[0\] needs a base64"),
        (lambda e: {**e, "payloadType": 3}, "'payloadType' must be a string"),
    ],
)
def test_malformed_envelopes_are_refused(signer, ring: Keyring, mutate, reason: str) -> None:
    envelope = mutate(sign_envelope(b"x", TYPE, signer))
    with pytest.raises(IntegrityError, match=f"malformed envelope.*{reason}"):
        verify_envelope(envelope, ring, TYPE, role=None)


def test_keyid_is_only_a_hint(signer, ring: Keyring, tmp_path: Path) -> None:
    envelope = sign_envelope(b"x", TYPE, signer)
    # URL-safe base64 without padding is allowed by the spec.
    sig = envelope["signatures"][0]["sig"]
    envelope["signatures"][0]["sig"] = sig.replace("+", "-").replace("/", "_").rstrip("=")
    # A missing or wrong key id still verifies against the trusted key that really signed.
    envelope["signatures"][0]["keyid"] = ""
    assert verify_envelope_signer(envelope, ring, TYPE, role=None).key_id == ring.ids[0]
    envelope["signatures"][0]["keyid"] = "ed25519:" + "0" * 32
    assert verify_envelope_signer(envelope, ring, TYPE, role=None).key_id == ring.ids[0]
    # A signature claiming a trusted key id but made with another key is a bad signature.
    other_path, _ = generate_keypair(tmp_path / "other", "other")
    forged = sign_envelope(b"x", TYPE, load_private_key(other_path))
    forged["signatures"][0]["keyid"] = ring.ids[0]
    with pytest.raises(IntegrityError, match="bad signature"):
        verify_envelope(forged, ring, TYPE, role=None)


def test_envelope_file_that_is_not_json(tmp_path: Path) -> None:
    with pytest.raises(IntegrityError, match=r"x\.sig: malformed envelope, not valid JSON"):
        envelope_from_bytes(b"{oops", "x.sig")


# --- roles ---------------------------------------------------------------------------------


def test_a_key_of_another_role_is_refused_naming_both_roles(signer, ring: Keyring) -> None:
    envelope = sign_envelope(b"x", TYPE, signer)
    as_data_owner = ring.with_roles({"data_owner": ring.ids})
    assert verify_envelope(envelope, as_data_owner, TYPE, role="data_owner") == b"x"
    with pytest.raises(IntegrityError, match="a data_owner key; only a gate key may sign it"):
        verify_envelope(envelope, as_data_owner, TYPE, role="gate")


def test_a_key_without_a_role_and_a_keyring_without_roles_are_refused(
    signer, ring: Keyring, tmp_path: Path
) -> None:
    envelope = sign_envelope(b"x", TYPE, signer)
    with pytest.raises(IntegrityError, match="no key roles configured"):
        verify_envelope(envelope, ring, TYPE, role="trainer")  # fail closed
    _, other = generate_keypair(tmp_path / "other", "other")
    others = Keyring.from_paths([other]).ids
    both = Keyring.from_paths([other, *ring.sources.values()]).with_roles({"trainer": others})
    with pytest.raises(IntegrityError, match="holds no role in the policy"):
        verify_envelope(envelope, both, TYPE, role="trainer")


def test_a_right_role_signature_beside_a_wrong_role_one_verifies(
    signer, ring: Keyring, tmp_path: Path
) -> None:
    other_path, other_pub = generate_keypair(tmp_path / "other", "other")
    envelope = sign_envelope(b"x", TYPE, load_private_key(other_path))
    envelope["signatures"] += sign_envelope(b"x", TYPE, signer)["signatures"]
    both = Keyring.from_paths([other_pub, *ring.sources.values()])
    both = both.with_roles({"gate": Keyring.from_paths([other_pub]).ids, "approver": ring.ids})
    assert verify_envelope_signer(envelope, both, TYPE, role="approver").key_id == ring.ids[0]


def test_with_roles_refuses_unknown_roles_and_shared_keys(ring: Keyring) -> None:
    with pytest.raises(DataError, match="unknown role 'admin'"):
        ring.with_roles({"admin": ring.ids})
    with pytest.raises(DataError, match="listed as trainer and as gate"):
        ring.with_roles({"trainer": ring.ids, "gate": ring.ids})
