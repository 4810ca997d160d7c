"""Every DAG file imports cleanly, stays light at parse time, and follows the conventions."""

import json
import subprocess
import sys

import pytest

from .conftest import DAGS_FOLDER

DAG_FILES = sorted(DAGS_FOLDER.glob("*.py"))
TASK_VERBS = {
    "plan", "prepare", "train", "evaluate", "pull", "verify", "validate", "screen", "gate", "sign",
    "push", "promote", "monitor", "emit", "check", "read", "request", "deploy", "run", "report",
    "summarize", "approve",
}  # fmt: skip


def test_every_dag_file_imports_without_errors(dagbag):
    assert dagbag.import_errors == {}
    assert {path.stem for path in DAG_FILES} <= set(dagbag.dag_ids)


@pytest.mark.parametrize("path", DAG_FILES, ids=[p.stem for p in DAG_FILES])
def test_parsing_imports_neither_torch_nor_art(path):
    probe = (
        "import json, runpy, sys; runpy.run_path(sys.argv[1]); "
        "print(json.dumps([m for m in ('torch', 'art', 'cv2', 'secmlops.training.trainer') "
        "if m in sys.modules]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe, str(path)], capture_output=True, text=True, check=True
    )
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []


def test_dags_follow_naming_and_documentation_conventions(dagbag):
    for dag_id, dag in dagbag.dags.items():
        assert dag_id.startswith("secmlops_")
        assert dag.doc_md and dag.tags and "secmlops" in dag.tags
        for task in dag.tasks:
            assert task.owner == "secmlops"
            verb = task.task_id.split("_")[0]
            assert verb in TASK_VERBS, f"{dag_id}.{task.task_id} should start with a verb"


@pytest.mark.parametrize("path", DAG_FILES, ids=[p.stem for p in DAG_FILES])
def test_each_dag_file_parses_in_under_two_seconds(path):
    """Measured in a fresh interpreter, as the dag-processor would (module import included)."""
    probe = (
        "import sys, time, runpy; import airflow.sdk; started = time.perf_counter(); "
        "runpy.run_path(sys.argv[1]); print(time.perf_counter() - started)"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe, str(path)], capture_output=True, text=True, check=True
    )
    assert float(done.stdout.strip().splitlines()[-1]) < 2.0


def test_every_deploy_and_promote_task_is_downstream_of_every_gate(dagbag):
    for dag_id, dag in dagbag.dags.items():
        gates = [t for t in dag.tasks if t.task_id.startswith("gate")]
        releases = [
            t for t in dag.tasks if t.task_id.split("_")[0] in {"deploy", "promote", "push"}
        ]
        if releases:
            assert gates, f"{dag_id} releases a model without any gate"
        for release in releases:
            upstream = release.get_flat_relative_ids(upstream=True)
            for gate in gates:
                assert gate.task_id in upstream, (
                    f"{dag_id}: {release.task_id} bypasses {gate.task_id}"
                )


def test_trigger_forms_have_typed_params_and_tasks_have_retries_and_timeouts(dagbag):
    training = dagbag.get_dag("secmlops_training")
    schema = {name: param.schema for name, param in training.params.items()}
    assert schema["adversarial"]["enum"] == ["fgsm-rs", "pgd", "none"]
    assert schema["policy_overrides"]["type"] == "array" and "override_reason" in schema
    for dag in dagbag.dags.values():
        for task in dag.tasks:
            assert task.execution_timeout is not None or not task.task_id.startswith(
                ("train", "evaluate", "pull", "check")
            ), f"{dag.dag_id}.{task.task_id} has no timeout"
            assert task.on_failure_callback, f"{dag.dag_id}.{task.task_id}: failures not audited"


def test_every_task_turns_a_refusal_into_a_failure_without_retries(dagbag):
    """Every task is a `lifecycle_task` (or the approval, which judges its answer under the same
    `refusals_fail_the_task` and never retries): a new control's refusal needs no wiring."""
    from secmlops.airflow_support import REFUSALS_FAIL_MARK, ProductionApproval

    for dag in dagbag.dags.values():
        for task in dag.tasks:
            if isinstance(task, ProductionApproval):
                assert task.retries == 0 and task.fail_on_reject, task.task_id
                continue
            callable_ = getattr(task, "python_callable", None)
            assert getattr(callable_, REFUSALS_FAIL_MARK, False), f"{dag.dag_id}.{task.task_id}"


def test_production_is_promoted_only_after_a_person_approves(dagbag):
    """The gate passes, then a person approves (Human-in-the-loop), then production moves."""
    from secmlops.airflow_support import ProductionApproval

    training = dagbag.get_dag("secmlops_training")
    approvals = [t for t in training.tasks if isinstance(t, ProductionApproval)]
    assert [t.task_id for t in approvals] == ["approve_release"]
    approval = approvals[0]
    assert approval.response_timeout is not None  # no answer fails the run, never waits forever
    upstream = approval.get_flat_relative_ids(upstream=True)
    assert {"gate_model", "push_model", "summarize_release"} <= upstream
    assert "approve_release" in training.get_task("promote_model").get_flat_relative_ids(
        upstream=True
    )


def test_the_trigger_form_refuses_an_eps_the_trainer_would_refuse(dagbag):
    import re

    from secmlops.attacks.budget import parse_eps
    from secmlops.errors import ModelError

    pattern = dagbag.get_dag("secmlops_training").params.get_param("eps").schema["pattern"]
    for text in ("4/255", "8/255", "0.0157", "1", ".5"):
        assert re.match(pattern, text) and parse_eps(text) > 0
    for text in ("0", "0.0", "4/0", "0/255", "4/255/2", "-1", "nan", ""):
        assert not re.match(pattern, text), text
        with pytest.raises(ModelError):
            parse_eps(text)


def test_the_forms_choices_are_the_librarys():
    from secmlops.lifecycle.contracts import ARCHITECTURES
    from secmlops.models import ARCHITECTURES as BUILT

    assert ARCHITECTURES == BUILT
