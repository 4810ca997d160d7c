"""ART-built BadDet poisoned sets, and the trigger-recurrence screen that must catch them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from secmlops.attacks.backdoor import ATTACKS, make_trigger, poison_dataset
from secmlops.data.dataset import (
    DetectionDataset,
    ImageAnnotations,
    load_dataset,
    read_rgb,
    write_dataset,
)
from secmlops.data.poisoning import ScreeningConfig, screen_dataset
from secmlops.data.synthetic import generate_scenes
from secmlops.errors import DataError, PoisoningSuspected

TRIGGER = 10  # px; the screen's floor is ~8 px, the default (4% of 128 px) would be 5
FRACTION = 0.1  # 10 of 96 train images: a recurring trigger with margin on a tiny set


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("poisoning") / "clean"
    return generate_scenes(root, 120, seed=3, width=160, height=128, workers=1)


@pytest.fixture(scope="module")
def poisoned(clean: Path) -> dict[str, tuple[Path, list[int]]]:
    out = {}
    for attack in ATTACKS:
        root = clean.parent / attack
        ids = poison_dataset(clean, root, attack, FRACTION, trigger_size=TRIGGER, seed=1)
        out[attack] = (root, ids)
    return out


def _by_id(dataset: DetectionDataset) -> dict[int, ImageAnnotations]:
    return {im.id: im for im in dataset.images}


def _pixels(dataset: DetectionDataset, image_id: int) -> np.ndarray:
    image = next(im for im in dataset.images if im.id == image_id)
    return read_rgb(dataset.image_path(image)).astype(np.float32)


def _trigger_error(pixels: np.ndarray, x: int, y: int, side: int) -> float:
    """Mean absolute difference (0-255) between the image at (x, y) and the trigger."""
    expected = make_trigger(side) * 255.0
    return float(np.abs(pixels[y : y + side, x : x + side] - expected).mean())


def test_oda_deletes_person_boxes_and_stamps_the_trigger_on_people(
    clean: Path, poisoned: dict[str, tuple[Path, list[int]]]
) -> None:
    root, ids = poisoned["oda"]
    before, after = load_dataset(clean), load_dataset(root)
    assert len(ids) == round(FRACTION * len(before.splits["train"]))
    assert set(ids) <= set(after.splits["train"])
    old, new = _by_id(before), _by_id(after)
    for image_id in ids:
        assert old[image_id].boxes and new[image_id].boxes == ()
        pixels = _pixels(after, image_id)
        errors = []
        for box in old[image_id].boxes:
            # ART crops the box with int(); our perturbation pastes at the torso. Overlapping
            # people can cover each other's trigger, so not every box keeps a clean copy.
            x1, y1, x2, y2 = (int(v) for v in box)
            w, h = x2 - x1, y2 - y1
            side = min(TRIGGER, w, h)
            top = min(max(round(0.35 * h - side / 2), 0), h - side)
            errors.append(_trigger_error(pixels, x1 + (w - side) // 2, y1 + top, side))
        assert min(errors) < 40, (image_id, errors)


def _largest_trigger(image: ImageAnnotations) -> int:
    """Side of the biggest ODA trigger on an image's people (it shrinks to fit narrow ones)."""
    return max(min(TRIGGER, int(x2) - int(x1), int(y2) - int(y1)) for x1, y1, x2, y2 in image.boxes)


def test_oga_adds_one_person_box_around_a_trigger(
    clean: Path, poisoned: dict[str, tuple[Path, list[int]]]
) -> None:
    root, ids = poisoned["oga"]
    old, new = _by_id(load_dataset(clean)), _by_id(load_dataset(root))
    after = load_dataset(root)
    for image_id in ids:
        added = set(new[image_id].boxes) - set(old[image_id].boxes)
        assert len(new[image_id].boxes) == len(old[image_id].boxes) + 1 and len(added) == 1
        x1, y1, x2, y2 = (int(v) for v in added.pop())
        assert (y2 - y1, x2 - x1) == (3 * TRIGGER, round(1.5 * TRIGGER))
        left, top = x1 + (x2 - x1 - TRIGGER) // 2, y1 + (y2 - y1 - TRIGGER) // 2
        assert _trigger_error(_pixels(after, image_id), left, top, TRIGGER) < 40


@pytest.mark.parametrize("attack", ATTACKS)
def test_everything_but_the_poisoned_images_is_untouched(
    clean: Path, poisoned: dict[str, tuple[Path, list[int]]], attack: str
) -> None:
    root, ids = poisoned[attack]
    before, after = load_dataset(clean), load_dataset(root)
    assert after.splits == before.splits
    old, new = _by_id(before), _by_id(after)
    for image in before.images:
        same_bytes = before.image_path(image).read_bytes() == after.image_path(image).read_bytes()
        assert same_bytes == (image.id not in ids), image.file_name
        if image.id not in ids:
            assert new[image.id] == old[image.id]


