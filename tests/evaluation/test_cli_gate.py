"""`secmlops gate`: exit 0 on pass, 1 on a failed threshold, 2 on a user error; always audited."""

import json

import pytest
from typer.testing import CliRunner

from secmlops.audit import verify_audit_log
from secmlops.cli import EXIT_USER_ERROR, app
from secmlops.evaluation.gate import verify_gate_record

from .test_gate import write_policy, write_report
from .test_gate_checks import GATE, WEIGHTS, passing_report

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def gate(setup, *extra):
    return run("gate", "--report", setup["report"], "--policy", setup["policy"],
               "--audit-log", setup["audit"], *extra)  # fmt: skip


def decisions(setup):
    verify_audit_log(setup["audit"])
    return [(e["action"], e["decision"]) for e in map(json.loads, setup["audit"].open())]


def test_pass_exits_0_with_a_table_and_a_record_beside_the_report(setup):
    result = gate(setup, "--key", setup["key"])
    assert result.exit_code == 0, result.output
    assert "robustness gate" in result.output and "pgd_linf_4" in result.output
    assert "gate passed" in result.output and "FAIL" not in result.output
    assert verify_gate_record(setup["record"], setup["keyring"], WEIGHTS)["passed"] is True
    assert decisions(setup) == [("robustness_gate", "pass")]


def test_failed_threshold_exits_1_and_is_recorded(setup):
    write_report(setup["report"], passing_report(pgd_linf_4=0.012))
    result = gate(setup, "--key", setup["key"])
    assert result.exit_code == 1, result.output
    assert "gate failed: pgd_linf_4 robust mAP@0.5 0.012 < 0.300" in result.output
    assert "FAIL" in result.output and str(setup["record"]) in result.output
    assert setup["record"].exists()
    assert decisions(setup) == [("robustness_gate", "fail")]


def test_signing_key_from_the_environment(setup, monkeypatch, tmp_path):
    monkeypatch.setenv("SECMLOPS_GATE_KEY", str(setup["key"]))
    result = gate(setup, "--record", tmp_path / "out.json")
    assert result.exit_code == 0, result.output
    assert verify_gate_record(tmp_path / "out.json", setup["keyring"], WEIGHTS)


def test_production_regression_exits_1(setup, tmp_path):
    production = write_report(tmp_path / "prod.json", passing_report(patch=0.6))
    result = gate(setup, "--key", setup["key"], "--production-report", production)
    assert result.exit_code == 1
    assert "patch mAP@0.5 vs production 0.500 < 0.580" in result.output


def test_override_with_reason_is_applied_and_audited(setup):
    write_report(setup["report"], passing_report(pgd_linf_4=0.25))
    change = "gate.min_robust_map50.pgd_linf_4=0.2"
    result = gate(setup, "--key", setup["key"], "--override", change, "--reason", "known weak")
    assert result.exit_code == 0, result.output
    assert decisions(setup) == [("override", "override"), ("robustness_gate", "pass")]
    predicate = verify_gate_record(setup["record"], setup["keyring"], WEIGHTS)
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
def test_bad_override_exits_2_and_writes_nothing(setup, extra, expected):
    result = gate(setup, "--key", setup["key"], *extra)
    assert result.exit_code == EXIT_USER_ERROR, result.output
    assert "error:" in result.output and expected in result.output
    assert not setup["record"].exists() and not setup["audit"].exists()


def test_no_signing_key_exits_2(setup, monkeypatch, pki):
    # The trainer's key in the environment is not the gate's: it is not picked up.
    monkeypatch.setenv("SECMLOPS_TRAINER_KEY", str(pki["trainer"].private))
    result = gate(setup)
    assert result.exit_code == EXIT_USER_ERROR
    assert "no gate key" in result.output and "SECMLOPS_GATE_KEY" in result.output
    assert not setup["record"].exists() and not setup["audit"].exists()


@pytest.mark.parametrize(
    ("role", "held"),
    [
        ("data_owner", "a data_owner key"),
        ("trainer", "a trainer key"),
        ("approver", "an approver key"),
    ],
)
def test_a_key_of_another_role_is_refused_before_any_decision(setup, pki, role, held):
    # The attacker holds one trusted key, of another role, and runs the gate with it.
    result = gate(setup, "--key", pki[role].private)
    assert result.exit_code == EXIT_USER_ERROR, result.output
    flat = " ".join(result.output.split())  # the console may wrap long lines
    assert f"the gate record: signed by {pki[role].id}, {held}; only a gate key may sign it" in flat
    assert not setup["record"].exists() and not setup["audit"].exists()


def test_a_key_no_policy_trusts_is_refused_before_any_decision(setup, pki):
    result = gate(setup, "--key", pki["rogue"].private)
    assert result.exit_code == EXIT_USER_ERROR, result.output
    flat = " ".join(result.output.split())
    assert f"key {pki['rogue'].id} is not a trusted key; it cannot sign as gate" in flat
    assert not setup["record"].exists() and not setup["audit"].exists()


def test_missing_report_exits_2(setup, tmp_path):
    setup["report"] = tmp_path / "nowhere.json"
    result = gate(setup, "--key", setup["key"])
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
def test_bad_policy_exits_2(setup, gate_section, expected):
    write_policy(setup["policy"], gate_section, roles=setup["roles"])
    result = gate(setup, "--key", setup["key"])
    assert result.exit_code == EXIT_USER_ERROR and expected in result.output
    assert not setup["audit"].exists()
