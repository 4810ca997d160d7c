"""Dataset validation: every check finds its problem and names the file, image or annotation."""

from __future__ import annotations

import io
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from secmlops.data import near_duplicates
from secmlops.data.dataset import write_dataset
from secmlops.data.near_duplicates import nearest_within
from secmlops.data.validation import raise_if_failed, validate_dataset
from secmlops.errors import ValidationFailed
from secmlops.policy import DataPolicy, load_policy

REPO_POLICY = Path(__file__).resolve().parents[2] / "policy.yaml"
POLICY = DataPolicy(
    min_box_width=4,
    min_box_height=8,
    max_empty_image_ratio=0.2,
    max_near_duplicate_distance=4,
    poisoning_score_threshold=3.0,
    max_flagged_fraction=0.0,
)
W, H = 64, 48


def scene(seed: int) -> np.ndarray:
    """A smooth random picture: distinct low frequencies, so distinct perceptual hashes."""
    coarse = np.random.default_rng(seed).integers(0, 256, (6, 8, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((W, H), Image.Resampling.BICUBIC))


@pytest.fixture
def clean(tmp_path: Path) -> Path:
    """Ten 64x48 JPEG images, one person box each; train 1-6, val 7-8, test 9-10."""
    root = tmp_path / "ds"
    with write_dataset(root) as writer:
        for i in range(10):
            writer.add(f"img_{i + 1:02d}.jpg", W, H, boxes=[(10, 5, 30, 40)], image=scene(i))
        writer.splits = {"train": [1, 2, 3, 4, 5, 6], "val": [7, 8], "test": [9, 10]}
    return root


def edit(root: Path, name: str, change: Callable[[Any], Any]) -> None:
    path = root / name
    data = json.loads(path.read_text())
    path.write_text(json.dumps(change(data) or data))


def annotation(coco: dict[str, Any], ann_id: int) -> dict[str, Any]:
    return next(a for a in coco["annotations"] if a["id"] == ann_id)


def add_image(root: Path, name: str, data: bytes, split: str, image_id: int = 11) -> None:
    """Add an image file, its entry with one box, and put it in `split`."""
    (root / "images" / name).write_bytes(data)

    def change(coco: dict[str, Any]) -> None:
        coco["images"].append({"id": image_id, "file_name": name, "width": W, "height": H})
        box = {
            "id": 100 + image_id,
            "image_id": image_id,
            "category_id": 1,
            "bbox": [10, 5, 20, 35],
        }
        coco["annotations"].append(box)

    edit(root, "annotations.json", change)
    edit(root, "splits.json", lambda s: s[split].append(image_id))


def problems(root: Path, policy: DataPolicy = POLICY) -> list[str]:
    return [str(p) for p in validate_dataset(root, policy, workers=2).problems]


def only(found: list[str]) -> str:
    assert len(found) == 1, found
    return found[0]


def test_clean_dataset_passes(clean):
    report = validate_dataset(clean, POLICY, workers=2)
    assert report.passed, report.problems
    raise_if_failed(report)
    stats = report.statistics
    assert (stats["images"], stats["boxes"], stats["empty_images"]) == (10, 10, 0)
    assert stats["box_width_px"] == {"p5": 20.0, "p50": 20.0, "p95": 20.0}
    assert stats["splits"] == {"train": 6, "val": 2, "test": 2}
    assert stats["image_sizes"] == {"64x48": 10}
    assert json.loads(json.dumps(report.to_dict()))["passed"] is True


def test_synthetic_scenes_pass_the_repo_policy(tmp_path):
    from secmlops.data.synthetic import generate_scenes

    root = generate_scenes(tmp_path / "syn", 40, seed=1, workers=1)
    report = validate_dataset(root, load_policy(REPO_POLICY).data)
    assert report.passed, report.problems
    assert report.statistics["images"] == 40


def test_box_outside_the_image(clean):
    edit(clean, "annotations.json", lambda c: annotation(c, 3).update(bbox=[50, 5, 30, 40]))
    message = only(problems(clean))
    assert message.startswith("annotations.json: annotation 3 (image 3, img_03.jpg): ")
    assert "lies outside the 64x48 image" in message


def test_zero_area_box(clean):
    edit(clean, "annotations.json", lambda c: annotation(c, 2).update(bbox=[10, 5, 0, 40]))
    assert "annotation 2 (image 2, img_02.jpg): box [10, 5, 0, 40] has no area" in only(
        problems(clean)
    )


def test_box_below_minimum_size_but_not_ignore_regions(clean):
    edit(clean, "annotations.json", lambda c: annotation(c, 4).update(bbox=[10, 5, 3, 40]))
    assert "annotation 4 (image 4, img_04.jpg): box 3x40 px is below the policy minimum 4x8" in (
        only(problems(clean))
    )
    edit(clean, "annotations.json", lambda c: annotation(c, 4).update(iscrowd=1))
    other_box = {"id": 99, "image_id": 4, "category_id": 1, "bbox": [1, 1, 20, 30]}
    edit(clean, "annotations.json", lambda c: c["annotations"].append(other_box))
    report = validate_dataset(clean, POLICY)
    assert report.passed, report.problems
    assert report.statistics["ignore_regions"] == 1


def test_unknown_category(clean):
    def change(coco: dict[str, Any]) -> None:
        annotation(coco, 5)["category_id"] = 3
        coco["categories"].append({"id": 3, "name": "car"})

    edit(clean, "annotations.json", change)
    found = problems(clean)
    assert "annotations.json: annotation 5 (image 5, img_05.jpg): unknown category 3" in found
    assert any(p.startswith("annotations.json: categories[1]: unknown category") for p in found)


def test_missing_image(clean):
    (clean / "images" / "img_06.jpg").unlink()
    assert only(problems(clean)) == "images/img_06.jpg (image 6): image file not found"


def test_truncated_jpeg_does_not_decode(clean):
    path = clean / "images" / "img_07.jpg"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    message = only(problems(clean))
    assert message.startswith("images/img_07.jpg (image 7): does not decode as an image")


def test_size_mismatch(clean):
    edit(clean, "annotations.json", lambda c: c["images"][7].update(width=80))
    assert (
        only(problems(clean))
        == "images/img_08.jpg (image 8): decoded size 64x48 differs from 80x48"
    )


@pytest.mark.parametrize("name", ["extra.jpg", ".hidden.jpg", "notes.txt"])
def test_stray_unlisted_file(clean, name):
    shutil.copy(clean / "images" / "img_01.jpg", clean / "images" / name)
    assert only(problems(clean)) == f"images/{name}: not listed in annotations.json"


def test_image_in_two_splits(clean):
    edit(clean, "splits.json", lambda s: s["test"].append(2))
    assert only(problems(clean)) == "image 2 (img_02.jpg): is in both train and test"


def test_split_with_unknown_ids_and_unknown_split_name(clean):
    edit(clean, "splits.json", lambda s: s.update(val=[7, 8, 42], holdout=[1]))
    found = problems(clean)
    assert "splits.json: val: 1 unknown image id(s): [42]" in found
    assert any(p.startswith("splits.json: holdout: unknown split") for p in found)


def test_missing_splits_file_is_a_problem(clean):
    (clean / "splits.json").unlink()
    assert only(problems(clean)) == "splits.json: file not found"


def test_exact_duplicate_across_splits(clean):
    add_image(clean, "copy.jpg", (clean / "images" / "img_01.jpg").read_bytes(), "test")
    message = only(problems(clean))
    assert message.startswith(
        "images/copy.jpg (image 11, test): identical bytes to images/img_01.jpg (image 1, train)"
    )


def reencoded(path: Path, gain: float = 1.0, quality: int = 60) -> bytes:
    pixels = np.asarray(Image.open(path).convert("RGB"), dtype=float) * gain
    out = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(out, "JPEG", quality=quality)
    return out.getvalue()


@pytest.mark.parametrize(("gain", "quality"), [(1.0, 60), (1.1, 95)], ids=["q60", "brighter"])
def test_near_duplicate_across_splits(clean, gain, quality):
    add_image(clean, "again.jpg", reencoded(clean / "images" / "img_02.jpg", gain, quality), "val")
    report = validate_dataset(clean, POLICY)
    message = only([str(p) for p in report.problems])
    assert message.startswith(
        "images/again.jpg (image 11, val): near-duplicate of images/img_02.jpg (image 2, train): "
    )
    assert report.leaks[0]["exact"] is False and report.leaks[0]["distance"] <= 4


def test_near_duplicates_within_one_split_are_allowed(clean):
    add_image(clean, "again.jpg", reencoded(clean / "images" / "img_02.jpg"), "train")
    assert problems(clean) == []


def test_empty_image_ratio_above_policy(clean):
    edit(clean, "annotations.json", lambda c: c.update(annotations=c["annotations"][3:]))
    assert only(problems(clean)) == (
        "annotations.json: 3 of 10 images (30.0%) have no person box; max 20.0%"
    )


def test_malformed_annotation_schema_is_reported_entry_by_entry(clean):
    def change(coco: dict[str, Any]) -> None:
        del annotation(coco, 1)["bbox"]
        annotation(coco, 2)["bbox"] = [1, 2, 3]
        annotation(coco, 3)["bbox"] = ["10", 5, 20, 35]
        annotation(coco, 4)["image_id"] = "4"
        coco["annotations"].append("not an object")

    edit(clean, "annotations.json", change)
    found = problems(clean)
    assert "annotations.json: annotation 1: missing required key(s) bbox" in found
    assert any(p.startswith("annotations.json: annotation 2: bbox must be 4 finite") for p in found)
    bad_type = "bbox must be 4 finite numbers [x, y, w, h], got ['10', 5, 20, 35]"
    assert f"annotations.json: annotation 3: {bad_type}" in found
    assert "annotations.json: annotation 4: image_id must be an integer, got '4'" in found
    assert "annotations.json: annotations[10]: expected an object, got 'not an object'" in found
    # images 1..4 lost their only box: the empty ratio is a consequence, reported too
    assert len(found) == 6


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ({"id": 1, "file_name": "../../etc/passwd.jpg", "width": W, "height": H}, "file_name"),
        ({"id": 1, "file_name": "img_01.jpg", "width": 0, "height": H}, "width must be"),
        ({"id": 1, "file_name": "img_01.jpg", "width": W}, "missing required key(s) height"),
    ],
)
def test_malformed_image_entry(clean, entry, expected):
    edit(clean, "annotations.json", lambda c: c["images"].__setitem__(0, entry))
    found = problems(clean)
    assert found[0].startswith("annotations.json: image 1: ") and expected in found[0]


