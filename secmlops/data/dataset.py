"""The dataset version format that every stage reads (docs/architecture.md, "dataset format").

A dataset version is a folder:

    images/             one file per image (JPEG or PNG)
    annotations.json    COCO detection format, one category: 1 = person; `iscrowd: 1`
                        marks an ignore region (neither a positive nor a false positive)
    splits.json         {"train": [image ids], "val": [...], "test": [...]}

In memory, boxes are x1y1x2y2 float pixels (the torchvision detection contract); on disk they are
COCO x, y, w, h. Writers stage the whole folder and rename it into place, so a failed import never
leaves a half-written dataset behind.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from secmlops.data.annotations import (
    ANNOTATION_FIELDS,
    IMAGE_FIELDS,
    PERSON_CATEGORY_ID,
    categories_of,
    check_image_file,
    coco_box,
    entry_errors,
    images_folder,
    is_int,
    read_json,
)
from secmlops.data.annotations import IMAGE_SUFFIXES as IMAGE_SUFFIXES  # readers import it here
from secmlops.errors import DataError
from secmlops.fsutil import atomic_write_json, staged_directory

CATEGORIES = [{"id": PERSON_CATEGORY_ID, "name": "person", "supercategory": "person"}]
SPLITS = ("train", "val", "test")

Box = tuple[float, float, float, float]  # x1, y1, x2, y2 in pixels


@dataclass(frozen=True)
class ImageAnnotations:
    """One image of a dataset version with its person boxes and ignore regions."""

    id: int
    file_name: str
    width: int
    height: int
    boxes: tuple[Box, ...] = ()
    ignore: tuple[Box, ...] = ()


@dataclass
class DetectionDataset:
    """A loaded dataset version (annotations in memory, pixels on disk)."""

    root: Path
    images: list[ImageAnnotations]
    splits: dict[str, list[int]] = field(default_factory=dict)

    def split(self, name: str) -> list[ImageAnnotations]:
        """Return the images of split `name` in the order the split lists them.

        Raises:
            DataError: the split does not exist or is empty.
        """
        if name not in self.splits:
            known = ", ".join(sorted(self.splits)) or "none"
            raise DataError(f"{self.root}: no split named {name!r} (splits: {known})")
        by_id = {image.id: image for image in self.images}
        selected = [by_id[i] for i in self.splits[name]]
        if not selected:
            raise DataError(f"{self.root}: split {name!r} is empty")
        return selected

    def image_path(self, image: ImageAnnotations) -> Path:
        """Path of an image's pixels."""
        return self.root / "images" / image.file_name


def read_rgb(path: Path) -> np.ndarray:
    """Decode an image file to an RGB uint8 array [H, W, 3].

    Raises:
        DataError: the file is missing or is not a decodable image.
    """
    try:
        with Image.open(path) as img:
            return np.array(img.convert("RGB"))
    except FileNotFoundError:
        raise DataError(f"{path}: image file not found") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{path}: not a decodable image ({exc})") from None


def clip_box(box: Sequence[float], width: int, height: int) -> Box | None:
    """Clip an x1y1x2y2 box to the image; None when nothing of positive area is left.

    Raises:
        DataError: a coordinate is NaN or infinite (NaN would pass every comparison below).
    """
    x1, y1, x2, y2 = (float(v) for v in box)
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
        raise DataError(f"box {list(box)} has a coordinate that is not a finite number")
    x1, x2 = min(max(x1, 0.0), float(width)), min(max(x2, 0.0), float(width))
    y1, y2 = min(max(y1, 0.0), float(height)), min(max(y2, 0.0), float(height))
    if x2 - x1 <= 0 or y2 - y1 <= 0:
        return None
    return (x1, y1, x2, y2)


def split_ids(
    ids: Sequence[int], fractions: tuple[float, float, float] = (0.8, 0.1, 0.1), seed: int = 0
) -> dict[str, list[int]]:
    """Shuffle ids with `seed` and cut them into train/val/test by `fractions`.

    Every split gets at least one id when there are at least three ids.
    """
    if abs(sum(fractions) - 1.0) > 1e-6 or min(fractions) < 0:
        raise ValueError(f"split fractions must be non-negative and sum to 1, got {fractions}")
    shuffled = list(ids)
    random.Random(seed).shuffle(shuffled)
    n = len(shuffled)
    n_val = round(n * fractions[1])
    n_test = round(n * fractions[2])
    if n >= 3:
        n_val, n_test = (
            max(n_val, 1 if fractions[1] > 0 else 0),
            max(n_test, 1 if fractions[2] > 0 else 0),
        )
    n_train = n - n_val - n_test
    return {
        "train": sorted(shuffled[:n_train]),
        "val": sorted(shuffled[n_train : n_train + n_val]),
        "test": sorted(shuffled[n_train + n_val :]),
    }


