"""The one module of the library that talks to Airflow (`secmlops` never imports Airflow
elsewhere; docs/architecture.md). Airflow is imported inside the functions, so importing this
module stays cheap at DAG parse time; only the approval operator's base class (the standard
provider's Human-in-the-loop `ApprovalOperator`) is imported with the module.

What the DAGs share lives here: `lifecycle_task` (every task: a refusal fails it without
retries), `lifecycle_settings` (the deployment's settings inside a task, with the S3 Connection
applied), the lifecycle's assets, the wiring of pull + verify, and `ProductionApproval` (a
person approves a release before production; `secmlops.lifecycle.approval`).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, TypeVar

from airflow.providers.standard.operators.hitl import ApprovalOperator

from secmlops.errors import DataError
from secmlops.lifecycle.contracts import PulledData, VerifiedData
from secmlops.names import DATASET_TAG_OR_EMPTY_SCHEMA
from secmlops.settings import Settings
from secmlops.supplychain.keys import Keyring

F = TypeVar("F", bound=Callable[..., Any])
# Marks a task callable wrapped by `lifecycle_task` (the DAG integrity test checks every task).
REFUSALS_FAIL_MARK = "secmlops_refusals_fail_the_task"


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


def s3_env_from_connection(conn_id: str) -> tuple[dict[str, str], str | None]:
    """S3 credentials from an Airflow Connection, as the environment boto3 and DVC read
    (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_DEFAULT_REGION`), and its endpoint.

    The connection (type `aws`): login = access key id, password = secret access key, extra
    `{"endpoint_url": "http://minio:9000", "region_name": "us-east-1"}` (both optional).

    Returns:
        (the AWS environment variables, the endpoint URL or None).

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
    endpoint = str(extra["endpoint_url"]) if extra.get("endpoint_url") else None
    return env, endpoint


def lifecycle_settings() -> Settings:
    """The deployment's settings for a task: with `Settings.s3_connection` set, the S3
    credentials of that Connection are first put into the task's environment (where boto3 and
    DVC read them) and its endpoint becomes the settings' S3 endpoint.

    Raises:
        DataError: the named connection is missing or has no access key pair.
    """
    settings = Settings.from_env()
    if settings.s3_connection:
        env, endpoint = s3_env_from_connection(settings.s3_connection)
        os.environ.update(env)
        if endpoint:
            settings = dataclasses.replace(settings, s3_endpoint_url=endpoint)
    return settings


# The lifecycle's assets: the data-pull DAG emits `dataset`, the training DAG emits `model` and
# runs on `dataset` or `retraining-request`, which the monitoring DAG emits.
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
    """Turn a control's refusal (any `secmlops.errors.Refusal`) into a task failure that is not
    retried.

    A tampered dataset or a failed gate does not get better on a retry; retrying would only
    repeat the refusal (and its audit entry). Infrastructure errors keep their retries.
    """
    from airflow.sdk.exceptions import AirflowFailException

    from secmlops.errors import Refusal

    try:
        yield
    except Refusal as exc:
        raise AirflowFailException(f"{type(exc).__name__}: {exc}") from exc


def lifecycle_task(**task_kwargs: Any) -> Callable[[F], Any]:
    """`@task(**task_kwargs)` for the lifecycle's DAGs: the body runs under
    `refusals_fail_the_task`, so a refusal fails the task once, without retries.

    Every task of `dags/` uses it (a DAG integrity test checks), so a new control's refusal
    needs no wiring of its own. A task's payload travels as one XCom (`multiple_outputs` off).
    """
    from airflow.sdk import task

    task_kwargs.setdefault("multiple_outputs", False)

    def decorate(function: F) -> Any:
        @functools.wraps(function)
        def run(*args: Any, **kwargs: Any) -> Any:
            with refusals_fail_the_task():
                return function(*args, **kwargs)

        setattr(run, REFUSALS_FAIL_MARK, True)
        return task(**task_kwargs)(run)

    return decorate


def audit_task_failure(context: Mapping[str, Any]) -> None:
    """`on_failure_callback`: record a failed task in the audit log (which control, which run)."""
    ti = context.get("task_instance") or context.get("ti")
    exception = context.get("exception")
    Settings.from_env().audit(actor="airflow").append(
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
# The form's check matches in full (no trailing newline); the task's `parse_tag` checks again.
DATA_REV_PATTERN = DATASET_TAG_OR_EMPTY_SCHEMA


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
    (`VerifiedData`).

    The revision is the run's `data_rev` param, else (when `dataset_asset` is given) the one
    the triggering `dataset` event names, else the newest published version. Verification runs
    on the worker that will use the data: workers may differ from the one that pulled before.
    """
    from airflow.sdk import get_current_context

    @lifecycle_task(execution_timeout=timedelta(minutes=30))
    def pull_data() -> PulledData:
        from secmlops.lifecycle import pull_data

        context = get_current_context()
        rev = context["params"]["data_rev"] or None
        if dataset_asset is not None:
            for event in (context.get("triggering_asset_events") or {}).get(dataset_asset, []):
                rev = rev or event.extra.get("rev")
        return pull_data(lifecycle_settings(), rev, context["run_id"])

    @lifecycle_task(execution_timeout=timedelta(minutes=10))
    def verify_data(pulled: PulledData) -> VerifiedData:
        from secmlops.lifecycle import verify_data

        return verify_data(lifecycle_settings(), pulled)

    return verify_data(pull_data())


# ------------------------------------------------------------------ human approval
class ProductionApproval(ApprovalOperator):
    """Wait for a person to approve the release for production, then judge and audit the answer
    (`secmlops.lifecycle.approval.decide`): a rejection, a timeout, or an approval by the user who
    triggered the run fails the task (no retries, so no second request), and nothing downstream
    (the promotion) runs. The approver reads the gate evidence in `body` (a rendered template).

    Args:
        release_task_id: the task whose XCom is the `Release` asking to be promoted.
        response_timeout: how long to wait (`Settings.approval_timeout_hours`).
    """

    def __init__(self, *, release_task_id: str, **kwargs: Any) -> None:
        kwargs.setdefault("retries", 0)
        super().__init__(fail_on_reject=True, **kwargs)
        self.release_task_id = release_task_id

    def execute_complete(self, context: Any, event: dict[str, Any]) -> Any:
        from secmlops.lifecycle.approval import decide

        release = context["ti"].xcom_pull(task_ids=self.release_task_id)
        triggered_by = getattr(context["dag_run"], "triggering_user_name", None)
        with refusals_fail_the_task():
            approval = decide(lifecycle_settings(), release, event, triggered_by)
        result = super().execute_complete(context=context, event=event)
        return {**dict(result), "approval": approval}
