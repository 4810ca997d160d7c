"""`secmlops demo`: the whole lifecycle on a real Airflow, on the embedded defaults;
`secmlops ui`: the demo's workspace in the Airflow UI until Ctrl-C."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from secmlops.cli.common import console, fail
from secmlops.errors import SecMLOpsError

DEMO_WORKDIR = Path("runs/demo")


def demo_command(
    workdir: Annotated[
        Path, typer.Option(help="The workspace (created or reused).")
    ] = DEMO_WORKDIR,
    images: Annotated[int, typer.Option(help="Synthetic scenes to publish.")] = 1000,
    seed: Annotated[int, typer.Option(help="Data seed.")] = 0,
) -> None:
    """Data pull -> training -> gate -> release -> serving -> monitoring, run by Airflow."""
    from secmlops.local.airflow_runner import AirflowError
    from secmlops.local.demo import run_demo
    from secmlops.local.story import render_summary

    def say(line: str) -> None:
        console.print(line, highlight=False, markup=False)

    try:
        summary = run_demo(workdir, images, seed, say=say)
    except (SecMLOpsError, AirflowError) as exc:
        fail(exc)
    say("")
    for line in render_summary(summary):
        say(line)
    say("")
    for name, value in summary["where"].items():
        say(f"{name:14} {value}")
    console.print(
        f"open the same DAGs and runs in the Airflow UI: make ui (secmlops ui --workdir {workdir})",
        highlight=False,
    )


def ui_command(
    workdir: Annotated[
        Path, typer.Option(help="The workspace `secmlops demo` made.")
    ] = DEMO_WORKDIR,
    port: Annotated[int, typer.Option(help="The UI's port on 127.0.0.1.")] = 8080,
) -> None:
    """Open the demo's workspace in the Airflow UI; prints the URL and login; Ctrl-C stops it."""
    from secmlops.local.airflow_runner import AirflowError
    from secmlops.local.ui import serve_ui

    try:
        serve_ui(workdir, port, say=lambda line: console.print(line, highlight=False, markup=False))
    except (SecMLOpsError, AirflowError) as exc:
        fail(exc)
