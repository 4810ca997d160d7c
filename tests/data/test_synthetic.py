"""The synthetic scene generator: deterministic, exact boxes, a loadable dataset version."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from secmlops.data.dataset import load_dataset, read_rgb
from secmlops.data.synthetic import (
    MIN_VISIBLE,
    PersonLayer,
    generate_scenes,
    render_scene,
    render_scene_layers,
)
from secmlops.errors import DataError

W, H = 320, 240


def _folder_bytes(root: Path) -> dict[str, bytes]:
    files = [*sorted((root / "images").iterdir()), root / "annotations.json", root / "splits.json"]
    return {f.name: f.read_bytes() for f in files}


def _image_box(person: PersonLayer) -> tuple[int, int, int, int]:
    """Unclipped box of a person's body mask in image coordinates."""
    rows = np.flatnonzero(person.mask.any(axis=1))
    cols = np.flatnonzero(person.mask.any(axis=0))
    x0, y0 = person.offset
    return x0 + cols[0], y0 + rows[0], x0 + cols[-1] + 1, y0 + rows[-1] + 1


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("synthetic")
    runs = {"a": (7, 1), "again": (7, 1), "two_workers": (7, 2), "other_seed": (8, 1)}
    return {
        name: generate_scenes(root / name, 10, seed, workers=workers)
        for name, (seed, workers) in runs.items()
    }


def test_same_seed_gives_identical_bytes(generated: dict[str, Path]) -> None:
    assert _folder_bytes(generated["a"]) == _folder_bytes(generated["again"])


def test_output_does_not_depend_on_worker_count(generated: dict[str, Path]) -> None:
    assert _folder_bytes(generated["a"]) == _folder_bytes(generated["two_workers"])


def test_other_seed_gives_other_scenes(generated: dict[str, Path]) -> None:
    a, b = _folder_bytes(generated["a"]), _folder_bytes(generated["other_seed"])
    assert a["annotations.json"] != b["annotations.json"]
    assert all(a[name] != b[name] for name in a if name.endswith(".jpg"))


def test_dataset_loads_with_splits_and_records_its_source(generated: dict[str, Path]) -> None:
    dataset = load_dataset(generated["a"])
    assert len(dataset.images) == 10
    assert [img.file_name for img in dataset.images][:2] == ["scene_000001.jpg", "scene_000002.jpg"]
    for name in ("train", "val", "test"):
        assert dataset.split(name)
    all_ids = sorted(i for ids in dataset.splits.values() for i in ids)
    assert all_ids == [img.id for img in dataset.images]
    pixels = read_rgb(dataset.image_path(dataset.images[0]))
    assert pixels.shape == (H, W, 3)
    info = json.loads((generated["a"] / "annotations.json").read_text())["info"]
    assert info["seed"] == 7 and info["images"] == 10


def test_render_scene_is_deterministic_per_seed_and_index() -> None:
    image, boxes, ignore = render_scene((3, 5))
    again, boxes_again, ignore_again = render_scene((3, 5))
    assert np.array_equal(image, again) and boxes == boxes_again and ignore == ignore_again
    assert image.shape == (H, W, 3) and image.dtype == np.uint8
    assert not np.array_equal(image, render_scene((3, 6))[0])


def test_boxes_lie_inside_the_image_with_positive_area() -> None:
    for index in range(40):
        _, boxes, ignore = render_scene((0, index))
        for x1, y1, x2, y2 in [*boxes, *ignore]:
            assert 0 <= x1 < x2 <= W and 0 <= y1 < y2 <= H


def test_box_is_the_tight_box_of_the_body_even_when_occluded() -> None:
    checked, occluded = 0, 0
    for index in range(30):
        scene = render_scene_layers((1, index))
        for person in scene.persons:
            if person.box is None:
                continue
            x1, y1, x2, y2 = _image_box(person)
            if x1 < 0 or y1 < 0 or x2 > W or y2 > H:
                continue  # cut by the image border: clipped, checked elsewhere
            # amodal: the box is the whole body's box whatever covers part of it
            assert person.box == (x1, y1, x2, y2)
            # tight: body pixels touch all four edges, and a figure is not a filled rectangle
            mask = person.mask[y1 - person.offset[1] : y2 - person.offset[1],
                               x1 - person.offset[0] : x2 - person.offset[0]]  # fmt: skip
            assert mask[0].any() and mask[-1].any() and mask[:, 0].any() and mask[:, -1].any()
            assert mask.mean() < 0.8
            checked += 1
            occluded += 0.3 <= person.visible < 1.0
    assert checked > 50 and occluded > 0


def test_hidden_or_mostly_outside_people_become_ignore_regions() -> None:
    ignored = 0
    for index in range(60):
        scene = render_scene_layers((2, index))
        for person in scene.persons:
            if person.box is None:
                continue
            x1, y1, x2, y2 = _image_box(person)
            inside = person.box[2] - person.box[0], person.box[3] - person.box[1]
            mostly_out = inside[0] * inside[1] < 0.5 * (x2 - x1) * (y2 - y1)
            expected = person.visible < MIN_VISIBLE or mostly_out
            assert person.ignored == expected
            assert person.box in (scene.ignore if expected else scene.boxes)
            ignored += expected
    assert ignored > 0


def test_scenes_have_people_of_street_camera_sizes() -> None:
    counts, heights = [], []
    for index in range(60):
        _, boxes, _ = render_scene((4, index))
        counts.append(len(boxes))
        heights += [y2 - y1 for _, y1, _, y2 in boxes]
    assert 2 <= np.mean(counts) <= 10
    assert min(heights) >= 12 and max(heights) <= 125
    assert np.percentile(heights, 90) > 2 * np.percentile(heights, 10)  # near and far people


@pytest.mark.parametrize("images", [0, -3])
def test_bad_image_count_raises_and_writes_nothing(tmp_path: Path, images: int) -> None:
    out = tmp_path / "ds"
    with pytest.raises(DataError, match="positive integer"):
        generate_scenes(out, images)
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_bad_worker_count_raises(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="workers"):
        generate_scenes(tmp_path / "ds", 3, workers=0)
    assert list(tmp_path.iterdir()) == []


def test_existing_dataset_needs_overwrite_and_progress_counts_images(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    done: list[int] = []
    generate_scenes(out, 5, workers=1, progress=done.append)
    assert sum(done) == 5
    with pytest.raises(DataError, match="already exists"):
        generate_scenes(out, 3, workers=1)
    generate_scenes(out, 3, workers=1, overwrite=True)
    assert len(load_dataset(out).images) == 3
