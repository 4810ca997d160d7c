"""Lifecycle stages as functions of plain values, for DAG tasks and scripts.

Each stage takes and returns JSON-serialisable values (paths as strings), so an Airflow task can
pass its result to the next one through XCom, and the same call works without a scheduler.
The heavy libraries (torch, cv2) are imported inside the stages: a DAG file that imports this
module stays fast to parse.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from secmlops.fsutil import atomic_write_json

WORKDIR_ENV = "SECMLOPS_WORKDIR"


def default_workdir() -> Path:
    """Where stages keep data and models: `$SECMLOPS_WORKDIR`, else `./runs` (embedded default)."""
    return Path(os.environ.get(WORKDIR_ENV, "runs")).resolve()


def safe_name(text: str) -> str:
    """A file-system-safe name for run ids such as `manual__2026-11-25T10:00:00+00:00`."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "run"


def prepare_synthetic_data(workdir: str, images: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Generate the synthetic dataset for (images, seed) unless that exact one exists.

    The generator is deterministic per seed, so a dataset folder named after its parameters
    can be reused across runs.

    Returns:
        {"data_dir": path, "images": count}
    """
    from secmlops.data.dataset import load_dataset
    from secmlops.data.synthetic import generate_scenes

    data_dir = Path(workdir) / "data" / f"synthetic-n{images}-seed{seed}"
    if not (data_dir / "annotations.json").exists():
        generate_scenes(data_dir, images, seed, overwrite=True)
    return {"data_dir": str(data_dir), "images": len(load_dataset(data_dir).images)}


def train_model(
    data_dir: str,
    model_dir: str,
    *,
    architecture: str = "compact_centernet",
    epochs: int | None = None,
    seed: int = 0,
    input_size: list[int] | None = None,
    adversarial: str = "none",
    eps: str | float = "4/255",
    attack_steps: int = 3,
    mix: float = 0.5,
    eps_warmup_epochs: int = 2,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
) -> dict[str, Any]:
    """Train on `data_dir` into `model_dir` (resuming if a checkpoint is there).

    Resuming makes a retried Airflow task continue where the failed attempt stopped.
    `adversarial` is "none", "pgd" (PGD-`attack_steps`) or "fgsm-rs"; `eps` is a number or a
    fraction such as "4/255"; `mix` is the share of each batch replaced by adversarial examples.
    `on_epoch` receives each epoch's summary (epoch, loss, val mAP50, seconds).

    Returns:
        {"model_dir", "epochs", "best_epoch", "val": metrics, "seconds", "device",
         "resumed_from_epoch" (0: not resumed)}
    """
    from secmlops.training.trainer import CHECKPOINT_DIR, TrainConfig, adversarial_config, train

    config = TrainConfig(
        architecture=architecture,
        epochs=epochs,
        seed=seed,
        input_size=tuple(input_size) if input_size else None,  # type: ignore[arg-type]
        adversarial=adversarial_config(adversarial, eps, attack_steps, mix, eps_warmup_epochs),
    )
    resume = (Path(model_dir) / CHECKPOINT_DIR / "state.json").exists()
    result = train(
        Path(data_dir), Path(model_dir), config, resume=resume, overwrite=True, on_epoch=on_epoch
    )
    return {
        "model_dir": str(result.model_dir),
        "epochs": result.epochs,
        "best_epoch": result.best_epoch,
        "val": result.val_metrics,
        "seconds": round(result.seconds, 1),
        "device": result.device,
        "resumed_from_epoch": result.resumed_from_epoch,
    }


def evaluate_model(model_dir: str, data_dir: str, split: str = "test") -> dict[str, Any]:
    """COCO mAP of a model on a split, also written beside the model (`evaluation-<split>.json`)."""
    from secmlops.data.dataset import load_dataset
    from secmlops.evaluation.inference import evaluate_records, select_split
    from secmlops.models import load
    from secmlops.training.trainer import pick_device

    model = load(Path(model_dir), device=pick_device("auto"))
    dataset = load_dataset(Path(data_dir))
    metrics = evaluate_records(model, dataset, select_split(dataset, split))
    report = {"model_dir": model_dir, "data_dir": data_dir, "split": split, **metrics}
    atomic_write_json(Path(model_dir).parent / f"evaluation-{split}.json", report)
    return report


def check_data(
    data_dir: str,
    policy_path: str,
    trusted_keys: list[str] | None = None,
    audit_log: str | None = None,
    reports_dir: str | None = None,
    screen_poisoning: bool = True,
) -> dict[str, Any]:
    """Run the data-stage controls in order (verify, validate, screen); raise on the first failure.

    Each decision is appended to the audit log. A caller that gets a result may use the data;
    one that gets an exception must not (in a DAG, the failed task stops everything downstream).

    Args:
        data_dir: the dataset folder (with manifest.json and manifest.sig).
        policy_path: the policy file with the data thresholds and trusted key ids.
        trusted_keys: public key files or folders; default `$SECMLOPS_TRUSTED_KEYS`.
        audit_log: default `$SECMLOPS_AUDIT_LOG` or `<workdir>/audit/audit.jsonl`.
        reports_dir: where the validation and screening reports go (default: beside the data).
        screen_poisoning: run the poisoning screen (the slowest control).

    Returns:
        {"manifest_digest", "signer", "validation_report", "screening_report"}
    """
    from secmlops.audit import AuditLog, default_audit_path
    from secmlops.data import checks
    from secmlops.policy import load_policy
    from secmlops.supplychain.keys import Keyring

    policy = load_policy(Path(policy_path)).data
    keyring = (
        Keyring.from_paths([Path(p) for p in trusted_keys]) if trusted_keys else Keyring.from_env()
    )
    audit = AuditLog(Path(audit_log) if audit_log else default_audit_path())
    reports = Path(reports_dir) if reports_dir else Path(data_dir).parent / "reports"
    verified = checks.verify_signed_dataset(Path(data_dir), keyring, policy, audit)
    checks.validate(Path(data_dir), policy, audit, reports / "validation.json")
    result = {**verified, "validation_report": str(reports / "validation.json")}
    if screen_poisoning:
        checks.screen(Path(data_dir), policy, audit, reports / "screening.json")
        result["screening_report"] = str(reports / "screening.json")
    return result
