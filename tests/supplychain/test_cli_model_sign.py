"""`secmlops model sign | verify`: release a model, then refuse it once anything changes."""

import json

from typer.testing import CliRunner

from secmlops import models
from secmlops.audit import verify_audit_log
from secmlops.cli import EXIT_USER_ERROR, app
from secmlops.supplychain.keys import generate_keypair

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_sign_then_verify_then_refuse_a_tampered_card(tiny_scenes, tmp_path):
    import shutil

    from secmlops.data.manifest import sign_dataset

    key, pub = generate_keypair(tmp_path / "keys", "signer")
    data_key, data_pub = generate_keypair(tmp_path / "keys", "data-owner")
    data = tmp_path / "data"
    shutil.copytree(tiny_scenes, data)
    digest = sign_dataset(data, data_key)
    model_dir = tmp_path / "model"
    model = models.build(
        "compact_centernet", input_size=(64, 64), widths=(8, 8, 8, 8), neck_width=8
    )
    models.save(model, model_dir)
    audit = tmp_path / "audit.jsonl"

    signed = run("model", "sign", "--model", model_dir, "--key", key, "--data", data,
                 "--trusted-keys", data_pub, "--dvc-revision", "data/street/v1",
                 "--audit-log", audit)  # fmt: skip
    assert signed.exit_code == 0, signed.output
    verified = run("model", "verify", "--model", model_dir, "--trusted-keys", pub,
                   "--audit-log", audit)  # fmt: skip
    assert verified.exit_code == 0, verified.output
    assert f"data {digest}" in verified.output

    card = json.loads((model_dir / "model.json").read_text())
    card["metrics"] = {"test": {"mAP50": 0.99}}  # an inflated claim
    (model_dir / "model.json").write_text(json.dumps(card))
    refused = run("model", "verify", "--model", model_dir, "--trusted-keys", pub,
                  "--audit-log", audit)  # fmt: skip
    assert refused.exit_code == EXIT_USER_ERROR
    assert "model.json: changed since it was signed" in refused.output
    decisions = [(e["action"], e["decision"]) for e in map(json.loads, audit.open())]
    assert decisions == [("sign_model", "info"), ("verify_model", "pass"), ("verify_model", "fail")]
    verify_audit_log(audit)


def test_sign_refuses_data_signed_by_an_untrusted_key(tiny_scenes, tmp_path):
    import shutil

    from secmlops.data.manifest import sign_dataset

    key, _ = generate_keypair(tmp_path / "keys", "signer")
    stranger, _ = generate_keypair(tmp_path / "keys", "stranger")
    _, trusted_pub = generate_keypair(tmp_path / "keys", "data-owner")
    data = tmp_path / "data"
    shutil.copytree(tiny_scenes, data)
    sign_dataset(data, stranger)
    model_dir = tmp_path / "model"
    models.save(models.build("compact_centernet", input_size=(64, 64)), model_dir)
    audit = tmp_path / "audit.jsonl"
    result = run("model", "sign", "--model", model_dir, "--key", key, "--data", data,
                 "--trusted-keys", trusted_pub, "--audit-log", audit)  # fmt: skip
    assert result.exit_code == EXIT_USER_ERROR
    assert not (model_dir / "provenance.json").exists()
