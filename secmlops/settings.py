"""The deployment's settings: every `SECMLOPS_*` variable, read once, in one frozen object.

This is the only module that reads `SECMLOPS_*` environment variables. The command line, the
lifecycle stages (and through them the DAGs), serving and the reporting views build one
`Settings` with `Settings.from_env()` and pass it, or values from it, down; the library's stage
modules take plain arguments. So what a run used is visible in one place (`secmlops settings
show`), a test can build settings from a dict instead of patching the process environment, and
the CLI and the DAGs find the same registry, audit log and monitoring state by construction.

Every variable is optional: unset, a location falls back to a path under the work directory (the
embedded defaults that `make demo` and the tests use). An empty value counts as unset.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from secmlops.errors import SecMLOpsError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from secmlops.audit import AuditLog
    from secmlops.policy import Policy
    from secmlops.registry import Registry
    from secmlops.supplychain.keys import Keyring

ENV_PREFIX = "SECMLOPS_"
PRODUCTION_ALIAS = "production"
# Fields whose values are secrets: `shown()` masks them, and they never reach a log line.
SECRET_FIELDS = frozenset({"key_passphrase", "serving_token"})
# `none` in a schedule variable leaves only manual and REST-triggered runs.
NO_SCHEDULE = "none"


class SettingsError(SecMLOpsError):
    """A `SECMLOPS_*` variable holds a value of the wrong kind (e.g. letters where a count goes)."""


@dataclass(frozen=True)
class Settings:
    """Where every stage reads and writes, and how the deployment runs them.

    Each field is read from `SECMLOPS_<FIELD NAME IN CAPITALS>` (e.g. `workdir` from
    `SECMLOPS_WORKDIR`).

    Attributes:
        workdir: runs, pulled data and models, reports live under it (default `./runs`).
        policy: the policy file (default `./policy.yaml`).
        audit_log: the hash-chained audit log (default `<workdir>/audit/audit.jsonl`).
        actor: who the audit log names as acting (default: user@host).
        registry: the model registry URI, `file://` or `s3://` (default `<workdir>/registry`).
        model_name: the model's name in the registry.
        data_registry: the DVC data registry, a git repository (default `<workdir>/data-registry`).
        dataset_name: the dataset's name in the data registry.
        dvc_remote: the DVC remote new data registries push to (default: a folder beside it).
        s3_endpoint_url: an S3-compatible endpoint (MinIO, a loopback test server); unset: AWS.
        s3_connection: inside Airflow tasks, the `aws` Connection holding the S3 credentials.
        trainer_key: the trainer role's private key: signs the provenance of trained models.
        trainer_openssf_key: the trainer's second key, ECDSA P-256, for the OpenSSF model-signing
            bundle (`model.sig`) a release also carries when it is set.
        gate_key: the gate role's private key: signs gate decisions and staging moves.
        approver_key: the approver role's private key: signs the move of the production alias
            once a person other than the one who triggered the run approved it.
        key_passphrase: decrypts encrypted private keys and encrypts new ones (secret).
        trusted_keys: the trusted public keys: PEM text, or os.pathsep-separated files/folders.
        serving_token: the bearer token `secmlops serve` demands (secret).
        training_queue: the Celery queue training tasks go to (GPU workers, if any).
        release_queue: the Celery queue of the production move: the worker that holds the
            approver's key (and no other role's).
        data_pull_schedule: the data-pull DAG's cadence (`none`: manual and REST only).
        monitoring_schedule: the monitoring DAG's cadence (`none`: manual and REST only).
        training_epochs: epochs of scheduled training runs (unset: from the data size).
        eval_max_images: cap on attacked test images in scheduled runs (unset: all).
        inference_log: where serving logs requests, a folder or `s3://bucket/prefix`.
        monitoring_reports: where drift reports go, a folder or `s3://bucket/prefix`.
        monitoring_state: the cooldown state shared by `secmlops monitor` and the monitoring DAG.
        tradeoffs_dir: where trade-off studies are written (the Airflow view shows the latest).
        approval_timeout_hours: how long a training run waits for a person to approve its
            release for production before it fails (production unchanged); default 24.
        trust_state: the highest signed alias sequence this installation has accepted, per
            registry, model and alias (a replayed older alias record is refused).
        git_commit: the code version provenance records when the code is not a git checkout.
    """

    workdir: Path
    policy: Path
    audit_log: Path
    actor: str | None
    registry: str
    model_name: str
    data_registry: Path
    dataset_name: str
    dvc_remote: str
    s3_endpoint_url: str | None
    s3_connection: str | None
    trainer_key: Path | None
    trainer_openssf_key: Path | None
    gate_key: Path | None
    approver_key: Path | None
    key_passphrase: str | None
    trusted_keys: str | None
    serving_token: str | None
    training_queue: str
    release_queue: str
    data_pull_schedule: str | None
    monitoring_schedule: str | None
    training_epochs: int | None
    eval_max_images: int | None
    inference_log: str
    monitoring_reports: str
    monitoring_state: Path
    tradeoffs_dir: Path
    approval_timeout_hours: float
    trust_state: Path
    git_commit: str | None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build the settings from `environ` (default: the process environment).

        Raises:
            SettingsError: a count variable is not a positive integer.
        """
        env = os.environ if environ is None else environ

        def get(name: str) -> str | None:
            value = env.get(ENV_PREFIX + name.upper(), "").strip()
            return value or None

        def path(name: str, default: Path) -> Path:
            value = get(name)
            return Path(value).resolve() if value else default

        workdir = path("workdir", Path("runs").resolve())
        data_registry = path("data_registry", workdir / "data-registry")
        return cls(
            workdir=workdir,
            policy=path("policy", Path("policy.yaml").resolve()),
            audit_log=path("audit_log", workdir / "audit" / "audit.jsonl"),
            actor=get("actor"),
            registry=get("registry") or (workdir / "registry").as_uri(),
            model_name=get("model_name") or "pedestrian-detector",
            data_registry=data_registry,
            dataset_name=get("dataset_name") or "street",
            dvc_remote=get("dvc_remote") or str(data_registry.parent / "dvc-remote"),
            s3_endpoint_url=get("s3_endpoint_url"),
            s3_connection=get("s3_connection"),
            trainer_key=Path(key) if (key := get("trainer_key")) else None,
            trainer_openssf_key=Path(key) if (key := get("trainer_openssf_key")) else None,
            gate_key=Path(key) if (key := get("gate_key")) else None,
            approver_key=Path(key) if (key := get("approver_key")) else None,
            key_passphrase=get("key_passphrase"),
            trusted_keys=get("trusted_keys"),
            serving_token=get("serving_token"),
            training_queue=get("training_queue") or "default",
            release_queue=get("release_queue") or "default",
            data_pull_schedule=_schedule(get("data_pull_schedule"), "@daily"),
            monitoring_schedule=_schedule(get("monitoring_schedule"), "@hourly"),
            training_epochs=_count("training_epochs", get("training_epochs")),
            eval_max_images=_count("eval_max_images", get("eval_max_images")),
            inference_log=get("inference_log") or str(workdir / "inference-log"),
            monitoring_reports=(
                get("monitoring_reports") or str(workdir / "runs" / "monitoring" / "reports")
            ),
            monitoring_state=path("monitoring_state", workdir / "monitoring" / "state.json"),
            tradeoffs_dir=path("tradeoffs_dir", workdir / "runs" / "tradeoffs"),
            approval_timeout_hours=_hours("approval_timeout_hours", get("approval_timeout_hours")),
            trust_state=path("trust_state", workdir / "trust" / "alias-sequences.json"),
            git_commit=get("git_commit"),
        )

    def run_dir(self, run_id: str) -> Path:
        """The folder of one lifecycle run's outputs (a DAG run id made file-system safe)."""
        from secmlops.fsutil import safe_name

        return self.workdir / "runs" / safe_name(run_id)

    def audit(self, actor: str | None = None) -> AuditLog:
        """The audit log, written as `actor` (default: `self.actor`, else user@host)."""
        from secmlops.audit import AuditLog

        return AuditLog(self.audit_log, actor=actor or self.actor)

    def keyring(self, policy: Policy | None = None) -> Keyring:
        """The trusted public keys, each with the role the policy gives it.

        Args:
            policy: whose `roles:` to use (default: the policy file `self.policy`).

        Raises:
            DataError: no trusted keys are set, or a key file cannot be read.
            PolicyError: the policy file is missing or invalid.
        """
        from secmlops.policy import load_policy
        from secmlops.supplychain.keys import Keyring

        policy = policy or load_policy(self.policy)
        ring = Keyring.from_setting(self.trusted_keys, env_name("trusted_keys"))
        return ring.with_roles(policy.roles.model_dump())

    def model_registry(self) -> Registry:
        """The model registry (on the S3 endpoint, for an `s3://` registry)."""
        from secmlops.registry import Registry

        return Registry.open(self.registry, self.s3_endpoint_url)

    def private_key(self, role: str, path: Path | None = None) -> Ed25519PrivateKey:
        """The private key of `role` ("trainer", "gate", "approver"): `path`, else the role's
        setting, decrypted with the passphrase.

        Raises:
            DataError: no key is set for the role, or it cannot be read or decrypted.
        """
        from secmlops.errors import DataError
        from secmlops.supplychain.keys import load_private_key

        field = f"{role}_key"
        path = path or getattr(self, field, None)
        if path is None:
            raise DataError(f"no {role} key: set {env_name(field)} or pass --key")
        return load_private_key(path, self.key_passphrase)

    def openssf_key(self, path: Path | None = None) -> Any:
        """The trainer's ECDSA P-256 key for OpenSSF bundles (`path`, else the setting), or None
        when neither is set.

        Raises:
            DataError: it cannot be read or decrypted; IntegrityError: not ECDSA P-256.
        """
        from secmlops.supplychain.openssf import load_openssf_key

        path = path or self.trainer_openssf_key
        return load_openssf_key(path, self.key_passphrase) if path else None

    def shown(self) -> dict[str, Any]:
        """The settings as `secmlops settings show` prints them: env name -> value, secrets
        masked (a set secret shows as `***`, so one can still tell it is set)."""
        shown: dict[str, Any] = {}
        for field in fields(self):
            value = getattr(self, field.name)
            if field.name in SECRET_FIELDS and value is not None:
                value = "***"
            shown[ENV_PREFIX + field.name.upper()] = str(value) if value is not None else None
        return shown


def env_name(field: str) -> str:
    """The environment variable a settings field is read from (`workdir` -> `SECMLOPS_WORKDIR`)."""
    if field not in {f.name for f in fields(Settings)}:
        raise KeyError(field)
    return ENV_PREFIX + field.upper()


def _schedule(value: str | None, default: str) -> str | None:
    if value is None:
        return default
    return None if value.lower() == NO_SCHEDULE else value


def _count(name: str, value: str | None) -> int | None:
    if value is None:
        return None
    try:
        count = int(value)
    except ValueError:
        count = 0
    if count < 1:
        raise SettingsError(f"{env_name(name)}={value!r}: expected a positive integer")
    return count


def _hours(name: str, value: str | None, default: float = 24.0) -> float:
    if value is None:
        return default
    try:
        hours = float(value)
    except ValueError:
        hours = 0.0
    if not 0 < hours < float("inf"):
        raise SettingsError(f"{env_name(name)}={value!r}: expected a positive number of hours")
    return hours
