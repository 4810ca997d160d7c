"""A real, local Airflow for `make demo`, `make ui` and the end-to-end tests: `airflow db migrate`,
then api-server, scheduler and dag-processor as separate processes on 127.0.0.1, as a deployment
runs them (LocalExecutor, SQLite: the embedded defaults; docker/ has the production topology).

`launch(home, extra_env)` starts one (about 30-60 s on 2 cores) and returns an `AirflowServer`,
whose `stop()` stops whole process groups (the LocalExecutor's workers too) and any task process
still working in its home. SQLite in AIRFLOW_HOME (a fresh one, or one reused with its runs),
LocalExecutor with parallelism 2, this repo's dags/ and plugins/, SimpleAuthManager with one user
`admin` whose password is known, a fixed JWT secret shared by the processes. The server's
environment is this process's without any AIRFLOW_* or SECMLOPS_* variable (callers set those on
purpose, through `extra_env`). If a server does not come up, the tails of its logs are in the
error.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from secmlops.settings import ENV_PREFIX

AIRFLOW = Path(sys.executable).with_name("airflow")
REPO_ROOT = Path(__file__).resolve().parents[2]


class AirflowError(RuntimeError):
    """Airflow did not start, a process died, or a wait timed out (the logs' tails attached)."""


COMPONENTS = ("api-server", "scheduler", "dag-processor")
# Variables of this process that the server does not inherit (callers pass them in `extra`).
NOT_INHERITED = ("AIRFLOW", ENV_PREFIX)
# The queues a local Celery worker serves: CPU tasks and, on a machine with a GPU, training.
CELERY_QUEUES = "default,gpu"
ADMIN = "admin"
# A second person: approves releases for production (the admin triggers runs, and the one who
# triggers a run cannot approve it).
APPROVER = "approver"
APPROVAL_SETTLE_S = 10.0
START_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 20.0


@dataclass
class AirflowServer:
    """A running Airflow: its URL, credentials, environment, processes and logs."""

    base_url: str
    home: Path
    env: dict[str, str]
    username: str
    password: str
    logs: dict[str, Path]
    approver_password: str = ""
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def command(self, name: str) -> list[str]:
        """The command line of component `name` (`celery-worker` listens on CELERY_QUEUES)."""
        if name == "api-server":
            port = self.base_url.rsplit(":", 1)[1]
            return [str(AIRFLOW), name, "--host", "127.0.0.1", "--port", port]
        if name == "celery-worker":
            return [str(AIRFLOW), "celery", "worker", "--queues", CELERY_QUEUES,
                    "--concurrency", "1", "--without-gossip", "--without-mingle"]  # fmt: skip
        return [str(AIRFLOW), name]

    def start_process(self, name: str) -> None:
        """Start (or restart, after `kill`) one component in its own process group."""
        self.logs.setdefault(name, self.home / "process-logs" / f"{name}.log")
        self.processes[name] = subprocess.Popen(
            self.command(name),
            env=self.env,
            cwd=self.home,
            stdout=self.logs[name].open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so stop() reaches its children
        )

    def kill(self, name: str) -> None:
        """SIGKILL one component and everything it started (a crashed machine, not a shutdown)."""
        process = self.processes.pop(name)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)

    def token(self, user: str | None = None) -> str:
        """A fresh JWT from `POST /auth/token` (SimpleAuthManager), for `Authorization: Bearer`,
        as the admin (default) or as `APPROVER`."""
        password = self.approver_password if user == APPROVER else self.password
        response = httpx.post(
            f"{self.base_url}/auth/token",
            json={"username": user or self.username, "password": password},
            timeout=30,
        )
        response.raise_for_status()
        return response.json()["access_token"]

    def client(self, token: str | None = None, user: str | None = None) -> httpx.Client:
        """An HTTP client on `base_url` that sends a bearer token (a fresh one of `user`,
        default the admin)."""
        headers = {"Authorization": f"Bearer {token or self.token(user)}"}
        return httpx.Client(base_url=self.base_url, headers=headers, timeout=60)

    def health(self) -> dict[str, Any]:
        """`GET /api/v2/monitor/health` (no auth needed)."""
        response = httpx.get(f"{self.base_url}/api/v2/monitor/health", timeout=10)
        response.raise_for_status()
        return response.json()

    def wait_until(
        self, condition: Callable[[], Any], timeout_s: float = 120.0, every_s: float = 1.0
    ) -> Any:
        """Poll `condition()` until it returns something truthy; fail with the logs' tails."""
        deadline = time.monotonic() + timeout_s
        while True:
            self.check_running()
            with contextlib.suppress(httpx.HTTPError):
                if result := condition():
                    return result
            if time.monotonic() > deadline:
                raise AirflowError(f"condition not met in {timeout_s:.0f} s\n{self.log_tails()}")
            time.sleep(every_s)

    def check_running(self) -> None:
        """Fail (with the logs' tails) if one of the processes has exited."""
        dead = {name: p.returncode for name, p in self.processes.items() if p.poll() is not None}
        if dead:
            raise AirflowError(f"Airflow processes exited: {dead}\n{self.log_tails()}")

    def log_tails(self, lines: int = 40) -> str:
        """The last `lines` lines of every log, for failure messages."""
        parts = []
        for name, path in self.logs.items():
            text = path.read_text(errors="replace").splitlines() if path.exists() else []
            parts.append(f"----- {name} ({path}), last {lines} lines -----")
            parts.extend(text[-lines:])
        return "\n".join(parts)

    def stop(self) -> None:
        """Stop every process group: SIGTERM, then SIGKILL after `STOP_TIMEOUT_S`."""
        for process in self.processes.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for process in self.processes.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            # The group may outlive its leader (executor workers): kill what is left.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=5)
        # Task processes may leave the group (the task supervisor starts its own session);
        # they all run in this server's home: kill whatever is still there.
        for pid in _processes_in(self.home):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)


