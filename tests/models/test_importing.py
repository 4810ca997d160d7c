"""Importing external weights: scanned, loaded weights-only, saved as safetensors, never run."""

import hashlib
import json
import os

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from secmlops import models
from secmlops.cli import EXIT_USER_ERROR, app
from secmlops.errors import IntegrityError, ModelError
from secmlops.models.importing import import_weights
from secmlops.supplychain.pickle_scan import UnsafePickle

SIZE = (64, 64)
CONFIG = {"score_threshold": 0.0}  # every candidate box is kept, so predictions are compared fully


class Payload:
    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


@pytest.fixture(scope="module")
def original():
    """The compact detector with non-default BatchNorm statistics (buffers must travel too)."""
    torch.manual_seed(0)
    model = models.build("compact_centernet", input_size=SIZE, **CONFIG)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
                module.num_batches_tracked.fill_(7)
    return model.eval()


def predictions(model):
    images = [torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    with torch.no_grad():
        return model.eval()(images)


def assert_same_predictions(a, b):
    for pa, pb in zip(predictions(a), predictions(b), strict=True):
        assert len(pa["boxes"]) > 0
        for key in ("boxes", "scores", "labels"):
            assert torch.equal(pa[key], pb[key]), key


def no_partial_dirs(parent):
    return not [p for p in parent.iterdir() if p.name.startswith(".")]


def test_torch_save_state_dict_converts_to_an_identical_model(original, tmp_path):
    source = tmp_path / "external.pt"
    torch.save(original.state_dict(), source)
    out = tmp_path / "imported"
    card = import_weights(source, "compact_centernet", out, config=CONFIG, input_size=SIZE)
    assert card.training["imported_from"] == "external.pt"
    assert card.training["source_sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
    assert card.training["scan"] == "clean" and card.training["format"] == "torch-zip"
    assert card.input_size == SIZE
    assert sorted(p.name for p in out.iterdir()) == ["model.json", "model.safetensors"]
    assert json.loads((out / "model.json").read_text())["training"]["scan"] == "clean"
    assert no_partial_dirs(tmp_path)
    assert_same_predictions(original, models.load(out))


@pytest.mark.parametrize("key", ["state_dict", "model"])
def test_checkpoint_dict_converts(original, tmp_path, key):
    source = tmp_path / "checkpoint.pth"
    torch.save({key: original.state_dict(), "epoch": 3, "optimizer_lr": 0.01}, source)
    import_weights(source, "compact_centernet", tmp_path / "m", config=CONFIG, input_size=SIZE)
    assert_same_predictions(original, models.load(tmp_path / "m"))


def test_legacy_format_and_safetensors_convert(original, tmp_path):
    legacy = tmp_path / "old.pt"
    torch.save(original.state_dict(), legacy, _use_new_zipfile_serialization=False)
    card = import_weights(
        legacy, "compact_centernet", tmp_path / "a", config=CONFIG, input_size=SIZE
    )
    assert card.training["format"] == "torch-legacy"
    assert_same_predictions(original, models.load(tmp_path / "a"))
    tensors = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in original.state_dict().items()}, tensors)
    card = import_weights(
        tensors, "compact_centernet", tmp_path / "b", config=CONFIG, input_size=SIZE
    )
    assert card.training["format"] == "safetensors"
    assert_same_predictions(original, models.load(tmp_path / "b"))


def test_malicious_checkpoint_is_refused_and_nothing_is_written(original, tmp_path):
    marker = tmp_path / "pwned"
    source = tmp_path / "evil.pt"
    payload = Payload(os.system, f"touch {marker}")
    torch.save({"state_dict": original.state_dict(), "hook": payload}, source)
    out = tmp_path / "out"
    with pytest.raises(UnsafePickle, match=r"posix\.system \(os\.system\)"):
        import_weights(source, "compact_centernet", out, input_size=SIZE)
    assert not marker.exists() and not out.exists() and no_partial_dirs(tmp_path)


