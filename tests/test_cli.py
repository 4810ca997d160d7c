"""The command line: working runs, and one-line errors with nothing half-written."""

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from secmlops.cli import EXIT_USER_ERROR, app

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def assert_one_line_error(result, fragment):
    assert result.exit_code == EXIT_USER_ERROR, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1, result.output
    assert fragment in " ".join(lines), result.output


def test_every_command_has_help():
    for command in ([], ["data"], ["data", "generate"], ["data", "import-mot"], ["train"],
                    ["evaluate"], ["predict"]):  # fmt: skip
        result = run(*command, "--help")
        assert result.exit_code == 0 and "Usage" in result.output


def test_predict_writes_coco_results_in_original_pixels(tiny_model, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.new("RGB", (320, 256), (90, 90, 90)).save(folder / "a.png")
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 80, 3), np.uint8)).save(
        folder / "b.jpg"
    )
    result = run("predict", "--model", tiny_model, "--images", folder, "--out", tmp_path / "p.json")
    assert result.exit_code == 0, result.output
    predictions = json.loads((tmp_path / "p.json").read_text())
    for p in predictions:
        assert set(p) == {"file_name", "category_id", "bbox", "score"}
        assert p["category_id"] == 1 and p["file_name"] in {"a.png", "b.jpg"}
        x, y, w, h = p["bbox"]
        limit = (320, 256) if p["file_name"] == "a.png" else (80, 64)
        assert x >= 0 and y >= 0 and x + w <= limit[0] + 0.01 and y + h <= limit[1] + 0.01


def test_evaluate_prints_and_writes_both_maps(tiny_model, tiny_scenes, tmp_path):
    out = tmp_path / "metrics.json"
    result = run("evaluate", "--model", tiny_model, "--data", tiny_scenes, "--out", out)
    assert result.exit_code == 0, result.output
    assert "mAP@0.5" in result.output and "mAP@[.5:.95]" in result.output
    metrics = json.loads(out.read_text())
    assert 0 <= metrics["mAP50_95"] <= metrics["mAP50"] <= 1 and metrics["split"] == "test"


def test_predict_on_an_empty_folder_fails_cleanly(tiny_model, tmp_path):
    (tmp_path / "empty").mkdir()
    out = tmp_path / "p.json"
    result = run("predict", "--model", tiny_model, "--images", tmp_path / "empty", "--out", out)
    assert_one_line_error(result, "no images found")
    assert not out.exists()


def test_predict_with_an_unreadable_image_writes_nothing(tiny_model, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.new("RGB", (64, 48)).save(folder / "good.png")
    (folder / "z_broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    out = tmp_path / "p.json"
    result = run("predict", "--model", tiny_model, "--images", folder, "--out", out)
    assert_one_line_error(result, "z_broken.jpg: not a decodable image")
    assert not out.exists()


@pytest.mark.parametrize("missing", ["model.json", "model.safetensors"])
def test_evaluate_with_a_broken_model_dir_names_the_file(
    tiny_model, tiny_scenes, tmp_path, missing
):
    import shutil

    broken = tmp_path / "model"
    shutil.copytree(tiny_model, broken)
    (broken / missing).unlink()
    result = run("evaluate", "--model", broken, "--data", tiny_scenes)
    assert_one_line_error(result, f"{missing}: missing")


def test_import_mot_with_missing_video_fails_cleanly(tmp_path):
    gt = tmp_path / "gt.txt"
    gt.write_text("1,1,10,10,20,30,1,-1,-1,-1\n")
    out = tmp_path / "out"
    result = run("data", "import-mot", "--video", tmp_path / "nope.avi", "--gt", gt, "--out", out)
    assert_one_line_error(result, "nope.avi: video file not found")
    assert not out.exists()


def test_generate_refuses_a_non_empty_output(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("precious")
    result = run("data", "generate", "--out", tmp_path / "out", "--images", 3)
    assert_one_line_error(result, "already exists and is not empty")
    assert (tmp_path / "out" / "keep.txt").read_text() == "precious"


def test_train_with_adversarial_augmentation_records_the_defence(tiny_scenes, tmp_path):
    out = tmp_path / "defended"
    result = run("train", "--data", tiny_scenes, "--out", out, "--epochs", "1", "--batch-size",
                 "8", "--adversarial", "fgsm-rs", "--eps", "8/255", "--mix", "1.0")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "fgsm-rs adversarial training" in result.output
    adversarial = json.loads((out / "model.json").read_text())["training"]["adversarial"]
    assert adversarial["method"] == "fgsm-rs" and adversarial["mix"] == 1.0
    assert adversarial["eps"] == pytest.approx(8 / 255)


def test_train_on_crops_records_them_and_refuses_a_crop_that_does_not_fit(tiny_scenes, tmp_path):
    out = tmp_path / "cropped"
    result = run("train", "--data", tiny_scenes, "--out", out, "--epochs", "1", "--batch-size",
                 "8", "--adversarial", "none", "--train-crop", "64x96")  # fmt: skip
    assert result.exit_code == 0, result.output
    training = json.loads((out / "model.json").read_text())["training"]
    assert training["train_crop"] == [64, 96] and training["input_size"] == [128, 160]
    result = run("train", "--data", tiny_scenes, "--out", tmp_path / "m", "--train-crop", "64")
    assert result.exit_code != 0 and "--train-crop must look like 240x320" in result.output
    result = run("train", "--data", tiny_scenes, "--out", tmp_path / "m", "--train-crop", "256x96")
    assert (
        result.exit_code == EXIT_USER_ERROR
        and "does not fit the input size 128x160" in result.output
    )
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [("--adversarial", "trades", "unknown adversarial training"), ("--eps", "big", "eps"),
     ("--mix", "0", "mix")],
)  # fmt: skip
def test_train_refuses_bad_adversarial_settings_before_any_work(
    tiny_scenes, tmp_path, option, value, message
):
    args = ["--adversarial", "pgd", option, value] if option != "--adversarial" else [option, value]
    result = run("train", "--data", tiny_scenes, "--out", tmp_path / "m", *args)
    assert result.exit_code == EXIT_USER_ERROR and message in result.output
    assert not (tmp_path / "m").exists()
