"""The training DAG's approval step on Airflow (`dag.test()`), answered through the REST API:
an approval by the user who triggered the run is refused, a rejection and a timeout fail the run,
and in each case nothing is promoted; every decision is audited with the user.

The stages before the approval return payloads of their contract types (as in test_refusals.py),
so these runs take seconds; the real approval operator, its REST answers and `decide` run as
deployed. The approving path on the whole real lifecycle is test_lifecycle_dags.py's `released`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from .test_refusals import audit_entries, fake_payloads, task_instances

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.fixture
def staged_run(tmp_path, monkeypatch):
    """The lifecycle's stages replaced by their payloads; `calls` records what ran."""
    import secmlops.lifecycle as lifecycle

    monkeypatch.setenv("SECMLOPS_WORKDIR", str(tmp_path))
    monkeypatch.setenv("SECMLOPS_AUDIT_LOG", str(tmp_path / "audit.jsonl"))
    payloads = fake_payloads(tmp_path)
    calls: list[str] = []

    def stage(name: str):
        def run(*args: Any, **kwargs: Any) -> Any:
            calls.append(name)
            return payloads[name]

        return run

    for name in payloads:
        monkeypatch.setattr(lifecycle, name, stage(name))
    return {"calls": calls, "audit": tmp_path / "audit.jsonl"}


def approval_entries(audit: Path) -> list[dict[str, Any]]:
    return [e for e in audit_entries(audit) if e["action"] == "approve_production"]


def assert_not_promoted(run, staged_run) -> None:
    tis = task_instances(run)
    assert run.state == "failed"
    assert str(tis["approve_release"].state) == "failed"
    assert tis["approve_release"].try_number == 1  # no second request
    assert str(tis["promote_model"].state) == "upstream_failed"
    assert "promote" not in staged_run["calls"]  # production unchanged


def test_the_user_who_triggered_the_run_cannot_approve_it(dagbag, approvals, staged_run):
    answer = approvals.answer("dag_test", "Approve")  # dag.test() triggers as `dag_test`
    run = dagbag.get_dag("secmlops_training").test(run_conf={})
    assert answer.done.wait(10) and answer.error is None and answer.status == 200
    assert_not_promoted(run, staged_run)
    (entry,) = approval_entries(staged_run["audit"])
    assert entry["decision"] == "fail" and entry["details"]["refused"] == "self-approval"
    assert entry["details"]["responded_by"] == entry["details"]["triggered_by"] == "dag_test"
    failures = [e for e in audit_entries(staged_run["audit"]) if e["action"] == "task_failed"]
    assert [e["subject"] for e in failures] == ["secmlops_training.approve_release"]
    assert "separation of duties" in failures[0]["details"]["error"]


def test_a_rejection_fails_the_run_and_leaves_production_unchanged(dagbag, approvals, staged_run):
    answer = approvals.answer("approver", "Reject")
    run = dagbag.get_dag("secmlops_training").test(run_conf={})
    assert answer.done.wait(10) and answer.error is None and answer.status == 200
    assert_not_promoted(run, staged_run)
    (entry,) = approval_entries(staged_run["audit"])
    assert entry["decision"] == "fail" and entry["details"]["decision"] == "Reject"
    assert entry["details"]["responded_by"] == "approver" and "refused" not in entry["details"]


def test_no_answer_in_time_fails_the_run_and_leaves_production_unchanged(
    dagbag, approvals, staged_run
):
    sweep = approvals.expire()
    run = dagbag.get_dag("secmlops_training").test(run_conf={})
    assert sweep.done.wait(10) and sweep.error is None
    assert_not_promoted(run, staged_run)
    (entry,) = approval_entries(staged_run["audit"])
    assert entry["decision"] == "fail" and entry["details"]["decision"] == "timeout"


def test_a_second_user_approves_and_the_release_is_promoted(dagbag, approvals, staged_run):
    """The good twin: the approval reaches `promote` with the approver's name."""
    import secmlops.lifecycle as lifecycle

    promoted: list[Any] = []
    payloads = fake_payloads(Path(staged_run["audit"]).parent)

    def promote(settings, release, approval=None, **kwargs):
        promoted.append(approval)
        return {**payloads["promote"], "sequence": 1, "audit_anchor": None}

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(lifecycle, "promote", promote)
        answer = approvals.answer("approver", "Approve")
        run = dagbag.get_dag("secmlops_training").test(run_conf={})
    assert answer.done.wait(10) and answer.status == 200
    assert run.state == "success", {t: str(ti.state) for t, ti in task_instances(run).items()}
    assert [a["approved_by"] for a in promoted] == ["approver"]
    assert promoted[0]["triggered_by"] == "dag_test"
    (entry,) = approval_entries(staged_run["audit"])
    assert entry["decision"] == "pass"
