"""Signed model provenance: every artifact file under one signature, checked before loading."""

import base64
import json

import pytest
import torch

from secmlops import models
from secmlops.errors import IntegrityError, ModelError
from secmlops.supplychain.provenance import (
    GATE_RECORD_FILE,
    PROVENANCE_FILE,
    load_verified,
    sign_model,
    verify_model,
)


@pytest.fixture
def keys(pki):
    """The trainer's private key, the deployment's keyring (roles bound), a key no one trusts."""
    return pki["trainer"].key, pki.keyring, pki["rogue"].key


@pytest.fixture
def model_dir(tmp_path):
    model = models.build(
        "compact_centernet", input_size=(64, 64), widths=(8, 8, 8, 8), neck_width=8
    )
    out = tmp_path / "model"
    models.save(model, out, training={"epochs": 3, "history": [{"loss": 1.0}]})
    (out / "checkpoints").mkdir()
    (out / "checkpoints" / "state.json").write_text("{}")  # training state: never signed
    return out


def statement(model_dir):
    envelope = json.loads((model_dir / PROVENANCE_FILE).read_text())
    return json.loads(base64.b64decode(envelope["payload"]))


def test_signed_model_verifies_and_loads(keys, model_dir, tmp_path, pki):
    private, trusted, _ = keys
    record = tmp_path / "gate.json"
    record.write_text('{"passed": true}')
    sign_model(model_dir, private, data_manifest_digest="sha256:" + "ab" * 32,
               data_signer="ed25519:" + "cd" * 16, dvc_revision="data/street/v1",
               gate_record=record)  # fmt: skip
    verified = verify_model(model_dir, trusted)
    assert verified.signer == pki["trainer"].id
    assert set(verified.subjects) == {"model.safetensors", "model.json", GATE_RECORD_FILE}
    assert verified.weights_sha256 == models.read_card(model_dir).weights_sha256
    predicate = statement(model_dir)["predicate"]
    assert predicate["data"]["manifest_digest"] == "sha256:" + "ab" * 32
    assert predicate["dvc_revision"] == "data/street/v1"
    assert predicate["gate_record_sha256"] == verified.subjects[GATE_RECORD_FILE]
    assert predicate["training"] == {"epochs": 3}  # the loss history is not provenance
    assert len(predicate["environment"]["lock_sha256"]) == 64
    assert predicate["code"]["git_commit"] is None or len(predicate["code"]["git_commit"]) == 40
    model = load_verified(model_dir, trusted)
    with torch.no_grad():
        assert len(model([torch.rand(3, 64, 64)])) == 1


def test_unsigned_model_is_refused(keys, model_dir):
    with pytest.raises(IntegrityError, match="unsigned model"):
        load_verified(model_dir, keys[1])


def test_signature_by_an_untrusted_key_is_refused(keys, model_dir, pki):
    _, trusted, rogue = keys
    sign_model(model_dir, rogue)
    with pytest.raises(IntegrityError, match=f"untrusted key {pki['rogue'].id}"):
        verify_model(model_dir, trusted)


@pytest.mark.parametrize(
    ("role", "held"),
    [("gate", "a gate key"), ("data_owner", "a data_owner key"), ("approver", "an approver key")],
)
def test_provenance_signed_by_a_key_of_another_role_is_refused(keys, model_dir, pki, role, held):
    # The attacker holds one trusted key, of another role (e.g. the gate's), and signs a model
    # of their choosing with it: it must not pass as a trainer's release.
    _, trusted, _ = keys
    sign_model(model_dir, pki[role].key)
    with pytest.raises(IntegrityError) as info:
        load_verified(model_dir, trusted)
    message = str(info.value)
    assert message.startswith(f"{model_dir / PROVENANCE_FILE} (model provenance): ")
    assert f"signed by {pki[role].id}, {held}; only a trainer key may sign it" in message


def test_a_keyring_without_roles_trusts_no_provenance(keys, model_dir, pki):
    sign_model(model_dir, keys[0])  # the trainer's key, but the verifier binds no roles
    with pytest.raises(IntegrityError, match="no key roles configured"):
        verify_model(model_dir, pki.trusted_keyring())


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        (lambda d: d.joinpath("model.safetensors").write_bytes(
            d.joinpath("model.safetensors").read_bytes()[:-4] + b"\0\0\0\0"),
         "model.safetensors: changed since it was signed"),
        (lambda d: d.joinpath("model.json").write_text(
            d.joinpath("model.json").read_text().replace('"epochs": 3', '"epochs": 4')),
         "model.json: changed since it was signed"),
        (lambda d: d.joinpath("model.json").unlink(), "model.json: signed but missing"),
        (lambda d: d.joinpath("evil.pt").write_bytes(b"\x80\x04cos\nsystem\n."),
         "evil.pt: not signed"),
        (lambda d: (d / "extra").mkdir(), "not a regular file"),
    ],
    ids=["weights", "card", "missing-file", "extra-pickle", "extra-folder"],
)  # fmt: skip
def test_tampering_is_refused_before_loading(keys, model_dir, tamper, message):
    private, trusted, _ = keys
    sign_model(model_dir, private)
    tamper(model_dir)
    with pytest.raises(IntegrityError, match=message):
        load_verified(model_dir, trusted)


def test_edited_provenance_breaks_the_signature(keys, model_dir):
    private, trusted, _ = keys
    sign_model(model_dir, private)
    envelope = json.loads((model_dir / PROVENANCE_FILE).read_text())
    payload = json.loads(base64.b64decode(envelope["payload"]))
    payload["predicate"]["dvc_revision"] = "data/street/v9"
    envelope["payload"] = base64.b64encode(json.dumps(payload).encode()).decode()
    (model_dir / PROVENANCE_FILE).write_text(json.dumps(envelope))
    with pytest.raises(IntegrityError, match="signature"):
        verify_model(model_dir, trusted)


def test_signing_an_incomplete_model_is_refused(keys, model_dir):
    (model_dir / "model.safetensors").unlink()
    with pytest.raises(ModelError, match="weights missing"):
        sign_model(model_dir, keys[0])
    assert not (model_dir / PROVENANCE_FILE).exists()
