"""The lifecycle on Airflow, end to end with `dag.test()`: data pull -> training (a small config)
-> monitoring with a drifted window, on a real DVC registry, real keys and the real registry.

The scheduler is not running here (tests/e2e starts it for real): each DAG is run with
`dag.test()` in the order the assets would trigger them, and the asset events they record in the
metadata DB are checked.
"""

from pathlib import Path

import pytest

from .conftest import REPO_ROOT

# A small config: a gate bar this model can reach, so the test checks the wiring, not the
# model's quality; the failing-gate test raises the bar again. PGD-3 instead of the policy's
# PGD-10 comes from the run's own override, as a user would set it in the trigger form.
GATED = ("fgsm_linf_2", "fgsm_linf_4", "pgd_linf_2", "pgd_linf_4", "patch", "gaussian_noise",
         "gaussian_blur", "brightness", "jpeg")  # fmt: skip
SMALL_POLICY = {
    "gate.min_clean_map50": 0.05,
    "gate.min_clean_recall": 0.0,
    "gate.operating_point.max_clean_fppi": 10.0,
    "gate.max_defence_cost": 1.0,
    **{f"gate.min_robust_map50.{name}": 0.0 for name in GATED},
    **{
        f"gate.min_robust_recall.{name}": 0.0
        for name in ("worst_case_linf_2", "worst_case_linf_4", "person_patch")
    },
    "gate.max_robust_mr2.worst_case_linf_4": 1.0,
    # The attacks, the person-worn patch and the sanity checks at a CI budget (all stay on).
    "gate.attacks.pgd_steps": 4,
    "gate.attacks.person_patch_steps": 20,
    "gate.attacks.sanity_images": 8,
}
pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]
RUN_OVERRIDES = ["gate.attacks.pgd_steps=3"]
TRAINING_CONF = {
    "epochs": 12, "adversarial": "fgsm-rs", "mix": 0.5, "max_eval_images": 12,
    "policy_overrides": RUN_OVERRIDES,
    "override_reason": "e2e test: PGD-3 keeps the suite within CI's budget",
}  # fmt: skip


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, airflow_db):
    from secmlops.local.workspace import create_workspace

    monkeypatch = pytest.MonkeyPatch()
    space = create_workspace(
        tmp_path_factory.mktemp("lifecycle"), images=200, seed=5, width=160, height=128,
        policy_source=REPO_ROOT / "policy.yaml", policy_overrides=SMALL_POLICY,
        reason="e2e test: a 12-epoch model on 160 scenes cannot reach the production bar",
    )  # fmt: skip
    for name, value in space.env.items():
        monkeypatch.setenv(name, value)
    yield space
    monkeypatch.undo()


def asset_events(name: str) -> list[dict]:
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = (
            session.query(AssetEvent).join(AssetModel, AssetEvent.asset_id == AssetModel.id)
            .filter(AssetModel.name == name).order_by(AssetEvent.id).all()
        )  # fmt: skip
        return [dict(row.extra or {}) for row in rows]


def task_states(run) -> dict[str, str]:
    return {ti.task_id: str(ti.state) for ti in run.get_task_instances()}


@pytest.fixture(scope="module")
def released(dagbag, workspace, approvals):
    """data pull -> training, as the `dataset` asset would chain them; a second person (not
    `dag_test`, who triggered the run) approves the release through the REST API."""
    pulled = dagbag.get_dag("secmlops_data_pull").test(run_conf={})
    assert pulled.state == "success", task_states(pulled)
    answer = approvals.answer("approver", "Approve")
    trained = dagbag.get_dag("secmlops_training").test(run_conf=TRAINING_CONF)
    assert answer.done.wait(10) and answer.error is None and answer.status == 200, answer
    assert trained.state == "success", task_states(trained)
    return {"pulled": pulled, "trained": trained}


def test_data_pull_verifies_and_emits_the_dataset_asset(released, workspace):
    (event,) = asset_events("dataset")[-1:]
    assert event["rev"] == workspace.data_rev
    assert event["manifest_digest"] and event["signer"].startswith("ed25519:")
    from secmlops.audit import read_audit_log

    actions = [e["action"] for e in read_audit_log(Path(workspace.env["SECMLOPS_AUDIT_LOG"]))]
    assert {"verify_manifest", "validate", "screen_poisoning"} <= set(actions)


