"""The robustness suite: a detector's mAP under attack and under natural corruptions.

One call measures, on one dataset split, a model's clean COCO mAP, its pedestrian figures at the
operating point signed in its model card (recall, miss rate, precision, false positives per image,
and the log-average miss rate MR^-2: `secmlops.evaluation.miss_rate`), and its mAP under:
- evasion attacks from ART (`fgsm_linf_<k>`, `pgd_linf_<k>` for every eps level k/255 of the
  suite): white-box, untargeted, L-inf bounded (see `secmlops.evaluation.art_attacks`);
- one universal physical patch from ART (`patch`, RobustDPatch): unbounded pixels in a square;
- five ImageNet-C corruptions (`secmlops.evaluation.corruptions`), not adversarial.

Threat model convention: the attacker controls the pixels the model sees, i.e. each image of the
split at the model's input size, float [0,1]; detections are scaled back to the original image
and scored against its ground truth. The gradient attacks move away from the ground-truth boxes
(ignore regions stay ignore regions in the loss).

It also cross-checks our own on-device PGD (`secmlops.attacks.perturb`, the attack adversarial
training uses) against ART's at the largest eps: same loss, same batches, same settings, so the
two robust mAPs must agree within `CROSS_CHECK_TOLERANCE`; if they do not, one implementation is
wrong or the model masks its gradients, and the training-time robustness claims are suspect.

The report (`REPORT_SCHEMA`) is the evidence the validation gate (`secmlops.evaluation.gate`)
decides on.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import Tensor, nn

from secmlops import models
from secmlops.attacks.projected_gradient import AttackConfig, perturb
from secmlops.data.dataset import load_dataset
from secmlops.errors import DataError
from secmlops.evaluation import art_attacks
from secmlops.evaluation.coco_map import coco_map
from secmlops.evaluation.corruptions import CORRUPTIONS, corrupt, corruption_params
from secmlops.evaluation.gate_checks import REPORT_SCHEMA
from secmlops.evaluation.inference import predict_prepared, select_split
from secmlops.evaluation.miss_rate import operating_point_metrics
from secmlops.policy import AttackSuitePolicy
from secmlops.training.batches import PreparedSplit, prepare_split
from secmlops.training.trainer import pick_device

# Largest |ours - ART| robust mAP@0.5 difference accepted: both attack the same loss on the same
# batches, so beyond float noise flipping a few gradient signs they should agree exactly.
CROSS_CHECK_TOLERANCE = 0.03
# Seeds the patch's initial pixels and transformations and the corruption noise.
SEED = 0
# The universal patch is trained on at most this many images (spread over the split), then
# tested on all of them: a sticker is made once, not per frame.
PATCH_TRAIN_IMAGES = 16
PATCH_ITERATIONS = 20
# The pedestrian figures a report carries at the operating point (miss_rate: 1 - recall).
PEDESTRIAN_FIGURES = ("recall", "miss_rate", "precision", "fppi", "mr2")

Progress = Callable[[str, int, int], None]  # (step about to run or "done", steps done, total)


# The suite is the policy's `gate.attacks` section itself: one schema and one set of bounds, so
# the gate can compare a report's suite with the policy's field by field.
RobustnessSuite = AttackSuitePolicy


def attack_names(suite: RobustnessSuite) -> list[str]:
    """Names of a report's `attacks` entries, in the order they run."""
    return [
        *(f"fgsm_linf_{k}" for k in suite.linf_eps_levels),
        *(f"pgd_linf_{k}" for k in suite.linf_eps_levels),
        "patch",
        *CORRUPTIONS,
    ]


def default_report_path(model_dir: Path, split: str) -> Path:
    """Where `secmlops evaluate --attacks` writes by default: next to the model directory."""
    return Path(model_dir).parent / f"robustness-{split}.json"


