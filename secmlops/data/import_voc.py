"""Import a Pascal VOC detection dataset as a dataset version.

Layout::

    root/Annotations/<id>.xml           one file per image
    root/JPEGImages/<id>.jpg            the image (<filename> in the XML names it)
    root/ImageSets/Main/{train,val,test,trainval}.txt    optional split lists, one <id> a line

Objects named "person" (any case) become boxes; `<difficult>1</difficult>` ones become ignore
regions, as the VOC benchmark itself neither rewards nor penalises detecting them. VOC pixel
coordinates are 1-based and inclusive, so a box covers [xmin - 1, xmax] in the 0-based continuous
coordinates of the dataset version.

When split lists exist they define the dataset, as in VOC itself: only the images they list are
imported (VOC2012's Annotations/ also holds action and layout images outside the detection set).
`trainval.txt` counts as train for images that `val.txt` does not claim.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from xml.parsers import expat

from secmlops.data.dataset import IMAGE_SUFFIXES
from secmlops.data.import_common import (
    Progress,
    SourceBox,
    SourceImage,
    parse_dimension,
    parse_number,
    refuse_out_over_source,
    safe_relative_path,
    text_lines,
    write_source_images,
)
from secmlops.errors import DataError

# Read order matters: trainval.txt is the union of train and val, so it is read last and only
# adds the ids the other lists did not claim.
_SPLIT_FILES = (("test", "test.txt"), ("val", "val.txt"), ("train", "train.txt"))
_TRAINVAL_FILE = "trainval.txt"
_BOX_TAGS = ("xmin", "ymin", "xmax", "ymax")


def import_voc(
    root: Path, out: Path, *, overwrite: bool = False, progress: Progress | None = None
) -> Path:
    """Convert a Pascal VOC dataset at `root` into a dataset version at `out`.

    Args:
        root: folder holding `Annotations/`, `JPEGImages/` and optionally `ImageSets/Main/`.
        out: the dataset version folder to create.
        overwrite: replace an existing non-empty `out`.
        progress: called with 1 after each image is imported (a progress-bar advance).

    Returns:
        `out`.

    Raises:
        DataError: no annotations are found; an XML file is malformed or declares a DOCTYPE or
            entity; an object or a split list line is malformed; a box is invalid; an image is
            missing, undecodable or of another size than declared; an id is in two splits;
            or `out` is not empty.
    """
    root = Path(root)
    annotations_dir, images_dir = root / "Annotations", root / "JPEGImages"
    xml_files = (
        sorted(p for p in annotations_dir.glob("*.xml") if not p.name.startswith("."))
        if annotations_dir.is_dir()
        else []
    )
    if not xml_files:
        raise DataError(f"no images found in {root} (no Annotations/*.xml)")
    refuse_out_over_source(out, root)
    splits = _read_split_lists(root / "ImageSets" / "Main")
    selected: list[tuple[Path, str | None]]
    if splits is None:
        selected = [(path, None) for path in xml_files]
    else:
        by_id = {path.stem: path for path in xml_files}
        for image_id, (_, where) in splits.items():
            if image_id not in by_id:
                raise DataError(f"{where}: no annotation {annotations_dir / image_id}.xml")
        selected = [(path, splits[path.stem][0]) for path in xml_files if path.stem in splits]
    images = [_source_image(path, images_dir, split) for path, split in selected]
    return write_source_images(
        images,
        out,
        source={"format": "voc", "source": str(root)},
        overwrite=overwrite,
        progress=progress,
    )


def _read_split_lists(folder: Path) -> dict[str, tuple[str, str]] | None:
    """Map image id -> (split, where it was listed); None when there are no split lists."""
    splits: dict[str, tuple[str, str]] = {}
    found = False
    for split, file_name in (*_SPLIT_FILES, ("train", _TRAINVAL_FILE)):
        path = folder / file_name
        if not path.is_file():
            continue
        found = True
        for image_id, where in _read_id_list(path):
            if image_id in splits:
                earlier, earlier_where = splits[image_id]
                if earlier == split or (file_name == _TRAINVAL_FILE and earlier == "val"):
                    continue
                # The same image in two splits leaks evaluation data into training.
                raise DataError(f"{where}: {image_id} is already in {earlier} ({earlier_where})")
            splits[image_id] = (split, where)
    return splits if found else None


def _read_id_list(path: Path) -> list[tuple[str, str]]:
    ids = []
    for where, fields, line in text_lines(path):
        if len(fields) != 1 or "/" in fields[0] or "\\" in fields[0] or fields[0].startswith("."):
            raise DataError(f"{where}: expected one image id, got {line.strip()!r}")
        ids.append((fields[0], where))
    return ids


def _parse_xml(path: Path) -> ET.Element:
    """Parse an annotation file, refusing DTDs.

    ElementTree expands internal entities, so a DOCTYPE declaring nested entities ("billion
    laughs") turns a 1 kB file into gigabytes of memory. VOC annotations never need a DTD, so
    any DOCTYPE or ENTITY declaration is refused before ElementTree sees the file. The check
    runs on expat itself rather than on the raw bytes, so a UTF-16 file cannot hide one.
    """
    data = path.read_bytes()
    checker = expat.ParserCreate()

    def refuse(*_: object) -> None:
        raise DataError(
            f"{path}: DOCTYPE and ENTITY declarations are not allowed in annotations "
            "(entity expansion can exhaust memory)"
        )

    checker.StartDoctypeDeclHandler = refuse
    checker.EntityDeclHandler = refuse
    try:
        checker.Parse(data, True)
        return ET.fromstring(data)
    except (expat.ExpatError, ET.ParseError) as exc:
        raise DataError(f"{path}: malformed XML ({exc})") from None


def _text(element: ET.Element, tag: str, where: str) -> str:
    value = element.findtext(tag)
    if value is None or not value.strip():
        raise DataError(f"{where}: missing <{tag}>")
    return value.strip()


def _source_image(xml_path: Path, images_dir: Path, split: str | None) -> SourceImage:
    annotation = _parse_xml(xml_path)
    if annotation.tag != "annotation":
        raise DataError(f"{xml_path}: root element must be <annotation>, got <{annotation.tag}>")
    size = annotation.find("size")
    declared = None
    if size is not None:
        where = f"{xml_path}: <size>"
        declared = (
            parse_dimension(_text(size, "width", where), where, "width"),
            parse_dimension(_text(size, "height", where), where, "height"),
        )
    image_path = _image_path(annotation, xml_path, images_dir)
    return SourceImage(
        path=image_path,
        relative_name=image_path.relative_to(images_dir).as_posix(),
        boxes=_person_boxes(annotation, xml_path),
        declared_size=declared,
        declared_by=xml_path,
        split=split,
    )


def _image_path(annotation: ET.Element, xml_path: Path, images_dir: Path) -> Path:
    """The declared <filename>, or <id>.<image suffix> when that does not exist.

    Renaming tools often leave a stale <filename>; the id is what VOC's own tooling uses.
    """
    candidates = []
    declared = (annotation.findtext("filename") or "").strip()
    if declared:
        candidates.append(images_dir / safe_relative_path(declared, f"{xml_path}: <filename>"))
    for suffix in IMAGE_SUFFIXES:
        candidates += [
            images_dir / f"{xml_path.stem}{suffix}",
            images_dir / f"{xml_path.stem}{suffix.upper()}",
        ]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    looked_for = f"{declared!r} or " if declared else ""
    raise DataError(f"{xml_path}: image not found in {images_dir} ({looked_for}{xml_path.stem}.*)")


def _person_boxes(annotation: ET.Element, xml_path: Path) -> list[SourceBox]:
    boxes = []
    for index, obj in enumerate(annotation.findall("object"), start=1):
        where = f"{xml_path}: object {index}"
        if _text(obj, "name", where).lower() != "person":
            continue
        bndbox = obj.find("bndbox")
        if bndbox is None:
            raise DataError(f"{where}: person without <bndbox>")
        x1, y1, x2, y2 = (parse_number(_text(bndbox, tag, where), where, tag) for tag in _BOX_TAGS)
        difficult = (obj.findtext("difficult") or "0").strip()
        if difficult not in ("0", "1"):
            raise DataError(f"{where}: <difficult> must be 0 or 1, got {difficult!r}")
        coords = (x1, y1, x2, y2)
        written = " ".join(f"{tag}={v:g}" for tag, v in zip(_BOX_TAGS, coords, strict=True))
        boxes.append(SourceBox((x1 - 1, y1 - 1, x2, y2), where, written, ignore=difficult == "1"))
    return boxes