def contiguous_splits(
    ids: Sequence[int], fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
) -> dict[str, list[int]]:
    """Cut ordered ids (video frames) into train/val/test blocks without shuffling.

    Neighbouring video frames are near-duplicates: shuffling them across splits leaks the
    test set into training, so video imports keep time order.
    """
    n = len(ids)
    n_train = round(n * fractions[0])
    n_val = round(n * fractions[1])
    ordered = list(ids)
    return {
        "train": ordered[:n_train],
        "val": ordered[n_train : n_train + n_val],
        "test": ordered[n_train + n_val :],
    }


class DatasetWriter:
    """Collects images and boxes into a staging folder (see `write_dataset`)."""

    def __init__(self, staging: Path, source: dict[str, Any] | None = None) -> None:
        self.root = staging
        self.source = source
        self.splits: dict[str, list[int]] | None = None
        self.images_dir = staging / "images"
        self.images_dir.mkdir(parents=True, exist_ok=True)
        self._images: list[ImageAnnotations] = []
        self._names: set[str] = set()

    @property
    def images(self) -> list[ImageAnnotations]:
        """Images recorded so far."""
        return list(self._images)

    def add(
        self,
        file_name: str,
        width: int,
        height: int,
        boxes: Iterable[Sequence[float]] = (),
        ignore: Iterable[Sequence[float]] = (),
        image: np.ndarray | Image.Image | None = None,
        jpeg_quality: int = 95,
    ) -> int:
        """Record one image; write its pixels if `image` is given (else the file must exist).

        Boxes are clipped to the image; boxes with nothing left inside it are dropped.

        Returns:
            The new image id (1-based, in insertion order).
        """
        if file_name in self._names:
            raise DataError(f"duplicate image file name {file_name!r}")
        if "/" in file_name or "\\" in file_name or file_name.startswith("."):
            raise DataError(f"image file name must be a plain file name, got {file_name!r}")
        path = self.images_dir / file_name
        if image is not None:
            save_image(image, path, jpeg_quality=jpeg_quality)
        elif not path.is_file():
            raise DataError(f"{path}: image file was not written")
        clipped = tuple(b for b in (clip_box(b, width, height) for b in boxes) if b is not None)
        ignored = tuple(b for b in (clip_box(b, width, height) for b in ignore) if b is not None)
        image_id = len(self._images) + 1
        self._images.append(ImageAnnotations(image_id, file_name, width, height, clipped, ignored))
        self._names.add(file_name)
        return image_id


def save_image(image: np.ndarray | Image.Image, path: Path, jpeg_quality: int = 95) -> None:
    """Encode an RGB image to `path` (format from the suffix)."""
    pil = Image.fromarray(image) if isinstance(image, np.ndarray) else image
    if path.suffix.lower() in (".jpg", ".jpeg"):
        pil.save(path, quality=jpeg_quality, subsampling=0)
    else:
        pil.save(path)


@contextmanager
def write_dataset(
    out: Path, *, overwrite: bool = False, source: dict[str, Any] | None = None
) -> Iterator[DatasetWriter]:
    """Write a dataset version to `out` all at once.

    Usage::

        with write_dataset(out) as writer:
            writer.add("0001.jpg", w, h, boxes, image=pixels)
            writer.splits = split_ids([...])

    If the block raises, nothing appears at `out`. If `writer.splits` is not set, images are
    split 80/10/10 at random with seed 0.

    Raises:
        DataError: `out` exists and is not empty (unless `overwrite`), or no image was added.
    """
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise DataError(f"{out} already exists and is not empty; choose another --out or remove it")
    with staged_directory(out, overwrite=overwrite) as staging:
        writer = DatasetWriter(staging, source=source)
        yield writer
        if not writer.images:
            raise DataError("no images to write: the input selected nothing")
        splits = writer.splits or split_ids([img.id for img in writer.images])
        _write_annotations(staging, writer.images, splits, writer.source)


def to_coco(
    images: Sequence[ImageAnnotations], info: dict[str, Any] | None = None
) -> dict[str, Any]:
    """COCO detection dict of `images` (ignore regions become `iscrowd: 1` annotations)."""
    coco_images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for img in images:
        coco_images.append(
            {"id": img.id, "file_name": img.file_name, "width": img.width, "height": img.height}
        )
        for boxes, crowd in ((img.boxes, 0), (img.ignore, 1)):
            for x1, y1, x2, y2 in boxes:
                w, h = x2 - x1, y2 - y1
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": img.id,
                        "category_id": PERSON_CATEGORY_ID,
                        "bbox": [round(x1, 2), round(y1, 2), round(w, 2), round(h, 2)],
                        "area": round(w * h, 2),
                        "iscrowd": crowd,
                    }
                )
    coco: dict[str, Any] = {
        "images": coco_images,
        "annotations": annotations,
        "categories": CATEGORIES,
    }
    if info:
        coco["info"] = info
    return coco