def evaluate_robustness(
    model_dir: Path,
    data_dir: Path,
    split: str,
    suite: RobustnessSuite,
    *,
    baseline_dir: Path | None = None,
    device: str = "auto",
    batch_size: int = 16,
    max_images: int | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Run the robustness suite on one split and return the report (nothing is written).

    Args:
        model_dir: the model directory to attack.
        data_dir: a dataset version.
        split: train, val, test or all.
        suite: the attacks and corruptions to run.
        baseline_dir: a second model (production) whose clean mAP the gate compares against.
        device: auto, cpu, cuda or cuda:N.
        batch_size: images per attack batch (ART's and ours alike).
        max_images: evaluate only the first N images of the split (quick runs, tests).
        progress: called with (step name, steps done, total) before each step and at the end.

    Returns:
        The report, schema `REPORT_SCHEMA`: model, data, suite, clean, attacks (name ->
        family, library, method, params, mAP50, mAP50_95, seconds), cross_check, baseline.

    Raises:
        ModelError: a model directory is missing or invalid, or the device is unavailable.
        DataError: the dataset is invalid, the split unknown or empty, or max_images < 1.
    """
    started = time.perf_counter()
    if max_images is not None and max_images < 1:
        raise DataError(f"max_images must be at least 1, got {max_images}")
    if batch_size < 1:
        raise DataError(f"batch_size must be at least 1, got {batch_size}")
    torch_device = pick_device(device)
    model = models.load(model_dir, device=torch_device)
    # models.load attaches the card; nn.Module attributes type as Tensor | Module
    card = cast(models.ModelCard, model.secmlops_card)
    baseline = models.load(baseline_dir, device=torch_device) if baseline_dir else None
    dataset = load_dataset(data_dir)
    records = select_split(dataset, split)[:max_images]
    if not records:
        raise DataError(f"{data_dir}: split {split!r} has no images")
    prepared = prepare_split(dataset, records, card.input_size)

    names = attack_names(suite)
    steps = ["clean", *names, "cross_check", *(["baseline"] if baseline else [])]
    done = 0

    def step(name: str) -> None:
        nonlocal done
        if progress:
            progress(name, done, len(steps))
        done += 1

    step("clean")
    clean_predictions = predict_prepared(model, prepared, batch_size)
    clean = coco_map(records, clean_predictions)
    point = card.operating_point
    # Without a signed operating point there is no threshold to judge at: the figures stay
    # absent and the gate fails on the missing evidence.
    pedestrian: dict[str, float] = {}
    if point is not None:
        figures = operating_point_metrics(records, clean_predictions, point.score_threshold)
        pedestrian = {k: figures[k] for k in PEDESTRIAN_FIGURES}
    estimator = art_attacks.art_detector(model, card.architecture, torch_device)
    attacks: dict[str, dict[str, Any]] = {}
    with art_attacks.input_gradients_only(model):
        for k in suite.linf_eps_levels:
            step(f"fgsm_linf_{k}")
            attacks[f"fgsm_linf_{k}"] = _art_evasion(
                model,
                prepared,
                batch_size,
                "FastGradientMethod",
                art_attacks.fgsm_params(k),
                partial(art_attacks.fgsm, estimator, eps=k / 255),
            )
        for k in suite.linf_eps_levels:
            step(f"pgd_linf_{k}")
            attacks[f"pgd_linf_{k}"] = _art_evasion(
                model,
                prepared,
                batch_size,
                "ProjectedGradientDescent",
                art_attacks.pgd_params(k, suite.pgd_steps),
                partial(art_attacks.pgd, estimator, eps=k / 255, steps=suite.pgd_steps),
            )
        step("patch")
        attacks["patch"] = _patch_attack(model, estimator, prepared, suite, batch_size)
    for name in CORRUPTIONS:
        step(name)
        attacks[name] = _corruption(model, prepared, name, suite.corruption_severity, batch_size)

    step("cross_check")
    level = max(suite.linf_eps_levels)  # the cross-check runs the strongest attack
    ours = _our_pgd_map(model, card.architecture, prepared, level, suite.pgd_steps, batch_size)
    art_map50 = attacks[f"pgd_linf_{level}"]["mAP50"]
    difference = ours["mAP50"] - art_map50
    cross_check = {
        "attack": f"pgd_linf_{level}",
        "art_mAP50": art_map50,
        "ours_mAP50": ours["mAP50"],
        "difference": difference,
        "tolerance": CROSS_CHECK_TOLERANCE,
        "passed": bool(abs(difference) <= CROSS_CHECK_TOLERANCE),
    }

    baseline_report = None
    if baseline is not None:
        step("baseline")
        # The baseline resizes the prepared images to its own input size itself (the detector
        # contract), so both models are scored on exactly the same pixels.
        base = coco_map(records, predict_prepared(baseline, prepared, batch_size))
        baseline_report = {
            "dir": str(baseline_dir),
            "weights_sha256": cast(models.ModelCard, baseline.secmlops_card).weights_sha256,
            "clean_mAP50": base["mAP50"],
        }
    if progress:
        progress("done", done, len(steps))

    adversarial = card.training.get("adversarial")
    return {
        "schema": REPORT_SCHEMA,
        "model": {
            "dir": str(model_dir),
            "weights_sha256": card.weights_sha256,
            "architecture": card.architecture,
            "defence": {"adversarial": adversarial} if adversarial else None,
            # Lets the gate tell a held-out dataset evaluated whole from the training data.
            "trained_on": card.training.get("data"),
        },
        "data": {
            "dir": str(Path(data_dir).resolve()),
            "split": split,
            "images": len(records),
            "boxes": sum(len(r.boxes) for r in records),
        },
        "suite": suite.model_dump(mode="json"),
        "operating_point": point.model_dump(mode="json") if point is not None else None,
        "clean": {"mAP50": clean["mAP50"], "mAP50_95": clean["mAP50_95"], **pedestrian},
        "attacks": attacks,
        "cross_check": cross_check,
        "baseline": baseline_report,
        "seconds": time.perf_counter() - started,
    }


# --------------------------------------------------------------------------- attack runners
def _timed(
    family: str,
    library: str,
    method: str,
    params: dict[str, Any],
    run: Callable[[], dict[str, float]],
) -> dict[str, Any]:
    """One `attacks` entry: run, score and time an attack."""
    started = time.perf_counter()
    metrics = run()
    return {
        "family": family,
        "library": library,
        "method": method,
        "params": params,
        "mAP50": metrics["mAP50"],
        "mAP50_95": metrics["mAP50_95"],
        "seconds": time.perf_counter() - started,
    }


def map_under_transform(
    model: nn.Module,
    prepared: PreparedSplit,
    batch_size: int,
    transform: Callable[[Tensor, slice], Tensor],
) -> dict[str, float]:
    """COCO mAP of `model` on the split with every batch passed through `transform` first.

    Args:
        transform: (float [b,3,H,W] CPU images in [0,1], their index range) -> the images the
            model sees. Batch by batch, so memory stays bounded on large splits.
    """
    device = next(model.parameters()).device
    in_h, in_w = prepared.images.shape[-2:]
    predictions: dict[int, dict[str, Tensor]] = {}
    for start in range(0, len(prepared), batch_size):
        window = slice(start, start + batch_size)
        images = transform(prepared.images[window].float().div_(255), window)
        # ART leaves the model in train mode after a gradient; detections need eval mode.
        model.eval()
        with torch.no_grad():
            outputs = model(images.to(device).float())
        for record, out in zip(prepared.records[window], outputs, strict=True):
            factor = torch.tensor(
                [record.width / in_w, record.height / in_h] * 2, device=out["boxes"].device
            )
            predictions[record.id] = {
                "boxes": (out["boxes"] * factor).cpu(),
                "scores": out["scores"].cpu(),
            }
    return coco_map(prepared.records, predictions)


def _art_evasion(
    model: nn.Module,
    prepared: PreparedSplit,
    batch_size: int,
    method: str,
    params: dict[str, Any],
    craft: Callable[[np.ndarray, list[dict]], np.ndarray],
) -> dict[str, Any]:
    """Score an ART evasion attack; ART sees exactly the batches our PGD sees."""

    def adversarial(images: Tensor, window: slice) -> Tensor:
        labels = art_attacks.art_labels(prepared.boxes[window], prepared.ignore[window])
        return torch.from_numpy(craft(images.numpy(), labels))

    run = lambda: map_under_transform(model, prepared, batch_size, adversarial)  # noqa: E731
    return _timed("evasion", "art", method, params, run)


def _patch_attack(
    model: nn.Module,
    estimator: Any,
    prepared: PreparedSplit,
    suite: RobustnessSuite,
    batch_size: int,
) -> dict[str, Any]:
    """Train one universal patch on a spread of the split's images, then paste it on all."""
    size = (int(prepared.images.shape[-2]), int(prepared.images.shape[-1]))
    patch = art_attacks.UniversalPatch(
        estimator, size, suite.patch_fraction, iterations=PATCH_ITERATIONS, seed=SEED
    )
    count = min(len(prepared), PATCH_TRAIN_IMAGES)
    spread = torch.linspace(0, len(prepared) - 1, count).round().long().unique()

    def run() -> dict[str, float]:
        patch.train(prepared.images[spread].float().div_(255).numpy())
        return map_under_transform(
            model, prepared, batch_size, lambda x, _: torch.from_numpy(patch.apply(x.numpy()))
        )

    return _timed("patch", "art", "RobustDPatch", patch.params(len(spread)), run)


def _corruption(
    model: nn.Module, prepared: PreparedSplit, name: str, severity: int, batch_size: int
) -> dict[str, Any]:
    """mAP under one ImageNet-C corruption."""
    size = (int(prepared.images.shape[-2]), int(prepared.images.shape[-1]))
    params = corruption_params(name, severity, size)
    if name == "gaussian_noise":
        params["seed"] = SEED

    def run() -> dict[str, float]:
        generator = torch.Generator().manual_seed(SEED)
        return map_under_transform(
            model, prepared, batch_size, lambda x, _: corrupt(name, x, severity, generator)
        )

    return _timed("corruption", "secmlops", name, params, run)


def _our_pgd_map(
    model: nn.Module,
    architecture: str,
    prepared: PreparedSplit,
    level: int,
    steps: int,
    batch_size: int,
) -> dict[str, float]:
    """mAP under `secmlops.attacks.perturb` with exactly ART's PGD settings."""
    eps = level / 255
    config = AttackConfig(
        method="pgd",
        eps=eps,
        steps=steps,
        norm="inf",
        step_size=art_attacks.pgd_step_size(eps, steps),
        random_start=False,
    )
    return map_under_attack(model, prepared, config, batch_size, models.loss_keys(architecture))


def map_under_attack(
    model: nn.Module,
    prepared: PreparedSplit,
    attack: AttackConfig | None,
    batch_size: int = 16,
    loss_keys: Sequence[str] | None = None,
) -> dict[str, float]:
    """COCO mAP of `model` on `prepared` with every batch attacked by our `perturb` first.

    Args:
        attack: the attack (None: clean images).
        loss_keys: the losses the attack maximises (default: all the model returns).
    """
    device = next(model.parameters()).device

    def adversarial(images: Tensor, window: slice) -> Tensor:
        if attack is None:
            return images
        targets = [
            {
                "boxes": boxes.to(device),
                "labels": torch.ones(len(boxes), dtype=torch.int64, device=device),
                "ignore": ignore.to(device),
            }
            for boxes, ignore in zip(prepared.boxes[window], prepared.ignore[window], strict=True)
        ]
        return perturb(model, images.to(device), targets, attack, loss_keys=loss_keys)

    return map_under_transform(model, prepared, batch_size, adversarial)
