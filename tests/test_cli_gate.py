"""`secmlops gate`: exit 0 on pass, 1 on a failed threshold, 2 on a user error; always audited."""

import json

import pytest
from typer.testing import CliRunner

from secmlops.audit import verify_audit_log
from secmlops.cli import EXIT_USER_ERROR, app
from secmlops.evaluation.gate import verify_gate_record
from secmlops.supplychain.keys import Keyring, generate_keypair

from .evaluation.test_gate import write_policy, write_report
from .evaluation.test_gate_checks import GATE, WEIGHTS, passing_report

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture
def files(tmp_path, monkeypatch):
    monkeypatch.delenv("SECMLOPS_KEY_PASSPHRASE", raising=False)
    monkeypatch.delenv("SECMLOPS_SIGNING_KEY", raising=False)
    key, pub = generate_keypair(tmp_path / "keys", "gate")
    return {
        "report": write_report(tmp_path / "eval" / "robustness.json", passing_report()),
        "policy": write_policy(tmp_path / "policy.yaml"),
        "key": key,
        "keyring": Keyring.from_paths([pub]),
        "audit": tmp_path / "audit.jsonl",
        "record": tmp_path / "eval" / "gate-record.json",
    }


def gate(files, *extra):
    return run("gate", "--report", files["report"], "--policy", files["policy"],
               "--audit-log", files["audit"], *extra)  # fmt: skip


def decisions(files):
    verify_audit_log(files["audit"])
    return [(e["action"], e["decision"]) for e in map(json.loads, files["audit"].open())]


def test_pass_exits_0_with_a_table_and_a_record_beside_the_report(files):
    result = gate(files, "--key", files["key"])
    assert result.exit_code == 0, result.output
    assert "robustness gate" in result.output and "pgd_linf_4" in result.output
    assert "gate passed" in result.output and "FAIL" not in result.output
    assert verify_gate_record(files["record"], files["keyring"], WEIGHTS)["passed"] is True
    assert decisions(files) == [("robustness_gate", "pass")]


def test_failed_threshold_exits_1_and_is_recorded(files):
    write_report(files["report"], passing_report(pgd_linf_4=0.012))
    result = gate(files, "--key", files["key"])
    assert result.exit_code == 1, result.output
    assert "gate failed: pgd_linf_4 robust mAP@0.5 0.012 < 0.300" in result.output
    assert "FAIL" in result.output and str(files["record"]) in result.output
    assert files["record"].exists()
    assert decisions(files) == [("robustness_gate", "fail")]


def test_signing_key_from_the_environment(files, monkeypatch, tmp_path):
    monkeypatch.setenv("SECMLOPS_SIGNING_KEY", str(files["key"]))
    result = gate(files, "--record", tmp_path / "out.json")
    assert result.exit_code == 0, result.output
    assert verify_gate_record(tmp_path / "out.json", files["keyring"], WEIGHTS)


def test_production_regression_exits_1(files, tmp_path):
    production = write_report(tmp_path / "prod.json", passing_report(patch=0.6))
    result = gate(files, "--key", files["key"], "--production-report", production)
    assert result.exit_code == 1
    assert "patch mAP@0.5 vs production 0.500 < 0.580" in result.output


def test_override_with_reason_is_applied_and_audited(files):
    write_report(files["report"], passing_report(pgd_linf_4=0.25))
    change = "gate.min_robust_map50.pgd_linf_4=0.2"
    result = gate(files, "--key", files["key"], "--override", change, "--reason", "known weak")
    assert result.exit_code == 0, result.output
    assert decisions(files) == [("override", "override"), ("robustness_gate", "pass")]
    predicate = verify_gate_record(files["record"], files["keyring"], WEIGHTS)
    assert predicate["overrides"][0]["reason"] == "known weak"


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--override", "gate.min_robust_map50.pgd_linf_4=0.2"], "an override needs a written"),
        (["--override", "gate.max_regression=0.5", "--reason", " "], "an override needs a written"),
        (["--override", "gate.min_robust_map50.pgd_linf_9=0.2", "--reason", "x"], "unknown"),
        (["--override", "gate.max_regression", "--reason", "x"], "KEY.PATH=VALUE"),
        (["--reason", "why"], "--reason given without any --override"),
    ],
)
def test_bad_override_exits_2_and_writes_nothing(files, extra, expected):
    result = gate(files, "--key", files["key"], *extra)
    assert result.exit_code == EXIT_USER_ERROR, result.output
    assert "error:" in result.output and expected in result.output
    assert not files["record"].exists() and not files["audit"].exists()


def test_no_signing_key_exits_2(files):
    result = gate(files)
    assert result.exit_code == EXIT_USER_ERROR
    assert "no signing key" in result.output and "SECMLOPS_SIGNING_KEY" in result.output
    assert not files["record"].exists() and not files["audit"].exists()


def test_missing_report_exits_2(files, tmp_path):
    files["report"] = tmp_path / "nowhere.json"
    result = gate(files, "--key", files["key"])
    assert result.exit_code == EXIT_USER_ERROR and "report not found" in result.output


@pytest.mark.parametrize(
    ("gate_section", "expected"),
    [
        ({**GATE, "attacks": {**GATE["attacks"], "linf_eps_levels": [0, 4]}},
         "gate.attacks.linf_eps_levels[0]: input should be greater than or equal to 1"),
        ({k: v for k, v in GATE.items() if k != "max_regression"},
         "gate.max_regression: field required"),
    ],
)  # fmt: skip
def test_bad_policy_exits_2(files, gate_section, expected):
    write_policy(files["policy"], gate_section)
    result = gate(files, "--key", files["key"])
    assert result.exit_code == EXIT_USER_ERROR and expected in result.output
    assert not files["audit"].exists()
