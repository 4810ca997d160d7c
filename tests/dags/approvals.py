"""A person answering the training run's approval, through Airflow's REST API, while `dag.test()`
runs the DAG in the foreground.

The responder runs in a thread: it waits until the run's `approve_release` task asks for input
(`GET .../hitlDetails`), logs in as a SimpleAuthManager user (`POST /auth/token`) and answers
(`PATCH .../hitlDetails`), exactly as the UI's "Required Actions" page does. Airflow's API app runs
in process (FastAPI's TestClient): no port, nothing but the real routes and auth.

`dag.test()` waits for ever on a task awaiting input, and no scheduler runs to time it out, so
`expire` runs the scheduler's own timeout sweep once the approval's timeout has passed.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

TASK_ID = "approve_release"


@dataclass
class Answer:
    """What the responder did: the HTTP status of its answer, and any error."""

    status: int | None = None
    error: str | None = None
    done: threading.Event = field(default_factory=threading.Event)


class Approvals:
    """Answers pending approvals of the training DAG as one of `passwords`' users."""

    def __init__(self, passwords: dict[str, str], timeout_s: float) -> None:
        # Import and configure Airflow's models and build the app here, in the main thread:
        # doing it first from the responder thread while dag.test() imports the same modules
        # deadlocks (the import lock against SQLAlchemy's mapper configuration lock).
        import sqlalchemy.orm
        from airflow.api_fastapi.app import create_app, purge_cached_app
        from airflow.api_fastapi.auth.managers.base_auth_manager import BaseAuthManager
        from airflow.jobs.scheduler_job_runner import SchedulerJobRunner  # noqa: F401
        from airflow.models import import_all_models
        from fastapi.testclient import TestClient

        import_all_models()
        sqlalchemy.orm.configure_mappers()
        # A fresh auth manager with these users (an earlier test may have built another app).
        purge_cached_app()
        BaseAuthManager._get_token_signer.cache_clear()
        BaseAuthManager._get_token_validator.cache_clear()
        self.client = TestClient(create_app(apps="core"))
        self.passwords, self.timeout_s = passwords, timeout_s
        self.last_error: str | None = None

    def _headers(self, user: str) -> dict[str, str]:
        response = self.client.post(
            "/auth/token", json={"username": user, "password": self.passwords[user]}
        )
        response.raise_for_status()
        return {"Authorization": f"Bearer {response.json()['access_token']}"}

    def _pending(self, headers: dict[str, str], dag_id: str) -> dict[str, Any] | None:
        response = self.client.get(
            "/api/v2/dags/~/dagRuns/~/hitlDetails",
            params={
                "response_received": False,
                "state": "awaiting_input",
                "dag_id_pattern": dag_id,
                "task_id": TASK_ID,
            },
            headers=headers,
        )
        response.raise_for_status()
        details = response.json()["hitl_details"]
        return details[-1] if details else None

    def answer(
        self, user: str, option: str = "Approve", dag_id: str = "secmlops_training",
        wait_s: float = 1800,
    ) -> Answer:  # fmt: skip
        """Start a thread that answers the next pending approval of `dag_id` as `user`."""
        answer = Answer()

        def respond() -> None:
            deadline = time.monotonic() + wait_s
            try:
                while (status := self._try_answer(user, option, dag_id)) is None:
                    if time.monotonic() > deadline:
                        raise TimeoutError(
                            f"no approval of {dag_id} answered within {wait_s} s "
                            f"(last error: {self.last_error})"
                        )
                    time.sleep(0.5)
                answer.status = status
            except Exception as exc:  # reported to the test, which asserts on it
                answer.error = f"{type(exc).__name__}: {exc}"
                # dag.test() in the main thread would wait for ever on the unanswered task:
                # fail it, so the run ends and the test reports this error.
                _fail_when_waiting(dag_id, wait_s)
            finally:
                answer.done.set()

        threading.Thread(target=respond, daemon=True).start()
        return answer

    def _try_answer(self, user: str, option: str, dag_id: str) -> int | None:
        """Answer the pending approval: the answer's HTTP status, or None when none is pending
        yet or the API could not be reached (SQLite busy while dag.test() writes, on a loaded
        machine: the caller tries again)."""
        try:
            headers = self._headers(user)
            pending = self._pending(headers, dag_id)
            if pending is None:
                return None
            ti = pending["task_instance"]
            url = (
                f"/api/v2/dags/{ti['dag_id']}/dagRuns/{ti['dag_run_id']}/taskInstances/"
                f"{ti['task_id']}/{ti['map_index']}/hitlDetails"
            )
            response = self.client.patch(
                url, json={"chosen_options": [option], "params_input": {}}, headers=headers
            )
        except Exception as exc:
            self.last_error = f"{type(exc).__name__}: {exc}"
            return None
        if response.status_code >= 500:
            self.last_error = f"HTTP {response.status_code}: {response.text[:200]}"
            return None
        return response.status_code

    def expire(self, dag_id: str = "secmlops_training", wait_s: float = 600) -> Answer:
        """Start a thread that, once the approval is pending and its timeout has passed, runs
        the scheduler's timeout sweep (what the scheduler does every few seconds)."""
        answer = Answer()

        def sweep() -> None:
            try:
                import logging

                from airflow.jobs.scheduler_job_runner import SchedulerJobRunner

                headers = self._headers(next(iter(self.passwords)))
                deadline = time.monotonic() + wait_s
                while self._pending(headers, dag_id) is None:
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"no approval of {dag_id} asked within {wait_s} s")
                    time.sleep(0.5)
                time.sleep(self.timeout_s + 1)

                class _Runner:  # the sweep only needs the runner's logger
                    log = logging.getLogger("approval-timeout-sweep")

                SchedulerJobRunner.check_awaiting_input_timeouts(_Runner())  # type: ignore[arg-type]
            except Exception as exc:
                answer.error = f"{type(exc).__name__}: {exc}"
            finally:
                answer.done.set()

        threading.Thread(target=sweep, daemon=True).start()
        return answer


def _fail_when_waiting(dag_id: str, wait_s: float) -> None:
    """Fail `dag_id`'s approval task once it awaits input (within `wait_s`)."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from airflow.utils.state import TaskInstanceState

    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        with create_session() as session:
            waiting = (
                session.query(TaskInstance)
                .filter(TaskInstance.dag_id == dag_id, TaskInstance.task_id == TASK_ID)
                .filter(TaskInstance.state == TaskInstanceState.AWAITING_INPUT)
                .all()
            )
            for ti in waiting:
                ti.state = TaskInstanceState.FAILED
        if waiting:
            return
        time.sleep(0.5)
