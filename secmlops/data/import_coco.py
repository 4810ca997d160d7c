"""Import a COCO detection dataset (one annotation JSON + an image folder) as a dataset version.

Only the annotations of one category (by name, "person" by default) are imported; every image is
kept, so images without a person become negatives. `iscrowd: 1` annotations mark a group the
annotator could not separate: they become ignore regions, neither positives nor false positives.
COCO boxes are x, y, w, h in 0-based continuous pixel coordinates, which is what the dataset
version stores, so no coordinate shift is needed.

COCO files carry no train/val/test split of their own (each file *is* one split), so the dataset
version gets the default random split.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from secmlops.data.import_common import (
    Progress,
    SourceBox,
    SourceImage,
    parse_dimension,
    parse_number,
    refuse_out_over_source,
    safe_relative_path,
    write_source_images,
)
from secmlops.errors import DataError

_MAX_NAMES_SHOWN = 20


def import_coco(
    annotations: Path,
    images_dir: Path,
    out: Path,
    *,
    category: str = "person",
    overwrite: bool = False,
    progress: Progress | None = None,
) -> Path:
    """Convert a COCO annotation file and its images into a dataset version at `out`.

    Args:
        annotations: the COCO detection JSON (`images`, `annotations`, `categories`).
        images_dir: folder the images' `file_name`s are relative to.
        out: the dataset version folder to create.
        category: name of the category to import as "person".
        overwrite: replace an existing non-empty `out`.
        progress: called with 1 after each image is imported (a progress-bar advance).

    Returns:
        `out`.

    Raises:
        DataError: the JSON is malformed or lists no images, `category` is absent, an image
            entry or a selected annotation is malformed or its box invalid, an image is missing,
            undecodable or of another size than declared, or `out` is not empty.
    """
    annotations, images_dir = Path(annotations), Path(images_dir)
    coco = _read_coco(annotations)
    if not coco["images"]:
        raise DataError(f"no images found in {annotations}")
    category_ids = _category_ids(coco["categories"], category, annotations)
    refuse_out_over_source(out, annotations, images_dir)
    images = _source_images(coco["images"], annotations, images_dir)
    for index, entry in enumerate(coco["annotations"]):
        _add_annotation(entry, index, category_ids, images, annotations)
    return write_source_images(
        list(images.values()),
        out,
        source={"format": "coco", "source": str(annotations), "category": category},
        overwrite=overwrite,
        progress=progress,
    )


def _read_coco(path: Path) -> dict[str, list[Any]]:
    try:
        coco = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(coco, dict):
        raise DataError(f"{path}: expected a COCO object with images, annotations, categories")
    # A COCO file without `annotations` (an unlabelled test set) is all negatives.
    coco.setdefault("annotations", [])
    for key in ("images", "annotations", "categories"):
        if not isinstance(coco.get(key), list):
            raise DataError(f"{path}: `{key}` must be a list, got {type(coco.get(key)).__name__}")
    return coco


def _category_ids(categories: list[Any], category: str, path: Path) -> set[Any]:
    names: dict[Any, Any] = {}
    for index, entry in enumerate(categories):
        if not isinstance(entry, dict) or "id" not in entry or "name" not in entry:
            raise DataError(f"{path}: category #{index} must have an id and a name, got {entry!r}")
        names[entry["id"]] = entry["name"]
    selected = {category_id for category_id, name in names.items() if name == category}
    if not selected:
        shown = sorted(str(name) for name in names.values())[:_MAX_NAMES_SHOWN]
        raise DataError(f"{path}: no category named {category!r} (categories: {shown})")
    return selected


def _is_id(value: Any) -> bool:
    return isinstance(value, (int, str)) and not isinstance(value, bool)


def _source_images(entries: list[Any], path: Path, images_dir: Path) -> dict[Any, SourceImage]:
    """SourceImages by COCO image id, in file order."""
    images: dict[Any, SourceImage] = {}
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict) or not _is_id(entry.get("id")):
            raise DataError(f"{path}: image entry #{index} must be an object with an id")
        where = f"{path}: image id {entry['id']}"
        if entry["id"] in images:
            raise DataError(f"{where}: duplicate image id")
        relative = safe_relative_path(entry.get("file_name"), where)
        size = (
            parse_dimension(entry.get("width"), where, "width"),
            parse_dimension(entry.get("height"), where, "height"),
        )
        images[entry["id"]] = SourceImage(
            path=images_dir / relative,
            relative_name=relative.as_posix(),
            declared_size=size,
            declared_by=path,
        )
    return images


def _add_annotation(
    entry: Any, index: int, category_ids: set[Any], images: dict[Any, SourceImage], path: Path
) -> None:
    """Attach one annotation of the selected category to its image (others are skipped)."""
    if not isinstance(entry, dict):
        raise DataError(f"{path}: annotation #{index} must be an object, got {entry!r}")
    where = f"{path}: annotation id {entry.get('id', f'#{index}')}"
    if entry.get("category_id") not in category_ids:
        # Other categories are not imported, so their geometry is none of this import's business.
        return
    image = images.get(entry.get("image_id")) if _is_id(entry.get("image_id")) else None
    if image is None:
        raise DataError(f"{where}: refers to unknown image id {entry.get('image_id')!r}")
    bbox = entry.get("bbox")
    if not isinstance(bbox, list) or len(bbox) != 4:
        raise DataError(f"{where}: bbox must be [x, y, w, h], got {bbox!r}")
    x, y, w, h = (parse_number(v, where, f"bbox[{i}]") for i, v in enumerate(bbox))
    crowd = entry.get("iscrowd", 0)
    if crowd not in (0, 1):
        raise DataError(f"{where}: iscrowd must be 0 or 1, got {crowd!r}")
    written = f"{bbox} (x, y, w, h)"
    image.boxes.append(SourceBox((x, y, x + w, y + h), where, written, ignore=crowd == 1))
