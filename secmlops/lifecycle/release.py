"""Training to release as DAG tasks: train, attack, gate, sign, push, promote."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

from secmlops.errors import DataError
from secmlops.lifecycle.settings import (
    PRODUCTION_ALIAS,
    LifecycleSettings,
    audit_log,
    trusted_keyring,
)

log = logging.getLogger(__name__)


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
    registry.pull(settings.model_name, version, folder, trusted_keyring(), overwrite=True)
    out = str(settings.run_dir(run_id) / "robustness-production.json")
    return {"version": version, **evaluate(settings, str(folder), data_dir, out,
                                           max_images=max_images)}  # fmt: skip


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
    from secmlops.policy import parse_overrides

    record = Path(report).with_name("gate-record.json")
    key = os.environ.get(SIGNING_KEY_ENV)
    decision = run_gate(
        report, settings.policy, signing_key=Path(key) if key else None, audit_log=audit_log(),
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
        registry.push(
            Path(signed["model_dir"]), settings.model_name, version, trusted_keyring(), audit_log()
        )
    return {"name": settings.model_name, "version": version,
            "weights_sha256": signed["weights_sha256"]}  # fmt: skip


def promote(settings: LifecycleSettings, release: dict[str, Any]) -> dict[str, Any]:
    """Move the `production` alias to the release (needs its passed gate record).

    Returns:
        {"name", "version", "weights_sha256", "alias"}
    """
    from secmlops.registry import Registry

    registry = Registry.open(settings.model_registry)
    registry.promote(
        release["name"], release["version"], PRODUCTION_ALIAS, trusted_keyring(), audit_log()
    )
    return {**release, "alias": PRODUCTION_ALIAS}


def _versions(registry: Any, name: str) -> list[dict[str, Any]]:
    from secmlops.registry import RegistryError

    try:
        return registry.list(name)
    except RegistryError:
        return []