def test_unknown_extension_and_unreadable_files_are_refused(tmp_path):
    weird = tmp_path / "weights.txt"
    weird.write_bytes(b"whatever")
    with pytest.raises(ModelError, match=r"unknown weights format '\.txt'"):
        import_weights(weird, "compact_centernet", tmp_path / "out")
    with pytest.raises(ModelError, match="cannot read weights"):
        import_weights(tmp_path / "absent.pt", "compact_centernet", tmp_path / "out")
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x00" * 16)
    with pytest.raises(ModelError, match="not a readable safetensors file"):
        import_weights(broken, "compact_centernet", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_safe_pickle_that_is_not_a_state_dict_is_refused(tmp_path):
    source = tmp_path / "list.pt"
    torch.save([1, 2, 3], source)
    with pytest.raises(ModelError, match="holds a list, not a state dict"):
        import_weights(source, "compact_centernet", tmp_path / "out")
    torch.save({"epoch": 3}, source)
    with pytest.raises(ModelError, match=r"no state dict found .*epoch"):
        import_weights(source, "compact_centernet", tmp_path / "out")


def test_mismatched_architecture_names_the_keys(original, tmp_path):
    state = dict(original.state_dict())
    first = next(iter(state))
    state["head.extra.weight"] = state.pop(first)
    source = tmp_path / "renamed.pt"
    torch.save(state, source)
    with pytest.raises(ModelError) as info:
        import_weights(source, "compact_centernet", tmp_path / "out", input_size=SIZE)
    message = str(info.value)
    assert f"missing keys [{first}] (1)" in message
    assert "unexpected keys [head.extra.weight] (1)" in message
    narrow = models.build("compact_centernet", input_size=SIZE, widths=(16, 32, 64, 96))
    torch.save(narrow.state_dict(), source)
    with pytest.raises(ModelError, match=r"shape mismatches .*!="):
        import_weights(source, "compact_centernet", tmp_path / "out", input_size=SIZE)
    with pytest.raises(ModelError, match="unknown architecture"):
        import_weights(source, "no_such_net", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_existing_output_is_kept_unless_overwrite(original, tmp_path):
    source = tmp_path / "w.pt"
    torch.save(original.state_dict(), source)
    out = tmp_path / "m"
    import_weights(source, "compact_centernet", out, config=CONFIG, input_size=SIZE)
    with pytest.raises(ModelError, match="already exists"):
        import_weights(source, "compact_centernet", out, config=CONFIG, input_size=SIZE)
    import_weights(source, "compact_centernet", out, config=CONFIG, input_size=SIZE, overwrite=True)
    assert_same_predictions(original, models.load(out))


def test_model_directory_with_a_pickle_in_place_of_safetensors_is_refused(original, tmp_path):
    out = tmp_path / "m"
    models.save(original, out)
    marker = tmp_path / "pwned"
    weights = out / "model.safetensors"
    torch.save({"hook": Payload(os.system, f"touch {marker}")}, weights)
    with pytest.raises((ModelError, IntegrityError), match="SHA-256 does not match"):
        models.load(out)
    # Even with the card's digest forged to match, the pickle is never unpickled.
    card = json.loads((out / "model.json").read_text())
    card["weights_sha256"] = hashlib.sha256(weights.read_bytes()).hexdigest()
    (out / "model.json").write_text(json.dumps(card))
    with pytest.raises((ModelError, IntegrityError), match="a pickle, not safetensors"):
        models.load(out)
    assert not marker.exists()


runner = CliRunner()


def test_cli_imports_clean_weights_and_refuses_malicious_ones(original, tmp_path):
    clean = tmp_path / "clean.pt"
    torch.save(original.state_dict(), clean)
    out = tmp_path / "m"
    args = ["model", "import", "--architecture", "compact_centernet", "--input-size", "64x64"]
    result = runner.invoke(app, [*args, "--weights", str(clean), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "scan: clean" in result.output and (out / "model.json").is_file()

    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"w": torch.ones(1), "x": Payload(os.system, f"touch {marker}")}, evil)
    result = runner.invoke(app, [*args, "--weights", str(evil), "--out", str(tmp_path / "e")])
    assert result.exit_code == EXIT_USER_ERROR, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "unsafe pickle" in errors[0] and "os.system" in errors[0]
    assert not marker.exists() and not (tmp_path / "e").exists()

    result = runner.invoke(app, [*args[:4], "--input-size", "64", "--weights", str(clean),
                                 "--out", str(tmp_path / "f")])  # fmt: skip
    assert result.exit_code == EXIT_USER_ERROR and "--input-size" in result.output
    assert runner.invoke(app, ["model", "--help"]).exit_code == 0
