"""Seeded, resumable, device-agnostic detector training.

Determinism: the shuffling and augmentation of epoch `e` come from generators seeded with
(seed, e), and the learning rate is a pure function of the step, so a run resumed from the
checkpoint of epoch `e` continues exactly as the uninterrupted run would (on the same device).
Checkpoints are safetensors + JSON, like the model itself: no pickle anywhere.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from secmlops import models
from secmlops.data.dataset import DetectionDataset, load_dataset
from secmlops.errors import DataError, ModelError
from secmlops.evaluation.coco_map import coco_map
from secmlops.evaluation.inference import predict_prepared
from secmlops.evaluation.miss_rate import operating_point_metrics, threshold_at_fppi
from secmlops.fsutil import atomic_write_json
from secmlops.training.batches import AugmentConfig, PreparedSplit, augment_batch, prepare_split
from secmlops.training.defences import (
    AdversarialConfig,
    adversarial_mix,
    epoch_patch,
    patch_augment,
)

CHECKPOINT_DIR = "checkpoints"
# Longest input side the default compact model detects at; larger images are shrunk. (PETS
# frames at 576, trained on crops, were within the seed spread of this default in the
# ablation of docs/results.md, whose robustness figures are measured at this size.)
MAX_INPUT_SIDE = 384
# Longest side of the images one training step sees on a CPU: larger inputs (`--input-size`)
# train on random crops of this size (`TrainConfig.train_crop`), so a step costs the same at
# any input size.
MAX_STEP_SIDE = 384
# Optimizer steps the default schedule aims for; epochs follow from the training-set size.
TARGET_STEPS = 600
MIN_EPOCHS, MAX_EPOCHS = 8, 60
# The operating point of a model trained without a validation split to choose one on.
FIXED_SCORE_THRESHOLD = 0.3


@dataclass
class TrainConfig:
    """Training parameters; None means "choose from the data" (see `resolve`)."""

    architecture: str = models.DEFAULT_ARCHITECTURE
    epochs: int | None = None
    batch_size: int = 16
    learning_rate: float = 3e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 100
    input_size: tuple[int, int] | None = None
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model_config: dict[str, Any] = field(default_factory=dict)
    adversarial: AdversarialConfig | None = None
    # The operating point: the lowest score threshold with at most this many false positives per
    # validation image (the policy's gate.operating_point.target_fppi in the lifecycle).
    target_fppi: float = 0.1
    # Probability that a training image's people wear a random patch this step (see
    # `patch_augment`): the defence against person-worn patches. 0 draws nothing.
    patch_augmentation: float = 0.0
    # Steps of each epoch's universal adversarial patch (`epoch_patch`) that patch augmentation
    # puts on people instead of random pixels (0: random pixels).
    patch_attack_steps: int = 0
    # Decay of an exponential moving average of the weights (Polyak and Juditsky 1992; the
    # "model EMA" of modern detector recipes), which validation, the best-epoch choice and the
    # released model use instead of the last step's weights (0: off). The decay ramps up as
    # min(ema_decay, (1 + t) / (10 + t)) at step t, so the average tracks the early steps.
    ema_decay: float = 0.0
    # (height, width) of the random window of each image a training step sees, at the input
    # size's scale (the input size itself: whole images; None: `choose_train_crop`). Lets a
    # model detect at a high input resolution while a step costs what a step on crop-sized
    # images costs; validation and inference see whole images (the detector is fully
    # convolutional).
    train_crop: tuple[int, int] | None = None

    def to_json(self) -> dict[str, Any]:
        """Plain-JSON form recorded in model.json and checkpoints."""
        data = asdict(self)
        data["input_size"] = list(self.input_size) if self.input_size else None
        data["train_crop"] = list(self.train_crop) if self.train_crop else None
        data["adversarial"] = self.adversarial.to_json() if self.adversarial else None
        return data


@dataclass
class TrainResult:
    """What a finished training run produced."""

    model_dir: Path
    epochs: int
    best_epoch: int
    val_metrics: dict[str, float]
    history: list[dict[str, float]]
    seconds: float
    device: str
    # The epoch a resumed run continued after (0: trained from the start).
    resumed_from_epoch: int = 0


def pick_device(requested: str = "auto") -> torch.device:
    """CUDA when available (or asked for), else CPU."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise ModelError(f"device {requested!r} requested but CUDA is not available")
    return torch.device(requested)


