"""`dvc repro` runs the project's pipeline (dvc.yaml) in a copy of the repository."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from .conftest import REPO_ROOT

BIN = Path(sys.executable).parent


def copy_of_repository(target: Path) -> Path:
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO_ROOT, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    for name in files:
        if (REPO_ROOT / name).is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO_ROOT / name, target / name)
    subprocess.run(["git", "init", "--quiet"], cwd=target, check=True)
    return target


def dvc(*args, cwd):
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1"}
    done = subprocess.run(
        [str(BIN / "dvc"), *args], cwd=cwd, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, f"dvc {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_dvc_repro_runs_data_validate_train_evaluate(tmp_path):
    repo = copy_of_repository(tmp_path / "repo")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["data"]["images"] = 30
    params["train"]["epochs"] = 1
    (repo / "params.yaml").write_text(yaml.safe_dump(params))

    dvc("repro", cwd=repo)
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    assert set(lock["stages"]) == {"data", "validate", "train", "evaluate"}
    metrics = json.loads((repo / "runs/dvc/metrics.json").read_text())
    assert 0.0 <= metrics["mAP50"] <= 1.0
    assert "mAP50" in dvc("metrics", "show", "--json", cwd=repo)
    history = json.loads((repo / "runs/dvc/training_history.json").read_text())
    assert [row["epoch"] for row in history] == [1.0]
    # Nothing changed, so nothing reruns.
    assert "didn't change" in dvc("repro", cwd=repo) or "up to date" in dvc("status", cwd=repo)
