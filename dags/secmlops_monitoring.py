"""Watch the deployed detector: the last window of served requests -> Evidently drift and the
attack-rate monitor -> a `retraining-request` asset event when the policy says so.

Every task is one call into `secmlops.lifecycle`; this file only wires them.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import Param, dag, get_current_context

from secmlops.airflow_support import (
    RETRAINING_REQUEST_ASSET,
    lifecycle_asset,
    lifecycle_default_args,
    lifecycle_settings,
    lifecycle_task,
)
from secmlops.lifecycle.contracts import WindowVerdict
from secmlops.settings import Settings

RETRAINING_REQUEST = lifecycle_asset(RETRAINING_REQUEST_ASSET)

DOC = """
### Drift and attack monitoring

1. **check_window**: pulls and verifies the `production` model (its signed reference profile is
   the baseline), reads the inference log of the last `window_minutes`, runs Evidently's drift
   tests on the image features, the detections and the backbone embedding, and the attack-rate
   monitor; reports go to `$SECMLOPS_MONITORING_REPORTS` and are linked from the audit log.
2. **request_retraining**: emits the `retraining-request` asset (extra: reason, evidence),
   which schedules `secmlops_training`; skipped when nothing fired or the reason is cooling down
   (the suppression is audited; the cooldown state is `$SECMLOPS_MONITORING_STATE`, shared with
   `secmlops monitor`).

A window with too few requests to judge fails the run: it is never read as "no drift".
The cadence is `$SECMLOPS_MONITORING_SCHEDULE` (default hourly; `none`: manual and REST only).
"""


@dag(
    dag_id="secmlops_monitoring",
    schedule=Settings.from_env().monitoring_schedule,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["secmlops", "monitoring"],
    doc_md=DOC,
    default_args=lifecycle_default_args(retries=1, retry_delay=timedelta(minutes=2)),
    params={
        "window_minutes": Param(
            60, type="number", exclusiveMinimum=0, description="Judge the last N minutes."
        ),
    },
)
def secmlops_monitoring():
    @lifecycle_task(execution_timeout=timedelta(minutes=20))
    def check_window() -> WindowVerdict:
        from secmlops.lifecycle import monitor

        minutes = float(get_current_context()["params"]["window_minutes"])
        return monitor(lifecycle_settings(), minutes)

    @lifecycle_task(outlets=[RETRAINING_REQUEST])
    def request_retraining(verdict: WindowVerdict) -> dict:
        from airflow.sdk.exceptions import AirflowSkipException

        request = verdict["request"]
        if request is None:
            # A skipped task records no asset event: no retraining run is scheduled.
            raise AirflowSkipException("no retraining request: nothing fired, or cooling down")
        extra = {"reason": request["reason"], "reasons": request["reasons"],
                 "model_version": verdict["version"], "evidence": request["evidence"]}  # fmt: skip
        get_current_context()["outlet_events"][RETRAINING_REQUEST].extra = extra
        return extra

    request_retraining(check_window())


secmlops_monitoring()
