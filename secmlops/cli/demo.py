"""`secmlops demo`: the whole lifecycle on a real Airflow, on the embedded defaults."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from secmlops.cli.common import app, console, fail
from secmlops.errors import SecMLOpsError


@app.command("demo")
def demo_command(
    workdir: Annotated[Path, typer.Option(help="The workspace (created or reused).")] = Path(
        "runs/demo"
    ),
    images: Annotated[int, typer.Option(help="Synthetic scenes to publish.")] = 1000,
    seed: Annotated[int, typer.Option(help="Data seed.")] = 0,
) -> None:
    """Data pull -> training -> gate -> release -> serving -> monitoring, run by Airflow."""
    from secmlops.airflow_local import AirflowError
    from secmlops.demo import run_demo

    try:
        where = run_demo(workdir, images, seed, say=console.print)
    except (SecMLOpsError, AirflowError) as exc:
        fail(exc)
    for name, value in where.items():
        console.print(f"{name:14} {value}", highlight=False)
    console.print(
        f"open the same DAGs in the UI: source {where['env_file']} && airflow standalone "
        "(README: 'The lifecycle on Airflow')",
        highlight=False,
    )
