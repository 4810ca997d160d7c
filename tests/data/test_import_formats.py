"""COCO, YOLO and Pascal VOC importers: round trips into the dataset version format, and every
bad input failing with a one-line DataError that names the file and leaves nothing at `out`."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from secmlops.data.dataset import load_dataset
from secmlops.data.import_coco import import_coco
from secmlops.data.import_common import plan_file_names
from secmlops.data.import_voc import import_voc
from secmlops.data.import_yolo import import_yolo
from secmlops.errors import DataError

W, H = 64, 48


def make_image(path: Path, width: int = W, height: int = H) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (width, height), (90, 120, 150)).save(path)
    return path


def assert_boxes(actual: Sequence[Sequence[float]], expected: Sequence[Sequence[float]]) -> None:
    assert len(actual) == len(expected)
    for got, want in zip(sorted(actual), sorted(expected), strict=True):
        assert got == pytest.approx(want, abs=0.01)


def assert_import_fails(run: Callable[[], Any], out: Path, *fragments: str) -> str:
    """Run a failing import: DataError, one line, naming `fragments`, nothing left behind."""
    with pytest.raises(DataError) as info:
        run()
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]
    return message


def by_name(dataset_root: Path) -> dict[str, Any]:
    return {image.file_name: image for image in load_dataset(dataset_root).images}


def split_members(out: Path) -> list[str]:
    return sorted(name for names in split_names(out).values() for name in names)


def split_names(out: Path) -> dict[str, list[str]]:
    dataset = load_dataset(out)
    names = {image.id: image.file_name for image in dataset.images}
    return {split: sorted(names[i] for i in ids) for split, ids in dataset.splits.items()}


# --- COCO ------------------------------------------------------------------------------------


def coco_fixture(tmp_path: Path, **overrides: Any) -> tuple[Path, Path]:
    images_dir = tmp_path / "coco" / "images"
    for name in ("a.png", "b.png", "c.png"):
        make_image(images_dir / name)
    coco = {
        "images": [  # c.png has no person: a negative
            {"id": 10 + i, "file_name": name, "width": W, "height": H}
            for i, name in enumerate(("a.png", "b.png", "c.png"))
        ],
        "annotations": [
            {"id": 1, "image_id": 10, "category_id": 7, "bbox": [5, 6, 10, 20], "iscrowd": 0},
            {"id": 2, "image_id": 10, "category_id": 7, "bbox": [30, 2, 12, 8], "iscrowd": 1},
            {"id": 3, "image_id": 11, "category_id": 7, "bbox": [50, 40, 20, 20], "iscrowd": 0},
            {"id": 4, "image_id": 11, "category_id": 3, "bbox": [1, 1, 4, 4], "iscrowd": 0},
            {"id": 5, "image_id": 12, "category_id": 3, "bbox": [2, 3, 5, 5]},
        ],
        "categories": [{"id": 3, "name": "car"}, {"id": 7, "name": "person"}],
    }
    coco.update(overrides)
    annotations = tmp_path / "coco" / "instances.json"
    annotations.write_text(json.dumps(coco))
    return annotations, images_dir


def test_coco_round_trip_keeps_persons_crowds_and_negatives(tmp_path: Path) -> None:
    annotations, images_dir = coco_fixture(tmp_path)
    seen: list[int] = []
    out = import_coco(annotations, images_dir, tmp_path / "out", progress=seen.append)
    images = by_name(out)
    assert seen == [1, 1, 1]
    assert_boxes(images["a.png"].boxes, [(5, 6, 15, 26)])
    assert_boxes(images["a.png"].ignore, [(30, 2, 42, 10)])
    assert_boxes(images["b.png"].boxes, [(50, 40, W, H)])  # overhang clipped to the border
    assert images["c.png"].boxes == () and images["c.png"].ignore == ()
    assert split_members(out) == ["a.png", "b.png", "c.png"]  # in the default random split
    assert (out / "images" / "a.png").read_bytes() == (images_dir / "a.png").read_bytes()


def test_coco_selects_another_category(tmp_path: Path) -> None:
    annotations, images_dir = coco_fixture(tmp_path)
    images = by_name(import_coco(annotations, images_dir, tmp_path / "out", category="car"))
    assert_boxes(images["b.png"].boxes, [(1, 1, 5, 5)])
    assert_boxes(images["c.png"].boxes, [(2, 3, 7, 8)])
    assert images["a.png"].boxes == ()


def test_coco_file_names_in_sub_folders_get_unique_names(tmp_path: Path) -> None:
    files = ("day/0001.png", "night/0001.png")
    entries = [{"id": i, "file_name": f, "width": W, "height": H} for i, f in enumerate(files)]
    annotations, images_dir = coco_fixture(tmp_path, images=entries, annotations=[])
    for file_name in files:
        make_image(images_dir / file_name)
    images = by_name(import_coco(annotations, images_dir, tmp_path / "out"))
    assert sorted(images) == ["day__0001.png", "night__0001.png"]


def _bad_annotation(bbox: Any) -> list[dict[str, Any]]:
    return [{"id": 99, "image_id": 10, "category_id": 7, "bbox": bbox, "iscrowd": 0}]


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"annotations": _bad_annotation([100, 100, 5, 5])}, "entirely outside"),
        ({"annotations": _bad_annotation([5, 5, -4, 5])}, "non-positive"),
        ({"annotations": _bad_annotation([5, 5, 4])}, "bbox must be"),
        ({"annotations": _bad_annotation([5, "x", 4, 4])}, "must be a number"),
        ({"annotations": _bad_annotation([5, float("nan"), 4, 4])}, "finite"),
        ({"images": []}, "no images found"),
        ({"categories": [{"id": 7, "name": "bicycle"}]}, "no category named 'person'"),
        ({"images": [{"id": 10, "file_name": "../x.png", "width": W, "height": H}]}, "inside"),
    ],
)
def test_coco_bad_annotations_fail_naming_the_file(
    tmp_path: Path, overrides: dict[str, Any], fragment: str
) -> None:
    annotations, images_dir = coco_fixture(tmp_path, **overrides)
    out = tmp_path / "out"
    message = assert_import_fails(
        lambda: import_coco(annotations, images_dir, out), out, "instances.json", fragment
    )
    if "annotations" in overrides:
        assert "annotation id 99" in message


def test_coco_size_mismatch_and_unreadable_image_fail(tmp_path: Path) -> None:
    annotations, images_dir = coco_fixture(tmp_path)
    out = tmp_path / "out"
    run = partial(import_coco, annotations, images_dir, out)
    make_image(images_dir / "b.png", W + 1, H)
    assert_import_fails(run, out, "b.png", "is 65x48", "instances.json declares 64x48")
    make_image(images_dir / "b.png")
    (images_dir / "c.png").write_bytes(b"not a png")
    assert_import_fails(run, out, "c.png", "not a decodable image")


def test_coco_refuses_non_empty_out_and_out_over_source(tmp_path: Path) -> None:
    annotations, images_dir = coco_fixture(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(DataError, match="already exists"):
        import_coco(annotations, images_dir, out)
    assert (out / "keep.txt").read_text() == "mine"
    with pytest.raises(DataError, match="must not be or contain the source"):
        import_coco(annotations, images_dir, tmp_path / "coco", overwrite=True)
    assert (images_dir / "a.png").is_file()
    import_coco(annotations, images_dir, out, overwrite=True)
    assert not (out / "keep.txt").exists()


# --- YOLO ------------------------------------------------------------------------------------


def yolo_fixture(root: Path, data_yaml: str | None = "names: [car, person]\n") -> Path:
    labels = {
        "train/a.jpg": "1 0.5 0.5 0.25 0.5\n0 0.2 0.2 0.1 0.1\n",
        "train/b.png": "\n1 0.95 0.5 0.2 0.2\n",  # overhangs the right border
        "valid/a.jpg": "1 0.25 0.25 0.5 0.5\n",
        "test/c.png": None,  # no label file: a negative
    }
    for relative, text in labels.items():
        make_image(root / "images" / relative)
        if text is not None:
            label = (root / "labels" / relative).with_suffix(".txt")
            label.parent.mkdir(parents=True, exist_ok=True)
            label.write_text(text)
    (root / "labels").mkdir(exist_ok=True)
    if data_yaml is not None:
        (root / "data.yaml").write_text(data_yaml)
    return root


def test_yolo_round_trip_with_splits_and_colliding_names(tmp_path: Path) -> None:
    root = yolo_fixture(tmp_path / "yolo")
    out = import_yolo(root, tmp_path / "out")
    images = by_name(out)
    assert sorted(images) == ["b.png", "c.png", "train__a.jpg", "valid__a.jpg"]
    assert_boxes(images["train__a.jpg"].boxes, [(24, 12, 40, 36)])  # class 0 (car) dropped
    assert_boxes(images["b.png"].boxes, [(54.4, 19.2, W, 28.8)])
    assert_boxes(images["valid__a.jpg"].boxes, [(0, 0, 32, 24)])
    assert images["c.png"].boxes == ()
    expected = {"train": ["b.png", "train__a.jpg"], "val": ["valid__a.jpg"], "test": ["c.png"]}
    assert split_names(out) == expected


def test_yolo_person_class_default_and_override(tmp_path: Path) -> None:
    root = yolo_fixture(tmp_path / "yolo", data_yaml=None)
    images = by_name(import_yolo(root, tmp_path / "out"))  # no data.yaml: class 0
    assert_boxes(images["train__a.jpg"].boxes, [(9.6, 7.2, 16, 12)])
    assert images["b.png"].boxes == ()
    images = by_name(import_yolo(root, tmp_path / "out1", person_class=1))
    assert_boxes(images["b.png"].boxes, [(54.4, 19.2, W, 28.8)])
    (root / "data.yaml").write_text("names:\n  0: person\n  1: car\n")  # Ultralytics mapping
    images = by_name(import_yolo(root, tmp_path / "out2"))
    assert_boxes(images["train__a.jpg"].boxes, [(9.6, 7.2, 16, 12)])


def test_yolo_flat_layout_gets_default_splits(tmp_path: Path) -> None:
    root = tmp_path / "yolo"
    for name in ("x.jpg", "y.jpg", "z.jpg"):
        make_image(root / "images" / name)
    (root / "labels").mkdir()
    (root / "labels" / "x.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    assert split_members(import_yolo(root, tmp_path / "out")) == ["x.jpg", "y.jpg", "z.jpg"]


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        ("1 0.5 0.5 0.2", "expected 'class cx cy w h'"),
        ("person 0.5 0.5 0.2 0.2", "class must be a non-negative integer"),
        ("1 0.5 abc 0.2 0.2", "must be a number"),
        ("1 nan 0.5 0.2 0.2", "finite"),
        ("1 1.5 1.5 0.1 0.1", "entirely outside"),
        ("1 0.5 0.5 -0.1 0.2", "non-positive"),
        ("1 32 24 10 10", "pixel coordinates"),
        ("5 0.5 0.5 0.1 0.1", "not in data.yaml names"),
    ],
)
def test_yolo_bad_label_line_fails_naming_file_and_line(
    tmp_path: Path, line: str, fragment: str
) -> None:
    root = yolo_fixture(tmp_path / "yolo")
    (root / "labels" / "valid" / "a.txt").write_text(f"1 0.5 0.5 0.1 0.1\n{line}\n")
    out = tmp_path / "out"
    label = str(root / "labels" / "valid" / "a.txt")
    assert_import_fails(lambda: import_yolo(root, out), out, label, "line 2", fragment)


def test_yolo_bad_inputs_fail(tmp_path: Path) -> None:
    out = tmp_path / "out"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_import_fails(lambda: import_yolo(empty, out), out, "no images found", "empty")
    root = yolo_fixture(tmp_path / "yolo", data_yaml="names: [car, truck]\n")
    assert_import_fails(lambda: import_yolo(root, out), out, "data.yaml", "'person'")
    (root / "data.yaml").write_text("names: [car, person]\n")
    inside = root / "images" / "converted"  # the next import would read its own output
    assert_import_fails(lambda: import_yolo(root, inside), inside, "inside the image folder")
    (root / "images" / "test" / "c.png").write_bytes(b"\x89PNG broken")
    assert_import_fails(lambda: import_yolo(root, out), out, "c.png", "not a decodable image")
    make_image(root / "images" / "test" / "c.png")
    make_image(root / "images" / "loose.png")  # outside the split folders the others use
    assert_import_fails(lambda: import_yolo(root, out), out, "loose.png", "split")


# --- Pascal VOC ------------------------------------------------------------------------------


VocObject = tuple[str, Sequence[Any], int]  # name, (xmin, ymin, xmax, ymax), difficult
DOG: VocObject = ("dog", (1, 1, 5, 5), 0)


def voc_xml(file_name: str, objects: Sequence[VocObject], size: Any = (W, H)) -> str:
    parts = [f"<annotation><folder>VOC</folder><filename>{file_name}</filename>"]
    parts.append(f"<size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>")
    for name, (x1, y1, x2, y2), difficult in objects:
        parts.append(
            f"<object><name>{name}</name><difficult>{difficult}</difficult><bndbox><xmin>{x1}"
            f"</xmin><ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>"
        )
    return "".join(parts) + "</annotation>"


VOC_OBJECTS: dict[str, list[VocObject]] = {
    "000001": [("person", (11, 21, 40, 48), 0), DOG],
    "000002": [("Person", (1, 1, 10, 10), 1), ("person", (50, 30, 70, 60), 0)],
    "000003": [("cat", (2, 2, 9, 9), 0)],
    "000004": [("person", (5, 5, 15, 15), 0)],
}


def voc_fixture(root: Path, splits: dict[str, str] | None = None) -> Path:
    for image_id, objects in VOC_OBJECTS.items():
        make_image(root / "JPEGImages" / f"{image_id}.jpg")
        (root / "Annotations").mkdir(parents=True, exist_ok=True)
        (root / "Annotations" / f"{image_id}.xml").write_text(voc_xml(f"{image_id}.jpg", objects))
    for file_name, text in (splits or {}).items():
        (root / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
        (root / "ImageSets" / "Main" / file_name).write_text(text)
    return root


def test_voc_round_trip_with_difficult_ignores_and_one_based_boxes(tmp_path: Path) -> None:
    splits = {"train.txt": "000001\n000002\n", "val.txt": "000003\n", "test.txt": "000004\n"}
    out = import_voc(voc_fixture(tmp_path / "voc", splits), tmp_path / "out")
    images = by_name(out)
    assert_boxes(images["000001.jpg"].boxes, [(10, 20, 40, 48)])
    assert_boxes(images["000002.jpg"].ignore, [(0, 0, 10, 10)])
    assert_boxes(images["000002.jpg"].boxes, [(49, 29, W, H)])  # clipped to the border
    assert images["000003.jpg"].boxes == ()
    expected = {"train": ["000001.jpg", "000002.jpg"], "val": ["000003.jpg"]}
    assert split_names(out) == {**expected, "test": ["000004.jpg"]}


def test_voc_trainval_and_split_lists_select_images(tmp_path: Path) -> None:
    splits = {"trainval.txt": "000001\n000002\n", "test.txt": "000004\n"}
    out = import_voc(voc_fixture(tmp_path / "voc", splits), tmp_path / "out")
    # 000003 is listed nowhere, so it is not part of the dataset.
    expected = {"train": ["000001.jpg", "000002.jpg"], "val": [], "test": ["000004.jpg"]}
    assert split_names(out) == expected


def test_voc_without_split_lists_imports_everything(tmp_path: Path) -> None:
    out = import_voc(voc_fixture(tmp_path / "voc"), tmp_path / "out")
    assert sorted(by_name(out)) == ["000001.jpg", "000002.jpg", "000003.jpg", "000004.jpg"]


BILLION_LAUGHS = (
    '<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
    '<!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]>'
    "<annotation><filename>&lol2;</filename></annotation>"
)


@pytest.mark.parametrize(
    ("xml", "fragment"),
    [
        (BILLION_LAUGHS, "DOCTYPE"),
        (BILLION_LAUGHS.replace('"1.0"', '"1.0" encoding="UTF-16"').encode("utf-16"), "DOCTYPE"),
        (voc_xml("000002.jpg", [("person", (100, 100, 120, 120), 0)]), "object 1"),
        (voc_xml("000002.jpg", [DOG, ("person", (30, 5, 20, 9), 0)]), "object 2"),
        (voc_xml("000002.jpg", [("person", (1, "abc", 5, 5), 0)]), "must be a number"),
        (voc_xml("000002.jpg", [("person", (1, 1, 5, 5), 2)]), "<difficult>"),
        (voc_xml("000002.jpg", [], size=(W, H + 2)), "64x50"),
        ("<annotation><object>", "malformed XML"),
    ],
)
def test_voc_bad_annotation_fails_naming_the_file(
    tmp_path: Path, xml: str | bytes, fragment: str
) -> None:
    root = voc_fixture(tmp_path / "voc")
    (root / "Annotations" / "000002.xml").write_bytes(
        xml if isinstance(xml, bytes) else xml.encode()
    )
    out = tmp_path / "out"
    assert_import_fails(lambda: import_voc(root, out), out, "000002", fragment)


def test_voc_bad_inputs_fail(tmp_path: Path) -> None:
    out = tmp_path / "out"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_import_fails(lambda: import_voc(empty, out), out, "no images found", "empty")
    root = voc_fixture(tmp_path / "voc", {"train.txt": "000001\n", "test.txt": "000009\n"})
    assert_import_fails(lambda: import_voc(root, out), out, "test.txt: line 1", "000009")
    (root / "ImageSets" / "Main" / "test.txt").write_text("000001\n")
    assert_import_fails(lambda: import_voc(root, out), out, "train.txt: line 1", "test.txt")
    (root / "ImageSets" / "Main" / "test.txt").write_text("000004 extra\n")
    assert_import_fails(lambda: import_voc(root, out), out, "test.txt: line 1", "one image id")
    (root / "ImageSets" / "Main" / "test.txt").write_text("000004\n")
    (root / "JPEGImages" / "000004.jpg").write_bytes(b"\xff\xd8 truncated")
    assert_import_fails(lambda: import_voc(root, out), out, "000004.jpg", "not a decodable")
    (root / "JPEGImages" / "000004.jpg").unlink()
    assert_import_fails(lambda: import_voc(root, out), out, "000004.xml", "image not found")


# --- shared naming ---------------------------------------------------------------------------


def test_plan_file_names_keeps_unique_names_and_disambiguates_the_rest() -> None:
    names = plan_file_names(
        ["a/x.jpg", "b/X.JPG", "y.png", ".hidden.png", "a/b/z.png", "z.png", "a__x.jpg"]
    )
    assert names[2] == "y.png"
    assert names[0] == "a__x.jpg" and names[1] == "b__X.JPG"
    assert names[6] == "a__x_1.jpg"  # collides with a sanitised name chosen before it
    assert not names[3].startswith(".")
    assert names[4] == "a__b__z.png" and names[5] == "z.png"
    assert len({name.lower() for name in names}) == len(names)
