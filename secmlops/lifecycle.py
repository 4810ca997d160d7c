"""The lifecycle's stage functions, as the Airflow DAGs call them: JSON in, JSON out.

Each function is one task of `dags/`: it reads its locations from `LifecycleSettings` (the
environment, which in Airflow comes from the deployment or a secrets backend), calls the stage's
library functions, and returns a small JSON-serialisable dict that the next task receives
through XCom. Every control keeps its own audit entry; a failed control raises, so the task fails
and nothing downstream of it runs. The same functions run without Airflow (tests, `make demo`).
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from secmlops.errors import DataError, PolicyError

MODEL_NAME_ENV = "SECMLOPS_MODEL_NAME"
DATASET_NAME_ENV = "SECMLOPS_DATASET_NAME"
INFERENCE_LOG_ENV = "SECMLOPS_INFERENCE_LOG"
MONITORING_REPORTS_ENV = "SECMLOPS_MONITORING_REPORTS"
PRODUCTION_ALIAS = "production"
S3_CONNECTION_ENV = "SECMLOPS_S3_CONNECTION"

log = logging.getLogger(__name__)


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
        """Read the settings from the environment (nothing is created).

        With `$SECMLOPS_S3_CONNECTION` set, the S3 credentials and endpoint of that Airflow
        Connection are put into this process's environment first (boto3 and DVC read them there).
        """
        if os.environ.get(S3_CONNECTION_ENV):
            from secmlops.airflow_support import s3_env_from_connection

            os.environ.update(s3_env_from_connection(os.environ[S3_CONNECTION_ENV]))
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


def _audit() -> Any:
    from secmlops.audit import AuditLog, default_audit_path

    return AuditLog(default_audit_path())


def _keyring() -> Any:
    from secmlops.supplychain.keys import Keyring

    return Keyring.from_env()


# ------------------------------------------------------------------------------------ data
def resolve_data_rev(settings: LifecycleSettings, rev: str | None) -> str:
    """`rev` if given, else the newest published version of the settings' dataset.

    Raises:
        DataError: nothing has been published under that name.
    """
    from secmlops.data.versioning import list_versions

    if rev:
        return rev
    versions = list_versions(settings.data_registry, settings.dataset_name)
    if not versions:
        raise DataError(
            f"{settings.data_registry}: no published version of dataset "
            f"{settings.dataset_name!r}; publish one with `secmlops data publish`"
        )
    return versions[-1]


def pull_data(settings: LifecycleSettings, rev: str | None, run_id: str) -> dict[str, Any]:
    """Pull one dataset version from the DVC registry into this run's folder.

    Returns:
        {"rev", "data_dir"}
    """
    from secmlops.data.versioning import pull_dataset

    rev = resolve_data_rev(settings, rev)
    to = settings.run_dir(run_id) / "data"
    pull_dataset(rev, to, settings.data_registry, overwrite=True)  # a retry starts clean
    return {"rev": rev, "data_dir": str(to)}


def verify_data(settings: LifecycleSettings, data_dir: str) -> dict[str, Any]:
    """Verify the pulled dataset's signed manifest (signer trusted by keyring and policy).

    Returns:
        {"manifest_digest", "signer", "files", "bytes"}
    """
    from secmlops.data.checks import verify_signed_dataset
    from secmlops.policy import load_policy

    policy = load_policy(settings.policy).data
    return verify_signed_dataset(Path(data_dir), _keyring(), policy, _audit())


def validate_data(settings: LifecycleSettings, data_dir: str) -> dict[str, Any]:
    """Validate annotations and images; the report goes beside the data. Raises on problems."""
    from secmlops.data.checks import validate
    from secmlops.policy import load_policy

    report = Path(data_dir).parent / "validation.json"
    result = validate(Path(data_dir), load_policy(settings.policy).data, _audit(), report)
    return {"report": str(report), "statistics": result.get("statistics")}


def screen_data(settings: LifecycleSettings, data_dir: str) -> dict[str, Any]:
    """Screen the training split for poisoning. Raises when the policy's share is exceeded."""
    from secmlops.data.checks import screen
    from secmlops.policy import load_policy

    report = Path(data_dir).parent / "screening.json"
    result = screen(Path(data_dir), load_policy(settings.policy).data, _audit(), report)
    return {"report": str(report), "flagged": len(result.get("flagged", []))}


