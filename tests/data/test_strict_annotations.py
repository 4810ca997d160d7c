"""Every reader of a dataset parses it strictly, validated or not.

`secmlops data validate` and `secmlops train` both refuse NaN, infinite and out-of-range
numbers, with one `error:` line naming the file, the entry and the field. `train` refuses image
paths that leave images/. Each attack has a good twin that passes.
"""

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from secmlops.cli import EXIT_USER_ERROR, app
from secmlops.data.annotations import BadNumber, loads
from secmlops.data.dataset import clip_box, load_dataset
from secmlops.errors import DataError

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def error_line(result) -> str:
    """The one `error:` line of a refused command (progress bars may print other lines)."""
    assert result.exit_code == EXIT_USER_ERROR, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.output
    return errors[0]


@pytest.fixture
def data(tiny_scenes, tmp_path) -> Path:
    copy = tmp_path / "data"
    shutil.copytree(tiny_scenes, copy)
    return copy


def validate(folder: Path, tmp_path: Path):
    return run("data", "validate", folder, "--audit-log", tmp_path / "audit.jsonl")


def train(folder: Path, tmp_path: Path, *options):
    return run("train", "--data", folder, "--out", tmp_path / "model", "--epochs", 1,
               "--batch-size", 8, *options)  # fmt: skip


def write_with_literal(folder: Path, section: str, field: str, literal: str, index: int = 0):
    """Put `literal` (as written in JSON: NaN, 1e400, ...) into one entry's field."""
    path = folder / "annotations.json"
    coco = json.loads(path.read_text())
    entry = coco[section][index]
    if field.startswith("bbox"):
        entry["bbox"][int(field[5])] = "@@"
    else:
        entry[field] = "@@"
    path.write_text(json.dumps(coco).replace('"@@"', literal))
    return entry


@pytest.mark.parametrize(
    ("section", "field", "label", "literal"),
    [("annotations", "bbox[2]", "annotation", v) for v in ("1e400", "NaN", "-Infinity")]
    + [("images", "width", "image", v) for v in ("1e400", "NaN", "1" + "0" * 30)],
)
def test_out_of_range_numbers_are_refused_by_validate_and_by_train(
    data, tmp_path, section, field, label, literal
):
    entry = write_with_literal(data, section, field, literal)
    named = field.split("[")[0]
    for result in (validate(data, tmp_path), train(data, tmp_path)):
        line = error_line(result)
        for fragment in ("annotations.json", f"{label} {entry['id']}", named, literal):
            assert fragment in line, line
    assert not (tmp_path / "model").exists()


def test_a_number_no_entry_check_reads_is_refused_too(data, tmp_path):
    # `area` is not used by training, but a reader that keeps it must not get a NaN.
    entry = write_with_literal(data, "annotations", "area", "NaN")
    for result in (validate(data, tmp_path), train(data, tmp_path)):
        line = error_line(result)
        assert f"annotation {entry['id']} (image {entry['image_id']}): area is NaN" in line


@pytest.mark.parametrize(
    ("field", "literal", "expected"),
    [("bbox[2]", "-5", "has no area"), ("bbox[0]", "5000", "lies outside the 160x128 image")],
)
def test_negative_box_width_and_box_outside_the_image(data, tmp_path, field, literal, expected):
    entry = write_with_literal(data, "annotations", field, literal)
    for result in (validate(data, tmp_path), train(data, tmp_path)):
        line = error_line(result)
        assert f"annotation {entry['id']}" in line and expected in line


def test_good_data_validates_and_trains(data, tmp_path):
    result = validate(data, tmp_path)
    assert result.exit_code == 0 and "valid:" in result.output, result.output
    result = train(data, tmp_path)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "model" / "model.safetensors").is_file()


# ---------------------------------------------------------------- image paths out of images/
def point_first_image_at(folder: Path, file_name: str) -> None:
    path = folder / "annotations.json"
    coco = json.loads(path.read_text())
    coco["images"][0]["file_name"] = file_name
    path.write_text(json.dumps(coco))