def _write_annotations(
    root: Path,
    images: Sequence[ImageAnnotations],
    splits: dict[str, list[int]],
    source: dict[str, Any] | None,
) -> None:
    known = {img.id for img in images}
    for name in SPLITS:
        splits.setdefault(name, [])
    for name, ids in splits.items():
        unknown = sorted(set(ids) - known)
        if unknown:
            raise DataError(f"split {name!r} lists unknown image ids {unknown[:5]}")
    atomic_write_json(root / "annotations.json", to_coco(images, info=source))
    atomic_write_json(root / "splits.json", {k: list(v) for k, v in splits.items()})


def load_dataset(root: Path) -> DetectionDataset:
    """Load and check a dataset version's annotations and splits (pixels are read lazily).

    Every stage reads a dataset through here, validated or not, so here the annotations are
    parsed as strictly as `validate_dataset` parses them (`secmlops.data.annotations`): no NaN
    or infinite number, every entry of the right shape, every box inside its image, and every
    image a file inside the dataset's own images/ folder.

    Raises:
        DataError: a file is missing or malformed (the message names the file, the image or
            annotation, and the field); a box outside its image or without area; an image
            file missing, or leading out of images/ (an absolute path, "..", a symbolic link,
            or images/ itself a link); a split naming an unknown image.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: dataset folder not found")
    ann_path, splits_path = root / "annotations.json", root / "splits.json"
    coco = read_json(ann_path)
    splits = read_json(splits_path) if splits_path.exists() else None
    images = _parse_coco(coco, root, ann_path)
    if not images:
        raise DataError(f"{ann_path}: no images")
    ids = {img.id for img in images}
    if splits is None:
        splits = split_ids(sorted(ids))
    if not isinstance(splits, dict) or not all(
        isinstance(v, list) and all(map(is_int, v)) for v in splits.values()
    ):
        raise DataError(f"{splits_path}: expected an object of lists of integer image ids")
    for name, members in splits.items():
        unknown = sorted(set(members) - ids)
        if unknown:
            raise DataError(f"{splits_path}: split {name!r} names unknown image ids {unknown[:5]}")
    return DetectionDataset(
        root=root, images=images, splits={k: list(v) for k, v in splits.items()}
    )


def _parse_coco(coco: Any, root: Path, ann_path: Path) -> list[ImageAnnotations]:
    if not isinstance(coco, dict):
        raise DataError(f"{ann_path}: expected a JSON object")
    for key in ("categories", "images", "annotations"):
        if not isinstance(coco.get(key), list):
            raise DataError(f"{ann_path}: {key!r} must be a list")
    categories = categories_of(coco["categories"], ann_path)
    images_dir = images_folder(root)
    meta: dict[int, dict[str, Any]] = {}
    for index, img in enumerate(coco["images"]):
        label = _label("image", img, index)
        errors = entry_errors(img, IMAGE_FIELDS)
        if errors:
            raise DataError(f"{ann_path}: {label}: {'; '.join(errors)}")
        if img["id"] in meta:
            raise DataError(f"{ann_path}: duplicate image id {img['id']}")
        check_image_file(images_dir, img["file_name"], f"{ann_path}: {label}")
        meta[img["id"]] = {"img": img, "boxes": [], "ignore": []}
    for index, ann in enumerate(coco["annotations"]):
        label = _label("annotation", ann, index)
        errors = entry_errors(ann, ANNOTATION_FIELDS)
        if errors:
            raise DataError(f"{ann_path}: {label}: {'; '.join(errors)}")
        image_id = ann["image_id"]
        where = f"{ann_path}: {label} (image {image_id})"
        if image_id not in meta:
            raise DataError(f"{where}: refers to an unknown image id")
        if ann["category_id"] not in categories:
            raise DataError(f"{where}: unknown category_id {ann['category_id']}")
        img = meta[image_id]["img"]
        box = coco_box(ann["bbox"], img["width"], img["height"], where)
        meta[image_id]["ignore" if ann.get("iscrowd", 0) else "boxes"].append(box)
    return [
        ImageAnnotations(
            id=image_id,
            file_name=m["img"]["file_name"],
            width=m["img"]["width"],
            height=m["img"]["height"],
            boxes=tuple(m["boxes"]),
            ignore=tuple(m["ignore"]),
        )
        for image_id, m in sorted(meta.items())
    ]


def _label(kind: str, entry: Any, index: int) -> str:
    entry_id = entry.get("id") if isinstance(entry, dict) else None
    return f"{kind} {entry_id}" if is_int(entry_id) else f"{kind}s[{index}]"