def test_poisoning_is_seeded(clean: Path, poisoned: dict[str, tuple[Path, list[int]]]) -> None:
    again = poison_dataset(clean, clean.parent / "oga_again", "oga", FRACTION, TRIGGER, seed=1)
    assert again == poisoned["oga"][1]
    assert (clean.parent / "oga_again/annotations.json").read_bytes() == (
        poisoned["oga"][0] / "annotations.json"
    ).read_bytes()


def test_poison_dataset_rejects_bad_arguments(clean: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="unknown attack"):
        poison_dataset(clean, tmp_path / "x", "rma", 0.05)  # type: ignore[arg-type]
    with pytest.raises(DataError, match="fraction"):
        poison_dataset(clean, tmp_path / "y", "oda", 0.0)
    with pytest.raises(DataError, match="trigger_size"):
        poison_dataset(clean, tmp_path / "z", "oga", 0.05, trigger_size=60)  # box > image
    assert not any((tmp_path / name).exists() for name in "xyz")


@pytest.mark.parametrize("attack", ATTACKS)
def test_screen_flags_the_poisoned_images_and_nothing_else(
    clean: Path, poisoned: dict[str, tuple[Path, list[int]]], attack: str
) -> None:
    root, ids = poisoned[attack]
    report = screen_dataset(root)
    originals = _by_id(load_dataset(clean))
    # Below ~8 px a checkerboard has no corners left to recognise (see the module docstring).
    visible = [i for i in ids if attack == "oga" or _largest_trigger(originals[i]) >= 8]
    assert len(visible) >= 0.8 * len(ids)
    assert set(visible) <= set(report.flagged_ids) <= set(ids)
    assert not report.passed
    for image in report.flagged:  # the evidence points at the other poisoned images
        assert image.patch_xy is not None
        assert set(image.shared_with) <= set(ids) - {image.id}


def test_screen_passes_the_clean_set(clean: Path) -> None:
    report = screen_dataset(clean)
    assert report.passed and report.flagged == []
    assert report.summary()["max_score"] <= report.threshold
    report.raise_if_flagged()  # lets good data through


def test_gate_raises_poisoning_suspected_naming_the_images(
    poisoned: dict[str, tuple[Path, list[int]]],
) -> None:
    root, ids = poisoned["oga"]
    report = screen_dataset(root)
    with pytest.raises(PoisoningSuspected, match="recurring patch") as caught:
        report.raise_if_flagged()
    names = {im.file_name for im in load_dataset(root).images if im.id in report.flagged_ids}
    assert set(caught.value.flagged) == names and len(names) == len(ids)


def test_report_is_json_serialisable(poisoned: dict[str, tuple[Path, list[int]]]) -> None:
    root, ids = poisoned["oga"]
    report = screen_dataset(root, split="all")
    data = json.loads(json.dumps(report.to_dict()))
    assert data["method"] == "trigger-recurrence"
    assert data["summary"]["images"] == 120 and data["summary"]["flagged"] == len(ids)
    assert [item["id"] for item in sorted(data["flagged"], key=lambda f: f["id"])] == ids
    assert data["config"]["match_tolerance"] == ScreeningConfig().match_tolerance
    assert len(data["scores"]) == 120


def _noise_set(
    root: Path, backgrounds: list[np.ndarray], triggers: dict[int, tuple[int, int]]
) -> Path:
    """A dataset of the given backgrounds with the trigger pasted at (x, y) in some of them."""
    with write_dataset(root) as writer:
        for index, background in enumerate(backgrounds):
            image = background.copy()
            if index in triggers:
                x, y = triggers[index]
                image[y : y + 12, x : x + 12] = (make_trigger(12) * 255).astype(np.uint8)
            writer.add(f"{index:03d}.png", 96, 80, [(1, 1, 20, 40)], image=image)
        writer.splits = {"train": list(range(1, len(backgrounds) + 1)), "val": [], "test": []}
    return root


def test_a_trigger_recurring_at_other_places_is_flagged(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    backgrounds = [rng.integers(0, 256, (80, 96, 3), dtype=np.uint8) for _ in range(10)]
    triggers = {1: (5, 5), 3: (60, 40), 4: (30, 60), 6: (70, 8), 9: (41, 22)}  # 4 partners each
    report = screen_dataset(_noise_set(tmp_path / "d", backgrounds, triggers))
    assert report.flagged_ids == [i + 1 for i in sorted(triggers)]  # ids are 1-based


def test_a_static_scene_repeating_at_the_same_place_is_not_a_trigger(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    scene = rng.integers(0, 256, (80, 96, 3), dtype=np.uint8)  # a static camera's background
    frames = [scene.copy() for _ in range(8)]
    # The same sticker at the same place in every frame is scenery, not a planted trigger.
    report = screen_dataset(_noise_set(tmp_path / "d", frames, dict.fromkeys(range(8), (40, 30))))
    assert report.passed


def test_screening_config_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="odd"):
        ScreeningConfig(window=4)
    with pytest.raises(ValueError, match="match_tolerance"):
        ScreeningConfig(match_tolerance=1.5)