def _processes_in(folder: Path) -> list[int]:
    """PIDs of this user's processes whose working directory is `folder` or below (Linux)."""
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError):
            if (
                Path(os.readlink(entry / "cwd")).is_relative_to(folder)
                and int(entry.name) != os.getpid()
            ):
                found.append(int(entry.name))
    return found


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def airflow_env(
    home: Path, port: int, password_file: Path, extra: Mapping[str, str]
) -> dict[str, str]:
    """The server's environment (see the module docstring)."""
    base_url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(NOT_INHERITED)}
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO_ROOT / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": "2",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
            "AIRFLOW__CORE__AUTH_MANAGER": (
                "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
            ),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{ADMIN}:admin,{APPROVER}:op",
            # Never every request as an anonymous admin: who approved must be a real user.
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(password_file),
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(48),
            "AIRFLOW__API__SECRET_KEY": secrets.token_hex(32),
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(port),
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__API__BASE_URL": base_url,
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{base_url}/execution/",
            "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(home / "logs"),
            "OMP_NUM_THREADS": env.get("OMP_NUM_THREADS", "1"),
            "DO_NOT_TRACK": "1",
            "DVC_NO_ANALYTICS": "1",
        }
    )
    env.update(extra)
    return env


def launch(
    home: Path,
    extra_env: Mapping[str, str],
    components: Sequence[str] = COMPONENTS,
    port: int | None = None,
) -> AirflowServer:
    """Migrate the DB and start `components`; returns once the API answers and is healthy.

    `home` may hold an Airflow of an earlier launch: its DB (DAG runs, pause states) is kept and
    migrated; the admin password and the JWT secret are new. The API listens on 127.0.0.1:`port`
    (default: a free port). Interrupted (Ctrl-C) or failed, it stops what it had started.

    Raises:
        AirflowError: a step failed or the server did not come up in time (with logs).
    """
    port = free_port() if port is None else port
    password, approver_password = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
    password_file = home / "simple_auth_manager_passwords.json.generated"
    password_file.unlink(missing_ok=True)  # a new one, readable by this user only
    password_file.touch(mode=0o600)
    password_file.write_text(json.dumps({ADMIN: password, APPROVER: approver_password}))
    env = airflow_env(home, port, password_file, extra_env)
    logs_dir = home / "process-logs"
    logs_dir.mkdir(exist_ok=True)
    server = AirflowServer(
        base_url=f"http://127.0.0.1:{port}",
        home=home,
        env=env,
        username=ADMIN,
        password=password,
        approver_password=approver_password,
        logs={name: logs_dir / f"{name}.log" for name in ("db-migrate", *components)},
    )
    migrate = subprocess.run(
        [str(AIRFLOW), "db", "migrate"],
        env=env,
        stdout=server.logs["db-migrate"].open("wb"),
        stderr=subprocess.STDOUT,
        timeout=300,
        check=False,
    )
    if migrate.returncode != 0:
        raise AirflowError(
            f"airflow db migrate failed ({migrate.returncode})\n{server.log_tails()}"
        )
    try:
        for name in components:
            server.start_process(name)
        server.wait_until(lambda: _healthy(server, components), timeout_s=START_TIMEOUT_S)
    except BaseException:
        server.stop()
        raise
    return server