def test_training_gates_signs_pushes_and_promotes(released, workspace):
    from secmlops.registry import Registry
    from secmlops.settings import Settings

    registry = Registry.open(workspace.env["SECMLOPS_REGISTRY"])
    version, _ = registry.resolve("pedestrian-detector", "production")
    (event,) = asset_events("model")[-1:]
    assert event["version"] == version
    rows = {row["version"]: row for row in registry.list("pedestrian-detector")}
    assert rows[version]["gate_record"] is True and rows[version]["aliases"] == ["production"]
    assert set(task_states(released["trained"]).values()) == {"success"}
    # The release carries what serving and monitoring need, signed with it.
    files = set(registry.show("pedestrian-detector", version)["files"])
    assert {"reference-profile.json", "screening.json", "gate-record.json"} <= files
    assert "model.sig" in files  # the OpenSSF model-signing bundle (the workspace's ECDSA key)
    # The run waited for a person: the approval is audited with who triggered and who answered,
    # and the signed production move names the approver.
    from secmlops.audit import read_audit_log
    from secmlops.registry.trust_chain import verify_alias_move

    entries = read_audit_log(Path(workspace.env["SECMLOPS_AUDIT_LOG"]))
    (approval,) = [e for e in entries if e["action"] == "approve_production"]
    assert approval["decision"] == "pass" and approval["subject"].endswith(version)
    assert approval["details"]["responded_by"] == "approver"
    assert approval["details"]["triggered_by"] == "dag_test"
    move = verify_alias_move(
        registry.aliases("pedestrian-detector")["production"],
        Settings.from_env().keyring(), "pedestrian-detector", "production",
    )  # fmt: skip
    from secmlops.policy import load_policy

    assert move.approved_by == "approver" and move.kind == "promote" and move.sequence == 1
    assert [move.signer] == load_policy(Settings.from_env().policy).roles.approver
    # The promotion anchored the audit head in the registry, its own entry included.
    from secmlops.audit_anchors import latest_anchor, verify_with_anchor

    settings = Settings.from_env()
    anchor, skipped = latest_anchor(settings.model_registry(), settings.keyring())
    assert anchor is not None and skipped == []
    assert verify_with_anchor(settings.audit_log, anchor) >= anchor.seq


def test_the_runs_overrides_reach_the_evaluation_and_the_gate(released, workspace):
    """`policy_overrides` are resolved once into the run's effective policy: the suite ran
    PGD-3 (the policy file says 10), and the gate judged (and signed) under that same policy."""
    import base64
    import json

    import yaml

    from secmlops.audit import read_audit_log
    from secmlops.policy import load_policy, policy_digest
    from secmlops.settings import Settings

    settings = Settings.from_env()
    assert load_policy(settings.policy).gate.attacks.pgd_steps == 4  # SMALL_POLICY
    run_dir = settings.run_dir(released["trained"].run_id)
    effective = load_policy(run_dir / "policy.effective.yaml")
    assert effective.gate.attacks.pgd_steps == 3
    assert (
        yaml.safe_load((run_dir / "policy.effective.yaml").read_text())["gate"]["attacks"][
            "pgd_steps"
        ]
        == 3
    )
    report = json.loads((run_dir / "robustness.json").read_text())
    assert report["suite"]["pgd_steps"] == 3
    envelope = json.loads((run_dir / "gate-record.json").read_text())
    predicate = json.loads(base64.b64decode(envelope["payload"]))["predicate"]
    assert predicate["passed"] is True
    assert predicate["policy_digest"] == policy_digest(effective)
    assert predicate["policy_path"] == str(run_dir / "policy.effective.yaml")
    assert [o["path"] for o in predicate["overrides"]] == ["gate.attacks.pgd_steps"]
    suite_check = next(c for c in predicate["checks"] if c["name"] == "suite")
    assert suite_check["passed"] and "pgd 3 steps" in suite_check["threshold"]
    # The provenance names the same policy, and the override is audited once, with its reason.
    provenance = json.loads((run_dir / "model" / "provenance.json").read_text())
    statement = json.loads(base64.b64decode(provenance["payload"]))
    assert statement["predicate"]["policy_digest"] == policy_digest(effective)
    run_id = released["trained"].run_id
    overrides = [e for e in read_audit_log(settings.audit_log)
                 if e["action"] == "override" and e["subject"] == run_id]  # fmt: skip
    assert [e["details"]["path"] for e in overrides] == ["gate.attacks.pgd_steps"]
    assert overrides[0]["details"]["reason"].startswith("e2e test: PGD-3")


