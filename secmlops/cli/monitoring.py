"""`secmlops monitor`: judge the latest window of served requests; request retraining if needed."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Annotated

import typer

from secmlops.cli.common import console, current_settings, exits_on_user_error
from secmlops.cli.options import AuditOption, PolicyOption, audit_log, load_policy_option


@exits_on_user_error
def monitor_command(
    model: Annotated[Path, typer.Option(help="The served model's folder (reference profile).")],
    log: Annotated[
        str | None,
        typer.Option(
            help="Inference log: a folder or s3://bucket/prefix (default: $SECMLOPS_INFERENCE_LOG)."
        ),
    ] = None,
    window_minutes: Annotated[
        float, typer.Option(help="Judge the requests of the last N minutes.")
    ] = 60,
    reports: Annotated[
        str | None,
        typer.Option(
            help="Where each window's drift reports go: a folder or s3://bucket/prefix "
            "(default: $SECMLOPS_MONITORING_REPORTS)."
        ),
    ] = None,
    state: Annotated[
        Path | None,
        typer.Option(
            help="Cooldown state between runs (default: $SECMLOPS_MONITORING_STATE, the one the "
            "monitoring DAG uses)."
        ),
    ] = None,
    request_out: Annotated[
        Path | None, typer.Option(help="Write the retraining request here when there is one.")
    ] = None,
    policy: PolicyOption = None,
    audit_log_path: AuditOption = None,
) -> None:
    """Drift (Evidently, per feature) and attack checks under the policy's monitoring thresholds."""
    from secmlops.fsutil import atomic_write_json
    from secmlops.monitoring.window import monitor_window

    settings = current_settings()
    result = monitor_window(
        log or settings.inference_log, model, load_policy_option(policy).monitoring,
        reports or settings.monitoring_reports, state or settings.monitoring_state,
        audit_log(audit_log_path), window=dt.timedelta(minutes=window_minutes),
        s3_endpoint_url=settings.s3_endpoint_url,
    )  # fmt: skip
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
