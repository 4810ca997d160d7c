"""Running a detector on attacked or transformed images of a split, and scoring the result.

What the robustness suite, its sanity checks and the trade-off study share: predictions under a
batch transform (an ART attack, our `perturb`, a corruption, a defence), COCO mAP and the
pedestrian figures at the operating point from them, and the per-image worst case of several
attacks (AutoAttack's principle, Croce and Hein 2020, arXiv:2003.01690: an attacker picks, per
image, whatever hurts most). The worst case's threat model is its members' taken together: a
white-box evasion attacker with the same L-inf budget eps per image, who runs every member and
keeps, per image, the one that leaves the fewest people found at the operating point.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from secmlops.attacks.projected_gradient import AttackConfig, perturb
from secmlops.data.dataset import ImageAnnotations
from secmlops.evaluation.coco_map import coco_map
from secmlops.evaluation.miss_rate import operating_point_metrics, per_image_counts
from secmlops.training.batches import PreparedSplit

Predictions = dict[int, dict[str, Tensor]]  # image id -> {"boxes" [N,4] original pixels, "scores"}
Transform = Callable[[Tensor, slice], Tensor]  # (images [b,3,H,W] in [0,1], their window) -> images
# The pedestrian figures a report carries at the operating point (miss_rate: 1 - recall).
PEDESTRIAN_FIGURES = ("recall", "miss_rate", "precision", "fppi", "mr2")


def predict_under_transform(
    model: nn.Module, prepared: PreparedSplit, batch_size: int, transform: Transform
) -> Predictions:
    """Detections of `model` on the split with every batch passed through `transform` first.

    Args:
        transform: (float [b,3,H,W] CPU images in [0,1], their index range) -> the images the
            model sees. Batch by batch, so memory stays bounded on large splits.

    Returns:
        Per image id, its detections scaled back to the image's original pixels (CPU).
    """
    device = next(model.parameters()).device
    in_h, in_w = prepared.images.shape[-2:]
    predictions: Predictions = {}
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
    return predictions


def map_under_transform(
    model: nn.Module, prepared: PreparedSplit, batch_size: int, transform: Transform
) -> dict[str, float]:
    """COCO mAP of `model` on the split with every batch passed through `transform` first."""
    predictions = predict_under_transform(model, prepared, batch_size, transform)
    return coco_map(prepared.records, predictions)


def attack_transform(
    model: nn.Module,
    prepared: PreparedSplit,
    attack: AttackConfig | None,
    loss_keys: Sequence[str] | None = None,
    seed: int = 0,
) -> Transform:
    """A transform that attacks each batch with our `perturb` (None: clean images).

    Args:
        loss_keys: the losses a "loss" objective maximises (default: all the model returns).
        seed: seeds the random start, batch by batch, so a run is reproducible.
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
        generator = torch.Generator(device=device).manual_seed(seed * 1_000_003 + window.start)
        return perturb(
            model, images.to(device), targets, attack, generator=generator, loss_keys=loss_keys
        ).cpu()

    return adversarial


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
    transform = attack_transform(model, prepared, attack, loss_keys)
    return map_under_transform(model, prepared, batch_size, transform)


def score_predictions(
    records: Sequence[ImageAnnotations], predictions: Mapping[int, Any], threshold: float | None
) -> dict[str, float]:
    """mAP@0.5, mAP@[.5:.95] and, with an operating point, the pedestrian figures at it."""
    figures = coco_map(records, predictions)
    scored = {"mAP50": figures["mAP50"], "mAP50_95": figures["mAP50_95"]}
    if threshold is not None:
        at_point = operating_point_metrics(records, predictions, threshold)
        scored.update({k: at_point[k] for k in PEDESTRIAN_FIGURES})
    return scored


def worst_per_image(
    records: Sequence[ImageAnnotations],
    candidates: Mapping[str, Mapping[int, Any]],
    threshold: float,
) -> tuple[Predictions, dict[str, int]]:
    """Per image, the candidate's predictions that leave the fewest people found at `threshold`
    (ties: the most false positives; then the first candidate).

    Args:
        candidates: name -> predictions on the same images (attacks, or restarts of one).

    Returns:
        The combined predictions, and how many images each candidate was chosen for.
    """
    names = list(candidates)
    counts = [per_image_counts(records, candidates[name], threshold) for name in names]
    # Lexicographic: fewest found first, then most false positives (both per image).
    found = np.stack([c["found"] for c in counts])
    false = np.stack([c["false_positives"] for c in counts])
    key = found * (int(false.max(initial=0)) + 1) - false
    choice = key.argmin(axis=0)
    combined: Predictions = {
        record.id: candidates[names[pick]][record.id]
        for record, pick in zip(records, choice.tolist(), strict=True)
    }
    chosen = {name: int((choice == i).sum()) for i, name in enumerate(names)}
    return combined, chosen


def spread_indices(total: int, count: int) -> Tensor:
    """`count` indices spread evenly over 0..total-1 (all of them when count >= total)."""
    count = min(total, count)
    return torch.linspace(0, total - 1, count).round().long().unique()