def choose_input_size(dataset: DetectionDataset, max_side: int = MAX_INPUT_SIDE) -> tuple[int, int]:
    """Input size (height, width) from the data: the median image shrunk to `max_side`.

    Sides are rounded to multiples of 16 so every feature-map stride divides them.
    """
    heights = np.array([im.height for im in dataset.images])
    widths = np.array([im.width for im in dataset.images])
    height, width = float(np.median(heights)), float(np.median(widths))
    scale = min(1.0, max_side / max(height, width))
    return (
        max(32, round(height * scale / 16) * 16),
        max(32, round(width * scale / 16) * 16),
    )


def choose_train_crop(
    input_size: tuple[int, int], max_side: int = MAX_STEP_SIDE
) -> tuple[int, int]:
    """The training window: the whole input when its longer side is at most `max_side`, else
    the input's shape shrunk to `max_side` (sides multiples of 16)."""
    height, width = input_size
    scale = min(1.0, max_side / max(height, width))
    return max(32, int(height * scale) // 16 * 16), max(32, int(width * scale) // 16 * 16)


def choose_epochs(train_images: int, batch_size: int, target_steps: int = TARGET_STEPS) -> int:
    """Enough epochs for about `target_steps` optimizer steps, within sane bounds."""
    steps_per_epoch = max(1, math.ceil(train_images / batch_size))
    return int(min(MAX_EPOCHS, max(MIN_EPOCHS, round(target_steps / steps_per_epoch))))


def learning_rate_at(step: int, total_steps: int, config: TrainConfig) -> float:
    """Linear warm-up then cosine decay to 1% of the peak (a pure function of the step)."""
    if step < config.warmup_steps:
        return config.learning_rate * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, total_steps - config.warmup_steps)
    return config.learning_rate * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def train(
    data_dir: Path,
    out_dir: Path,
    config: TrainConfig | None = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    on_step: Callable[[int, int], None] | None = None,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
    on_prepare: Callable[[int], None] | None = None,
) -> TrainResult:
    """Train a detector on the `train` split, select the epoch with the best `val` mAP@0.5.

    Args:
        data_dir: a dataset version (see `secmlops.data.dataset`).
        out_dir: the model directory to write (`model.safetensors`, `model.json`, `checkpoints/`).
        config: training parameters; unset ones are chosen from the data.
        resume: continue from `out_dir/checkpoints` (the config stored there wins).
        overwrite: replace a finished model in `out_dir`.
        on_step: called with (step in epoch, steps per epoch) after every optimizer step.
        on_epoch: called with the epoch's summary (epoch, loss, val mAP50, seconds).
        on_prepare: called with 1 per decoded image while the dataset is loaded.

    Returns:
        The run summary; the model directory holds the best epoch's weights.

    Raises:
        DataError: the dataset has no training images.
        ModelError: `out_dir` holds a model and neither `resume` nor `overwrite` is set, or a
            checkpoint to resume from is missing or inconsistent.
    """
    started = time.perf_counter()
    out_dir = Path(out_dir)
    checkpoint_dir = out_dir / CHECKPOINT_DIR
    dataset = load_dataset(data_dir)
    config = _resolve_config(config or TrainConfig(), dataset, checkpoint_dir if resume else None)
    assert config.input_size is not None  # _resolve_config always chooses one
    if not resume and (out_dir / models.CARD_FILE).exists() and not overwrite:
        raise ModelError(f"{out_dir} already holds a model; pass --resume or --overwrite")
    if resume and not (checkpoint_dir / "state.json").exists():
        raise ModelError(f"{checkpoint_dir}: no checkpoint to resume from")

    device = pick_device(config.device)
    torch.manual_seed(config.seed)
    train_split = prepare_split(dataset, dataset.split("train"), config.input_size, on_prepare)
    if len(train_split) == 0 or sum(len(b) for b in train_split.boxes) == 0:
        raise DataError(f"{data_dir}: the train split has no annotated person to learn from")
    val_records = dataset.splits.get("val") and dataset.split("val")
    val_split = (
        prepare_split(dataset, val_records, config.input_size, on_prepare) if val_records else None
    )

    model = models.build(config.architecture, input_size=config.input_size, **config.model_config)
    model = model.to(device).to(memory_format=torch.channels_last)
    if config.patch_attack_steps and not models.has_objectness_map(model):
        raise ModelError(
            f"adversarial patch augmentation optimises patches on the objectness map, which "
            f"{config.architecture} does not have; use --patch-attack-steps 0 (random patches)"
        )
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    use_amp = config.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    steps_per_epoch = math.ceil(len(train_split) / config.batch_size)
    assert config.epochs is not None
    crop = config.train_crop if config.train_crop != config.input_size else None
    total_steps = steps_per_epoch * config.epochs

    # The averaged weights are a copy of the model, updated after each step (None: no EMA).
    ema = copy.deepcopy(model).eval().requires_grad_(False) if config.ema_decay else None
    state: dict[str, Any] = {"epoch": 0, "best_epoch": 0, "best_map50": -1.0, "history": []}
    if resume:
        state = _load_checkpoint(checkpoint_dir, model, optimizer, config, scaler, ema)
    resumed_from_epoch = int(state["epoch"])

    for epoch in range(state["epoch"] + 1, config.epochs + 1):
        epoch_started = time.perf_counter()
        model.train()
        generator = torch.Generator().manual_seed(config.seed * 100_003 + epoch)
        # The attack's random starts come from a generator on the training device, so they
        # cost no host-device copies and replay exactly on resume.
        attack_generator = torch.Generator(device).manual_seed(config.seed * 100_019 + epoch)
        order = torch.randperm(len(train_split), generator=generator)
        # The epoch's universal adversarial patch, from the weights the epoch starts with.
        adversarial_patch = (
            epoch_patch(
                model, train_split.images, train_split.boxes, config.patch_attack_steps,
                config.seed * 100_043 + epoch,
            )
            if config.patch_attack_steps
            else None
        )  # fmt: skip
        losses: list[float] = []
        # On crops, the model takes the crop as its input size (no resize) until validation.
        model.input_size = crop or config.input_size  # type: ignore[assignment]
        for step in range(steps_per_epoch):
            index = order[step * config.batch_size : (step + 1) * config.batch_size]
            images = train_split.images[index].to(device).float().div_(255)
            images, targets = augment_batch(
                images,
                [train_split.boxes[i] for i in index],
                [train_split.ignore[i] for i in index],
                generator,
                config.augment,
                crop,
            )
            if config.patch_augmentation > 0:  # 0: no draws, so older runs replay unchanged
                images = patch_augment(
                    images, [t["boxes"] for t in targets], config.patch_augmentation, generator,
                    adversarial_patch,
                )  # fmt: skip
            global_step = (epoch - 1) * steps_per_epoch + step
            if config.adversarial is not None:
                images = adversarial_mix(
                    model, images, targets, config.adversarial, global_step, steps_per_epoch,
                    attack_generator, use_amp,
                )  # fmt: skip
            for group in optimizer.param_groups:
                group["lr"] = learning_rate_at(global_step, total_steps, config)
            with torch.autocast(device.type, enabled=use_amp):
                loss_dict = model(images, targets)
                loss = sum(loss_dict.values())
            if not torch.isfinite(loss):
                raise ModelError(
                    f"training diverged at epoch {epoch} step {step} (loss {loss.item()})"
                )
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), 10.0)
            scaler.step(optimizer)
            scaler.update()
            if ema is not None:
                update_ema(ema, model, ema_decay_at(global_step, config.ema_decay))
            losses.append(float(loss.detach()))
            if on_step:
                on_step(step + 1, steps_per_epoch)

        model.input_size = config.input_size  # type: ignore[assignment]
        judged = ema if ema is not None else model  # the weights a release would carry
        val_map50 = _validate(judged, val_split) if val_split else float("nan")
        model.train()
        summary = {
            "epoch": float(epoch),
            "loss": float(np.mean(losses)),
            "val_mAP50": val_map50,
            "seconds": time.perf_counter() - epoch_started,
        }
        state["history"].append(summary)
        # Without a validation split, the last epoch is the best one we can name.
        if not val_split or val_map50 > state["best_map50"]:
            state["best_map50"], state["best_epoch"] = val_map50, epoch
            _save_weights(judged, checkpoint_dir / "best.safetensors")
        state["epoch"] = epoch
        _save_checkpoint(checkpoint_dir, model, optimizer, config, state, scaler, ema)
        if on_epoch:
            on_epoch(summary)

    best = models.build(config.architecture, input_size=config.input_size, **config.model_config)
    best.load_state_dict(load_file(str(checkpoint_dir / "best.safetensors")))
    best = best.to(device).eval()
    val_metrics = _validation_metrics(best, val_split) if val_split else {}
    operating_point = choose_operating_point(best, val_split, config.target_fppi)
    seconds = time.perf_counter() - started
    models.save(
        best,
        out_dir,
        operating_point=operating_point,
        metrics={"val": val_metrics},
        training={
            **config.to_json(),
            "data": str(Path(data_dir).resolve()),
            "best_epoch": state["best_epoch"],
            "history": state["history"],
            "device": str(device),
            "train_images": len(train_split),
        },
    )
    from secmlops.monitoring.reference import MIN_REFERENCE_ROWS, profile_model

    if val_split and len(val_split) >= MIN_REFERENCE_ROWS:
        # The drift reference is the validation split as this model sees it; too small a split
        # gives no profile (monitoring then refuses the model instead of judging on noise).
        profile_model(out_dir, Path(data_dir), "val")
    return TrainResult(
        model_dir=out_dir,
        epochs=config.epochs,
        best_epoch=int(state["best_epoch"]),
        val_metrics=val_metrics,
        history=state["history"],
        seconds=seconds,
        device=str(device),
        resumed_from_epoch=resumed_from_epoch,
    )


