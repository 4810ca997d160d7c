"""`secmlops model sign | verify`: release a model as the trainer, then refuse it once anything
changes; refuse to sign with a key of another role, or with a gate record that is not a passed
one for these weights."""

import contextlib
import json
import shutil

import pytest
from typer.testing import CliRunner

from secmlops import models
from secmlops.audit import verify_audit_log
from secmlops.cli import EXIT_USER_ERROR, app
from secmlops.data.manifest import sign_dataset
from secmlops.errors import GateFailed
from secmlops.evaluation.gate import run_gate
from secmlops.supplychain.provenance import GATE_RECORD_FILE, PROVENANCE_FILE

from ..evaluation.test_gate import write_policy, write_report
from ..evaluation.test_gate_checks import passing_report

runner = CliRunner()


@pytest.fixture
def deployment(tmp_path, pki):
    """The environment of a deployment: the four role keys trusted, a policy whose roles pin
    them, and no private key set (each test passes the one it holds)."""
    policy = write_policy(tmp_path / "policy.yaml", roles=pki.roles)
    return {
        "SECMLOPS_WORKDIR": str(tmp_path / "work"),  # its default audit log goes there
        "SECMLOPS_AUDIT_LOG": None,
        "SECMLOPS_POLICY": str(policy),
        "SECMLOPS_TRUSTED_KEYS": pki.trusted_keys,
        "SECMLOPS_KEY_PASSPHRASE": None,
        **{
            f"SECMLOPS_{role}_KEY": None
            for role in ("TRAINER", "TRAINER_OPENSSF", "GATE", "APPROVER")
        },
    }


@pytest.fixture
def model_dir(tmp_path):
    out = tmp_path / "model"
    models.save(
        models.build("compact_centernet", input_size=(64, 64), widths=(8, 8, 8, 8), neck_width=8),
        out,
    )
    return out


def run(env, *args):
    return runner.invoke(app, [str(a) for a in args], env=env)


def flat(result):
    """The output on one line (the console wraps long lines)."""
    return " ".join(result.output.split())


def gate_record(tmp_path, model_dir, key, **attacks):
    """A gate record signed with `key` for the model's weights (failed when an attack's mAP in
    `attacks` is below the policy's floor)."""
    report = passing_report(**attacks)
    report["model"]["weights_sha256"] = models.read_card(model_dir).weights_sha256
    path = write_report(tmp_path / "eval" / "robustness.json", report)
    record = tmp_path / "eval" / "gate-record.json"
    with contextlib.suppress(GateFailed):  # a failed record is written all the same
        run_gate(path, tmp_path / "policy.yaml", signing_key=key,
                 audit_log=tmp_path / "gate-audit.jsonl", record_path=record)  # fmt: skip
    return record


def test_sign_then_verify_then_refuse_a_tampered_card(tiny_scenes, tmp_path, pki, deployment,
                                                      model_dir):  # fmt: skip
    data = tmp_path / "data"
    shutil.copytree(tiny_scenes, data)
    digest = sign_dataset(data, pki["data_owner"].private)
    audit = tmp_path / "audit.jsonl"

    signed = run(deployment, "model", "sign", "--model", model_dir, "--key",
                 pki["trainer"].private, "--data", data, "--dvc-revision", "data/street/v1",
                 "--audit-log", audit)  # fmt: skip
    assert signed.exit_code == 0, signed.output
    assert f"key {pki['trainer'].id}" in flat(signed)
    verified = run(deployment, "model", "verify", "--model", model_dir, "--audit-log", audit)
    assert verified.exit_code == 0, verified.output
    assert f"data {digest}" in flat(verified)
    assert f"signed by {pki['trainer'].id}" in flat(verified)

    card = json.loads((model_dir / "model.json").read_text())
    card["metrics"] = {"test": {"mAP50": 0.99}}  # an inflated claim
    (model_dir / "model.json").write_text(json.dumps(card))
    refused = run(deployment, "model", "verify", "--model", model_dir, "--audit-log", audit)
    assert refused.exit_code == EXIT_USER_ERROR
    assert "model.json: changed since it was signed" in flat(refused)
    decisions = [(e["action"], e["decision"]) for e in map(json.loads, audit.open())]
    assert decisions == [("sign_model", "info"), ("verify_model", "pass"), ("verify_model", "fail")]
    verify_audit_log(audit)


def test_sign_refuses_data_signed_by_an_untrusted_key(tiny_scenes, tmp_path, pki, deployment,
                                                      model_dir):  # fmt: skip
    data = tmp_path / "data"
    shutil.copytree(tiny_scenes, data)
    sign_dataset(data, pki["rogue"].private)
    result = run(deployment, "model", "sign", "--model", model_dir, "--key",
                 pki["trainer"].private, "--data", data)  # fmt: skip
    assert result.exit_code == EXIT_USER_ERROR
    assert f"untrusted key {pki['rogue'].id}" in flat(result)
    assert not (model_dir / PROVENANCE_FILE).exists()