def test_hostile_json_values_are_reported_not_crashed_on(clean):
    def change(coco: dict[str, Any]) -> None:
        coco["images"][0].update(id=[1], file_name=5, width="x")
        coco["images"][2].update(id=2)  # an id used twice
        annotation(coco, 5).update(id=[5], image_id={"a": 1}, iscrowd=[1])
        annotation(coco, 6).update(id=7, bbox=[1, 2, float("nan"), 4])
        coco["categories"][0]["id"] = True

    edit(clean, "annotations.json", change)
    edit(clean, "splits.json", lambda s: s.update(val=[7, "8", None], test=[[9], 10]))
    found = problems(clean)
    assert any(p.startswith("annotations.json: images[0]: id must be an integer") for p in found)
    assert "annotations.json: image 2: duplicate image id" in found
    assert any(p.startswith("annotations.json: annotations[4]: id must be") for p in found)
    assert any(p.startswith("annotations.json: annotation 7: bbox must be") for p in found)
    assert any(p.startswith("splits.json: val: must be a list of integer ids") for p in found)


@pytest.mark.parametrize("content", ["{not json", "[]", '{"images": {}, "annotations": []}'])
def test_unreadable_annotations_file(clean, content):
    (clean / "annotations.json").write_text(content)
    assert problems(clean)[0].startswith("annotations.json: ")


