"""`secmlops monitor`: judge the latest window of served requests; request retraining if needed."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Annotated

import typer

from secmlops.cli.common import app, console, fail
from secmlops.cli.security import AuditOption, PolicyOption, _audit, _policy
from secmlops.errors import SecMLOpsError


@app.command("monitor")
def monitor_command(
    model: Annotated[Path, typer.Option(help="The served model's folder (reference profile).")],
    log: Annotated[str, typer.Option(help="Inference log: a folder or s3://bucket/prefix.")],
    window_minutes: Annotated[
        float, typer.Option(help="Judge the requests of the last N minutes.")
    ] = 60,
    reports: Annotated[
        str,
        typer.Option(help="Where each window's drift reports go: a folder or s3://bucket/prefix."),
    ] = "runs/monitoring/reports",
    state: Annotated[Path, typer.Option(help="Cooldown state between runs (JSON).")] = Path(
        "runs/monitoring/state.json"
    ),
    request_out: Annotated[
        Path | None, typer.Option(help="Write the retraining request here when there is one.")
    ] = None,
    policy: PolicyOption = None,
    audit_log: AuditOption = None,
) -> None:
    """Drift (Evidently, per feature) and attack checks under the policy's monitoring thresholds."""
    from secmlops.fsutil import atomic_write_json
    from secmlops.monitoring.window import monitor_window

    try:
        result = monitor_window(
            log, model, _policy(policy).monitoring, reports, state, _audit(audit_log),
            window=dt.timedelta(minutes=window_minutes),
        )  # fmt: skip
    except SecMLOpsError as exc:
        fail(exc)
    drift, attack, request = result["drift"], result["attack"], result["request"]
    console.print(
        f"{result['records']} requests: drift {'DETECTED' if drift['detected'] else 'none'} "
        f"({drift['drifted_share']:.0%} of features; report {drift['html_report']}), "
        f"flagged {attack['flagged_share']:.1%}{' ALARM' if attack['alarm'] else ''}"
    )
    if request is None:
        console.print("no retraining request")
        return
    console.print(f"retraining requested: {request['reason']}")
    if request_out is not None:
        atomic_write_json(request_out, request)
    else:
        console.print(json.dumps(request, indent=2))
