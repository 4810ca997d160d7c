"""Shared pieces of the command line: consoles, progress bars, one-line errors, the settings."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from secmlops.errors import SecMLOpsError
from secmlops.settings import Settings

F = TypeVar("F", bound=Callable[..., Any])

app = typer.Typer(
    help="SecMLOps: a secure ML lifecycle for pedestrian detection.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)

EXIT_USER_ERROR = 2


def current_settings() -> Settings:
    """The deployment's settings (`SECMLOPS_*`): every command's defaults come from them."""
    return Settings.from_env()


@contextmanager
def progress_bar(description: str, total: int | None) -> Iterator[Callable[[int], None]]:
    """A rich progress bar; yields `advance(n)`."""
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=err_console, transient=False) as progress:
        task = progress.add_task(description, total=total)

        def advance(n: int = 1) -> None:
            progress.advance(task, n)

        yield advance


def fail(exc: Exception | str) -> NoReturn:
    """Print `error: <message>` on one line and exit with status 2.

    The message often quotes input (a file name, a JSON value): its line breaks are printed
    escaped, so it stays one line, and its brackets literally, not read as rich markup (which
    silently drops a "[x, y, w, h]" and would let input restyle or hide the rest).
    """
    text = str(exc).replace("\r", "\\r").replace("\n", "\\n")
    err_console.print(f"[red]error:[/red] {escape(text)}", highlight=False, soft_wrap=True)
    raise typer.Exit(EXIT_USER_ERROR)


def exits_on_user_error(command: F) -> F:
    """A command whose user errors (`SecMLOpsError`: bad input, a refused control) print one
    `error:` line and exit with status 2, instead of a traceback."""

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except SecMLOpsError as exc:
            fail(exc)

    return run  # type: ignore[return-value]  # same signature, as functools.wraps says