def _healthy(server: AirflowServer, components: Sequence[str]) -> bool:
    health = server.health()
    # The health endpoint reports the scheduler, dag-processor and triggerer; a Celery worker
    # shows as the tasks it runs.
    reported = ("scheduler", "dag-processor", "triggerer")
    wanted = ["metadatabase"] + [c.replace("-", "_") for c in components if c in reported]
    return all(health.get(part, {}).get("status") == "healthy" for part in wanted)


# ---------------------------------------------------------------- REST API v2: DAG runs
def trigger_run(api: httpx.Client, dag_id: str, conf: Mapping[str, Any]) -> str:
    """Trigger a run of `dag_id` with `conf`; returns its run id."""
    response = api.post(
        f"/api/v2/dags/{dag_id}/dagRuns", json={"logical_date": None, "conf": dict(conf)}
    )
    response.raise_for_status()
    return response.json()["dag_run_id"]


def _run_path(dag_id: str, run_id: str) -> str:
    return f"/api/v2/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id, safe='')}"


def run_state(api: httpx.Client, dag_id: str, run_id: str) -> str:
    """The run's state (queued, running, success, failed)."""
    response = api.get(_run_path(dag_id, run_id))
    response.raise_for_status()
    return response.json()["state"]


def task_instances(api: httpx.Client, dag_id: str, run_id: str) -> dict[str, dict[str, Any]]:
    """The run's task instances by task id (state, try_number, hostname, queue, ...)."""
    response = api.get(f"{_run_path(dag_id, run_id)}/taskInstances")
    response.raise_for_status()
    return {t["task_id"]: t for t in response.json()["task_instances"]}


def asset_triggered_runs(api: httpx.Client, dag_id: str) -> list[str]:
    """Run ids of the runs of `dag_id` that an asset event scheduled."""
    response = api.get(f"/api/v2/dags/{dag_id}/dagRuns")
    response.raise_for_status()
    return [
        r["dag_run_id"] for r in response.json()["dag_runs"] if r["run_type"] == "asset_triggered"
    ]


def pending_approval(api: httpx.Client, dag_id: str, run_id: str) -> dict[str, Any] | None:
    """The run's Human-in-the-loop request still waiting for an answer, or None."""
    response = api.get(
        "/api/v2/dags/~/dagRuns/~/hitlDetails",
        params={"dag_id_pattern": dag_id, "response_received": False, "state": "awaiting_input"},
    )
    response.raise_for_status()
    waiting = [
        d for d in response.json()["hitl_details"] if d["task_instance"]["dag_run_id"] == run_id
    ]
    return waiting[0] if waiting else None


