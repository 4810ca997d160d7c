"""The one module of the library that talks to Airflow (DESIGN.md: `secmlops` never imports Airflow
elsewhere). Airflow is imported inside the functions, so importing this module stays cheap.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from secmlops.errors import DataError
from secmlops.supplychain.keys import Keyring

if TYPE_CHECKING:
    from secmlops.lifecycle import LifecycleSettings

# The Airflow Connection holding the S3 credentials and endpoint of the stores (optional).
S3_CONNECTION_ENV = "SECMLOPS_S3_CONNECTION"
# Training goes to the GPU workers' queue when the deployment has one (docs/operations.md).
TRAINING_QUEUE = os.environ.get("SECMLOPS_TRAINING_QUEUE", "default")


def keyring_from_connection(conn_id: str) -> Keyring:
    """Trusted public keys kept in an Airflow Connection (any connection type).

    The keys are PEM text, in the connection's `extra` as `{"public_keys": ["-----BEGIN ...", ...]}`
    or in its password field. Keys in a Connection come from Airflow's secrets backend (environment
    `AIRFLOW_CONN_<ID>`, the metadata database, Vault...), never from a committed file.

    Raises:
        DataError: the connection does not exist or holds no public key.
    """
    from airflow.sdk import Connection

    try:
        connection = Connection.get(conn_id)
    except Exception as exc:  # Airflow raises its own, version-dependent "not found" errors
        raise DataError(f"Airflow connection {conn_id!r}: cannot read it ({exc})") from None
    extra = connection.extra_dejson or {}
    pems = extra.get("public_keys") or ([connection.password] if connection.password else [])
    if isinstance(pems, str):
        pems = [pems]
    if not pems:
        raise DataError(
            f"Airflow connection {conn_id!r}: no public keys (put PEM keys in extra.public_keys)"
        )
    return Keyring.from_pem("\n".join(pems), source=f"airflow connection {conn_id}")


def s3_env_from_connection(conn_id: str) -> dict[str, str]:
    """S3 credentials and endpoint from an Airflow Connection, as the environment boto3 and DVC
    read (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_DEFAULT_REGION`,
    `SECMLOPS_S3_ENDPOINT_URL`).

    The connection (type `aws`): login = access key id, password = secret access key, extra
    `{"endpoint_url": "http://minio:9000", "region_name": "us-east-1"}` (both optional).

    Raises:
        DataError: the connection does not exist or has no access key pair.
    """
    from airflow.sdk import Connection

    try:
        connection = Connection.get(conn_id)
    except Exception as exc:  # Airflow raises its own, version-dependent "not found" errors
        raise DataError(f"Airflow connection {conn_id!r}: cannot read it ({exc})") from None
    if not connection.login or not connection.password:
        raise DataError(
            f"Airflow connection {conn_id!r}: no access key pair (login = access key id, "
            "password = secret access key)"
        )
    extra = connection.extra_dejson or {}
    env = {"AWS_ACCESS_KEY_ID": connection.login, "AWS_SECRET_ACCESS_KEY": connection.password}
    if extra.get("region_name"):
        env["AWS_DEFAULT_REGION"] = str(extra["region_name"])
    if extra.get("endpoint_url"):
        env["SECMLOPS_S3_ENDPOINT_URL"] = str(extra["endpoint_url"])
    return env


# The lifecycle's assets (DESIGN.md): the data-pull DAG emits `dataset`, the training DAG emits
# `model` and runs on `dataset` or `retraining-request`, which the monitoring DAG emits.
def lifecycle_settings() -> LifecycleSettings:
    """`LifecycleSettings.from_env()` for a task: with `$SECMLOPS_S3_CONNECTION` set, the S3
    credentials and endpoint of that Connection are first put into the task's environment,
    where boto3 and DVC read them.

    Raises:
        DataError: the named connection is missing or has no access key pair.
    """
    from secmlops.lifecycle import LifecycleSettings

    if os.environ.get(S3_CONNECTION_ENV):
        os.environ.update(s3_env_from_connection(os.environ[S3_CONNECTION_ENV]))
    return LifecycleSettings.from_env()


DATASET_ASSET = "dataset"
MODEL_ASSET = "model"
RETRAINING_REQUEST_ASSET = "retraining-request"


def lifecycle_asset(name: str) -> Any:
    """The Airflow `Asset` of one lifecycle contract (`secmlops://<name>`)."""
    from airflow.sdk import Asset

    if name not in (DATASET_ASSET, MODEL_ASSET, RETRAINING_REQUEST_ASSET):
        raise ValueError(f"unknown lifecycle asset {name!r}")
    return Asset(name=name, uri=f"secmlops://{name}", group="secmlops")


@contextmanager
def refusals_fail_the_task() -> Iterator[None]:
    """Turn a control's refusal into a task failure that is not retried.

    A tampered dataset or a failed gate does not get better on a retry; retrying would only
    repeat the refusal (and its audit entry). Infrastructure errors keep their retries.
    """
    from airflow.sdk.exceptions import AirflowFailException

    from secmlops.errors import (
        AuditError,
        GateFailed,
        IntegrityError,
        PolicyError,
        ValidationFailed,
    )

    try:
        yield
    except (GateFailed, IntegrityError, PolicyError, ValidationFailed, AuditError) as exc:
        raise AirflowFailException(f"{type(exc).__name__}: {exc}") from exc


def audit_task_failure(context: Mapping[str, Any]) -> None:
    """`on_failure_callback`: record a failed task in the audit log (which control, which run)."""
    from secmlops.audit import AuditLog, default_audit_path

    ti = context.get("task_instance") or context.get("ti")
    exception = context.get("exception")
    AuditLog(default_audit_path(), actor="airflow").append(
        "airflow",
        "task_failed",
        "fail",
        f"{getattr(ti, 'dag_id', '?')}.{getattr(ti, 'task_id', '?')}",
        {
            "run_id": str(context.get("run_id", "")),
            "try_number": getattr(ti, "try_number", None),
            "error": f"{type(exception).__name__}: {exception}" if exception else None,
        },
    )


# ------------------------------------------------------------------ wiring shared by the DAGs
DATA_REV_PATTERN = r"^(|data/[A-Za-z0-9][A-Za-z0-9_.-]*/v[1-9][0-9]*)$"


def data_rev_param(description: str) -> Any:
    """The `data_rev` trigger-form field: a dataset tag `data/<name>/v<K>`, or empty."""
    from airflow.sdk import Param

    return Param("", type="string", pattern=DATA_REV_PATTERN, description=description)


def lifecycle_default_args(retries: int, retry_delay: timedelta) -> dict[str, Any]:
    """The DAGs' `default_args`: owner, retries, and every failure written to the audit log."""
    return {
        "owner": "secmlops",
        "retries": retries,
        "retry_delay": retry_delay,
        "on_failure_callback": audit_task_failure,
    }


def pull_and_verify_data(dataset_asset: Any = None) -> Any:
    """Add `pull_data -> verify_data` to the DAG being defined; returns verify_data's output
    ({"rev", "data_dir", "manifest_digest", "signer", ...}).

    The revision is the run's `data_rev` param, else (when `dataset_asset` is given) the one
    the triggering `dataset` event names, else the newest published version. Verification runs
    on the worker that will use the data: workers may differ from the one that pulled before.
    """
    from airflow.sdk import get_current_context, task

    @task(execution_timeout=timedelta(minutes=30))
    def pull_data() -> dict[str, Any]:
        from secmlops.lifecycle import pull_data

        context = get_current_context()
        rev = context["params"]["data_rev"] or None
        if dataset_asset is not None:
            for event in (context.get("triggering_asset_events") or {}).get(dataset_asset, []):
                rev = rev or event.extra.get("rev")
        return pull_data(lifecycle_settings(), rev, context["run_id"])

    @task(execution_timeout=timedelta(minutes=10))
    def verify_data(pulled: dict[str, Any]) -> dict[str, Any]:
        from secmlops.lifecycle import verify_data

        with refusals_fail_the_task():
            return {**pulled, **verify_data(lifecycle_settings(), pulled["data_dir"])}

    return verify_data(pull_data())
