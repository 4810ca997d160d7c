"""The suite's physical attacks: ART's universal patch, and the person-worn patch with its control.

- `patch` (ART RobustDPatch): one square of `patch_fraction` of the image's short side at a fixed
  place, trained on a spread of the evaluated split (a sticker made once, not per frame).
- `person_patch` (`secmlops.attacks.person_patch`, Thys et al. 2019): one universal square worn
  on the torso, its side `person_patch_fraction` of the wearer's height, trained with EOT on the
  people of the model's TRAINING split (the attacker never sees the test frames), then worn by
  every person of the evaluated images, transformed as a camera would see it (seeded EOT draws).
- `person_patch_random`: the same square of random pixels, worn the same way. The difference
  between the two is what the optimisation bought; the random one alone is occlusion.

The report keeps the trained patch as a PNG (base64), so it can be looked at and printed.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import Tensor, nn

from secmlops.attacks.person_patch import PersonPatchConfig, apply_patch, random_patch, train_patch
from secmlops.data.dataset import load_dataset
from secmlops.errors import DataError
from secmlops.evaluation import art_attacks
from secmlops.evaluation.attack_runs import (
    Predictions,
    Transform,
    predict_under_transform,
    spread_indices,
)
from secmlops.evaluation.inference import select_split
from secmlops.policy import AttackSuitePolicy
from secmlops.training.batches import PreparedSplit, prepare_split

# Seeds the patches' initial pixels, sampling and transformations.
SEED = 0
# ART's universal patch: trained on at most this many images of the split, for this many steps.
PATCH_TRAIN_IMAGES = 16
PATCH_ITERATIONS = 20
# The person-worn patch is trained on at most this many training images with people.
PERSON_PATCH_TRAIN_IMAGES = 64

Entry = Callable[[str, str, str, dict[str, Any], Callable[[], Predictions]], dict[str, Any]]


def universal_patch_attack(
    model: nn.Module,
    estimator: Any,
    prepared: PreparedSplit,
    suite: AttackSuitePolicy,
    batch_size: int,
    entry: Entry,
) -> dict[str, Any]:
    """ART's RobustDPatch: trained on a spread of the split's images, then pasted on all."""
    size = (int(prepared.images.shape[-2]), int(prepared.images.shape[-1]))
    patch = art_attacks.UniversalPatch(
        estimator, size, suite.patch_fraction, iterations=PATCH_ITERATIONS, seed=SEED
    )
    spread = spread_indices(len(prepared), PATCH_TRAIN_IMAGES)

    def run() -> Predictions:
        patch.train(prepared.images[spread].float().div_(255).numpy())
        return predict_under_transform(
            model, prepared, batch_size, lambda x, _: torch.from_numpy(patch.apply(x.numpy()))
        )

    return entry("patch", "art", "RobustDPatch", patch.params(len(spread)), run)


def person_patch_config(suite: AttackSuitePolicy) -> PersonPatchConfig:
    """The suite's person-worn patch settings."""
    return PersonPatchConfig(
        fraction=suite.person_patch_fraction, steps=suite.person_patch_steps, seed=SEED
    )


def training_people(trained_on: str | None, input_size: tuple[int, int]) -> PreparedSplit:
    """The images with people of the model's training split, at its input size (at most
    `PERSON_PATCH_TRAIN_IMAGES`, spread over the split): what the patch is made on.

    Raises:
        DataError: the card does not say where the model was trained, or that dataset is gone.
    """
    if not trained_on or not Path(trained_on).is_dir():
        raise DataError(
            f"the person-worn patch is trained on the model's training data, and "
            f"{trained_on or 'the model card'} is not there (model.json training.data)"
        )
    dataset = load_dataset(Path(trained_on))
    records = [r for r in select_split(dataset, "train") if r.boxes]
    if not records:
        raise DataError(f"{trained_on}: no training image has a person to wear the patch")
    picked = spread_indices(len(records), PERSON_PATCH_TRAIN_IMAGES).tolist()
    return prepare_split(dataset, [records[i] for i in picked], input_size)


def person_patch_attacks(
    model: nn.Module,
    prepared: PreparedSplit,
    train: PreparedSplit,
    suite: AttackSuitePolicy,
    batch_size: int,
    entry: Entry,
) -> dict[str, dict[str, Any]]:
    """The `person_patch` and `person_patch_random` entries (see the module docstring)."""
    config = person_patch_config(suite)
    trained: dict[str, Tensor] = {}

    def worn(patch: Callable[[], Tensor]) -> Callable[[], Predictions]:
        def run() -> Predictions:
            wear = wear_transform(prepared, patch(), config.fraction)
            return predict_under_transform(model, prepared, batch_size, wear)

        return run

    def adversarial() -> Tensor:
        trained["patch"] = train_patch(model, train.images, train.boxes, config)
        return trained["patch"]

    params = {
        "fraction_of_height": config.fraction,
        "steps": config.steps,
        "resolution": config.resolution,
        "tv_weight": config.tv_weight,
        "eot": True,
        "trained_on_images": len(train),
        "trained_on_people": sum(len(b) for b in train.boxes),
        "seed": SEED,
    }
    method = "person-worn patch (Thys et al. 2019, EOT)"
    attack = entry("patch", "secmlops", method, dict(params), worn(adversarial))
    attack["params"]["patch_png"] = patch_png(trained["patch"])
    control = entry(
        "patch", "secmlops", "random person-worn patch (control)",
        {**params, "steps": 0}, worn(lambda: random_patch(config)),
    )  # fmt: skip
    return {"person_patch": attack, "person_patch_random": control}


def wear_transform(prepared: PreparedSplit, patch: Tensor, fraction: float) -> Transform:
    """A transform that puts `patch` on the torso of every person of each batch, as a camera
    sees it (EOT draws seeded with `SEED`, so every model meets the same wearers)."""
    generator = torch.Generator().manual_seed(SEED)

    def wear(images: Tensor, window: slice) -> Tensor:
        return apply_patch(
            images, prepared.boxes[window], patch, fraction, generator=generator, eot=True
        )

    return wear


def skipped_person_patch(reason: str) -> dict[str, dict[str, Any]]:
    """The two person-patch entries when the patch cannot be made: no figures, and why."""
    return {
        name: {"family": "patch", "library": "secmlops", "method": method, "params": {},
               "skipped": reason, "seconds": 0.0}
        for name, method in (
            ("person_patch", "person-worn patch (Thys et al. 2019, EOT)"),
            ("person_patch_random", "random person-worn patch (control)"),
        )
    }  # fmt: skip


def patch_png(patch: Tensor) -> str:
    """A [3,r,r] patch in [0,1] as a base64 PNG (what gets printed)."""
    pixels = (patch.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="RGB").save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")