# -------------------------------------------------------------------------------- training
def train(
    settings: LifecycleSettings, data_dir: str, run_id: str, params: dict[str, Any], *,
    defended: bool,
) -> dict[str, Any] | None:  # fmt: skip
    """Train the candidate (`defended=True`, with the run's adversarial settings) or its
    undefended baseline (None when the candidate is undefended itself: nothing to compare).

    Returns:
        `secmlops.pipeline.train_model`'s summary, or None.
    """
    from secmlops.pipeline import train_model

    adversarial = params.get("adversarial", "fgsm-rs") if defended else "none"
    if not defended and params.get("adversarial", "fgsm-rs") == "none":
        return None
    name = "model" if defended else "baseline"

    def report(summary: dict[str, float]) -> None:
        # Task logs show the progress in the Airflow UI (and why a run is slow).
        log.info(
            "%s epoch %d: loss %.3f, val mAP@0.5 %.3f (%.1f s)", name, summary["epoch"],
            summary["loss"], summary["val_mAP50"], summary["seconds"],
        )  # fmt: skip

    return train_model(
        data_dir,
        str(settings.run_dir(run_id) / name),
        architecture=params.get("architecture", "compact_centernet"),
        epochs=params.get("epochs"),
        seed=int(params.get("seed", 0)),
        adversarial=adversarial,
        eps=params.get("eps", "4/255"),
        mix=float(params.get("mix", 0.5)),
        on_epoch=report,
    )


