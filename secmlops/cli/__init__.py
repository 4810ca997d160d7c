"""The `secmlops` command line: every lifecycle stage, runnable without a scheduler.

Each command is a thin shell over library functions; errors a user can cause print one line
(`error: ...`) and exit with status 2, with nothing half-written (`exits_on_user_error`). One
module per command group; this file assembles them into the one `app`, so `secmlops --help`
lists, and this file shows, every command in one place.
"""

from __future__ import annotations

from secmlops.cli import (
    audit,
    data,
    demo,
    evaluation,
    keys,
    model,
    monitoring,
    policy,
    registry,
    serving,
    settings,
    tradeoffs,
    training,
)
from secmlops.cli.common import EXIT_USER_ERROR, app

app.command("train")(training.train_command)
app.command("evaluate")(evaluation.evaluate_command)
app.command("predict")(evaluation.predict_command)
app.command("gate")(evaluation.gate_command)
app.command("serve")(serving.serve_command)
app.command("monitor")(monitoring.monitor_command)
app.command("tradeoffs")(tradeoffs.tradeoffs_command)
app.command("demo")(demo.demo_command)
app.command("ui")(demo.ui_command)
for name, group in (
    ("data", data.app), ("model", model.app), ("registry", registry.app), ("keys", keys.app),
    ("audit", audit.app), ("policy", policy.app), ("settings", settings.app),
):  # fmt: skip
    app.add_typer(group, name=name)

__all__ = ["EXIT_USER_ERROR", "app"]
