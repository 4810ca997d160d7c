"""Every DAG file imports cleanly, stays light at parse time, and follows the conventions."""

import json
import subprocess
import sys

import pytest

from .conftest import DAGS_FOLDER

DAG_FILES = sorted(DAGS_FOLDER.glob("*.py"))
TASK_VERBS = {
    "prepare", "train", "evaluate", "pull", "verify", "validate", "screen", "gate", "sign",
    "push", "promote", "monitor", "emit", "check", "read", "request", "deploy", "run", "report",
}  # fmt: skip


def test_every_dag_file_imports_without_errors(dagbag):
    assert dagbag.import_errors == {}
    assert {path.stem for path in DAG_FILES} <= set(dagbag.dag_ids)


@pytest.mark.parametrize("path", DAG_FILES, ids=[p.stem for p in DAG_FILES])
def test_parsing_imports_neither_torch_nor_art(path):
    probe = (
        "import json, runpy, sys; runpy.run_path(sys.argv[1]); "
        "print(json.dumps([m for m in ('torch', 'art', 'cv2', 'secmlops.training') "
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
