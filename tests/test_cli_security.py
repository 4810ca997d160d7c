"""The security commands of the CLI: keys, sign/verify/validate with audit, policy overrides."""

import json
import shutil

from typer.testing import CliRunner

from secmlops.cli import EXIT_USER_ERROR, app

from .conftest import REPO_ROOT

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_sign_verify_validate_round_trip_is_audited(tiny_scenes, tmp_path):
    data, audit = tmp_path / "data", tmp_path / "audit.jsonl"
    shutil.copytree(tiny_scenes, data)
    assert run("keys", "generate", "--name", "owner", "--out", tmp_path / "keys").exit_code == 0
    pub = tmp_path / "keys" / "owner.pub"
    key_id = run("keys", "id", pub).output.strip()
    assert key_id.startswith("ed25519:")
    assert run("data", "sign", data, "--key", tmp_path / "keys" / "owner.key",
               "--audit-log", audit).exit_code == 0  # fmt: skip
    policy = tmp_path / "policy.yaml"
    result = run("policy", "override", REPO_ROOT / "policy.yaml", "--set",
                 f"roles.data_owner=[{key_id}]", "--reason", "test key", "--out", policy,
                 "--audit-log", audit)  # fmt: skip
    assert result.exit_code == 0, result.output
    verify = run("data", "verify", data, "--trusted-keys", pub, "--policy", policy,
                 "--audit-log", audit)  # fmt: skip
    assert verify.exit_code == 0, verify.output
    assert run("data", "validate", data, "--policy", policy, "--audit-log", audit).exit_code == 0

    (data / "splits.json").write_text(json.dumps({"train": [1], "val": [], "test": []}))
    tampered = run("data", "verify", data, "--trusted-keys", pub, "--policy", policy,
                   "--audit-log", audit)  # fmt: skip
    assert tampered.exit_code == EXIT_USER_ERROR
    assert "splits.json" in tampered.output and "changed" in tampered.output

    decisions = [(e["action"], e["decision"]) for e in map(json.loads, audit.open())]
    assert decisions == [
        ("sign_manifest", "info"),
        ("override", "override"),
        ("verify_manifest", "pass"),
        ("validate", "pass"),
        ("verify_manifest", "fail"),
    ]
    assert "5 entries, hash chain intact" in run("audit", "verify", "--audit-log", audit).output


def test_policy_override_without_reason_is_refused(tmp_path):
    change = "data.max_empty_image_ratio=0.5"
    out = tmp_path / "p.yaml"
    result = run("policy", "override", REPO_ROOT / "policy.yaml", "--set", change,
                 "--reason", "  ", "--out", out)  # fmt: skip
    assert result.exit_code == EXIT_USER_ERROR and "written reason" in result.output
    assert not (tmp_path / "p.yaml").exists()


def test_verify_with_the_placeholder_policy_refuses_an_untrusted_signer(tiny_scenes, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_scenes, data)
    run("keys", "generate", "--name", "owner", "--out", tmp_path / "keys")
    run("data", "sign", data, "--key", tmp_path / "keys" / "owner.key", "--audit-log",
        tmp_path / "a.jsonl")  # fmt: skip
    pub, audit = tmp_path / "keys" / "owner.pub", tmp_path / "a.jsonl"
    result = run("data", "verify", data, "--trusted-keys", pub,
                 "--policy", REPO_ROOT / "policy.yaml", "--audit-log", audit)  # fmt: skip
    assert result.exit_code == EXIT_USER_ERROR, result.output
    flat = " ".join(result.output.split())  # the console may wrap long lines
    assert "a key that holds no role in the policy; only a data_owner key may sign it" in flat


def test_data_verify_refuses_a_manifest_signed_by_the_gate_key(tiny_scenes, tmp_path, pki):
    # The attacker holds the gate's key (trusted, of another role) and signs the data with it.
    data, audit = tmp_path / "data", tmp_path / "audit.jsonl"
    shutil.copytree(tiny_scenes, data)
    policy = pki.write_policy(tmp_path / "policy.yaml")
    trusted = [arg for role in ("data_owner", "trainer", "gate", "approver")
               for arg in ("--trusted-keys", pki[role].public)]  # fmt: skip
    signed = run("data", "sign", data, "--key", pki["gate"].private, "--audit-log", audit)
    assert signed.exit_code == 0, signed.output
    refused = run("data", "verify", data, *trusted, "--policy", policy, "--audit-log", audit)
    assert refused.exit_code == EXIT_USER_ERROR, refused.output
    flat = " ".join(refused.output.split())  # the console wraps long lines
    assert f"signed by {pki['gate'].id}, a gate key; only a data_owner key may sign it" in flat
    # The good twin: the data owner signs the same data, and it verifies.
    run("data", "sign", data, "--key", pki["data_owner"].private, "--audit-log", audit)
    verified = run("data", "verify", data, *trusted, "--policy", policy, "--audit-log", audit)
    assert verified.exit_code == 0, verified.output
    assert f"signed by {pki['data_owner'].id}" in " ".join(verified.output.split())
    decisions = [(e["action"], e["decision"]) for e in map(json.loads, audit.open())]
    assert [d for _, d in decisions] == ["info", "fail", "info", "pass"]
    assert {action for action, _ in decisions} == {"sign_manifest", "verify_manifest"}
