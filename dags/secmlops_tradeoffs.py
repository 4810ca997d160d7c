"""The security/performance trade-off study, on demand: pull + verify a dataset version, then
measure every control's cost and benefit on it (`secmlops.tradeoffs`).

Every task is one call into `secmlops.lifecycle`; this file only wires them (DESIGN.md).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import Param, dag, get_current_context, task

from secmlops.airflow_support import audit_task_failure, refusals_fail_the_task

DOC = """
### The trade-off study

1. **pull_data** / **verify_data**: the dataset version `data_rev` (empty: the newest), pulled
   from the DVC registry and verified (signed manifest).
2. **run_study**: trains and attacks every configuration (no defence; FGSM-RS and PGD training
   over an eps grid; JPEG and spatial-smoothing preprocessing; data verification; signature
   verification at load; serving screening) and measures cost (training time, latency p50/p95,
   peak memory, pipeline time) and benefit (clean and robust mAP, detection and alarm rates).
   `quick` runs the small CI grid. The CSV, Markdown table, plots and HTML report go to
   `$SECMLOPS_WORKDIR/runs/tradeoffs/<time>/`; the SecMLOps view shows the latest one.
"""


@dag(
    dag_id="secmlops_tradeoffs",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["secmlops", "tradeoffs"],
    doc_md=DOC,
    default_args={
        "owner": "secmlops",
        "retries": 1,
        "retry_delay": timedelta(minutes=1),
        "on_failure_callback": audit_task_failure,
    },
    params={
        "data_rev": Param(
            "",
            type="string",
            pattern=r"^(|data/[A-Za-z0-9][A-Za-z0-9_.-]*/v[1-9][0-9]*)$",
            description="Dataset tag data/<name>/v<K>; empty = the newest published version.",
        ),
        "quick": Param(False, type="boolean", description="The small grid (minutes, not hours)."),
    },
)
def secmlops_tradeoffs():
    @task(execution_timeout=timedelta(minutes=30))
    def pull_data() -> dict:
        from secmlops.lifecycle import LifecycleSettings, pull_data

        context = get_current_context()
        settings = LifecycleSettings.from_env()
        return pull_data(settings, context["params"]["data_rev"] or None, context["run_id"])

    @task(execution_timeout=timedelta(minutes=10))
    def verify_data(pulled: dict) -> dict:
        from secmlops.lifecycle import LifecycleSettings, verify_data

        with refusals_fail_the_task():
            return {**pulled, **verify_data(LifecycleSettings.from_env(), pulled["data_dir"])}

    @task(execution_timeout=timedelta(hours=24))
    def run_study(data: dict) -> dict:
        from secmlops.lifecycle import LifecycleSettings, tradeoff_study

        context = get_current_context()
        quick = bool(context["params"]["quick"])
        settings = LifecycleSettings.from_env()
        return tradeoff_study(settings, data["data_dir"], quick, context["run_id"])

    run_study(verify_data(pull_data()))


secmlops_tradeoffs()
