"""The data stage end to end: tampering halts it before anything downstream; all audited."""

import json
import shutil

import pytest

from secmlops.audit import verify_audit_log
from secmlops.data.manifest import DatasetIdentity, sign_dataset
from secmlops.errors import IntegrityError
from secmlops.lifecycle import screen_data, validate_data, verify_data
from secmlops.settings import Settings


@pytest.fixture(scope="module")
def signed(tmp_path_factory, tiny_scenes, pki):
    """The tiny set signed by its data owner, and a policy whose roles pin the role keys."""
    root = tmp_path_factory.mktemp("stage")
    data = root / "clean"
    shutil.copytree(tiny_scenes, data)
    sign_dataset(data, pki["data_owner"].private, identity=STREET_V1)
    pki.write_policy(root / "policy.yaml")
    return {"root": root, "data": data, "pub": pki.trusted_keys}


STREET_V1 = DatasetIdentity("street", 1)


def check_data(data, policy, trusted_key, audit):
    """The data DAG's controls in its order: verify -> validate -> screen (reports beside the
    data), with the settings a deployment would give."""
    settings = Settings.from_env({"SECMLOPS_POLICY": str(policy), "SECMLOPS_AUDIT_LOG": str(audit),
                                  "SECMLOPS_TRUSTED_KEYS": trusted_key})  # fmt: skip
    verified = verify_data(settings, {"rev": "data/street/v1", "data_dir": str(data)})
    validate_data(settings, verified)
    screen_data(settings, verified)
    return verified


def first_image(data):
    return sorted((data / "images").iterdir())[0]


def flip_byte(data):
    path = first_image(data)
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    path.write_bytes(bytes(raw))
    return path.name, "content changed"


def edit_box(data):
    # Nudge one box down by a pixel, as an attacker editing a label would.
    annotations = json.loads((data / "annotations.json").read_text())
    annotations["annotations"][0]["bbox"][1] += 1
    (data / "annotations.json").write_text(json.dumps(annotations, indent=2, sort_keys=True))
    return "annotations.json", "changed"


def add_file(data):
    shutil.copy(first_image(data), data / "images" / "zz_extra.jpg")
    return "zz_extra.jpg", "unexpected file"


def remove_file(data):
    path = first_image(data)
    path.unlink()
    return path.name, "missing file"


def edit_manifest(data):
    manifest = json.loads((data / "manifest.json").read_text())
    manifest["files"][0]["size"] += 1
    (data / "manifest.json").write_text(json.dumps(manifest))
    return "manifest", "signature"


def missing_signature(data):
    (data / "manifest.sig").unlink()
    return "manifest.sig", "unsigned"


TAMPERING = [flip_byte, edit_box, add_file, remove_file, edit_manifest, missing_signature]


@pytest.mark.parametrize("tamper", TAMPERING, ids=[t.__name__ for t in TAMPERING])
def test_tampering_halts_the_data_stage_with_file_and_reason(signed, tmp_path, tamper):
    data = tmp_path / "data"
    shutil.copytree(signed["data"], data)
    file_name, reason = tamper(data)
    audit = tmp_path / "audit.jsonl"
    with pytest.raises(IntegrityError) as caught:
        check_data(data, signed["root"] / "policy.yaml", signed["pub"], audit)
    assert file_name in str(caught.value) and reason in str(caught.value)
    # Nothing after verification ran: no validation or screening report exists.
    assert not (tmp_path / "validation.json").exists()
    assert not (tmp_path / "screening.json").exists()
    entries = [json.loads(line) for line in audit.read_text().splitlines()]
    assert [(e["action"], e["decision"]) for e in entries] == [("verify_manifest", "fail")]
    verify_audit_log(audit)


def test_untrusted_signer_halts_the_data_stage(signed, tmp_path, pki):
    data = tmp_path / "data"
    shutil.copytree(signed["data"], data)
    sign_dataset(data, pki["rogue"].private, identity=STREET_V1)
    with pytest.raises(IntegrityError, match="untrusted key"):
        check_data(data, signed["root"] / "policy.yaml", signed["pub"], tmp_path / "audit.jsonl")


def test_data_signed_by_the_gate_key_halts_the_data_stage_naming_the_role(signed, tmp_path, pki):
    # The attacker writes the data and holds one trusted key, the gate's: they poison an image
    # and sign the manifest (as the very version the tag names) with it.
    data = tmp_path / "data"
    shutil.copytree(signed["data"], data)
    flip_byte(data)
    sign_dataset(data, pki["gate"].private, identity=STREET_V1)
    audit = tmp_path / "audit.jsonl"
    with pytest.raises(IntegrityError) as caught:
        check_data(data, signed["root"] / "policy.yaml", signed["pub"], audit)
    assert f"signed by {pki['gate'].id}, a gate key; only a data_owner key may sign it" in str(
        caught.value
    )
    assert not (tmp_path / "validation.json").exists()
    (entry,) = [json.loads(line) for line in audit.read_text().splitlines()]
    assert (entry["action"], entry["decision"]) == ("verify_manifest", "fail")
    assert "a gate key" in json.dumps(entry["details"])


def test_clean_signed_data_passes_every_control_and_is_audited(signed, tmp_path):
    audit = tmp_path / "audit.jsonl"
    result = check_data(signed["data"], signed["root"] / "policy.yaml", signed["pub"], audit)
    assert result["manifest_digest"].startswith("sha256:")
    entries = [json.loads(line) for line in audit.read_text().splitlines()]
    assert [(e["action"], e["decision"]) for e in entries] == [
        ("verify_manifest", "pass"),
        ("validate", "pass"),
        ("screen_poisoning", "pass"),
    ]
    assert verify_audit_log(audit) == 3
    assert json.loads((signed["data"].parent / "validation.json").read_text())
