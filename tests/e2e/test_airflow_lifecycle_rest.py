"""Real Airflow (api-server, scheduler, dag-processor; LocalExecutor, SQLite) on 127.0.0.1:
trigger `secmlops_data_pull` through REST API v2 with a JWT, and see the `dataset` asset
schedule `secmlops_training`, whose run succeeds and promotes a model.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from secmlops.local.airflow_runner import (
    answer_approval,
    approve_as_second_user,
    asset_triggered_runs,
    run_state,
    task_instances,
    trigger_run,
    wait_for_approval_request,
    wait_for_success,
)
from secmlops.local.story import RunProgress
from secmlops.settings import Settings

from ..conftest import REPO_ROOT
from ..dags.test_lifecycle_dags import SMALL_POLICY

DAGS = ("secmlops_data_pull", "secmlops_training")
# Training end to end on a shared 2-core machine: above the suite's 15-minute default when loaded.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]


def test_rest_trigger_of_data_pull_schedules_training_which_promotes(start_airflow, tmp_path):
    """...and waits for a second person's approval; the admin cannot approve a run it
    triggered."""
    from secmlops.local.workspace import create_workspace
    from secmlops.registry import Registry

    space = create_workspace(
        tmp_path / "workspace", images=200, seed=5, width=160, height=128,
        policy_source=REPO_ROOT / "policy.yaml", policy_overrides=SMALL_POLICY,
        reason="e2e test: a small model on 160 scenes cannot reach the production bar",
    )  # fmt: skip
    # The budget of scheduled runs (they take the params' defaults): a small model.
    budget = {"SECMLOPS_TRAINING_EPOCHS": "12", "SECMLOPS_EVAL_MAX_IMAGES": "12"}
    manual = {"SECMLOPS_DATA_PULL_SCHEDULE": "none"}  # only the REST trigger starts a data pull
    server = start_airflow(extra_env={**space.env, **budget, **manual})
    with server.client() as api:
        assert api.get("/api/v2/dags/secmlops_data_pull").status_code == 200
        for dag_id in DAGS:
            server.wait_until(lambda d=dag_id: api.get(f"/api/v2/dags/{d}").status_code == 200)
            response = api.patch(f"/api/v2/dags/{dag_id}", json={"is_paused": False})
            assert response.status_code == 200, response.text
        # No token: 401; a forged one: 403. Only the JWT from /auth/token triggers runs.
        trigger = f"{server.base_url}/api/v2/dags/secmlops_data_pull/dagRuns"
        assert httpx.post(trigger, json={"logical_date": None}).status_code == 401
        forged = {"Authorization": "Bearer not-a-token"}
        assert httpx.post(trigger, json={"logical_date": None}, headers=forged).status_code == 403
        run_id = trigger_run(api, "secmlops_data_pull", {"data_rev": space.data_rev})
        wait_for_success(server, api, "secmlops_data_pull", run_id, timeout_s=300)

        def asset_triggered_run() -> str | None:
            triggered = asset_triggered_runs(api, "secmlops_training")
            assert len(triggered) <= 1, triggered  # one data pull, one dataset event, one run
            return triggered[0] if triggered else None

        training = server.wait_until(asset_triggered_run, 120)
        # What `make demo` prints while it waits: tasks as they start and end, epochs as they
        # are checkpointed.
        progress_lines: list[str] = []
        run_dir = Settings.from_env(space.env).run_dir(training)
        progress = RunProgress(
            api, "secmlops_training", training, progress_lines.append,
            {"model": run_dir / "model" / "checkpoints" / "state.json"},
        )  # fmt: skip
        # The run asks a person; the approver (a second Airflow user) answers through REST.
        request, answer = approve_as_second_user(
            server, api, "secmlops_training", training, timeout_s=900, watch=progress
        )
        assert request["subject"].startswith("Promote ") and "| clean mAP@0.5 |" in request["body"]
        # The approver sees the undefended baseline's figures beside the candidate's.
        assert "| candidate | undefended |" in request["body"]
        shown = "\n".join(progress_lines)
        assert "secmlops_training > train_model started" in shown, shown
        assert "secmlops_training > evaluate_baseline success in" in shown, shown
        assert "approve_release waits for a person's answer" in shown, shown
        assert "model epoch 12/12: loss" in shown, shown
        assert answer["responded_by"]["name"] == "approver"
        again = api.patch(
            f"/api/v2/dags/secmlops_training/dagRuns/{training}/taskInstances/approve_release/-1"
            "/hitlDetails",
            json={"chosen_options": ["Reject"]},
        )
        assert again.status_code == 409  # answered once: nobody overrides the decision
        wait_for_success(server, api, "secmlops_training", training, timeout_s=900)
        tasks = task_instances(api, "secmlops_training", training)
        states = {task_id: t["state"] for task_id, t in tasks.items()}
        assert set(states.values()) == {"success"}, states
        events = api.get("/api/v2/assets/events", params={"order_by": "-timestamp"}).json()
        model_events = [e for e in events["asset_events"] if e["name"] == "model"]
        assert model_events, events
    registry = Registry.open(space.env["SECMLOPS_REGISTRY"])
    version, _ = registry.resolve("pedestrian-detector", "production")
    assert model_events[0]["extra"]["version"] == version
    from secmlops.audit import read_audit_log

    entries = read_audit_log(Path(space.env["SECMLOPS_AUDIT_LOG"]))
    (approval,) = [e for e in entries if e["action"] == "approve_production"]
    assert approval["decision"] == "pass" and approval["details"]["responded_by"] == "approver"
    # A run the admin triggers through REST: the admin's own approval is refused (separation of
    # duties), the run fails, production stays where the approver put it, and it is audited.
    with server.client() as api:
        quick = {
            # Defended, so the undefended baseline is there for the gate's transfer check: an
            # undefended run has no independent model to replay attacks from, and fails it.
            "epochs": 2, "max_eval_images": 4, "adversarial": "fgsm-rs",
            "policy_overrides": ["gate.min_clean_map50=0.0", "gate.max_regression=1.0"],
            "override_reason": "e2e test: a 2-epoch model, only to reach the approval step",
        }  # fmt: skip
        run_id = trigger_run(api, "secmlops_training", quick)
        request = wait_for_approval_request(server, api, "secmlops_training", run_id, 900)
        answer_approval(api, request, "Approve")  # as the admin, who triggered it
        server.wait_until(
            lambda: run_state(api, "secmlops_training", run_id) == "failed", 300, every_s=2
        )
        states = {
            k: t["state"] for k, t in task_instances(api, "secmlops_training", run_id).items()
        }
    assert states["approve_release"] == "failed" and states["promote_model"] == "upstream_failed"
    assert registry.resolve("pedestrian-detector", "production")[0] == version
    entries = read_audit_log(Path(space.env["SECMLOPS_AUDIT_LOG"]))
    refused = [e for e in entries if e["action"] == "approve_production"][-1]
    assert refused["decision"] == "fail" and refused["details"]["refused"] == "self-approval"
    assert refused["details"]["responded_by"] == refused["details"]["triggered_by"] == "admin"
