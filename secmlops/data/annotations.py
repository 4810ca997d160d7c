"""The strict reading of a dataset version's JSON files, shared by every stage that reads them.

`load_dataset` (training, evaluation, screening, monitoring) and `validate_dataset` parse
annotations.json and splits.json here, so a value refused by one is refused by all. Before this,
`secmlops train` on a dataset it was not told to validate trained on a NaN box, and crashed on a
width of 1e400.

- Numbers are checked while the file is parsed: Python's json reads `NaN`, `Infinity` and
  `-Infinity` as floats, and `1e400` as inf. These, and integers beyond 64 bits, are refused.
  The message names the file, the image or annotation, and the field.
- A key repeated in one object is refused: a reader keeping the first and one keeping the last
  would see different boxes.
- Deep nesting is refused as malformed, not a crash.
- Each image and annotation entry is checked field by field (`IMAGE_FIELDS`,
  `ANNOTATION_FIELDS`). A `file_name` is one plain image file name inside images/, with no
  folder, no "..", no leading dot and no absolute path.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeGuard

from secmlops.errors import DataError

PERSON_CATEGORY_ID = 1
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
MAX_IMAGE_SIDE = 65_535  # JPEG's limit; no camera frame comes near it
_INT_LIMIT = 2**63  # ids and sizes are int64 wherever they end up (numpy, torch, COCO tools)
_SHOWN = 20  # bad numbers listed in one error, at most

# JSON key -> (check of its value, what the value must be)
Fields = dict[str, tuple[Callable[[Any], bool], str]]


@dataclass(frozen=True)
class RefusedNumber:
    """One number the parser refused: its key path, the entry it is in, and what is wrong."""

    keys: tuple[str | int, ...]  # e.g. ("annotations", 0, "bbox", 2)
    where: str  # the file and the image or annotation: "annotations.json: annotation 1 (image 1)"
    message: str  # the field and the literal as written: "bbox[2] is 1e400, not a finite ..."


class BadNumber(DataError):
    """A JSON file holds numbers that are not finite or not in range; `found` lists them."""

    def __init__(self, found: list[RefusedNumber]) -> None:
        more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
        super().__init__(f"{found[0].where}: {found[0].message}{more}")
        self.found = found


class Literal:
    """A number the parser refused, kept as written: in a lenient parse it stands where the
    number was, so each entry check reports it like any other value of a wrong type."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


