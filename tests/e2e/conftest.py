"""Real Airflow for end-to-end tests (`secmlops.local.airflow_runner`), one or more per module.

`start_airflow(extra_env)` starts one (about 30-60 s on 2 cores) and returns an `AirflowServer`;
every server a module started is stopped when the module ends, and if a test of the module
failed, the tails of its logs are printed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence

import pytest

from secmlops.local.airflow_runner import COMPONENTS, AirflowError, AirflowServer, launch

__all__ = ["AirflowError", "AirflowServer", "start_airflow"]


@pytest.fixture(scope="module")
def start_airflow(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Callable[..., AirflowServer]]:
    """Factory: `start_airflow(extra_env={...}, components=COMPONENTS) -> AirflowServer`.

    Put what the DAGs and plugin read (SECMLOPS_WORKDIR, SECMLOPS_TRUSTED_KEYS, ...) in
    `extra_env`: the environment is fixed when the processes start.
    """
    servers: list[AirflowServer] = []
    failed_before = request.session.testsfailed

    def start(
        extra_env: Mapping[str, str] | None = None, components: Sequence[str] = COMPONENTS
    ) -> AirflowServer:
        home = tmp_path_factory.mktemp("airflow-home")
        server = launch(home, extra_env or {}, components)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()
    if request.session.testsfailed > failed_before:
        reporter = request.config.pluginmanager.get_plugin("terminalreporter")
        for server in servers:
            if reporter is not None:
                reporter.write_line(f"\nAirflow at {server.base_url} ({server.home}):")
                reporter.write_line(server.log_tails())