def answer_approval(api: httpx.Client, request: Mapping[str, Any], option: str) -> dict[str, Any]:
    """Answer a pending request (`pending_approval`) with `option` ("Approve" or "Reject"), as
    the user `api` logged in as; returns Airflow's record of the answer (who, when).

    Raises:
        httpx.HTTPStatusError: the user may not answer it, or it was answered already (409).
    """
    ti = request["task_instance"]
    response = api.patch(
        f"{_run_path(ti['dag_id'], ti['dag_run_id'])}/taskInstances/{ti['task_id']}/"
        f"{ti['map_index']}/hitlDetails",
        json={"chosen_options": [option], "params_input": {}},
    )
    response.raise_for_status()
    return dict(response.json())


def wait_for_success(
    server: AirflowServer, api: httpx.Client, dag_id: str, run_id: str, timeout_s: float,
    watch: Callable[[], None] | None = None,
) -> None:  # fmt: skip
    """Wait until the run succeeds.

    Args:
        watch: called at every poll (`secmlops.local.story.RunProgress` prints progress).

    Raises:
        AirflowError: the run failed (with its task states and the logs' tails), or timed out.
    """

    def finished() -> bool:
        if watch:
            watch()
        state = run_state(api, dag_id, run_id)
        if state == "failed":
            states = {k: t["state"] for k, t in task_instances(api, dag_id, run_id).items()}
            raise AirflowError(f"{dag_id} run {run_id} failed: {states}\n{server.log_tails()}")
        return state == "success"

    server.wait_until(finished, timeout_s=timeout_s, every_s=3)


def wait_for_approval_request(
    server: AirflowServer, api: httpx.Client, dag_id: str, run_id: str, timeout_s: float,
    watch: Callable[[], None] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Wait until the run asks a person for approval; returns the request (subject, body, ...).

    Args:
        watch: called at every poll (see `wait_for_success`).

    Raises:
        AirflowError: the run failed before asking (with its task states and logs), or timed out.
    """

    def asked() -> dict[str, Any] | None:
        if watch:
            watch()
        if run_state(api, dag_id, run_id) == "failed":
            states = {k: t["state"] for k, t in task_instances(api, dag_id, run_id).items()}
            raise AirflowError(f"{dag_id} run {run_id} failed: {states}\n{server.log_tails()}")
        request = pending_approval(api, dag_id, run_id)
        if request is None:
            return None
        task = task_instances(api, dag_id, run_id).get(request["task_instance"]["task_id"], {})
        return request if task.get("state") == "awaiting_input" else None

    request: dict[str, Any] = server.wait_until(asked, timeout_s=timeout_s, every_s=3)
    # An answer within about a second of the task parking races Airflow 3.3's scheduler: the
    # executor's late "success" event for the parked attempt meets the task already re-queued
    # by the answer, and the scheduler fails it. A person never answers that fast; a script
    # waits for the scheduler to settle first (5 s was not always enough with the test suite's
    # two workers loading both cores: the scheduler then failed the task before the answer
    # was judged, and the refusal the test expects was never audited).
    time.sleep(APPROVAL_SETTLE_S)
    return request


def approve_as_second_user(
    server: AirflowServer, api: httpx.Client, dag_id: str, run_id: str, timeout_s: float,
    watch: Callable[[], None] | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:  # fmt: skip
    """Wait for the run's approval request and approve it as `APPROVER` (not the admin who
    triggers runs); returns (the request, Airflow's record of the answer).

    Raises:
        AirflowError: the run failed before asking, or did not ask in time.
    """
    request = wait_for_approval_request(server, api, dag_id, run_id, timeout_s, watch)
    with server.client(user=APPROVER) as approver:
        return request, answer_approval(approver, request, "Approve")