def test_symlinked_image_is_refused(clean):
    path = clean / "images" / "img_05.jpg"
    target = clean.parent / "outside.jpg"
    path.rename(target)
    path.symlink_to(target)
    assert "images/img_05.jpg (image 5): is a symbolic link" in only(problems(clean))


def test_raise_if_failed_gives_count_first_problems_and_all(clean):
    for name in ("img_01.jpg", "img_02.jpg", "img_03.jpg", "img_04.jpg"):
        (clean / "images" / name).unlink()
    report = validate_dataset(clean, POLICY)
    with pytest.raises(ValidationFailed) as caught:
        raise_if_failed(report)
    message = str(caught.value)
    assert "dataset validation found 4 problem(s): images/img_01.jpg (image 1)" in message
    assert message.endswith("; and 1 more")
    assert len(caught.value.problems) == 4


def test_nearest_within_matches_brute_force_across_chunks(monkeypatch):
    monkeypatch.setattr(near_duplicates, "_CHUNK_CELLS", 64)  # many chunks
    rng = np.random.default_rng(0)
    references = rng.integers(0, 2**63, 50, dtype=np.uint64)
    flips = np.uint64(1) << rng.integers(0, 64, (30, 3)).astype(np.uint64)
    queries = references[:30] ^ flips[:, 0] ^ flips[:, 1] ^ flips[:, 2]  # 1..3 bits away
    queries = np.concatenate([queries, rng.integers(0, 2**63, 30, dtype=np.uint64)])
    found = {m.query: m for m in nearest_within(queries, references, 3)}
    for q, query in enumerate(queries):
        distances = [(int(query) ^ int(r)).bit_count() for r in references]
        within = [d for d in distances if d <= 3]
        assert (q in found) == bool(within)
        if within:
            assert found[q].distance == min(distances)
            assert found[q].matches == len(within)
