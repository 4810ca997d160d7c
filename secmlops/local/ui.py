"""`make ui`: the demo's workspace in the Airflow UI, until Ctrl-C.

`serve_ui(workdir)` reads the workspace's `secmlops.env` (written by `make demo`), starts the same
local Airflow as the demo (`secmlops.local.airflow_runner`: api-server, scheduler, dag-processor;
this repo's dags/ and plugins/) in `<workdir>/airflow`, so the demo's runs are there, says where
the UI is and how to log in, and waits. On SIGINT (Ctrl-C) or SIGTERM it stops every process it
started, with their children (whole process groups, then any task process left in the home), and
returns. A second Ctrl-C while it stops does not cut the stop short.

The DAGs keep the demo's manual cadence: only a trigger (the UI, the REST API) starts a data pull
or a monitoring window.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType

from secmlops.errors import SecMLOpsError

DEFAULT_PORT = 8080
HOST = "127.0.0.1"
VIEW_PATH = "/plugin/secmlops"  # the SecMLOps entry of the UI's navigation (docs/ui.md)


class PortInUse(SecMLOpsError):
    """Something already listens on the port the UI should use."""


def serve_ui(
    workdir: Path,
    port: int = DEFAULT_PORT,
    say: Callable[[str], None] = print,
    poll_s: float = 1.0,
) -> None:
    """Open the workspace `workdir` in the Airflow UI on 127.0.0.1:`port` until SIGINT/SIGTERM.

    Raises:
        WorkspaceError: `workdir` holds no workspace (run `make demo` first); nothing started.
        PortInUse: `port` is taken; nothing started.
        AirflowError: Airflow did not start, or one of its processes died (with the logs' tails);
            whatever had started is stopped.
    """
    from secmlops.local.airflow_runner import launch
    from secmlops.local.demo import MANUAL_CADENCE
    from secmlops.local.workspace import read_workspace_env

    root = Path(workdir).resolve()
    env = read_workspace_env(root)
    _check_port_free(port)
    home = root / "airflow"
    home.mkdir(exist_ok=True)
    with _stop_signals() as stopping:
        server = None
        try:
            say(f"starting Airflow in {home} (api-server, scheduler, dag-processor) ...")
            server = launch(home, {**env, **MANUAL_CADENCE}, port=port)
            lines = {
                "Airflow UI": server.base_url,
                "user": server.username,
                "password": server.password,
                "SecMLOps view": f"{server.base_url}{VIEW_PATH}",
                "workspace": f"{root} (settings from {root / 'secmlops.env'})",
                "logs": str(home / "process-logs"),
            }
            for name, value in lines.items():
                say(f"{name:14} {value}")
            say("DAGs run when triggered. Ctrl-C stops Airflow and every process it started.")
            while True:
                server.check_running()
                time.sleep(poll_s)
        except KeyboardInterrupt:
            pass
        finally:
            stopping()
            if server is not None:
                say("stopping Airflow ...")
                server.stop()
    say("stopped")


def _check_port_free(port: int) -> None:
    with socket.socket() as sock:
        try:
            sock.bind((HOST, port))
        except OSError as exc:
            raise PortInUse(
                f"{HOST}:{port} is in use ({exc.strerror}); pass another --port"
            ) from None


@contextlib.contextmanager
def _stop_signals() -> Iterator[Callable[[], None]]:
    """SIGINT and SIGTERM raise KeyboardInterrupt once; yields `stopping()`, after which (and
    after the first signal) both are ignored, so nothing interrupts the stop. Restores the
    previous handlers on exit."""
    state = {"stopping": False}

    def handler(signum: int, frame: FrameType | None) -> None:
        if not state["stopping"]:
            state["stopping"] = True
            raise KeyboardInterrupt

    def stopping() -> None:
        state["stopping"] = True

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stopping
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