def evaluate(
    settings: LifecycleSettings, model_dir: str, data_dir: str, out: str, *,
    baseline_dir: str | None = None, max_images: int | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Run the policy's robustness suite on the test split; write the report to `out`.

    Returns:
        {"report", "clean_mAP50", "attacks": {name: mAP50}}
    """
    from secmlops.evaluation.robustness import evaluate_robustness, suite_from_policy
    from secmlops.fsutil import atomic_write_json
    from secmlops.policy import load_policy

    suite = suite_from_policy(load_policy(settings.policy).gate)
    report = evaluate_robustness(
        Path(model_dir), Path(data_dir), "test", suite,
        baseline_dir=Path(baseline_dir) if baseline_dir else None, max_images=max_images,
    )  # fmt: skip
    atomic_write_json(Path(out), report)
    return {
        "report": out,
        "clean_mAP50": report["clean"]["mAP50"],
        "attacks": {name: entry["mAP50"] for name, entry in report["attacks"].items()},
    }


def evaluate_production(
    settings: LifecycleSettings, data_dir: str, run_id: str, max_images: int | None = None
) -> dict[str, Any] | None:
    """Attack the model now in production the same way, for the gate's regression check.

    Returns:
        `evaluate`'s summary plus "version", or None when nothing is in production yet.
    """
    from secmlops.registry import Registry, RegistryError

    registry = Registry.open(settings.model_registry)
    try:
        version, _ = registry.resolve(settings.model_name, PRODUCTION_ALIAS)
    except RegistryError:
        return None  # first release: the gate records "no production report: not checked"
    folder = settings.run_dir(run_id) / "production"
    registry.pull(settings.model_name, version, folder, _keyring(), overwrite=True)
    out = str(settings.run_dir(run_id) / "robustness-production.json")
    return {"version": version, **evaluate(settings, str(folder), data_dir, out,
                                           max_images=max_images)}  # fmt: skip


def parse_overrides(assignments: list[str], reason: str) -> list[tuple[str, Any, str]]:
    """`["gate.min_clean_mAP50=0.5", ...]` -> run_gate's (path, value, reason) overrides.

    Raises:
        PolicyError: a malformed assignment, or overrides without a reason.
    """
    from secmlops.policy import parse_override_value

    if assignments and not reason.strip():
        raise PolicyError("policy overrides need a reason (it is audited)")
    overrides = []
    for assignment in assignments:
        path, sep, text = assignment.partition("=")
        if not sep or not path.strip():
            raise PolicyError(f"override must look like KEY.PATH=VALUE, got {assignment!r}")
        overrides.append((path.strip(), parse_override_value(text), reason))
    return overrides


def gate(
    settings: LifecycleSettings, report: str, production: dict[str, Any] | None,
    overrides: list[str], reason: str,
) -> dict[str, Any]:  # fmt: skip
    """The robustness gate on the candidate's report; raises `GateFailed` with every failed
    threshold (the signed record and audit entry are written either way).

    Returns:
        {"record", "passed", "checks"}
    """
    from secmlops.evaluation.gate import SIGNING_KEY_ENV, run_gate

    record = Path(report).with_name("gate-record.json")
    key = os.environ.get(SIGNING_KEY_ENV)
    decision = run_gate(
        report, settings.policy, signing_key=Path(key) if key else None, audit_log=_audit(),
        record_path=record, production_report=production["report"] if production else None,
        overrides=parse_overrides(overrides, reason),
    )  # fmt: skip
    return {"record": str(record), "passed": True, "checks": len(decision.checks)}


def sign(
    settings: LifecycleSettings, model_dir: str, data: dict[str, Any], gate_record: str
) -> dict[str, Any]:
    """Calibrate the serving screener, then sign the model with its provenance.

    Args:
        data: `verify_data`'s result plus "rev" (the DVC revision) and "data_dir".

    Returns:
        {"model_dir", "weights_sha256", "provenance"}
    """
    from secmlops.evaluation.gate import SIGNING_KEY_ENV
    from secmlops.models import read_card
    from secmlops.serving.calibration import calibrate_model
    from secmlops.supplychain.keys import load_private_key
    from secmlops.supplychain.provenance import sign_model

    key = os.environ.get(SIGNING_KEY_ENV)
    if not key:
        raise DataError(f"no model-signing key: set {SIGNING_KEY_ENV}")
    calibrate_model(Path(model_dir), Path(data["data_dir"]), "val")
    provenance = sign_model(
        Path(model_dir),
        load_private_key(Path(key), os.environ.get("SECMLOPS_KEY_PASSPHRASE")),
        data_manifest_digest=data["manifest_digest"], data_signer=data["signer"],
        dvc_revision=data["rev"], gate_record=Path(gate_record),
    )  # fmt: skip
    return {
        "model_dir": model_dir,
        "weights_sha256": read_card(Path(model_dir)).weights_sha256,
        "provenance": str(provenance),
    }


def release_version(run_id: str, weights_sha256: str) -> str:
    """A registry version for a run's model: stable across retries of the same run."""
    stamp = re.sub(r"[^0-9]", "", run_id)[:14] or "0"
    return f"{stamp}-{weights_sha256[:12]}"


def push(settings: LifecycleSettings, signed: dict[str, Any], run_id: str) -> dict[str, Any]:
    """Store the signed model as an immutable registry version (idempotent for a retry).

    Returns:
        {"name", "version", "weights_sha256"}
    """
    from secmlops.registry import Registry, RegistryError

    registry = Registry.open(settings.model_registry)
    version = release_version(run_id, signed["weights_sha256"])
    existing = {row["version"]: row for row in _versions(registry, settings.model_name)}
    if version in existing:
        # A retried task whose first attempt pushed: the same digest is the same release.
        if existing[version].get("weights_sha256") != signed["weights_sha256"]:
            raise RegistryError(f"{settings.model_name}@{version} exists with other weights")
    else:
        registry.push(Path(signed["model_dir"]), settings.model_name, version, _keyring(), _audit())
    return {"name": settings.model_name, "version": version,
            "weights_sha256": signed["weights_sha256"]}  # fmt: skip


def promote(settings: LifecycleSettings, release: dict[str, Any]) -> dict[str, Any]:
    """Move the `production` alias to the release (needs its passed gate record).

    Returns:
        {"name", "version", "weights_sha256", "alias"}
    """
    from secmlops.registry import Registry

    registry = Registry.open(settings.model_registry)
    registry.promote(release["name"], release["version"], PRODUCTION_ALIAS, _keyring(), _audit())
    return {**release, "alias": PRODUCTION_ALIAS}


def _versions(registry: Any, name: str) -> list[dict[str, Any]]:
    from secmlops.registry import RegistryError

    try:
        return registry.list(name)
    except RegistryError:
        return []


# ------------------------------------------------------------------------------ monitoring
def monitor(settings: LifecycleSettings, window_minutes: float, run_id: str) -> dict[str, Any]:
    """Judge the last window of the production model's served requests.

    The production model is pulled and verified first: its signed reference profile is what
    the window is compared with.

    Returns:
        `monitor_window`'s result plus "version".
    """
    import datetime as dt

    from secmlops.monitoring.window import monitor_window
    from secmlops.policy import load_policy
    from secmlops.registry import Registry

    registry = Registry.open(settings.model_registry)
    version, _ = registry.resolve(settings.model_name, PRODUCTION_ALIAS)
    folder = settings.workdir / "monitoring" / "models" / version
    registry.pull(settings.model_name, version, folder, _keyring(), overwrite=True)
    result = monitor_window(
        settings.inference_log, folder, load_policy(settings.policy).monitoring,
        settings.monitoring_reports, settings.workdir / "monitoring" / "state.json", _audit(),
        window=dt.timedelta(minutes=window_minutes),
    )  # fmt: skip
    return {"version": version, **json.loads(json.dumps(result))}


# ------------------------------------------------------------------------------- trade-offs
def tradeoff_study(
    settings: LifecycleSettings, data_dir: str, quick: bool, run_id: str
) -> dict[str, Any]:
    """The security/performance trade-off study on a verified dataset version.

    Finished trainings and evaluations are cached per run, so a retried task continues instead
    of starting the study over.

    Returns:
        {"out_dir", "configurations", "pareto_front", "seconds"}
    """
    from secmlops.pipeline import safe_name
    from secmlops.tradeoffs.study import default_out_dir, run_study

    out = default_out_dir(settings.workdir)
    cache = settings.workdir / "runs" / "tradeoffs-cache" / safe_name(run_id)
    result = run_study(Path(data_dir), out, quick, policy_path=settings.policy, cache_dir=cache)
    return {
        "out_dir": str(result.out_dir),
        "configurations": len(result.rows),
        "pareto_front": list(result.pareto_front),
        "seconds": round(result.seconds, 1),
    }
