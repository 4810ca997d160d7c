"""Dataset validation: what a dataset version must pass before any stage uses it.

Each check, and the accident or attack it catches:

- annotation schema, read as raw JSON with every entry checked (not via `load_dataset`, which stops
  at the first exception; both parse by the same rules, `secmlops.data.annotations`): a
  hand-edited or exported file with a missing bbox, a 3-number bbox, string coordinates, NaN or
  1e400 (inf), which would crash training far from the cause or be silently coerced;
- categories (only 1 = person): another class (an import that kept cars) poured into "person";
- boxes inside their image, of positive area, at least the policy minimum (ignore regions exempt):
  label corruption, a mis-scaled importer, label poisoning with degenerate or tiny boxes;
- every listed image is a regular file that fully decodes to its annotated size: truncated
  copies, a file swapped for another (every box would sit in the wrong place), decompression
  bombs, and symlinks or path tricks that read outside the dataset;
- no file in images/ that no annotation lists: unverified files smuggled in next to the data;
- splits name known images, each in one split only: evaluation on training images;
- exact and near duplicates across splits (`near_duplicates`): the same picture, possibly
  re-encoded, in training and evaluation. A near-duplicate across splits is a problem, period.
  Frames of one static camera collide whatever their time gap, so such a dataset cannot give an
  independent test split; the report says so instead of hiding it behind an exemption;
- share of images without any person box: an import that lost its labels still "works".
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from secmlops.data.annotations import (
    ANNOTATION_FIELDS,
    IMAGE_FIELDS,
    PERSON_CATEGORY_ID,
    RefusedNumber,
    entry_errors,
    is_int,
    loads_lenient,
    short,
)
from secmlops.data.dataset import SPLITS
from secmlops.data.near_duplicates import HASH_NAME, Fingerprint, find_leaks, fingerprint_images
from secmlops.errors import DataError, ValidationFailed
from secmlops.policy import DataPolicy

_SECTIONS = ("categories", "images", "annotations")
_BOX_TOLERANCE = 0.5  # px: COCO writers round coordinates; half a pixel outside is not an error
_SHOWN_IN_MESSAGE = 3
Progress = Callable[[int], None] | None  # called with the number of images just decoded


@dataclass(frozen=True)
class Problem:
    """One failed check: which check, where (file, image or annotation id) and what is wrong."""

    check: str  # files, schema, category, box, image, split, leakage, empty
    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


@dataclass
class ValidationReport:
    """What `validate_dataset` found; `passed` only when there is no problem at all."""

    root: str
    policy: dict[str, Any]
    problems: list[Problem] = field(default_factory=list)
    statistics: dict[str, Any] = field(default_factory=dict)
    leaks: list[dict[str, Any]] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """True when no check found a problem."""
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        """The report as plain JSON-serialisable data."""
        data = asdict(self)
        data.update(passed=self.passed, problem_count=len(self.problems), hash=HASH_NAME)
        return data


def raise_if_failed(report: ValidationReport) -> None:
    """Raise when the report has any problem.

    Raises:
        ValidationFailed: the message gives the problem count and the first few problems;
            `.problems` holds all of them.
    """
    if report.passed:
        return
    problems = [str(p) for p in report.problems]
    shown, more = "; ".join(problems[:_SHOWN_IN_MESSAGE]), len(problems) - _SHOWN_IN_MESSAGE
    message = f"{report.root}: dataset validation found {len(problems)} problem(s): {shown}"
    raise ValidationFailed(message + (f"; and {more} more" if more > 0 else ""), problems)


def validate_dataset(
    root: Path | str,
    policy: DataPolicy,
    workers: int | None = None,
    progress: Progress = None,
) -> ValidationReport:
    """Run every dataset check and collect all problems (it does not stop at the first).

    Args:
        root: the dataset version folder.
        policy: the policy's data section (box minimum, empty ratio, duplicate distance).
        workers: threads that read and decode images (None: one per CPU).
        progress: called with 1 after each image is decoded.

    Returns:
        The report; check `report.passed` or call `raise_if_failed(report)`.
    """
    started = time.perf_counter()
    checker = _Checker(Path(root), policy)
    checker.run(workers, progress)
    stats = {**checker.statistics(), "seconds": round(time.perf_counter() - started, 3)}
    dumped = policy.model_dump(mode="json")
    return ValidationReport(str(root), dumped, checker.problems, stats, checker.leaks)


class _Checker:
    """One validation run's state; each `_check_*` method is one check."""

    def __init__(self, root: Path, policy: DataPolicy) -> None:
        self.root, self.policy = root, policy
        self.problems: list[Problem] = []
        self.images: dict[int, tuple[str, int, int]] = {}  # id -> file name, width, height
        self.broken_ids: set[int] = set()  # ids of malformed image entries (already reported)
        self.listed: set[str] = set()  # file names that any image entry names
        self.boxes: dict[int, list[tuple[float, float]]] = {}  # id -> person box (w, h)
        self.ignore_regions = 0
        self.prints: dict[int, Fingerprint] = {}
        self.splits: dict[str, list[int]] = {}
        self.leaks: list[dict[str, Any]] = []
        self.copies_within_splits = 0

    def add(self, check: str, where: str, message: str) -> None:
        self.problems.append(Problem(check, where, message))

    def run(self, workers: int | None, progress: Progress) -> None:
        if not self.root.is_dir():
            self.add("files", str(self.root), "dataset folder not found")
            return
        coco = self._read_json("annotations.json")
        lists: dict[str, Any] = {
            k: coco.get(k) if isinstance(coco, dict) else None for k in _SECTIONS
        }
        if coco is not None and not isinstance(coco, dict):
            self.add("schema", "annotations.json", f"expected a JSON object, got {short(coco)}")
        elif isinstance(coco, dict):
            for key in (k for k, v in lists.items() if not isinstance(v, list)):
                self.add("schema", "annotations.json", f"{key!r} must be a list")
        if all(isinstance(v, list) for v in lists.values()):  # else nothing below means much
            self._check_categories(lists["categories"])
            self._check_images(lists["images"])
            self._check_annotations(lists["annotations"])
            self._check_image_files(workers, progress)
            self._check_splits()
            self._check_leaks()
            self._check_empty_ratio()

    def _read_json(self, name: str) -> Any:
        try:
            value, refused = loads_lenient((self.root / name).read_bytes(), name)
        except FileNotFoundError:
            self.add("files", name, "file not found")
        except OSError as exc:
            self.add("files", name, f"cannot read it ({exc.strerror or exc})")
        except DataError as exc:  # not JSON, a repeated key, nested too deep
            self.add("schema", name, str(exc).removeprefix(f"{name}: "))
        else:
            for number in refused:
                if not _checked_by_entry(name, number):  # else that check names it
                    self.add("schema", number.where, number.message)
            return value
        return None

    def _check_categories(self, categories: list[Any]) -> None:
        person = False
        for index, cat in enumerate(categories):
            where = f"annotations.json: categories[{index}]"
            if isinstance(cat, dict) and cat.get("id") == 1 and cat.get("name") == "person":
                person = True
            else:
                self.add("category", where, f"unknown category {short(cat)}: only 1 = person")
        if not person:
            self.add("category", "annotations.json", "categories must define 1 = 'person'")

    def _check_images(self, entries: list[Any]) -> None:
        names: dict[str, int] = {}
        for index, img in enumerate(entries):
            image_id = img.get("id") if isinstance(img, dict) else None
            known, errors = is_int(image_id), entry_errors(img, IMAGE_FIELDS)
            if isinstance(img, dict) and isinstance(img.get("file_name"), str):
                self.listed.add(img["file_name"])  # even by a malformed entry: not a stray
            if known and (image_id in self.images or image_id in self.broken_ids):
                errors.append("duplicate image id")
            elif not errors and img["file_name"] in names:
                errors.append(f"file_name is also used by image {names[img['file_name']]}")
            if errors:
                where = f"image {image_id}" if known else f"images[{index}]"
                self.add("schema", f"annotations.json: {where}", "; ".join(errors))
                self.broken_ids.update([image_id] if is_int(image_id) else [])
                continue
            assert is_int(image_id)  # no errors: the id passed its "an integer" check
            names[img["file_name"]] = image_id
            self.images[image_id] = (img["file_name"], img["width"], img["height"])
            self.boxes[image_id] = []

    def _check_annotations(self, annotations: list[Any]) -> None:
        seen: set[int] = set()
        for index, ann in enumerate(annotations):
            ann_id = ann.get("id") if isinstance(ann, dict) else None
            label = f"annotation {ann_id}" if is_int(ann_id) else f"annotations[{index}]"
            where, errors = f"annotations.json: {label}", entry_errors(ann, ANNOTATION_FIELDS)
            if is_int(ann_id) and ann_id in seen:
                errors.append("duplicate annotation id")
            if is_int(ann_id):  # an unhashable id (a list) is reported above, not stored
                seen.add(ann_id)
            if errors:
                self.add("schema", where, "; ".join(errors))
                continue
            image_id = ann["image_id"]
            if image_id not in self.images:
                if image_id not in self.broken_ids:  # else the image entry is the problem
                    self.add("schema", where, f"refers to unknown image id {image_id}")
                continue
            where += f" (image {image_id}, {self.images[image_id][0]})"
            if ann["category_id"] != PERSON_CATEGORY_ID:
                self.add("category", where, f"unknown category {ann['category_id']}")
                continue
            self._check_box(where, image_id, ann["bbox"], bool(ann.get("iscrowd", 0)))

    def _check_box(self, where: str, image_id: int, bbox: list[float], ignore: bool) -> None:
        x, y, w, h = bbox
        _, width, height = self.images[image_id]
        tol, policy = _BOX_TOLERANCE, self.policy
        if w <= 0 or h <= 0:
            self.add("box", where, f"box {bbox} has no area")
        elif x < -tol or y < -tol or x + w > width + tol or y + h > height + tol:
            self.add("box", where, f"box {bbox} lies outside the {width}x{height} image")
        elif ignore:
            self.ignore_regions += 1
        elif w < policy.min_box_width or h < policy.min_box_height:
            minimum = f"{policy.min_box_width:g}x{policy.min_box_height:g}"
            self.add("box", where, f"box {w:g}x{h:g} px is below the policy minimum {minimum} px")
        else:
            self.boxes[image_id].append((float(w), float(h)))

    def _check_image_files(self, workers: int | None, progress: Progress) -> None:
        """Every listed file decodes to its annotated size; images/ holds nothing unlisted."""
        ids = sorted(self.images)
        paths = [self.root / "images" / self.images[i][0] for i in ids]
        results = fingerprint_images(paths, workers, progress)
        for image_id, result in zip(ids, results, strict=True):
            name, width, height = self.images[image_id]
            where = f"images/{name} (image {image_id})"
            if isinstance(result, str):
                self.add("image", where, result)
                continue
            if result.size != (width, height):
                real = "x".join(map(str, result.size))
                self.add("image", where, f"decoded size {real} differs from {width}x{height}")
            self.prints[image_id] = result  # its bytes can leak across splits all the same
        folder = self.root / "images"
        if not folder.is_dir() or folder.is_symlink():
            return self.add("files", "images/", "folder not found, or a symbolic link")
        for path in sorted(p for p in folder.iterdir() if p.name not in self.listed):
            self.add("files", f"images/{path.name}", "not listed in annotations.json")
        return None

    def _check_splits(self) -> None:
        raw = self._read_json("splits.json")
        if not isinstance(raw, dict):
            if raw is not None:
                self.add("split", "splits.json", f"expected an object, got {short(raw)}")
            return
        member_of: dict[int, str] = {}
        for name in sorted(raw, key=lambda s: (SPLITS.index(s) if s in SPLITS else 9, s)):
            members, where = raw[name], f"splits.json: {name}"
            if name not in SPLITS:
                self.add("split", where, f"unknown split (expected one of {', '.join(SPLITS)})")
                continue
            if not isinstance(members, list) or not all(map(is_int, members)):
                self.add("split", where, f"must be a list of integer ids, got {short(members)}")
                continue
            unknown = sorted({i for i in members if i not in self.images} - self.broken_ids)
            if unknown:
                self.add("split", where, f"{len(unknown)} unknown image id(s): {unknown[:10]}")
            repeated = sorted(i for i, n in Counter(members).items() if n > 1)
            if repeated:
                self.add("split", where, f"image ids listed more than once: {repeated[:10]}")
            self.splits[name] = []
            for image_id in dict.fromkeys(i for i in members if i in self.images):
                if image_id in member_of:
                    both = f"is in both {member_of[image_id]} and {name}"
                    self.add("split", f"image {image_id} ({self.images[image_id][0]})", both)
                    continue
                member_of[image_id] = name
                self.splits[name].append(image_id)

    def _check_leaks(self) -> None:
        limit = self.policy.max_near_duplicate_distance
        leaks, self.copies_within_splits = find_leaks(self.splits, self.prints, limit)
        for leak in leaks:
            self.leaks.append(asdict(leak))
            other = self._label(leak.other, leak.other_split)
            message = (
                f"identical bytes to {other} (sha256 {self.prints[leak.image].sha256[:16]})"
                if leak.exact
                else f"near-duplicate of {other}: perceptual hashes {leak.distance} bits apart, "
                f"policy max {limit} (data.max_near_duplicate_distance); {leak.matches} "
                "image(s) of earlier splits within the limit"
            )
            self.add("leakage", self._label(leak.image, leak.split), message)

    def _label(self, image_id: int, split: str) -> str:
        return f"images/{self.images[image_id][0]} (image {image_id}, {split})"

    def _check_empty_ratio(self) -> None:
        empty = sum(1 for boxes in self.boxes.values() if not boxes)
        ratio, limit = empty / max(len(self.images), 1), self.policy.max_empty_image_ratio
        if not self.images:
            self.add("schema", "annotations.json", "no valid image entry")
        elif ratio > limit:
            share = f"{empty} of {len(self.images)} images ({ratio:.1%})"
            self.add("empty", "annotations.json", f"{share} have no person box; max {limit:.1%}")

    def statistics(self) -> dict[str, Any]:
        counts = [len(b) for b in self.boxes.values()]
        n, exact = max(len(counts), 1), sum(1 for leak in self.leaks if leak["exact"])
        sizes = np.array([wh for b in self.boxes.values() for wh in b], dtype=float).reshape(-1, 2)
        return {
            "images": len(self.images),
            "boxes": len(sizes),
            "ignore_regions": self.ignore_regions,
            "boxes_per_image": {"mean": round(sum(counts) / n, 3), "max": max(counts, default=0)},
            "box_width_px": _percentiles(sizes[:, 0]),
            "box_height_px": _percentiles(sizes[:, 1]),
            "empty_images": counts.count(0),
            "empty_ratio": round(counts.count(0) / n, 4),
            "image_sizes": dict(Counter(f"{w}x{h}" for _, w, h in self.images.values())),
            "splits": {name: len(ids) for name, ids in self.splits.items()},
            "unassigned_images": len(self.images) - sum(len(v) for v in self.splits.values()),
            "exact_copies_within_splits": self.copies_within_splits,
            "leaks_across_splits": {"exact": exact, "near": len(self.leaks) - exact},
        }


def _checked_by_entry(name: str, number: RefusedNumber) -> bool:
    """Whether an entry check reports this number itself (an image or annotation field it
    checks, or a split's id); other refused numbers (an `area`, the `info`) are reported alone."""
    if name == "splits.json":
        return True
    if len(number.keys) < 3 or number.keys[0] not in ("images", "annotations"):
        return False
    fields = IMAGE_FIELDS if number.keys[0] == "images" else ANNOTATION_FIELDS
    return number.keys[2] in fields


def _percentiles(values: np.ndarray) -> dict[str, float] | None:
    if values.size == 0:
        return None
    return {f"p{q}": round(float(np.percentile(values, q)), 2) for q in (5, 50, 95)}
