"""Machinery shared by the COCO, YOLO and Pascal VOC importers.

Each importer only parses its format into `SourceImage` records; `write_source_images` then does
what every format needs alike: decode every image and check its real size against the declared
one, check and clip every box, copy the pixels under collision-free names and write the dataset
version atomically (`secmlops.data.dataset.write_dataset`). Every bad input is a `DataError`
naming the file and the line, annotation or object at fault, so a user can fix it in one pass.
"""

from __future__ import annotations

import math
import re
import shutil
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from PIL import Image

from secmlops.data.dataset import IMAGE_SUFFIXES, SPLITS, Box, read_rgb, write_dataset
from secmlops.errors import DataError

Progress = Callable[[int], None]
"""Called with 1 after each image, like a progress bar's `advance` (as in the MOT importer)."""

_UNSAFE_NAME_CHARS = re.compile(r"[^A-Za-z0-9._-]")


@dataclass(frozen=True)
class SourceBox:
    """One box as the source declares it, before it is checked against the decoded image.

    `coords` are x1, y1, x2, y2: pixels, or fractions of the image size when the owning
    `SourceImage.normalised` is set. `where` locates it for error messages ("file: line 3") and
    `written` shows it as the source wrote it, so the user recognises the box they must fix.
    """

    coords: tuple[float, float, float, float]
    where: str
    written: str
    ignore: bool = False


@dataclass
class SourceImage:
    """One image of the source dataset and everything its annotation says about it."""

    path: Path
    relative_name: str  # path below the source image folder; seeds the file name in the dataset
    boxes: list[SourceBox] = field(default_factory=list)
    declared_size: tuple[int, int] | None = None  # width, height written in the annotation
    declared_by: Path | None = None  # the annotation file that declares the size
    split: str | None = None
    normalised: bool = False


def text_lines(path: Path) -> Iterator[tuple[str, list[str], str]]:
    """Non-blank lines of a text file as (where, whitespace-split fields, line).

    `where` names the file and the 1-based line number for error messages.

    Raises:
        DataError: the file is not text.
    """
    try:
        lines = path.read_text().splitlines()
    except UnicodeDecodeError:
        raise DataError(f"{path}: not a text file") from None
    for number, line in enumerate(lines, start=1):
        fields = line.split()
        if fields:
            yield f"{path}: line {number}", fields, line


