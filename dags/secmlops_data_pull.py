"""Pull a pinned dataset version from the DVC registry, prove it is authentic and clean, and
announce it: pull -> verify signed manifest -> validate -> screen for poisoning -> `dataset` asset.

Every task is one call into `secmlops.lifecycle`; this file only wires them. Nothing heavy is
imported at parse time.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import dag, get_current_context

from secmlops.airflow_support import (
    DATASET_ASSET,
    data_rev_param,
    lifecycle_asset,
    lifecycle_default_args,
    lifecycle_settings,
    lifecycle_task,
    pull_and_verify_data,
)
from secmlops.lifecycle.contracts import CheckReport, VerifiedData
from secmlops.settings import Settings

DATASET = lifecycle_asset(DATASET_ASSET)

DOC = """
### Pull, verify and announce a dataset version

1. **pull_data**: the DVC revision in `data_rev` (a tag `data/<name>/v<K>`), or the newest
   published version of `$SECMLOPS_DATASET_NAME`, materialised from the DVC remote.
2. **verify_data**: the Ed25519-signed SHA-256 manifest, by a key both the keyring
   (`$SECMLOPS_TRUSTED_KEYS`) and the policy trust. Any changed, missing or extra file fails.
3. **validate_data** and **screen_data**: annotation/image validation and the poisoning screen,
   under the policy's `data:` thresholds; reports beside the data.
4. **emit_dataset**: the `dataset` asset event (extra: `rev`, `manifest_digest`, `signer`),
   which schedules `secmlops_training`.

A refused control fails its task without retries; every decision is in the audit log.
The cadence is `$SECMLOPS_DATA_PULL_SCHEDULE` (default daily; `none`: manual and REST only).
"""


@dag(
    dag_id="secmlops_data_pull",
    schedule=Settings.from_env().data_pull_schedule,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["secmlops", "data"],
    doc_md=DOC,
    default_args=lifecycle_default_args(retries=2, retry_delay=timedelta(minutes=1)),
    params={
        "data_rev": data_rev_param("Dataset tag data/<name>/v<K>; empty = the newest published."),
    },
)
def secmlops_data_pull():
    @lifecycle_task(execution_timeout=timedelta(minutes=10))
    def validate_data(verified: VerifiedData) -> CheckReport:
        from secmlops.lifecycle import validate_data

        return validate_data(lifecycle_settings(), verified)

    @lifecycle_task(execution_timeout=timedelta(minutes=30))
    def screen_data(verified: VerifiedData) -> CheckReport:
        from secmlops.lifecycle import screen_data

        return screen_data(lifecycle_settings(), verified)

    @lifecycle_task(outlets=[DATASET])
    def emit_dataset(
        verified: VerifiedData, validated: CheckReport, screened: CheckReport
    ) -> dict[str, Any]:
        extra: dict[str, Any] = {"rev": verified["rev"], "signer": verified["signer"],
                                 "manifest_digest": verified["manifest_digest"]}  # fmt: skip
        get_current_context()["outlet_events"][DATASET].extra = extra
        return {**extra, "validation": validated["report"], "screening": screened["report"]}

    verified = pull_and_verify_data()
    emit_dataset(verified, validate_data(verified), screen_data(verified))


secmlops_data_pull()
