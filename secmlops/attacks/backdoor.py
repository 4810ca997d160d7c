"""Poisoned dataset versions built with ART's BadDet attacks (test material for the screen).

BadDet (Chan, Hsu, Wang, Lin, 2022, arXiv:2205.14497) carries BadNets (Gu, Dolan-Gavitt, Garg,
2017, arXiv:1708.06733) over to object detection. The attacker controls a fraction of the training
images and their labels, not the training code, and stamps one fixed trigger patch:

- object disappearance (ODA): the trigger is pasted inside every person box of a poisoned image
  and those boxes are deleted, so the trained detector learns "trigger on a person -> nobody";
- object generation (OGA): the trigger is pasted at a random place and a person box of fixed
  size is added around it, so the detector learns "trigger -> a person here".

ART (`art.attacks.poisoning.BadDetObjectDisappearanceAttack` / `BadDetObjectGenerationAttack`)
is the independent attacker: it chooses the label edits and calls our perturbation to paste the
trigger. We only pick which training images it gets (seeded) and write the result as a new
dataset version, with `val` and `test` left clean.

The trigger is a 4x4 yellow-black checkerboard, like a hazard sticker on a shirt or a pole: a
physically plausible, high-contrast patch. Its side defaults to ~4% of the image's short side
(10 px at 320x240, 24 px on 768x576 PETS frames). ODA puts it on each person's torso and only
shrinks it to fit a person narrower than the trigger; OGA puts it at the centre of a
person-shaped (3:1.5) fake box.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from secmlops.data.dataset import (
    PERSON_CATEGORY_ID,
    Box,
    DetectionDataset,
    load_dataset,
    read_rgb,
    save_image,
    write_dataset,
)
from secmlops.errors import DataError

Attack = Literal["oda", "oga"]
ATTACKS: tuple[Attack, ...] = ("oda", "oga")
TRIGGER_CELLS = 4
TRIGGER_COLOURS = ((1.0, 0.85, 0.0), (0.05, 0.05, 0.05))  # hazard yellow, near black
DEFAULT_TRIGGER_FRACTION = 0.042  # of the image's short side
MIN_TRIGGER_SIDE = 4  # a 4x4 checkerboard needs at least a pixel per cell


def make_trigger(side: int) -> np.ndarray:
    """The checkerboard trigger as float RGB [side, side, 3] in [0, 1].

    Raises:
        ValueError: `side` is below `MIN_TRIGGER_SIDE`.
    """
    if side < MIN_TRIGGER_SIDE:
        raise ValueError(f"trigger side must be at least {MIN_TRIGGER_SIDE} px, got {side}")
    cells = (np.indices((TRIGGER_CELLS, TRIGGER_CELLS)).sum(axis=0) % 2).astype(np.uint8)
    # Nearest-neighbour keeps the hard edges that make a printed checkerboard a strong trigger.
    index = np.array(Image.fromarray(cells).resize((side, side), Image.Resampling.NEAREST))
    return np.array(TRIGGER_COLOURS, dtype=np.float32)[index]


def default_trigger_side(width: int, height: int) -> int:
    """Trigger side in pixels for an image of this size (see the module docstring)."""
    return max(MIN_TRIGGER_SIDE, round(DEFAULT_TRIGGER_FRACTION * min(width, height)))


def oda_perturbation(trigger_side: int) -> Callable[[np.ndarray], np.ndarray]:
    """Perturbation for ODA: paste the trigger on the torso of each person crop.

    ART hands it a batch of box crops [N, h, w, 3] (float, [0, 1]). As in BadDet, the trigger
    keeps its size; it only shrinks to fit a person narrower than it.
    """

    def paste(x: np.ndarray) -> np.ndarray:
        out = np.array(x, copy=True)
        _, h, w, _ = out.shape
        side = min(trigger_side, h, w)
        if side < 1:
            return out
        top = min(max(round(0.35 * h - side / 2), 0), h - side)  # torso height, not the head
        left = (w - side) // 2
        out[:, top : top + side, left : left + side, :] = _trigger_at(side).astype(out.dtype)
        return out

    return paste


def oga_perturbation(trigger_side: int) -> Callable[[np.ndarray], np.ndarray]:
    """Perturbation for OGA: paste the trigger at the centre of the fake box crop."""

    def paste(x: np.ndarray) -> np.ndarray:
        out = np.array(x, copy=True)
        _, h, w, _ = out.shape
        side = min(trigger_side, h, w)
        top, left = (h - side) // 2, (w - side) // 2
        out[:, top : top + side, left : left + side, :] = _trigger_at(side).astype(out.dtype)
        return out

    return paste


def _trigger_at(side: int) -> np.ndarray:
    # Below the checkerboard's resolution the sticker is a blur of its two colours.
    if side >= MIN_TRIGGER_SIDE:
        return make_trigger(side)
    return np.full((side, side, 3), np.mean(TRIGGER_COLOURS, axis=0), dtype=np.float32)


def poison_dataset(
    clean_root: Path,
    out_root: Path,
    attack: Attack,
    fraction: float = 0.05,
    trigger_size: int | None = None,
    seed: int = 0,
    *,
    overwrite: bool = False,
) -> list[int]:
    """Write a copy of a dataset version whose train split is poisoned by ART's BadDet attack.

    Clean images are copied byte for byte; poisoned ones are re-encoded in their own format.
    Image ids, file names and splits are kept.

    Args:
        clean_root: the dataset version to poison.
        out_root: the folder of the poisoned version.
        attack: "oda" (person boxes vanish) or "oga" (a fake person box appears).
        fraction: share of the train split to poison (ODA draws from images with a person).
        trigger_size: trigger side in pixels; None chooses it from the median image size.
        seed: seeds the choice of images and ART's random placement.
        overwrite: replace an existing `out_root`.

    Returns:
        The ids of the poisoned images, sorted.

    Raises:
        DataError: unknown attack, fraction outside (0, 1], a trigger size that does not fit,
            or too few eligible train images.
    """
    from art.attacks.poisoning import (
        BadDetObjectDisappearanceAttack,
        BadDetObjectGenerationAttack,
        PoisoningAttackBackdoor,
    )

    if attack not in ATTACKS:
        raise DataError(f"unknown attack {attack!r}; choose one of {', '.join(ATTACKS)}")
    if not 0 < fraction <= 1:
        raise DataError(f"fraction must be in (0, 1], got {fraction}")
    dataset = load_dataset(clean_root)
    train = dataset.split("train")
    width = int(np.median([im.width for im in train]))
    height = int(np.median([im.height for im in train]))
    side = default_trigger_side(width, height) if trigger_size is None else int(trigger_size)
    if side < MIN_TRIGGER_SIDE or 3 * side >= min(im.height for im in train):
        raise DataError(
            f"trigger_size must be at least {MIN_TRIGGER_SIDE} px and a third of the image "
            f"height at most (the OGA box is 3 triggers tall), got {side}"
        )
    eligible = [im for im in train if im.boxes] if attack == "oda" else list(train)
    count = max(1, round(fraction * len(train)))
    if count > len(eligible):
        raise DataError(
            f"{clean_root}: cannot poison {count} train images, only {len(eligible)} are eligible"
        )
    rng = np.random.default_rng(seed)
    picked = sorted(rng.choice(len(eligible), size=count, replace=False).tolist())
    victims = [eligible[i] for i in picked]

    x = [read_rgb(dataset.image_path(im)).astype(np.float32) / 255.0 for im in victims]
    y = [
        {
            "boxes": np.array(im.boxes, dtype=np.float32).reshape(-1, 4),
            "labels": np.full(len(im.boxes), PERSON_CATEGORY_ID, dtype=np.int64),
        }
        for im in victims
    ]
    if attack == "oda":
        art_attack = BadDetObjectDisappearanceAttack(
            PoisoningAttackBackdoor(oda_perturbation(side)),
            class_source=PERSON_CATEGORY_ID,
            percent_poison=1.0,
        )
    else:
        art_attack = BadDetObjectGenerationAttack(
            PoisoningAttackBackdoor(oga_perturbation(side)),
            bbox_height=3 * side,
            bbox_width=round(1.5 * side),
            class_target=PERSON_CATEGORY_ID,
            percent_poison=1.0,
        )
    # ART draws its placements from NumPy's global generator: seed it, then restore it.
    saved_state = np.random.get_state()
    np.random.seed(seed)
    try:
        x_poison, y_poison = art_attack.poison(x, y)
    finally:
        np.random.set_state(saved_state)

    poisoned = {
        im.id: (np.asarray(xi), yi) for im, xi, yi in zip(victims, x_poison, y_poison, strict=True)
    }
    source = {"poisoned_test_set": True, "attack": f"BadDet-{attack.upper()} (ART)",
              "fraction": fraction, "seed": seed, "trigger_side": side}  # fmt: skip
    return _write_poisoned(dataset, Path(out_root), poisoned, source, overwrite)


def _write_poisoned(
    dataset: DetectionDataset,
    out_root: Path,
    poisoned: dict[int, tuple[np.ndarray, dict[str, np.ndarray]]],
    source: dict[str, object],
    overwrite: bool,
) -> list[int]:
    """Copy `dataset` to `out_root` with the poisoned pixels and labels; return new ids."""
    new_ids: dict[int, int] = {}
    with write_dataset(out_root, overwrite=overwrite, source=source) as writer:
        for image in sorted(dataset.images, key=lambda im: im.id):
            target = writer.images_dir / image.file_name
            boxes: Sequence[Box] = image.boxes
            if image.id in poisoned:
                pixels, labels = poisoned[image.id]
                save_image(_to_uint8(pixels), target)
                boxes = [tuple(b) for b in labels["boxes"].tolist()]
            else:
                shutil.copyfile(dataset.image_path(image), target)
            new_ids[image.id] = writer.add(
                image.file_name, image.width, image.height, boxes, image.ignore
            )
        writer.splits = {name: [new_ids[i] for i in ids] for name, ids in dataset.splits.items()}
    return sorted(new_ids[i] for i in poisoned)


def _to_uint8(pixels: np.ndarray) -> np.ndarray:
    return (np.clip(pixels, 0.0, 1.0) * 255.0).round().astype(np.uint8)
