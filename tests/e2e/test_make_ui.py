"""`make ui` as a user runs it: the `secmlops ui` console script on a small workspace, on
127.0.0.1. It prints the UI's URL and login; with that login the REST API lists the lifecycle
DAGs and the SecMLOps view answers; Ctrl-C (SIGINT) ends the command with status 0 and leaves
none of the processes it started (api-server, scheduler, dag-processor, executor workers,
log server) running.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from secmlops.local.airflow_runner import free_port

from ..conftest import REPO_ROOT

SECMLOPS = Path(sys.executable).with_name("secmlops")
LIFECYCLE_DAGS = {
    "secmlops_data_pull",
    "secmlops_training",
    "secmlops_monitoring",
    "secmlops_tradeoffs",
}
READY_S = 240.0
STOP_S = 60.0

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def test_ui_without_a_workspace_says_to_run_make_demo(tmp_path):
    done = subprocess.run(
        [str(SECMLOPS), "ui", "--workdir", str(tmp_path / "nothing"), "--port", str(free_port())],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2, done
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error:") and "make demo" in lines[0], lines
    assert not (tmp_path / "nothing").exists()  # nothing was created or started


def test_ui_serves_the_workspace_and_ctrl_c_stops_every_process(tmp_path):
    from secmlops.local.workspace import create_workspace

    space = create_workspace(
        tmp_path / "workspace", images=8, seed=1, width=64, height=64,
        policy_source=REPO_ROOT / "policy.yaml",
    )  # fmt: skip
    home = space.root / "airflow"
    port = free_port()
    output = tmp_path / "ui.out"
    started: list[psutil.Process] = []
    with output.open("wb") as sink:
        ui = subprocess.Popen(
            [str(SECMLOPS), "ui", "--workdir", str(space.root), "--port", str(port)],
            stdout=sink,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    try:
        printed = _wait_for_login(ui, output)
        url = f"http://127.0.0.1:{port}"
        assert printed["Airflow UI"] == url, printed
        assert printed["user"] == "admin", printed
        assert printed["SecMLOps view"] == f"{url}/plugin/secmlops", printed

        response = httpx.post(
            f"{url}/auth/token",
            json={"username": printed["user"], "password": printed["password"]},
            timeout=30,
        )
        assert response.status_code in (200, 201), response.text
        bearer = {"Authorization": f"Bearer {response.json()['access_token']}"}
        with httpx.Client(base_url=url, headers=bearer, timeout=30) as api:
            _wait_for_dags(ui, api, output)
            view = api.get("/secmlops/")
            assert view.status_code == 200, view.text[:2000]
            assert "SecMLOps" in view.text
        assert httpx.get(f"{url}/secmlops/", timeout=30).status_code == 401  # no token

        started = _processes_of(ui.pid, home)
        commands = " ".join(" ".join(p.cmdline()) for p in started)
        for component in ("api_server", "scheduler", "dag-processor"):
            assert component in commands, commands
        ui.send_signal(signal.SIGINT)
        assert ui.wait(timeout=STOP_S) == 0, output.read_text(errors="replace")
        assert output.read_text().rstrip().endswith("stopped")
        left = [p for p in started if _alive(p)]
        left += [p for p in _processes_of(None, home) if p not in left]
        assert not left, [(p.pid, p.cmdline()) for p in left]
    finally:
        # A failed test leaves nothing running either.
        if ui.poll() is None:
            started += _processes_of(ui.pid, home)
            ui.kill()
        for process in started + _processes_of(None, home):
            with contextlib.suppress(psutil.Error):
                process.kill()
        ui.wait(timeout=30)


def _wait_for_login(ui: subprocess.Popen[bytes], output: Path) -> dict[str, str]:
    """The `name   value` lines the command prints once the UI is up."""
    deadline = time.monotonic() + READY_S
    while True:
        text = output.read_text(errors="replace")
        if "Ctrl-C" in text:
            break
        assert ui.poll() is None, f"secmlops ui exited ({ui.returncode}):\n{text}"
        assert time.monotonic() < deadline, f"no login printed in {READY_S:.0f} s:\n{text}"
        time.sleep(0.5)
    pattern = r"^(Airflow UI|user|password|SecMLOps view)\s+(\S+)$"
    return {m[1]: m[2] for m in re.finditer(pattern, text, flags=re.MULTILINE)}


def _wait_for_dags(ui: subprocess.Popen[bytes], api: httpx.Client, output: Path) -> None:
    """Until `GET /api/v2/dags` lists the lifecycle DAGs (the dag-processor parses them)."""
    deadline = time.monotonic() + READY_S
    while True:
        response = api.get("/api/v2/dags", params={"limit": 100})
        assert response.status_code == 200, response.text
        listed = {dag["dag_id"] for dag in response.json()["dags"]}
        if listed >= LIFECYCLE_DAGS:
            return
        assert ui.poll() is None, output.read_text(errors="replace")
        if time.monotonic() > deadline:
            errors = api.get("/api/v2/importErrors").json()
            pytest.fail(f"DAGs listed: {sorted(listed)}; import errors: {errors}")
        time.sleep(1)


def _processes_of(parent: int | None, home: Path) -> list[psutil.Process]:
    """`parent`'s descendants, and every process that runs in `home` or has it as AIRFLOW_HOME
    (task processes may leave the process tree)."""
    found = {}
    if parent is not None:
        with contextlib.suppress(psutil.NoSuchProcess):
            found = {p.pid: p for p in psutil.Process(parent).children(recursive=True)}
    for process in psutil.process_iter():
        if process.pid in found or process.pid == os.getpid():
            continue
        with contextlib.suppress(psutil.Error, OSError):
            in_home = Path(process.cwd()).is_relative_to(home)
            if in_home or process.environ().get("AIRFLOW_HOME") == str(home):
                found[process.pid] = process
    return [p for p in found.values() if _alive(p)]


def _alive(process: psutil.Process) -> bool:
    """Running and not a zombie (an exited process whose parent has not reaped it yet)."""
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
