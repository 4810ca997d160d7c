"""One monitoring run: the inference-log window -> drift and attack checks -> retraining request.

This is the function the hourly monitoring DAG task and `secmlops monitor` call. Thresholds come
from the policy's `monitoring:` section; the reference profile from the served model's folder
(`reference-profile.json`, signed with it); reports go to a folder per window (local, or S3
where the team keeps its evidence: `s3://bucket/prefix`), linked from the audit entry and the
request.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import tempfile
from pathlib import Path
from typing import Any

from secmlops.audit import AuditLog
from secmlops.errors import DataError
from secmlops.monitoring.decision import decide
from secmlops.monitoring.drift import (
    DriftResult,
    MonitoringThresholds,
    check_attacks,
    check_drift,
    records_to_frame,
)
from secmlops.monitoring.reference import load_reference
from secmlops.policy import MonitoringPolicy
from secmlops.s3 import s3_client
from secmlops.serving.inference_log import read_inference_log


def thresholds_from_policy(policy: MonitoringPolicy) -> MonitoringThresholds:
    """The checks' thresholds from the policy's `monitoring:` section."""
    return MonitoringThresholds(
        max_drifted_share=policy.max_drifted_share,
        drift_p_value=policy.drift_p_value,
        min_window=policy.min_window,
        max_flagged_share=policy.max_flagged_share,
        jump_p_value=policy.jump_p_value,
        score_threshold=policy.adversarial_score_threshold,
    )


def monitor_window(
    log_uri: str,
    model_dir: Path,
    policy: MonitoringPolicy,
    reports_dir: Path | str,
    state_path: Path,
    audit: AuditLog,
    *,
    window: dt.timedelta = dt.timedelta(hours=1),
    now: dt.datetime | None = None,
    s3_endpoint_url: str | None = None,
) -> dict[str, Any]:
    """Judge the last `window` of served requests; request retraining when the policy says so.

    `s3_endpoint_url` is the endpoint of an `s3://` log or reports location (None: AWS).

    Returns:
        {"records", "drift": DriftResult json, "attack": AttackResult json,
         "request": the retraining request json or None}

    Raises:
        DataError: the window holds fewer requests than `policy.min_window`, or a record is
            malformed (a window that cannot be judged is an error, never "no drift").
    """
    now = now or dt.datetime.now(dt.UTC)
    since = now - window
    records = [
        r
        for r in read_inference_log(log_uri, s3_endpoint_url)
        if since <= dt.datetime.fromisoformat(r["time"]) <= now
    ]
    if len(records) < policy.min_window:
        raise DataError(
            f"{log_uri}: {len(records)} requests since {since.isoformat(timespec='seconds')}; "
            f"the policy needs at least {policy.min_window} to judge a window"
        )
    thresholds = thresholds_from_policy(policy)
    frame = records_to_frame(records)
    stamp = now.strftime("%Y%m%dT%H%M%SZ")
    reference = load_reference(model_dir)
    if str(reports_dir).startswith("s3://"):
        with tempfile.TemporaryDirectory() as staging:
            drift = check_drift(reference, frame, Path(staging), thresholds)
            drift = upload_reports(
                drift, f"{str(reports_dir).rstrip('/')}/{stamp}", s3_endpoint_url
            )
    else:
        drift = check_drift(reference, frame, Path(reports_dir) / stamp, thresholds)
    attack = check_attacks(frame, thresholds)
    request = decide(drift, attack, state_path, audit, now, cooldown_s=policy.cooldown_hours * 3600)
    return {
        "records": len(records),
        "drift": drift.to_json(),
        "attack": attack.to_json(),
        "request": request.to_json() if request else None,
    }


def upload_reports(drift: DriftResult, uri: str, endpoint_url: str | None = None) -> DriftResult:
    """Upload a window's HTML and JSON reports to `s3://bucket/prefix/`; the result links there.

    Raises:
        DataError: the URI names no bucket, or the upload fails.
    """
    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    if not bucket:
        raise DataError(f"reports location {uri!r}: no bucket")
    client = s3_client(endpoint_url)
    links: dict[str, str] = {}
    for field, content_type in (("html_report", "text/html"), ("json_report", "application/json")):
        local = Path(getattr(drift, field))
        key = f"{prefix.strip('/')}/{local.name}".lstrip("/")
        try:
            client.put_object(
                Bucket=bucket, Key=key, Body=local.read_bytes(), ContentType=content_type
            )
        except Exception as exc:  # botocore's errors: the link must never point at nothing
            raise DataError(f"cannot upload {local.name} to s3://{bucket}/{key}: {exc}") from None
        links[field] = f"s3://{bucket}/{key}"
    return dataclasses.replace(
        drift, html_report=links["html_report"], json_report=links["json_report"]
    )
