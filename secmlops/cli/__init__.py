"""The `secmlops` command line: every lifecycle stage, runnable without a scheduler.

Each command is a thin shell over one library function; errors a user can cause print one line
(`error: ...`) and exit with status 2, with nothing half-written. Command groups live in the
modules of this package and register themselves on the one `app`.
"""

from __future__ import annotations

from secmlops.cli import (
    demo,  # noqa: F401  (registers demo)
    gate,  # noqa: F401  (registers gate)
    model,  # noqa: F401  (registers train, evaluate, predict)
    model_import,  # noqa: F401  (registers the model group and model import)
    model_sign,  # noqa: F401  (registers model sign, verify)
    monitor,  # noqa: F401  (registers monitor)
    policy,  # noqa: F401  (registers policy check, override)
    registry,  # noqa: F401  (registers registry push, list, show, promote, rollback, pull)
    security,  # noqa: F401  (registers keys, audit, data sign/verify/validate/screen)
    serve,  # noqa: F401  (registers serve)
    tradeoffs,  # noqa: F401  (registers tradeoffs)
    versions,  # noqa: F401  (registers data publish, pull, versions)
)
from secmlops.cli.common import EXIT_USER_ERROR, app
from secmlops.cli.data import data_app

app.add_typer(data_app, name="data")

__all__ = ["EXIT_USER_ERROR", "app"]
