"""`make demo`: the whole secure lifecycle, run by a real Airflow on the embedded defaults.

1. A workspace (`secmlops.local.workspace`): keys, a signed synthetic dataset published to a
   local DVC registry, the policy, the environment.
2. Airflow (`secmlops.local.airflow_runner`: scheduler, dag-processor, api-server;
   LocalExecutor, SQLite). `secmlops_data_pull` is triggered through REST API v2 with a JWT; its
   `dataset` asset schedules `secmlops_training` (adversarial training, attack suite, gate, sign,
   push); the run then waits for a person's approval, which a second Airflow user (`approver`)
   gives through the REST API, and the release is promoted.
3. `secmlops serve` serves the promoted model; foggy camera images are sent to it, so its
   inference log drifts; `secmlops_monitoring` is triggered and emits a `retraining-request`.
   The training DAG is paused first, so the requested retraining waits in the queue instead of
   keeping the demo running for another training (unpause it in the UI to let it run).

Its Airflow home (`<workdir>/airflow`) is kept: `make ui` opens it, with the demo's runs.
"""

from __future__ import annotations

import functools
import io
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

DAGS = ("secmlops_data_pull", "secmlops_training", "secmlops_monitoring")
SUMMARY_FILE = "summary.json"
# Manual cadence: only triggers (REST, the UI) start data pulls and monitoring windows (an
# unpaused @daily DAG would also start a run of its own for the last interval).
MANUAL_CADENCE = {"SECMLOPS_DATA_PULL_SCHEDULE": "none", "SECMLOPS_MONITORING_SCHEDULE": "none"}


def _is_found(api: Any, url: str) -> bool:
    return bool(api.get(url).status_code == 200)