@pytest.mark.parametrize(
    ("role", "held"),
    [("gate", "a gate key"), ("data_owner", "a data_owner key"), ("approver", "an approver key")],
)
def test_sign_refuses_a_key_of_another_role(pki, deployment, model_dir, role, held):
    # The attacker holds one trusted key, of another role (e.g. the gate's).
    result = run(deployment, "model", "sign", "--model", model_dir, "--key", pki[role].private)
    assert result.exit_code == EXIT_USER_ERROR, result.output
    expected = f"the model provenance: signed by {pki[role].id}, {held}; only a trainer key"
    assert expected in flat(result)
    assert not (model_dir / PROVENANCE_FILE).exists()


def test_sign_refuses_a_key_no_policy_trusts(pki, deployment, model_dir):
    result = run(deployment, "model", "sign", "--model", model_dir, "--key", pki["rogue"].private)
    assert result.exit_code == EXIT_USER_ERROR, result.output
    assert f"key {pki['rogue'].id} is not a trusted key; it cannot sign as trainer" in flat(result)
    assert not (model_dir / PROVENANCE_FILE).exists()


def test_the_trainer_key_comes_from_its_own_setting(pki, deployment, model_dir):
    # The gate's key in the environment is not the trainer's: it is not picked up.
    result = run({**deployment, "SECMLOPS_GATE_KEY": str(pki["gate"].private)},
                 "model", "sign", "--model", model_dir)  # fmt: skip
    assert result.exit_code == EXIT_USER_ERROR
    assert "no trainer key" in flat(result) and "SECMLOPS_TRAINER_KEY" in flat(result)
    assert not (model_dir / PROVENANCE_FILE).exists()
    signed = run({**deployment, "SECMLOPS_TRAINER_KEY": str(pki["trainer"].private)},
                 "model", "sign", "--model", model_dir)  # fmt: skip
    assert signed.exit_code == 0, signed.output
    assert (model_dir / PROVENANCE_FILE).is_file()


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        ("failed", "the model failed the robustness gate"),
        ("other weights", "the gate record is for other weights"),
        ("signed by the data owner", "a data_owner key; only a gate key may sign it"),
    ],
)
def test_sign_refuses_a_gate_record_that_is_not_a_pass_for_these_weights(
    tmp_path, pki, deployment, model_dir, record, expected
):
    if record == "failed":
        path = gate_record(tmp_path, model_dir, pki["gate"].key, pgd_linf_4=0.01)
    elif record == "other weights":
        path = gate_record(tmp_path, model_dir, pki["gate"].key)
        other = tmp_path / "other-model"
        models.save(models.build("compact_centernet", input_size=(64, 64)), other)
        model_dir = other
    else:  # the attacker holds the data owner's key and signs a passing record with it
        path = gate_record(tmp_path, model_dir, pki["data_owner"].key)
    result = run(deployment, "model", "sign", "--model", model_dir, "--key",
                 pki["trainer"].private, "--gate-record", path)  # fmt: skip
    assert result.exit_code == EXIT_USER_ERROR, result.output
    assert expected in flat(result)
    assert not (model_dir / PROVENANCE_FILE).exists()  # nothing signed
    assert not (model_dir / GATE_RECORD_FILE).exists()


def test_sign_with_a_passed_gate_record_signs_it_in(tmp_path, pki, deployment, model_dir):
    path = gate_record(tmp_path, model_dir, pki["gate"].key)
    result = run(deployment, "model", "sign", "--model", model_dir, "--key",
                 pki["trainer"].private, "--gate-record", path)  # fmt: skip
    assert result.exit_code == 0, result.output
    verified = run(deployment, "model", "verify", "--model", model_dir)
    assert verified.exit_code == 0, verified.output
    assert "gate record present" in flat(verified)
    assert (model_dir / GATE_RECORD_FILE).read_bytes() == path.read_bytes()


def test_sign_with_the_openssf_key_writes_a_bundle_the_upstream_tool_verifies(
    deployment, model_dir, pki, tmp_path
):
    from .test_openssf import upstream_cli

    made = run(deployment, "keys", "generate", "--name", "trainer-openssf", "--openssf",
               "--out", tmp_path / "keys")  # fmt: skip
    assert made.exit_code == 0, made.output
    bundle_key = str(tmp_path / "keys" / "trainer-openssf.key")
    signed = run(
        {**deployment, "SECMLOPS_TRAINER_OPENSSF_KEY": bundle_key},
        "model", "sign", "--model", model_dir, "--key", pki["trainer"].private,
    )  # fmt: skip
    assert signed.exit_code == 0, signed.output
    assert "and an OpenSSF bundle (model.sig)" in flat(signed)
    assert upstream_cli(model_dir, tmp_path / "keys" / "trainer-openssf.pub").returncode == 0
    # A key that is not ECDSA P-256 (the trainer's Ed25519 key) is refused before signing.
    refused = run(deployment, "model", "sign", "--model", model_dir, "--key",
                  pki["trainer"].private, "--openssf-key", pki["trainer"].private)  # fmt: skip
    assert refused.exit_code == EXIT_USER_ERROR and "not an ECDSA P-256" in flat(refused)