def parse_number(value: Any, where: str, name: str) -> float:
    """Read a finite number from a text field or a JSON value.

    Raises:
        DataError: `value` is not a number, or is NaN or infinite.
    """
    if isinstance(value, bool):  # JSON true/false would otherwise pass as 1/0
        raise DataError(f"{where}: {name} must be a number, got {value!r}")
    try:
        number = float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError):
        raise DataError(f"{where}: {name} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise DataError(f"{where}: {name} must be finite, got {value!r}")
    return number


def parse_dimension(value: Any, where: str, name: str) -> int:
    """Read an image width or height: a positive whole number (some tools write "500.0").

    Raises:
        DataError: `value` is not a positive whole number.
    """
    number = parse_number(value, where, name)
    if number <= 0 or number != int(number):
        raise DataError(f"{where}: {name} must be a positive whole number, got {value!r}")
    return int(number)


def checked_box(
    coords: Sequence[float], width: int, height: int, where: str, written: str | None = None
) -> Box:
    """Check one x1y1x2y2 pixel box and clip it to the image.

    Annotators routinely draw to (or a little past) the border, so overhang is clipped; a box
    with nothing inside the image is an annotation error, not something to drop silently.

    Raises:
        DataError: a coordinate is not finite, the box has non-positive width or height, or
            it lies entirely outside the image.
    """
    x1, y1, x2, y2 = (float(v) for v in coords)
    shown = written or f"[{x1:g}, {y1:g}, {x2:g}, {y2:g}] (x1, y1, x2, y2)"
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
        raise DataError(f"{where}: box {shown} has a non-finite coordinate")
    if x2 <= x1 or y2 <= y1:
        raise DataError(f"{where}: box {shown} has non-positive width or height")
    clipped = (max(x1, 0.0), max(y1, 0.0), min(x2, float(width)), min(y2, float(height)))
    if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
        raise DataError(f"{where}: box {shown} lies entirely outside the {width}x{height} image")
    return clipped


def safe_relative_path(text: Any, where: str) -> PurePosixPath:
    """Check a file path taken from an annotation and return it as a relative path.

    Annotations are input: a path that is absolute or climbs out with ".." would make the
    importer copy an arbitrary file (an SSH key, say) into a dataset that is then shared.

    Raises:
        DataError: the path is empty, absolute, or contains "..".
    """
    if not isinstance(text, str) or not text.strip():
        raise DataError(f"{where}: file name must be a non-empty string, got {text!r}")
    path = PurePosixPath(text.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or re.match(r"^[A-Za-z]:", text):
        raise DataError(f"{where}: file name {text!r} must be a path inside the image folder")
    return path


def find_images(folder: Path) -> list[Path]:
    """All image files below `folder`, sorted, skipping hidden files and folders.

    Hidden entries are skipped because they are tool litter (macOS "._x.jpg" resource forks,
    ".ipynb_checkpoints"), not images anyone annotated.
    """
    if not folder.is_dir():
        return []
    return sorted(
        path
        for path in folder.rglob("*")
        if path.suffix.lower() in IMAGE_SUFFIXES
        and path.is_file()
        and not any(part.startswith(".") for part in path.relative_to(folder).parts)
    )


def refuse_out_over_source(out: Path, *sources: Path, scanned: Path | None = None) -> None:
    """Refuse an output folder that would destroy or feed back into the source.

    With `overwrite`, the old output folder is deleted after the import: pointed at the source,
    that would destroy the only copy of the data. Inside a folder that is scanned recursively
    for images, the next import would pick up its own output as new source images.

    Raises:
        DataError: `out` is one of `sources`, a folder above one of them, or inside `scanned`.
    """
    target = Path(out).resolve()
    for source in sources:
        resolved = Path(source).resolve()
        if resolved == target or target in resolved.parents:
            raise DataError(f"{out}: output folder must not be or contain the source {source}")
    if scanned is not None and Path(scanned).resolve() in target.parents:
        raise DataError(f"{out}: output folder must not be inside the image folder {scanned}")


def plan_file_names(relative_names: Sequence[str]) -> list[str]:
    """Choose one plain, unique file name per source image.

    The original file name is kept when it is unique; names that collide (the same "0001.jpg"
    in train/ and val/) or that the dataset format refuses become the sanitised relative path
    ("train__0001.jpg"). Uniqueness is case-insensitive so the dataset survives a copy to a
    case-insensitive file system (macOS, Windows).
    """
    base_names = [PurePosixPath(name).name for name in relative_names]
    counts = Counter(name.lower() for name in base_names)
    taken: set[str] = set()
    planned = []
    for relative, base in zip(relative_names, base_names, strict=True):
        plain = not base.startswith(".") and "\\" not in base
        wanted = base if counts[base.lower()] == 1 and plain else _sanitised(relative)
        name, suffix = wanted, PurePosixPath(wanted).suffix
        stem, number = wanted[: len(wanted) - len(suffix)], 1
        while name.lower() in taken:
            name, number = f"{stem}_{number}{suffix}", number + 1
        taken.add(name.lower())
        planned.append(name)
    return planned


def _sanitised(relative: str) -> str:
    flat = "__".join(PurePosixPath(relative.replace("\\", "/")).parts)
    return _UNSAFE_NAME_CHARS.sub("_", flat).lstrip(".") or "image"


def decoded_size(path: Path) -> tuple[int, int]:
    """Decode an image completely and return its width and height.

    A full decode, not just a header read, catches truncated files before training does.

    Raises:
        DataError: the file is missing, not a decodable image, or a decompression bomb.
    """
    try:
        pixels = read_rgb(path)
    except Image.DecompressionBombError as exc:
        raise DataError(f"{path}: not a decodable image ({exc})") from None
    return int(pixels.shape[1]), int(pixels.shape[0])


def write_source_images(
    images: Sequence[SourceImage],
    out: Path,
    *,
    source: dict[str, Any],
    overwrite: bool = False,
    progress: Progress | None = None,
) -> Path:
    """Check every image and box of a parsed source and write it as a dataset version.

    Splits are taken from `SourceImage.split` when every image has one, and left to the default
    random split when none has one.

    Args:
        images: the parsed source, in the order the dataset should list it (at least one).
        out: the dataset version folder to create.
        source: provenance stored in the annotations' `info` ({"format": ..., "source": ...}).
        overwrite: replace an existing non-empty `out`.
        progress: called with 1 after each image is written (a progress-bar advance).

    Returns:
        `out`.

    Raises:
        DataError: an image is missing, undecodable, of another size than declared, or listed
            twice; a box is invalid; only some images have a split; or `out` is not empty.
    """
    _check_sources(images)
    names = plan_file_names([image.relative_name for image in images])
    with write_dataset(Path(out), overwrite=overwrite, source=source) as writer:
        splits: dict[str, list[int]] = {name: [] for name in SPLITS}
        for image, name in zip(images, names, strict=True):
            width, height = decoded_size(image.path)
            if image.declared_size is not None and image.declared_size != (width, height):
                declared_w, declared_h = image.declared_size
                raise DataError(
                    f"{image.path}: image is {width}x{height} but {image.declared_by} "
                    f"declares {declared_w}x{declared_h}"
                )
            scale = (width, height, width, height) if image.normalised else (1, 1, 1, 1)
            boxes: list[Box] = []
            ignore: list[Box] = []
            for box in image.boxes:
                pixels = [v * s for v, s in zip(box.coords, scale, strict=True)]
                (ignore if box.ignore else boxes).append(
                    checked_box(pixels, width, height, box.where, box.written)
                )
            shutil.copyfile(image.path, writer.images_dir / name)
            image_id = writer.add(name, width, height, boxes=boxes, ignore=ignore)
            if image.split is not None:
                splits[image.split].append(image_id)
            if progress is not None:
                progress(1)
        if images[0].split is not None:
            writer.splits = splits
    return Path(out)


def _check_sources(images: Sequence[SourceImage]) -> None:
    if not images:
        raise DataError("no images found in the source")
    seen: set[Path] = set()
    for image in images:
        if image.path in seen:
            raise DataError(f"{image.path}: listed twice in {image.declared_by or 'the source'}")
        seen.add(image.path)
        if image.split is not None and image.split not in SPLITS:
            raise DataError(f"{image.path}: unknown split {image.split!r}")
    with_split = [image.split is not None for image in images]
    if any(with_split) and not all(with_split):
        orphan = images[with_split.index(False)] if images[0].split else images[0]
        raise DataError(
            f"{orphan.path}: some images belong to a train/val/test split and this one does not"
        )