def outside_png(where: Path) -> Path:
    Image.new("RGB", (160, 128), "white").save(where)
    return where


@pytest.mark.parametrize("kind", ["absolute", "parent", "nested"])
def test_train_refuses_a_file_name_with_a_folder(data, tmp_path, kind):
    secret = outside_png(data / "secret.png")  # inside the dataset folder, outside images/
    file_name = {"absolute": str(outside_png(tmp_path / "abs.png")), "parent": "../secret.png",
                 "nested": "sub/x.png"}[kind]  # fmt: skip
    (data / "images" / "sub").mkdir()
    shutil.copy(secret, data / "images" / "sub" / "x.png")
    point_first_image_at(data, file_name)
    line = error_line(train(data, tmp_path))
    assert "annotations.json: image 1" in line and "file_name must be an image file name" in line
    assert repr(file_name)[:40] in line  # long values are shown cut
    assert not (tmp_path / "model").exists()


def test_train_refuses_a_symlink_out_of_images(data, tmp_path):
    (data / "images" / "leak.png").symlink_to(outside_png(tmp_path / "private.png"))
    point_first_image_at(data, "leak.png")
    line = error_line(train(data, tmp_path))
    assert "image 1: file_name 'leak.png' is a symbolic link out of" in line
    assert "is a symbolic link" in error_line(validate(data, tmp_path))


def test_train_refuses_an_images_folder_that_is_a_link(data, tmp_path):
    shutil.move(data / "images", tmp_path / "elsewhere")
    (data / "images").symlink_to(tmp_path / "elsewhere")
    line = error_line(train(data, tmp_path))
    assert "images: not a folder of the dataset (missing, or a symbolic link)" in line


def test_a_link_that_stays_inside_images_is_followed(data):
    images = data / "images"
    first = json.loads((data / "annotations.json").read_text())["images"][0]["file_name"]
    (images / first).rename(images / "real.jpg")
    (images / first).symlink_to("real.jpg")
    assert load_dataset(data).images[0].file_name == first


# ------------------------------------------------------------------------- the parser itself
@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"a": 1, "a": 2}', "key 'a' appears twice in one object"),
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
        ('{"images": [{"id": 1, "width": 1e400}]}', "image 1: width is 1e400"),
        ('{"annotations": [{"id": 3, "bbox": [1, 2, NaN, 4]}]}', "annotation 3: bbox[2] is NaN"),
        ('{"info": {"year": Infinity}}', "annotations.json: info.year is Infinity"),
        (f'{{"id": {2**63}}}', f"annotations.json: id is {2**63}"),
    ],
)
def test_strict_json_names_the_problem(text, message):
    with pytest.raises(DataError) as caught:
        loads(text, "annotations.json")
    assert str(caught.value).startswith("annotations.json: ") and message in str(caught.value)


def test_bad_numbers_are_all_listed_and_plain_json_passes():
    with pytest.raises(BadNumber) as caught:
        loads('{"a": [NaN, 1, -Infinity], "b": 1e999}', "x.json")
    assert [n.message for n in caught.value.found] == [
        "a[0] is NaN, not a finite number in range",
        "a[2] is -Infinity, not a finite number in range",
        "b is 1e999, not a finite number in range",
    ]
    assert loads('{"a": [1, 2.5, -3e10, true, null]}', "x.json") == {
        "a": [1, 2.5, -3e10, True, None]
    }


def test_splits_with_hostile_members_are_an_error_not_a_crash(data):
    (data / "splits.json").write_text('{"train": [[1], 2], "val": [], "test": []}')
    with pytest.raises(DataError, match="expected an object of lists of integer image ids"):
        load_dataset(data)


def test_clip_box_refuses_nan_instead_of_keeping_it():
    with pytest.raises(DataError, match="not a finite number"):
        clip_box([float("nan"), 0, 10, 10], 100, 100)
    assert clip_box([-5, 0, 10, 10], 100, 100) == (0.0, 0.0, 10.0, 10.0)
