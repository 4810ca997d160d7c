"""`run_gate` and its signed record: policy, overrides, audit log, and what promotion verifies."""

from __future__ import annotations

import base64
import copy
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from secmlops.audit import verify_audit_log
from secmlops.errors import DataError, GateFailed, IntegrityError, PolicyError
from secmlops.evaluation.gate import gate_validity, run_gate, verify_gate_record

from .test_gate_checks import BASELINE_WEIGHTS, GATE, WEIGHTS, passing_report

REPO_POLICY = Path(__file__).resolve().parents[2] / "policy.yaml"


def write_report(path: Path, report: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report))
    return path


def write_policy(
    path: Path, gate: dict[str, Any] | None = None, roles: dict[str, list[str]] | None = None
) -> Path:
    """The repository's policy with `gate:` set to GATE (or `gate`) and `roles:` (if given)."""
    content = yaml.safe_load(REPO_POLICY.read_text())
    content["gate"] = copy.deepcopy(GATE if gate is None else gate)
    if roles is not None:
        content["roles"] = copy.deepcopy(roles)
    path.write_text(yaml.safe_dump(content))
    return path


def gate(s: dict[str, Any], **kwargs: Any):
    return run_gate(s["report"], s["policy"], signing_key=s["key"], audit_log=s["audit"], **kwargs)


def audit_entries(path: Path) -> list[dict[str, Any]]:
    verify_audit_log(path)
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_pass_writes_a_signed_record_and_audits(setup):
    decision = gate(setup)
    assert decision.passed
    predicate = verify_gate_record(setup["record"], setup["keyring"], WEIGHTS)
    assert predicate["passed"] is True and predicate["overrides"] == []
    assert predicate["policy_digest"].startswith("sha256:")
    assert predicate["production_report_sha256"] is None
    assert len(predicate["checks"]) == len(decision.checks)
    (entry,) = audit_entries(setup["audit"])
    assert (entry["stage"], entry["action"]) == ("gate", "robustness_gate")
    assert entry["decision"] == "pass"
    assert entry["subject"] == WEIGHTS and entry["details"]["failed"] == []
    assert entry["details"]["record"] == str(setup["record"])
    assert entry["details"]["policy_digest"] == predicate["policy_digest"]


def test_fail_writes_the_record_and_audits_then_raises(setup):
    write_report(setup["report"], passing_report(pgd_linf_4=0.012))
    with pytest.raises(GateFailed, match=r"^gate failed: pgd_linf_4 robust mAP@0\.5 0\.012 <") as e:
        gate(setup)
    assert [f["name"] for f in e.value.failures] == ["robust_map50.pgd_linf_4"]
    assert e.value.record_path == str(setup["record"])
    with pytest.raises(IntegrityError, match="failed the robustness gate"):
        verify_gate_record(setup["record"], setup["keyring"], WEIGHTS)
    (entry,) = audit_entries(setup["audit"])
    assert entry["decision"] == "fail"
    assert entry["details"]["failed"] == ["pgd_linf_4 robust mAP@0.5 0.012 < 0.300"]


def test_failed_rerun_replaces_an_earlier_pass(setup):
    gate(setup)
    write_report(setup["report"], passing_report(patch=0.1))
    with pytest.raises(GateFailed):
        gate(setup)
    with pytest.raises(IntegrityError, match="failed the robustness gate"):
        verify_gate_record(setup["record"], setup["keyring"], WEIGHTS)
    assert [e["decision"] for e in audit_entries(setup["audit"])] == ["pass", "fail"]


def test_production_report_is_checked_and_recorded(setup, tmp_path):
    production = write_report(tmp_path / "prod.json", passing_report(jpeg=0.9))
    with pytest.raises(GateFailed, match=r"jpeg mAP@0\.5 vs production 0\.700 < 0\.880"):
        gate(setup, production_report=production)
    envelope = json.loads(setup["record"].read_text())
    predicate = json.loads(base64.b64decode(envelope["payload"]))["predicate"]
    assert predicate["production_report_sha256"] is not None


def test_override_with_reason_is_applied_recorded_and_audited(setup):
    write_report(setup["report"], passing_report(pgd_linf_4=0.25))
    decision = gate(setup, overrides=[("gate.min_robust_map50.pgd_linf_4", 0.2, "known weak")])
    assert decision.passed
    predicate = verify_gate_record(setup["record"], setup["keyring"], WEIGHTS)
    assert predicate["overrides"] == [{"path": "gate.min_robust_map50.pgd_linf_4", "old": 0.3,
                                       "new": 0.2, "reason": "known weak"}]  # fmt: skip
    override, decided = audit_entries(setup["audit"])
    assert (override["stage"], override["action"], override["decision"]) == (
        "gate", "override", "override")  # fmt: skip
    assert override["details"]["reason"] == "known weak"
    assert decided["details"]["policy_digest"] == predicate["policy_digest"]


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        (("gate.min_robust_map50.pgd_linf_4", 0.2, "  "), "an override needs a written reason"),
        (("gate.min_robust_map50.pgd_linf_8", 0.2, "why"), "pgd_linf_8: unknown policy key"),
        (("gate.max_regression", 1.5, "why"), "gate.max_regression: input should be less"),
    ],
)
def test_refused_override_writes_nothing(setup, override, expected):
    with pytest.raises(PolicyError, match=expected):
        gate(setup, overrides=[override])
    assert not setup["record"].exists() and not setup["audit"].exists()


