"""`secmlops settings show`: the effective deployment settings, secrets masked."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from secmlops.cli.common import console, current_settings, exits_on_user_error

app = typer.Typer(help="The deployment's settings (SECMLOPS_* variables).", no_args_is_help=True)


@app.command("show")
@exits_on_user_error
def settings_show(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Print every setting as this process resolves it: the variable, and its value or the
    default it fell back to. Secrets (passphrase, serving token) print as *** when set."""
    shown = current_settings().shown()
    if as_json:
        print(json.dumps(shown, indent=2))
        return
    table = Table(title="SecMLOps settings")
    table.add_column("variable", no_wrap=True)
    table.add_column("value", overflow="fold")
    for name, value in shown.items():
        table.add_row(name, "(unset)" if value is None else value)
    console.print(table)
