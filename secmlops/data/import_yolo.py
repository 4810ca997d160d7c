"""Import a YOLO (txt labels) detection dataset as a dataset version.

Layout (the Ultralytics convention)::

    root/data.yaml                  optional; `names` gives the class index of "person"
    root/images/[train|val|valid|test/]**/<stem>.{jpg,jpeg,png,bmp}
    root/labels/[train|val|valid|test/]**/<stem>.txt

Each label line is `class cx cy w h`, the box centre and size as fractions of the image size.
Only the person class is imported; lines of other classes are still checked for format, because
a malformed line anywhere means the file is not what its author thinks it is. An image without a
label file has no boxes (a negative). Split sub-folders become the dataset's splits ("valid" is
Roboflow's name for "val").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from secmlops.data.import_common import (
    Progress,
    SourceBox,
    SourceImage,
    find_images,
    parse_number,
    refuse_out_over_source,
    text_lines,
    write_source_images,
)
from secmlops.errors import DataError

SPLIT_FOLDERS = {"train": "train", "val": "val", "valid": "val", "test": "test"}


def import_yolo(
    root: Path,
    out: Path,
    *,
    person_class: int | None = None,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> Path:
    """Convert a YOLO dataset at `root` into a dataset version at `out`.

    Args:
        root: folder holding `images/`, `labels/` and optionally `data.yaml`.
        out: the dataset version folder to create.
        person_class: class index of "person"; default: its index in `data.yaml` `names`,
            or 0 when there is no `data.yaml`.
        overwrite: replace an existing non-empty `out`.
        progress: called with 1 after each image is imported (a progress-bar advance).

    Returns:
        `out`.

    Raises:
        DataError: no images are found, `labels/` is missing, `data.yaml` is malformed or has
            no "person", a label line is malformed or its box invalid, an image is undecodable,
            or `out` is not empty.
    """
    root = Path(root)
    images_root, labels_root = root / "images", root / "labels"
    paths = find_images(images_root)
    if not paths:
        raise DataError(f"no images found in {images_root}")
    if not labels_root.is_dir():
        # A dataset whose every image is a negative is almost always a wrong --root; an
        # intentionally empty one can say so with an empty labels/ folder.
        raise DataError(f"{labels_root}: labels folder not found")
    refuse_out_over_source(out, root, scanned=images_root)
    names = _class_names(root / "data.yaml")
    if person_class is None:
        person_class = _person_index(names, root / "data.yaml") if names is not None else 0
    elif person_class < 0 or (names is not None and person_class >= len(names)):
        raise DataError(f"{root / 'data.yaml'}: person_class {person_class} is not a class index")
    images = [_source_image(path, images_root, labels_root, person_class, names) for path in paths]
    _refuse_shared_labels(images)
    return write_source_images(
        images,
        out,
        source={"format": "yolo", "source": str(root)},
        overwrite=overwrite,
        progress=progress,
    )


def _class_names(data_yaml: Path) -> list[str] | None:
    """Class names from `data.yaml` (a list, or Ultralytics' {index: name} mapping)."""
    if not data_yaml.is_file():
        return None
    try:
        # safe_load: a data.yaml is downloaded with the data, and full YAML can run code.
        config = yaml.safe_load(data_yaml.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise DataError(f"{data_yaml}: not valid YAML ({exc})") from None
    names: Any = config.get("names") if isinstance(config, dict) else None
    if isinstance(names, dict) and all(isinstance(k, int) for k in names):
        if sorted(names) != list(range(len(names))):
            raise DataError(f"{data_yaml}: `names` indices must be 0..{len(names) - 1}")
        names = [names[index] for index in range(len(names))]
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        raise DataError(f"{data_yaml}: `names` must be a list of class names, got {names!r}")
    return names


def _person_index(names: list[str], data_yaml: Path) -> int:
    lowered = [name.strip().lower() for name in names]
    if "person" not in lowered:
        raise DataError(f"{data_yaml}: no class named 'person' in names {names}")
    return lowered.index("person")


def _source_image(
    path: Path, images_root: Path, labels_root: Path, person_class: int, names: list[str] | None
) -> SourceImage:
    relative = path.relative_to(images_root)
    label_file = (labels_root / relative).with_suffix(".txt")
    boxes = _read_labels(label_file, person_class, names) if label_file.is_file() else []
    top = relative.parts[0].lower()
    in_split = len(relative.parts) > 1 and top in SPLIT_FOLDERS
    return SourceImage(
        path=path,
        relative_name=relative.as_posix(),
        boxes=boxes,
        declared_by=label_file,
        split=SPLIT_FOLDERS[top] if in_split else None,
        normalised=True,
    )


def _read_labels(label_file: Path, person_class: int, names: list[str] | None) -> list[SourceBox]:
    """Parse one label file into normalised x1y1x2y2 person boxes."""
    boxes = []
    for where, fields, line in text_lines(label_file):
        if len(fields) != 5:
            # More fields is a segmentation polygon or a pose label, not a detection box.
            raise DataError(f"{where}: expected 'class cx cy w h', got {line.strip()!r}")
        if not (fields[0].isascii() and fields[0].isdigit()):
            raise DataError(f"{where}: class must be a non-negative integer, got {fields[0]!r}")
        class_index = int(fields[0])
        if names is not None and class_index >= len(names):
            raise DataError(
                f"{where}: class {class_index} is not in data.yaml names (0..{len(names) - 1})"
            )
        cx, cy, w, h = (
            parse_number(text, where, name)
            for text, name in zip(fields[1:], ("cx", "cy", "w", "h"), strict=True)
        )
        if w > 1 or h > 1:
            raise DataError(
                f"{where}: w and h must be fractions of the image size (<= 1), got {w:g} {h:g}; "
                "are these pixel coordinates?"
            )
        if class_index == person_class:
            box = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
            boxes.append(SourceBox(box, where, written=repr(line.strip())))
    return boxes


def _refuse_shared_labels(images: list[SourceImage]) -> None:
    """Two images with one stem ("a.jpg", "a.png") would silently share one label file."""
    owner: dict[Path | None, Path] = {}
    for image in images:
        label = image.declared_by
        if label in owner:
            raise DataError(f"{label}: label file is shared by {owner[label]} and {image.path}")
        owner[label] = image.path
