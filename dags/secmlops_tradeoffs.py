"""The security/performance trade-off study, on demand: pull + verify a dataset version, then
measure every control's cost and benefit on it (`secmlops.tradeoffs`).

Every task is one call into `secmlops.lifecycle`; this file only wires them.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import Param, dag, get_current_context

from secmlops.airflow_support import (
    data_rev_param,
    lifecycle_default_args,
    lifecycle_settings,
    lifecycle_task,
    pull_and_verify_data,
)
from secmlops.lifecycle.contracts import StudySummary, VerifiedData
from secmlops.settings import Settings

DOC = """
### The trade-off study

1. **pull_data** / **verify_data**: the dataset version `data_rev` (empty: the newest), pulled
   from the DVC registry and verified (signed manifest).
2. **run_study**: trains and attacks every configuration (no defence; FGSM-RS and PGD training
   over an eps grid; JPEG and spatial-smoothing preprocessing; data verification; signature
   verification at load; serving screening) and measures cost (training time, latency p50/p95,
   peak memory, pipeline time) and benefit (clean and robust mAP, detection and alarm rates).
   `quick` runs the small CI grid. The CSV, Markdown table, plots and HTML report go to
   `$SECMLOPS_TRADEOFFS_DIR/<time>/`; the SecMLOps view shows the latest one.
"""


@dag(
    dag_id="secmlops_tradeoffs",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["secmlops", "tradeoffs"],
    doc_md=DOC,
    default_args=lifecycle_default_args(retries=1, retry_delay=timedelta(minutes=1)),
    params={
        "data_rev": data_rev_param("Dataset tag data/<name>/v<K>; empty = the newest published."),
        "quick": Param(False, type="boolean", description="The small grid (minutes, not hours)."),
    },
)
def secmlops_tradeoffs():
    # The study trains every grid model: it goes where training goes (GPU workers, if any).
    @lifecycle_task(execution_timeout=timedelta(hours=24), queue=Settings.from_env().training_queue)
    def run_study(data: VerifiedData) -> StudySummary:
        from secmlops.lifecycle import tradeoff_study

        context = get_current_context()
        quick = bool(context["params"]["quick"])
        return tradeoff_study(lifecycle_settings(), data, quick, context["run_id"])

    run_study(pull_and_verify_data())


secmlops_tradeoffs()
