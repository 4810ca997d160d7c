"""A refused control fails its task once: no retry, one audit entry, nothing downstream runs.

Two kinds of test, both through `dag.test()` on the real DAG files:
- the attack: a data owner's signed dataset whose training split an attacker with write access
  to the data poisoned (ART's BadDet) before it was signed, published as the next version; the
  data-pull DAG must stop at `screen_data`, once;
- the wiring: every task of every DAG, with its library call made to refuse (the stages before
  it return payloads of the contract types), fails without a retry and is audited once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from secmlops.errors import GateFailed, IntegrityError, PoisoningSuspected, PolicyError, Refusal

from .conftest import REPO_ROOT

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]


def task_instances(run) -> dict[str, Any]:
    return {ti.task_id: ti for ti in run.get_task_instances()}


def audit_entries(path: Path) -> list[dict[str, Any]]:
    from secmlops.audit import read_audit_log

    return read_audit_log(path) if path.exists() else []


# ------------------------------------------------------------------------------- the attack
@pytest.fixture(scope="module")
def poisoned_workspace(tmp_path_factory, airflow_db):
    """A workspace whose newest published version (v2) carries a BadDet trigger in 10% of its
    training images, signed by the data owner (the poison went in before signing)."""
    from secmlops.attacks.backdoor import poison_dataset
    from secmlops.data.manifest import DatasetIdentity, sign_dataset
    from secmlops.data.versioning import publish_dataset
    from secmlops.local.workspace import create_workspace

    root = tmp_path_factory.mktemp("refusals")
    space = create_workspace(
        root / "space", images=120, seed=3, width=160, height=128,
        policy_source=REPO_ROOT / "policy.yaml",
    )  # fmt: skip
    poisoned = root / "poisoned"
    poison_dataset(space.root / "incoming" / "street", poisoned, "oda", 0.1, trigger_size=10)
    owner_key = space.root / "keys" / "data-owner.key"
    sign_dataset(poisoned, owner_key, identity=DatasetIdentity("street", 2))
    published = publish_dataset(
        poisoned, "street", space.root / "data-registry", space.env["SECMLOPS_DVC_REMOTE"]
    )
    monkeypatch = pytest.MonkeyPatch()
    for name, value in space.env.items():
        monkeypatch.setenv(name, value)
    yield space, published.tag
    monkeypatch.undo()


def test_a_poisoned_dataset_fails_the_screen_once_without_retry(dagbag, poisoned_workspace):
    space, rev = poisoned_workspace
    audit = Path(space.env["SECMLOPS_AUDIT_LOG"])
    before = len(audit_entries(audit))
    run = dagbag.get_dag("secmlops_data_pull").test(run_conf={"data_rev": rev})
    tis = task_instances(run)
    assert run.state == "failed"
    assert str(tis["verify_data"].state) == "success"  # signed by the owner: authentic
    assert str(tis["screen_data"].state) == "failed"
    assert tis["screen_data"].try_number == 1  # the DAG allows 2 retries; a refusal gets none
    assert str(tis["emit_dataset"].state) == "upstream_failed"
    new = audit_entries(audit)[before:]
    screens = [e for e in new if e["action"] == "screen_poisoning"]
    assert [e["decision"] for e in screens] == ["fail"] and screens[0]["details"]["flagged"]
    failures = [e for e in new if e["action"] == "task_failed"]
    assert [e["subject"] for e in failures] == ["secmlops_data_pull.screen_data"]
    assert "PoisoningSuspected" in failures[0]["details"]["error"]


def test_the_clean_version_still_passes_the_screen(dagbag, poisoned_workspace):
    space, _ = poisoned_workspace
    run = dagbag.get_dag("secmlops_data_pull").test(run_conf={"data_rev": space.data_rev})
    assert run.state == "success", {t: str(ti.state) for t, ti in task_instances(run).items()}


# ------------------------------------------------------------------------------- the wiring
def fake_payloads(workdir: Path) -> dict[str, Any]:
    """What each lifecycle stage returns, by contract type: enough for the next task to run."""
    from secmlops.lifecycle.contracts import TrainingRequest

    data = {"rev": "data/street/v1", "data_dir": str(workdir / "data")}
    verified = {
        **data,
        "manifest_digest": "sha256:" + "0" * 64,
        "signer": "ed25519:" + "0" * 32,
        "files": 1,
        "bytes": 1,
    }
    policy = {
        "path": str(workdir / "policy.effective.yaml"),
        "digest": "sha256:" + "1" * 64,
        "source": "policy.yaml",
        "overrides": [],
    }
    trained = {
        "model_dir": str(workdir / "model"),
        "epochs": 1,
        "best_epoch": 1,
        "val": {},
        "seconds": 0.0,
        "device": "cpu",
        "resumed_from_epoch": 0,
    }
    evaluation = {"report": str(workdir / "robustness.json"), "clean_mAP50": 0.9, "attacks": {}}
    release = {"name": "pedestrian-detector", "version": "1-abc", "weights_sha256": "2" * 64}
    return {
        "pull_data": data,
        "verify_data": verified,
        "validate_data": {"report": str(workdir / "validation.json"), "summary": {}},
        "screen_data": {"report": str(workdir / "screening.json"), "summary": {}},
        "plan_training": {
            "request": TrainingRequest().to_json(),
            "policy": policy,
            "max_eval_images": None,
            "older_data_reason": "",
        },
        "train": trained,
        "evaluate": evaluation,
        "evaluate_production": None,
        "gate": {
            "record": str(workdir / "gate-record.json"),
            "passed": True,
            "checks": 9,
            "policy_digest": policy["digest"],
        },
        "sign": {
            "model_dir": trained["model_dir"],
            "weights_sha256": "2" * 64,
            "provenance": str(workdir / "model" / "provenance.json"),
        },
        "push": release,
        "release_evidence": "**Release** 1-abc: the gate's evidence",
        "promote": {**release, "alias": "production", "sequence": 1, "audit_anchor": None},
        "monitor": {
            "version": "1-abc",
            "records": 50,
            "drift": {},
            "attack": {},
            "request": None,
        },
        "tradeoff_study": {
            "out_dir": str(workdir / "study"),
            "configurations": 1,
            "pareto_front": [],
            "seconds": 0.0,
        },
    }


# (DAG, task, the lifecycle function its body calls, the refusal that function raises).
CASES = [
    ("secmlops_data_pull", "pull_data", "pull_data", PolicyError("no such dataset tag")),
    ("secmlops_data_pull", "verify_data", "verify_data", IntegrityError("tampered manifest")),
    ("secmlops_data_pull", "validate_data", "validate_data", PolicyError("bad threshold")),
    ("secmlops_data_pull", "screen_data", "screen_data", PoisoningSuspected("recurring patch")),
    ("secmlops_training", "plan_run", "plan_training", PolicyError("override without reason")),
    ("secmlops_training", "pull_data", "pull_data", PolicyError("no such dataset tag")),
    ("secmlops_training", "verify_data", "verify_data", IntegrityError("untrusted signer")),
    ("secmlops_training", "train_model", "train", PolicyError("refused")),
    ("secmlops_training", "train_baseline", "train", PolicyError("refused")),
    ("secmlops_training", "evaluate_model", "evaluate", PolicyError("policy changed")),
    ("secmlops_training", "evaluate_baseline", "evaluate", PolicyError("policy changed")),
    ("secmlops_training", "evaluate_production", "evaluate_production",
     IntegrityError("production signature")),
    ("secmlops_training", "gate_model", "gate", GateFailed("clean mAP below 0.7")),
    ("secmlops_training", "sign_model", "sign", PolicyError("gate under another policy")),
    ("secmlops_training", "push_model", "push", IntegrityError("unsigned")),
    ("secmlops_training", "summarize_release", "release_evidence",
     IntegrityError("gate record unreadable")),
    ("secmlops_training", "promote_model", "promote",
     IntegrityError("trust chain broken at the gate record")),
    ("secmlops_monitoring", "check_window", "monitor", IntegrityError("tampered profile")),
    ("secmlops_tradeoffs", "pull_data", "pull_data", PolicyError("no such dataset tag")),
    ("secmlops_tradeoffs", "verify_data", "verify_data", IntegrityError("tampered manifest")),
    ("secmlops_tradeoffs", "run_study", "tradeoff_study", PolicyError("bad policy")),
]  # fmt: skip


def test_every_task_is_covered(dagbag):
    """A new task must join CASES (unless it makes no library call that could refuse)."""
    no_library_call = {
        ("secmlops_data_pull", "emit_dataset"),
        ("secmlops_monitoring", "request_retraining"),
        # Refuses only once a person answered: its refusals are in test_approval.py.
        ("secmlops_training", "approve_release"),
    }
    every = {(dag.dag_id, task.task_id) for dag in dagbag.dags.values() for task in dag.tasks}
    assert every == {(dag_id, task_id) for dag_id, task_id, _, _ in CASES} | no_library_call


@pytest.mark.parametrize(
    ("dag_id", "task_id", "function", "refusal"), CASES, ids=[f"{c[0]}.{c[1]}" for c in CASES]
)
def test_a_refusal_fails_the_task_once_and_is_audited_once(
    dagbag, approvals, tmp_path, monkeypatch, dag_id, task_id, function, refusal
):
    import secmlops.lifecycle as lifecycle

    assert isinstance(refusal, Refusal)
    audit = tmp_path / "audit.jsonl"
    monkeypatch.setenv("SECMLOPS_WORKDIR", str(tmp_path))
    monkeypatch.setenv("SECMLOPS_AUDIT_LOG", str(audit))
    payloads = fake_payloads(tmp_path)
    calls: list[str] = []

    def stage(name: str):
        def run(*args: Any, **kwargs: Any) -> Any:
            calls.append(name)
            # train_model and train_baseline both call `train`, evaluate_model and
            # evaluate_baseline both `evaluate`: refuse only the one under test.
            which = {
                "train": {"model": "train_model", "baseline": "train_baseline"}.get(
                    kwargs.get("name")
                ),
                "evaluate": "evaluate_baseline"
                if kwargs.get("gate_evidence") is False
                else "evaluate_model",
            }.get(name, task_id)
            if name == function and which == task_id:
                raise refusal
            return payloads[name]

        return run

    for name in payloads:
        monkeypatch.setattr(lifecycle, name, stage(name))
    dag = dagbag.get_dag(dag_id)
    if task_id == "promote_model":  # a person approves first (not the run's trigger)
        approvals.answer("approver", "Approve")
    run = dag.test(run_conf={})
    tis = task_instances(run)
    assert run.state == "failed"
    assert str(tis[task_id].state) == "failed"
    assert tis[task_id].try_number == 1, "a refusal must not be retried"
    assert calls.count(function) == (2 if function in ("train", "evaluate") else 1)
    failures = [e for e in audit_entries(audit) if e["action"] == "task_failed"]
    assert [e["subject"] for e in failures] == [f"{dag_id}.{task_id}"]
    assert type(refusal).__name__ in failures[0]["details"]["error"]
    downstream = dag.get_task(task_id).get_flat_relative_ids(upstream=False)
    assert all(str(tis[t].state) == "upstream_failed" for t in downstream)