def run_demo(
    workdir: Path, images: int = 1000, seed: int = 0, say: Callable[[str], None] = print
) -> dict[str, Any]:
    """Run the lifecycle on Airflow, printing each task and training epoch as it happens.

    Returns:
        The summary (`secmlops.local.story.demo_summary`): what every control decided, with
        `where` (the workspace's paths) added; also written to `<workdir>/summary.json`.

    Raises:
        AirflowError: Airflow did not start, or a run failed or timed out (with its logs).
    """

    from secmlops.audit import verify_audit_log
    from secmlops.fsutil import atomic_write_json
    from secmlops.lifecycle import BASELINE, CANDIDATE
    from secmlops.local.airflow_runner import (
        AirflowError,
        approve_as_second_user,
        asset_triggered_runs,
        launch,
        task_instances,
        trigger_run,
        wait_for_success,
    )
    from secmlops.local.story import RunProgress, demo_summary
    from secmlops.local.workspace import create_workspace
    from secmlops.settings import Settings
    from secmlops.training.trainer import CHECKPOINT_DIR

    stages: dict[str, float] = {}
    clock = started = time.monotonic()

    def stage_done(name: str) -> None:
        nonlocal clock
        now = time.monotonic()
        stages[name] = round(now - clock, 1)
        clock = now

    say(f"workspace {workdir}: keys, {images} signed synthetic scenes, DVC data registry")
    space = create_workspace(Path(workdir), images=images, seed=seed)
    settings = Settings.from_env(space.env)
    home = space.root / "airflow"
    if home.exists():
        import shutil

        shutil.rmtree(home)  # a fresh metadata DB: old runs would confuse the waits below
    home.mkdir(parents=True)
    stage_done("workspace")
    say(f"starting Airflow in {home} (scheduler, dag-processor, api-server; LocalExecutor)")
    # The REST triggers below drive the runs.
    server = launch(home, {**space.env, **MANUAL_CADENCE, "OMP_NUM_THREADS": "1"})
    runs: dict[str, str] = {}
    try:
        with server.client() as api:
            for dag_id in DAGS:
                url = f"/api/v2/dags/{dag_id}"
                server.wait_until(functools.partial(_is_found, api, url))
                api.patch(f"/api/v2/dags/{dag_id}", json={"is_paused": False}).raise_for_status()
            stage_done("airflow_start")
            pull = runs["secmlops_data_pull"] = trigger_run(
                api, "secmlops_data_pull", {"data_rev": space.data_rev}
            )
            say(f"triggered secmlops_data_pull ({pull}) through the REST API")
            wait_for_success(
                server, api, "secmlops_data_pull", pull, 1800,
                RunProgress(api, "secmlops_data_pull", pull, say, started=started),
            )  # fmt: skip
            stage_done("data_pull")
            training = runs["secmlops_training"] = server.wait_until(
                lambda: next(iter(asset_triggered_runs(api, "secmlops_training")), None), 300
            )
            say(f"the dataset asset scheduled secmlops_training ({training})")
            run_dir = settings.run_dir(training)
            progress = RunProgress(
                api, "secmlops_training", training, say,
                {name: run_dir / name / CHECKPOINT_DIR / "state.json"
                 for name in (CANDIDATE, BASELINE)}, started,
            )  # fmt: skip
            # A second Airflow user approves (the one who triggers a run cannot approve it): the
            # demo stays unattended, and the approval is a person's answer through the REST API.
            request, answer = approve_as_second_user(
                server, api, "secmlops_training", training, 4 * 3600, progress
            )
            say(f"the run waited for a person: {request['subject']}")
            say(_indented(request.get("body") or ""))
            say(f"approved by {answer['responded_by']['name']!r} through the REST API")
            wait_for_success(server, api, "secmlops_training", training, 3600, progress)
            stage_done("training_to_release")
            # The requested retraining should queue, not start: pause before monitoring fires.
            api.patch("/api/v2/dags/secmlops_training", json={"is_paused": True})
            served = _serve_foggy_traffic(space.env, space.root)
            say(f"served {served} foggy camera frames through secmlops serve (drift)")
            stage_done("serving")
            monitoring = runs["secmlops_monitoring"] = trigger_run(
                api, "secmlops_monitoring", {"window_minutes": 60}
            )
            wait_for_success(
                server, api, "secmlops_monitoring", monitoring, 1800,
                RunProgress(api, "secmlops_monitoring", monitoring, say, started=started),
            )  # fmt: skip
            tasks = task_instances(api, "secmlops_monitoring", monitoring)
            states = {task_id: t["state"] for task_id, t in tasks.items()}
            if states.get("request_retraining") != "success":
                raise AirflowError(f"monitoring requested no retraining: {states}")
            say("secmlops_monitoring emitted a retraining-request (training is paused: queued)")
            stage_done("monitoring")
            entries = verify_audit_log(Path(space.env["SECMLOPS_AUDIT_LOG"]))
            summary = demo_summary(api, runs, entries, stages)
    finally:
        server.stop()
    summary["where"] = {
        "airflow_home": str(home),
        "registry": space.env["SECMLOPS_REGISTRY"],
        "audit_log": space.env["SECMLOPS_AUDIT_LOG"],
        "runs": str(space.root / "runs"),
        "drift_reports": space.env["SECMLOPS_MONITORING_REPORTS"],
        "env_file": str(space.root / "secmlops.env"),
        "summary": str(space.root / SUMMARY_FILE),
    }
    atomic_write_json(space.root / SUMMARY_FILE, summary)
    return summary


def _indented(text: str) -> str:
    return "\n".join(f"    {line}" for line in text.splitlines())


def _serve_foggy_traffic(env: dict[str, str], root: Path, frames: int = 60) -> int:
    """Start `secmlops serve` on the production model and send it foggy test frames."""
    import httpx
    from PIL import Image

    from secmlops.local.airflow_runner import free_port
    from secmlops.monitoring.reference import load_split_images

    token = secrets.token_urlsafe(24)
    port = free_port()
    secmlops = Path(sys.executable).with_name("secmlops")
    serving = {**env, "SECMLOPS_SERVING_TOKEN": token}  # the workspace's settings and the token
    log = (root / "serve.log").open("wb")
    process = subprocess.Popen(
        [str(secmlops), "serve", "--model-name", "pedestrian-detector", "--port", str(port),
         "--inference-log", env["SECMLOPS_INFERENCE_LOG"]],
        env={**os.environ, **serving},
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"secmlops serve did not start; see {root / 'serve.log'}")
            time.sleep(1)
        images = load_split_images(root / "incoming" / "street", "test", frames)
        for image in images:
            foggy = (image * 0.4 + 0.45).clamp(0, 1).mul(255).byte().permute(1, 2, 0).numpy()
            buffer = io.BytesIO()
            Image.fromarray(foggy).save(buffer, "JPEG", quality=92)
            response = httpx.post(
                f"{url}/v1/detect", files={"image": ("frame.jpg", buffer.getvalue(), "image/jpeg")},
                headers={"Authorization": f"Bearer {token}"}, timeout=60,
            )  # fmt: skip
            response.raise_for_status()
        return len(images)
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()