def test_a_failing_gate_stops_promotion(dagbag, released, workspace):
    from secmlops.registry import Registry

    registry = Registry.open(workspace.env["SECMLOPS_REGISTRY"])
    before, _ = registry.resolve("pedestrian-detector", "production")
    # Two epochs and four test images: the gate refuses any model at this bar.
    conf = {**TRAINING_CONF, "adversarial": "none", "epochs": 2, "max_eval_images": 4,
            "policy_overrides": [*RUN_OVERRIDES, "gate.min_clean_map50=0.99"],
            "override_reason": "e2e test: a bar no model of this size reaches"}  # fmt: skip
    run = dagbag.get_dag("secmlops_training").test(run_conf=conf)
    states = task_states(run)
    assert run.state == "failed"
    assert states["gate_model"] == "failed"
    for task_id in ("sign_model", "push_model", "approve_release", "promote_model"):
        assert states[task_id] == "upstream_failed", states
    after, _ = registry.resolve("pedestrian-detector", "production")
    assert after == before
    from secmlops.audit import read_audit_log

    entries = read_audit_log(Path(workspace.env["SECMLOPS_AUDIT_LOG"]))
    gate_entries = [e for e in entries if e["stage"] == "gate"]
    assert gate_entries[-1]["decision"] == "fail"
    assert any(e["action"] == "task_failed" and "gate_model" in e["subject"] for e in entries)


def test_monitoring_a_drifted_window_emits_a_retraining_request(dagbag, released, workspace):
    """Foggy requests served by the production model -> drift -> `retraining-request` asset."""
    import torch

    from secmlops.models import load
    from secmlops.monitoring.reference import describe_images, load_profile, load_split_images
    from secmlops.policy import load_policy
    from secmlops.registry import Registry
    from secmlops.serving.inference_log import InferenceLog
    from secmlops.settings import Settings

    registry = Registry.open(workspace.env["SECMLOPS_REGISTRY"])
    folder = workspace.root / "served-model"
    settings = Settings.from_env()
    registry.pull("pedestrian-detector", "production", folder, settings.keyring(),
                  load_policy(settings.policy), audit=settings.audit(), overwrite=True)  # fmt: skip
    model, (_, projection) = load(folder), load_profile(folder)
    images = load_split_images(workspace.root / "incoming" / "street", "test", 40)
    fog = [(image * 0.4 + 0.45).clamp(0, 1) for image in images]
    log = InferenceLog(workspace.env["SECMLOPS_INFERENCE_LOG"])
    with torch.no_grad():
        rows = describe_images(model, fog, projection)
    for i, row in enumerate(rows):
        score = row.pop("adversarial_score")
        embedding = [row.pop(c) for c in projection.columns]
        log.append({"request_id": f"fog-{i}", "features": row, "embedding": embedding,
                    "adversarial_score": score, "screening": {"flagged": False}})  # fmt: skip
    run = dagbag.get_dag("secmlops_monitoring").test(run_conf={"window_minutes": 30})
    assert run.state == "success", task_states(run)
    assert task_states(run)["request_retraining"] == "success"
    (event,) = asset_events("retraining-request")[-1:]
    assert event["reason"] == "drift"
    report = Path(event["evidence"]["drift"]["html_report"])
    assert report.is_file() and report.stat().st_size > 1000
    # The next hour, the same drift is cooling down: no second request, the suppression audited.
    run = dagbag.get_dag("secmlops_monitoring").test(run_conf={"window_minutes": 30})
    assert task_states(run)["request_retraining"] == "skipped"
    assert len(asset_events("retraining-request")) == 1
    from secmlops.audit import read_audit_log

    entries = read_audit_log(Path(workspace.env["SECMLOPS_AUDIT_LOG"]))
    assert entries[-1]["action"] == "suppress_retraining_request"
    assert entries[-1]["details"]["suppressed"] == ["drift"]
