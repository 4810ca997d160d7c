"""The production topology on this machine: Airflow with the CeleryExecutor on the local
PostgreSQL (127.0.0.1:5432) and Redis (127.0.0.1:6379), as docker/docker-compose.yaml runs it:
api-server, scheduler, dag-processor and one Celery worker (queues default and gpu), each its own
process. `make test` starts PostgreSQL and Redis when they are not running (Makefile `services`).

`secmlops_training` (a small config), triggered through the REST API, runs every task on the
worker; fault tolerance: the worker is SIGKILLed in the middle of training; the scheduler notices
the dead task (heartbeat timeout), retries it on the restarted worker, which resumes from the last
checkpoint; the run succeeds with exactly one new promoted model, and the registry and the audit
log are consistent. (One run tests both: a second training run would cost CI minutes and cover
nothing more.)
"""

from __future__ import annotations

import json
import secrets
import time
import urllib.parse
from pathlib import Path

import pytest

from secmlops.local.airflow_runner import (
    approve_as_second_user,
    task_instances,
    trigger_run,
    wait_for_success,
)

from ..conftest import REPO_ROOT
from ..dags.test_lifecycle_dags import SMALL_POLICY

PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres", "dbname": "postgres"}
REDIS = ("127.0.0.1", 6379)
MODEL = "pedestrian-detector"
DAG = "secmlops_training"
COMPONENTS = ("api-server", "scheduler", "dag-processor", "celery-worker")
# Training end to end on a shared 2-core machine: above the suite's 15-minute default when loaded.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]


@pytest.fixture(scope="module")
def postgres_url():
    """A fresh database on the local PostgreSQL, dropped afterwards."""
    import psycopg2

    name = f"secmlops_airflow_{secrets.token_hex(4)}"
    admin = psycopg2.connect(**PG)
    admin.autocommit = True
    with admin.cursor() as cursor:
        cursor.execute(f'CREATE DATABASE "{name}"')
    yield f"postgresql+psycopg2://{PG['user']}@{PG['host']}:{PG['port']}/{name}"
    with admin.cursor() as cursor:
        cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.close()


@pytest.fixture(scope="module")
def redis_url():
    """An emptied logical database of the local Redis (the broker)."""
    import redis

    index = 1 + secrets.randbelow(15)
    client = redis.Redis(*REDIS, db=index)
    client.flushdb()
    yield f"redis://{REDIS[0]}:{REDIS[1]}/{index}"
    client.flushdb()


@pytest.fixture(scope="module")
def celery_airflow(start_airflow, postgres_url, redis_url, tmp_path_factory):
    from secmlops.local.workspace import create_workspace

    space = create_workspace(
        tmp_path_factory.mktemp("celery-workspace"), images=200, seed=5, width=160, height=128,
        policy_source=REPO_ROOT / "policy.yaml", policy_overrides=SMALL_POLICY,
        reason="e2e test: a small model on 160 scenes cannot reach the production bar",
    )  # fmt: skip
    env = {
        **space.env,
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": postgres_url,
        "AIRFLOW__CELERY__BROKER_URL": redis_url,
        "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + postgres_url,
        # A dead worker's task is noticed after this many seconds without a heartbeat.
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "30",
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "5",
    }
    server = start_airflow(extra_env=env, components=COMPONENTS)
    with server.client() as api:
        server.wait_until(lambda: api.get("/api/v2/dags/secmlops_training").status_code == 200)
        api.patch("/api/v2/dags/secmlops_training", json={"is_paused": False}).raise_for_status()
    return server, space


def trigger(api, conf: dict) -> str:
    return trigger_run(api, DAG, conf)


def tasks_of(api, run_id: str) -> dict[str, dict]:
    return task_instances(api, DAG, run_id)


def test_training_on_celery_survives_a_killed_worker_and_releases_once(celery_airflow):
    """Every task of the run goes through the Celery worker (PostgreSQL metadata, Redis
    broker); the worker is SIGKILLed mid-training, and the retried task resumes."""
    from secmlops.audit import read_audit_log, verify_audit_log
    from secmlops.fsutil import safe_name
    from secmlops.registry import Registry

    server, space = celery_airflow
    registry = Registry.open(space.env["SECMLOPS_REGISTRY"])
    before = {row["version"] for row in registry.list(MODEL)}
    with server.client() as api:
        health = api.get("/api/v2/monitor/health").json()
        assert health["metadatabase"]["status"] == "healthy"
        # 12 epochs: the kill at epoch 2 or later leaves several to resume (an epoch of 160
        # scenes takes seconds; the wait polls every second).
        run_id = trigger(api, {"epochs": 12, "max_eval_images": 12, "adversarial": "fgsm-rs"})
        state = space.root / "runs" / safe_name(run_id) / "model" / "checkpoints" / "state.json"

        def mid_training() -> bool:
            running = tasks_of(api, run_id).get("train_model", {}).get("state") == "running"
            return running and state.is_file() and json.loads(state.read_text())["epoch"] >= 2

        server.wait_until(mid_training, timeout_s=600, every_s=1)
        killed_at = json.loads(state.read_text())["epoch"]
        server.kill("celery-worker")
        time.sleep(2)
        server.start_process("celery-worker")
        approve_as_second_user(server, api, DAG, run_id, timeout_s=1200)
        wait_for_success(server, api, DAG, run_id, timeout_s=1200)
        tasks = tasks_of(api, run_id)
        train = tasks["train_model"]
        xcom = api.get(
            f"/api/v2/dags/{DAG}/dagRuns/{urllib.parse.quote(run_id, safe='')}"
            "/taskInstances/train_model/xcomEntries/return_value"
        ).json()
    assert {t["state"] for t in tasks.values()} == {"success"}
    # Each task ran through Celery (the executor records the worker's hostname).
    assert all(t["hostname"] for t in tasks.values()), tasks
    assert train["queue"] == "default"
    assert train["try_number"] == 2, train
    trained = xcom["value"] if isinstance(xcom["value"], dict) else json.loads(xcom["value"])
    # The retry continued from the checkpoint the killed attempt left, not from scratch.
    assert trained["resumed_from_epoch"] >= killed_at >= 2, (trained, killed_at)
    assert trained["epochs"] == 12
    after = {row["version"]: row for row in registry.list(MODEL)}
    new = set(after) - before
    assert len(new) == 1, after
    (version,) = new
    assert registry.resolve(MODEL, "production")[0] == version
    audit = Path(space.env["SECMLOPS_AUDIT_LOG"])
    verify_audit_log(audit)  # raises on a broken chain
    entries = read_audit_log(audit)
    pushes = [e for e in entries if e["action"] == "push" and version in e["subject"]]
    promotions = [e for e in entries if e["action"] == "promote" and e["decision"] == "pass"]
    assert len(pushes) == 1 and promotions[-1]["subject"].endswith(version)