def choose_operating_point(
    model: nn.Module, val_split: PreparedSplit | None, target_fppi: float
) -> models.OperatingPoint:
    """The score threshold a model serves at: the lowest one with at most `target_fppi` false
    positives per validation image, with its validation figures; without a validation split,
    `FIXED_SCORE_THRESHOLD` (recorded as fixed, which the gate refuses as evidence)."""
    if val_split is None or len(val_split) == 0:
        return models.OperatingPoint(score_threshold=FIXED_SCORE_THRESHOLD, chosen_by="fixed")
    predictions = predict_prepared(model, val_split)
    threshold = threshold_at_fppi(val_split.records, predictions, target_fppi)
    figures = operating_point_metrics(val_split.records, predictions, threshold)
    return models.OperatingPoint(
        score_threshold=threshold, chosen_by="fppi", target_fppi=target_fppi, split="val",
        metrics={k: figures[k] for k in ("recall", "precision", "fppi", "mr2")},
    )  # fmt: skip


def ema_decay_at(step: int, decay: float) -> float:
    """The EMA decay after optimizer step `step` (0-based): ramped up so early weights, which
    are far from the final ones, are forgotten quickly (a pure function of the step)."""
    return min(decay, (1 + step) / (10 + step))


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model, for weights and batch-norm statistics alike
    (integer buffers, the batch counters, are copied)."""
    for averaged, current in zip(
        ema.state_dict().values(), model.state_dict().values(), strict=True
    ):
        if averaged.dtype.is_floating_point:
            averaged.lerp_(current.detach(), 1 - decay)
        else:
            averaged.copy_(current)


def _resolve_config(
    config: TrainConfig, dataset: DetectionDataset, checkpoint_dir: Path | None
) -> TrainConfig:
    if checkpoint_dir is not None and (checkpoint_dir / "state.json").exists():
        saved = json.loads((checkpoint_dir / "state.json").read_text())["config"]
        augment: dict[str, Any] = {
            k: tuple(v) if isinstance(v, list) else v for k, v in saved["augment"].items()
        }
        saved["augment"] = AugmentConfig(**augment)
        saved["input_size"] = tuple(saved["input_size"])
        if saved.get("train_crop"):
            saved["train_crop"] = tuple(saved["train_crop"])
        if saved.get("adversarial"):
            saved["adversarial"] = AdversarialConfig.from_json(saved["adversarial"])
        return TrainConfig(**saved)
    if config.architecture not in models.ARCHITECTURES:
        choices = ", ".join(models.ARCHITECTURES)
        raise ModelError(f"unknown architecture {config.architecture!r}; choose one of {choices}")
    resolved = TrainConfig(
        **{**asdict(config), "augment": config.augment, "adversarial": config.adversarial}
    )
    if resolved.input_size is None:
        resolved.input_size = choose_input_size(dataset)
    resolved.input_size = (int(resolved.input_size[0]), int(resolved.input_size[1]))
    if resolved.train_crop is None:  # other architectures resize their inputs themselves
        compact = resolved.architecture == models.DEFAULT_ARCHITECTURE
        resolved.train_crop = (
            choose_train_crop(resolved.input_size) if compact else resolved.input_size
        )
    if resolved.epochs is None:
        resolved.epochs = choose_epochs(len(dataset.splits.get("train", [])), resolved.batch_size)
    if resolved.epochs < 1 or resolved.batch_size < 1:
        raise ModelError("epochs and batch size must be at least 1")
    if not (0 < resolved.target_fppi <= 10 and math.isfinite(resolved.target_fppi)):
        raise ModelError(f"target FPPI must be in (0, 10], got {resolved.target_fppi}")
    if not 0 <= resolved.patch_augmentation <= 1:
        raise ModelError(
            f"patch augmentation is a probability in [0, 1], got {resolved.patch_augmentation}"
        )
    if not 0 <= resolved.ema_decay < 1:
        raise ModelError(f"EMA decay must be in [0, 1), got {resolved.ema_decay}")
    crop = resolved.train_crop = (int(resolved.train_crop[0]), int(resolved.train_crop[1]))
    if crop != resolved.input_size:
        if resolved.architecture != models.DEFAULT_ARCHITECTURE:
            raise ModelError(
                f"crop training needs {models.DEFAULT_ARCHITECTURE} ({resolved.architecture} "
                f"resizes its inputs itself)"
            )
        height, width = resolved.input_size
        problem = (
            "must be multiples of 16" if any(side % 16 for side in crop)
            else "must be at least 32x32" if min(crop) < 32
            else f"does not fit the input size {height}x{width}"
            if crop[0] > height or crop[1] > width else None
        )  # fmt: skip
        if problem:
            raise ModelError(f"training crop {crop[0]}x{crop[1]} {problem}")
    if resolved.patch_attack_steps < 0:
        raise ModelError(f"patch attack steps must be >= 0, got {resolved.patch_attack_steps}")
    if resolved.patch_attack_steps and not resolved.patch_augmentation:
        raise ModelError("patch attack steps need patch augmentation (a share of images above 0)")
    return resolved


def _validate(model: nn.Module, split: PreparedSplit) -> float:
    return _validation_metrics(model, split)["mAP50"]


def _validation_metrics(model: nn.Module, split: PreparedSplit) -> dict[str, float]:
    return coco_map(split.records, predict_prepared(model, split))


def _save_weights(model: nn.Module, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, str(tmp))
    tmp.replace(path)


def _save_checkpoint(
    checkpoint_dir: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    config: TrainConfig,
    state: dict[str, Any],
    scaler: torch.amp.GradScaler,
    ema: nn.Module | None = None,
) -> None:
    """Weights (and their EMA) and optimizer tensors in safetensors, the rest in JSON; JSON
    written last.

    The AMP loss scale is part of the state: a resumed run that restarted it at its initial value
    would skip or scale steps differently from the uninterrupted run.
    """
    tensors = {f"model.{k}": v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if ema is not None:
        tensors.update(
            {f"ema.{k}": v.detach().contiguous().cpu() for k, v in ema.state_dict().items()}
        )
    optimizer_state = optimizer.state_dict()
    for param_id, param_state in optimizer_state["state"].items():
        for key, value in param_state.items():
            tensors[f"optimizer.{param_id}.{key}"] = torch.as_tensor(value).contiguous().cpu()
    tensors["rng.torch"] = torch.get_rng_state()
    tmp = checkpoint_dir / ".state.safetensors.tmp"
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(tmp))
    tmp.replace(checkpoint_dir / "state.safetensors")
    atomic_write_json(
        checkpoint_dir / "state.json",
        {
            "config": config.to_json(),
            "param_groups": optimizer_state["param_groups"],
            "grad_scaler": scaler.state_dict(),
            **state,
        },
    )


def _load_checkpoint(
    checkpoint_dir: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    config: TrainConfig,
    scaler: torch.amp.GradScaler,
    ema: nn.Module | None = None,
) -> dict[str, Any]:
    meta = json.loads((checkpoint_dir / "state.json").read_text())
    try:
        tensors = load_file(str(checkpoint_dir / "state.safetensors"))
    except (SafetensorError, OSError) as exc:
        raise ModelError(
            f"{checkpoint_dir / 'state.safetensors'}: unreadable checkpoint ({exc})"
        ) from None
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    if ema is not None:
        ema.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})
    optimizer_state: dict[str, Any] = {"state": {}, "param_groups": meta["param_groups"]}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, param_id, name = key.split(".", 2)
            optimizer_state["state"].setdefault(int(param_id), {})[name] = value
    optimizer.load_state_dict(optimizer_state)
    torch.set_rng_state(tensors["rng.torch"])
    if meta.get("grad_scaler"):
        scaler.load_state_dict(meta["grad_scaler"])
    return {k: meta[k] for k in ("epoch", "best_epoch", "best_map50", "history")}
