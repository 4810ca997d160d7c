"""Where every lifecycle stage reads and writes: `LifecycleSettings`, from the environment."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MODEL_NAME_ENV = "SECMLOPS_MODEL_NAME"
DATASET_NAME_ENV = "SECMLOPS_DATASET_NAME"
INFERENCE_LOG_ENV = "SECMLOPS_INFERENCE_LOG"
MONITORING_REPORTS_ENV = "SECMLOPS_MONITORING_REPORTS"
PRODUCTION_ALIAS = "production"


@dataclass(frozen=True)
class LifecycleSettings:
    """Where every stage reads and writes; from the environment with embedded defaults.

    Attributes:
        workdir: `$SECMLOPS_WORKDIR` (runs, reports, pulled data and models live under it).
        policy: `$SECMLOPS_POLICY`, else `./policy.yaml`.
        data_registry: the DVC data registry (`$SECMLOPS_DATA_REGISTRY`).
        model_registry: the model registry URI (`$SECMLOPS_REGISTRY`).
        model_name: the model's name in the registry (`$SECMLOPS_MODEL_NAME`).
        dataset_name: the dataset's name in the data registry (`$SECMLOPS_DATASET_NAME`).
        inference_log: where serving logs requests (`$SECMLOPS_INFERENCE_LOG`).
        monitoring_reports: a folder or s3:// prefix for drift reports
            (`$SECMLOPS_MONITORING_REPORTS`).
    """

    workdir: Path
    policy: Path
    data_registry: Path
    model_registry: str
    model_name: str = "pedestrian-detector"
    dataset_name: str = "street"
    inference_log: str = ""
    monitoring_reports: str = ""

    @classmethod
    def from_env(cls) -> LifecycleSettings:
        """Read the settings from the environment (nothing is created or changed; inside
        Airflow tasks, `secmlops.airflow_support.lifecycle_settings` also applies the S3
        connection named by `$SECMLOPS_S3_CONNECTION`)."""
        from secmlops.cli.security import POLICY_ENV
        from secmlops.data.versioning import default_registry
        from secmlops.pipeline import default_workdir
        from secmlops.registry import default_registry_uri

        workdir = default_workdir()
        return cls(
            workdir=workdir,
            policy=Path(os.environ.get(POLICY_ENV, "policy.yaml")).resolve(),
            data_registry=default_registry(),
            model_registry=default_registry_uri(),
            model_name=os.environ.get(MODEL_NAME_ENV, "pedestrian-detector"),
            dataset_name=os.environ.get(DATASET_NAME_ENV, "street"),
            inference_log=os.environ.get(INFERENCE_LOG_ENV, str(workdir / "inference-log")),
            monitoring_reports=os.environ.get(
                MONITORING_REPORTS_ENV, str(workdir / "runs" / "monitoring" / "reports")
            ),
        )

    def run_dir(self, run_id: str) -> Path:
        """The folder of one DAG run's outputs."""
        from secmlops.pipeline import safe_name

        return self.workdir / "runs" / safe_name(run_id)


def audit_log() -> Any:
    """The audit log at `$SECMLOPS_AUDIT_LOG` (or the workdir's default)."""
    from secmlops.audit import AuditLog

    return AuditLog()


def trusted_keyring() -> Any:
    """The trusted keys of `$SECMLOPS_TRUSTED_KEYS`."""
    from secmlops.supplychain.keys import Keyring

    return Keyring.from_env()