def test_no_signing_key_fails_before_anything(setup):
    with pytest.raises(DataError, match=r"^no signing key"):
        run_gate(setup["report"], setup["policy"], signing_key=None, audit_log=setup["audit"])
    assert not setup["record"].exists() and not setup["audit"].exists()


@pytest.mark.parametrize(
    ("content", "expected"),
    [(None, "report not found"), ("{nope", "not valid JSON"), ("[1]", "got a list")],
)
def test_unreadable_report_is_a_user_error(setup, content, expected):
    if content is None:
        setup["report"].unlink()
    else:
        setup["report"].write_text(content)
    with pytest.raises(DataError, match=expected):
        gate(setup)
    assert not setup["record"].exists() and not setup["audit"].exists()


def test_malformed_policy_is_refused(setup):
    write_policy(setup["policy"], {**GATE, "min_clean_map50": "high"})
    with pytest.raises(PolicyError, match=r"gate\.min_clean_map50: input should be a valid number"):
        gate(setup)


def test_record_path_can_be_chosen(setup, tmp_path):
    gate(setup, record_path=tmp_path / "elsewhere.json")
    assert verify_gate_record(tmp_path / "elsewhere.json", setup["keyring"], f"sha256:{WEIGHTS}")
    assert not setup["record"].exists()


def test_record_for_other_weights_is_rejected(setup):
    gate(setup)
    with pytest.raises(IntegrityError, match="for other weights"):
        verify_gate_record(setup["record"], setup["keyring"], BASELINE_WEIGHTS)


def test_tampered_record_is_rejected(setup):
    write_report(setup["report"], passing_report(pgd_linf_4=0.0))
    with pytest.raises(GateFailed):
        gate(setup)
    envelope = json.loads(setup["record"].read_text())
    statement = json.loads(base64.b64decode(envelope["payload"]))
    statement["predicate"]["passed"] = True
    for check in statement["predicate"]["checks"]:
        check["passed"] = True
    envelope["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    setup["record"].write_text(json.dumps(envelope))
    with pytest.raises(IntegrityError, match="bad signature"):
        verify_gate_record(setup["record"], setup["keyring"], WEIGHTS)


def test_record_signed_by_an_untrusted_key_is_rejected(setup, pki):
    # A key no policy trusts signs a passing record for the candidate's weights.
    gate({**setup, "key": pki["rogue"].key})
    with pytest.raises(IntegrityError, match=f"untrusted key {pki['rogue'].id}"):
        verify_gate_record(setup["record"], setup["keyring"], WEIGHTS)


@pytest.mark.parametrize(
    ("role", "held"),
    [
        ("data_owner", "a data_owner key"),
        ("trainer", "a trainer key"),
        ("approver", "an approver key"),
    ],
)
def test_record_signed_by_a_key_of_another_role_is_rejected_naming_it(setup, pki, role, held):
    # The attacker holds one trusted key, of another role (e.g. the data owner's), and runs the
    # gate library with it: a passing, validly signed record for the candidate's weights.
    assert gate({**setup, "key": pki[role].key}).passed
    with pytest.raises(IntegrityError) as info:
        verify_gate_record(setup["record"], setup["keyring"], WEIGHTS)
    message = str(info.value)
    assert message.startswith(f"{setup['record']}: gate record: ")
    assert f"signed by {pki[role].id}, {held}; only a gate key may sign it" in message


def test_a_keyring_without_roles_trusts_no_gate_record(setup, pki):
    gate(setup)  # signed by the gate's key, yet the verifier's keyring binds no roles
    with pytest.raises(IntegrityError, match="no key roles configured"):
        verify_gate_record(setup["record"], pki.trusted_keyring(), WEIGHTS)


@pytest.mark.parametrize("days", [14, 3])
def test_the_record_is_valid_for_the_policys_days_after_the_decision(setup, days):
    write_policy(setup["policy"], {**GATE, "record_validity_days": days}, roles=setup["roles"])
    before = datetime.now(UTC).replace(microsecond=0)
    gate(setup)
    predicate = verify_gate_record(setup["record"], setup["keyring"], WEIGHTS)
    decided_at = datetime.fromisoformat(predicate["decided_at"])
    assert before <= decided_at <= datetime.now(UTC)
    assert datetime.fromisoformat(predicate["valid_until"]) - decided_at == timedelta(days=days)
    assert predicate["valid_until"] == gate_validity(decided_at, days)


def test_missing_record_means_no_pass(setup):
    with pytest.raises(IntegrityError, match="no gate record"):
        verify_gate_record(setup["record"], setup["keyring"], WEIGHTS)