def read_json(path: Path) -> Any:
    """Parse one of a dataset's JSON files strictly (see the module docstring).

    Raises:
        DataError: the file is missing or unreadable, is not JSON, repeats a key, or nests too
            deep.
        BadNumber: it holds NaN, an infinity, or a number out of range.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    return loads(data, str(path))


def loads(data: bytes | str, source: str) -> Any:
    """Parse JSON text strictly; `source` names it in messages (a path or a file name).

    Raises:
        DataError: not JSON, a repeated key, or nesting too deep.
        BadNumber: NaN, an infinity, or a number out of range.
    """
    value, found = loads_lenient(data, source)
    if found:
        raise BadNumber(found)
    return value


def loads_lenient(data: bytes | str, source: str) -> tuple[Any, list[RefusedNumber]]:
    """Parse JSON text, keeping every refused number as a `Literal` and listing it (for
    validation, which reports every problem instead of stopping at the first).

    Raises:
        DataError: not JSON, a repeated key, or nesting too deep.
    """
    try:
        value = json.loads(
            data,
            parse_constant=Literal,  # NaN, Infinity, -Infinity
            parse_float=_finite_float,
            parse_int=_bounded_int,
            object_pairs_hook=_no_repeated_keys,
        )
    except RecursionError:
        raise DataError(f"{source}: not valid JSON (nested too deeply)") from None
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
        raise DataError(f"{source}: not valid JSON ({exc})") from None
    return value, _refused_numbers(value, source)


def _finite_float(text: str) -> float | Literal:
    number = float(text)
    return number if math.isfinite(number) else Literal(text)


def _bounded_int(text: str) -> int | Literal:
    # Compare lengths first: int() of a 5,000-digit literal is an error of its own.
    if len(text.lstrip("-")) > len(str(_INT_LIMIT)):
        return Literal(text)
    number = int(text)
    return number if -_INT_LIMIT <= number < _INT_LIMIT else Literal(text)


def _no_repeated_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        repeated = next(k for k, n in Counter(k for k, _ in pairs).items() if n > 1)
        raise ValueError(f"key {repeated!r} appears twice in one object")
    return obj


def _refused_numbers(value: Any, source: str) -> list[RefusedNumber]:
    """Each refused number, in file order (walked without recursion: the parser allows deeper
    nesting than Python's stack)."""
    found: list[RefusedNumber] = []
    pending: list[tuple[Any, tuple[str | int, ...]]] = [(value, ())]
    while pending and len(found) < _SHOWN:
        item, keys = pending.pop()
        if isinstance(item, Literal):
            entry, field = _locate(value, keys)
            where = f"{source}: {entry}" if entry else source
            message = f"{field} is {item.text}, not a finite number in range"
            found.append(RefusedNumber(keys, where, message))
        elif isinstance(item, dict):
            pending.extend((v, (*keys, k)) for k, v in reversed(item.items()))
        elif isinstance(item, list):
            pending.extend((v, (*keys, i)) for i, v in reversed(list(enumerate(item))))
    return found


def _locate(root: Any, keys: tuple[str | int, ...]) -> tuple[str | None, str]:
    """The entry (an image or annotation by its id; None outside them) and the field's path."""
    if len(keys) >= 3 and keys[0] in ("images", "annotations") and isinstance(keys[1], int):
        entry = root[keys[0]][keys[1]]
        return _entry_label(keys[0], entry, keys[1]), _path(keys[2:])
    return None, _path(keys) or "the whole file"


def _entry_label(section: str, entry: Any, index: int) -> str:
    entry_id = entry.get("id") if isinstance(entry, dict) else None
    if section == "images":
        if not is_int(entry_id):
            return f"images[{index}]"
        name = entry.get("file_name")
        return f"image {entry_id}" + (f" ({name})" if isinstance(name, str) else "")
    if not is_int(entry_id):
        return f"annotations[{index}]"
    image_id = entry.get("image_id")
    return f"annotation {entry_id}" + (f" (image {image_id})" if is_int(image_id) else "")


def _path(keys: tuple[str | int, ...]) -> str:
    text = ""
    for key in keys:
        text += f"[{key}]" if isinstance(key, int) else (f".{key}" if text else str(key))
    return text


def categories_of(entries: list[Any], ann_path: Path) -> dict[int, Any]:
    """The `categories` section as id -> name; 1 must be "person"."""
    categories: dict[int, Any] = {}
    for index, cat in enumerate(entries):
        if not isinstance(cat, dict) or not is_int(cat.get("id")):
            raise DataError(f"{ann_path}: categories[{index}] must be an object with an integer id")
        categories[cat["id"]] = cat.get("name")
    if categories.get(PERSON_CATEGORY_ID) != "person":
        raise DataError(f"{ann_path}: category 1 must be 'person', got {categories}")
    return categories


def images_folder(root: Path) -> Path:
    """The dataset's own images/ folder, resolved (a link to elsewhere is not its own)."""
    folder = root / "images"
    if folder.is_symlink() or not folder.is_dir():
        raise DataError(f"{folder}: not a folder of the dataset (missing, or a symbolic link)")
    return folder.resolve()


def check_image_file(images_dir: Path, name: str, where: str) -> None:
    """`name` (already a plain file name) is a file that stays inside images/ once resolved."""
    path = images_dir / name
    if not path.is_file():
        raise DataError(f"{path}: image file not found")
    if not path.resolve().is_relative_to(images_dir):
        raise DataError(f"{where}: file_name {name!r} is a symbolic link out of {images_dir}")


def coco_box(
    bbox: list[float], width: int, height: int, where: str
) -> tuple[float, float, float, float]:
    """COCO x, y, w, h (finite: checked) to x1y1x2y2, inside the image give or take rounding."""
    x, y, w, h = (float(v) for v in bbox)
    if w <= 0 or h <= 0:
        raise DataError(f"{where}: bbox {bbox} has no area (width and height must be > 0)")
    tol = 0.5  # rounding to 2 decimals on write
    if x < -tol or y < -tol or x + w > width + tol or y + h > height + tol:
        raise DataError(f"{where}: bbox {bbox} lies outside the {width}x{height} image")
    return (x, y, x + w, y + h)


# ----------------------------------------------------------------------- entry checks
def entry_errors(entry: Any, fields: Fields) -> list[str]:
    """What is wrong with one JSON object: not an object, missing keys, values of a wrong type."""
    if not isinstance(entry, dict):
        return [f"expected an object, got {short(entry)}"]
    absent = [k for k in fields if k not in entry and k not in OPTIONAL_KEYS]
    errors = [f"missing required key(s) {', '.join(absent)}"] if absent else []
    for key, (valid, what) in fields.items():
        if key in entry and not valid(entry[key]):
            errors.append(f"{key} must be {what}, got {short(entry[key])}")
    return errors


def is_int(value: Any) -> TypeGuard[int]:
    """An integer, and not a bool (JSON true would otherwise pass as 1)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """A finite int or float, not a bool."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def is_plain_image_name(name: Any) -> bool:
    """An image file name that cannot leave images/: no separator, no leading dot (so no ".."),
    no NUL or other control character, and an image suffix."""
    return (
        isinstance(name, str)
        and not any(c in name for c in "/\\") and name.isprintable()
        and not name.startswith(".")
        and name.lower().endswith(IMAGE_SUFFIXES)
    )  # fmt: skip


def is_bbox(value: Any) -> bool:
    """COCO [x, y, w, h]: four finite numbers."""
    return isinstance(value, list) and len(value) == 4 and all(map(is_number, value))


def short(value: Any, limit: int = 60) -> str:
    """`repr(value)`, cut to `limit` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _is_side(value: Any) -> bool:
    return is_int(value) and 0 < value <= MAX_IMAGE_SIDE


IMAGE_FIELDS: Fields = {
    "id": (is_int, "an integer"),
    "file_name": (is_plain_image_name, "an image file name with no folder and no leading dot"),
    "width": (_is_side, f"a positive integer up to {MAX_IMAGE_SIDE}"),
    "height": (_is_side, f"a positive integer up to {MAX_IMAGE_SIDE}"),
}
ANNOTATION_FIELDS: Fields = {
    "id": (is_int, "an integer"),
    "image_id": (is_int, "an integer"),
    "category_id": (is_int, "an integer"),
    "bbox": (is_bbox, "4 finite numbers [x, y, w, h]"),
    "iscrowd": (lambda v: v in (0, 1), "0 or 1"),  # True/False pass too: bool is an int
}
OPTIONAL_KEYS = {"iscrowd"}  # COCO makes it required; pycocotools and our readers default to 0
