"""Training: loss falls, resuming is exact, and bad requests are refused."""

import json

import pytest
import torch
from safetensors.torch import load_file

from secmlops import models
from secmlops.data.dataset import write_dataset
from secmlops.errors import DataError, ModelError
from secmlops.training.trainer import (
    TrainConfig,
    choose_epochs,
    choose_input_size,
    choose_train_crop,
    learning_rate_at,
    train,
)

FAST = {"batch_size": 8, "warmup_steps": 4, "seed": 3}


class Interrupt(Exception):
    pass


def test_short_training_run_lowers_the_loss_and_writes_a_model(tiny_scenes, tmp_path):
    result = train(tiny_scenes, tmp_path / "m", TrainConfig(epochs=4, **FAST))
    losses = [epoch["loss"] for epoch in result.history]
    assert losses[-1] < 0.7 * losses[0], losses
    card = models.read_card(tmp_path / "m")
    assert card.training["epochs"] == 4 and card.training["input_size"] == [128, 160]
    assert "mAP50" in card.metrics["val"]
    assert 1 <= result.best_epoch <= 4
    point = card.operating_point
    assert point is not None and point.chosen_by == "fppi" and point.split == "val"
    assert point.target_fppi == 0.1 and 0 <= point.score_threshold <= 1
    assert point.metrics["fppi"] <= 0.1 and set(point.metrics) == {
        "recall",
        "precision",
        "fppi",
        "mr2",
    }
    loaded = models.load(tmp_path / "m")
    with torch.no_grad():
        assert len(loaded([torch.rand(3, 128, 160)])) == 1


def test_resumed_run_matches_the_uninterrupted_one(tiny_scenes, tmp_path):
    config = TrainConfig(epochs=2, **FAST)
    train(tiny_scenes, tmp_path / "straight", config)

    def stop_after_first_epoch(summary):
        raise Interrupt

    with pytest.raises(Interrupt):
        train(tiny_scenes, tmp_path / "resumed", config, on_epoch=stop_after_first_epoch)
    assert not (tmp_path / "resumed" / "model.json").exists()
    state = json.loads((tmp_path / "resumed" / "checkpoints" / "state.json").read_text())
    assert state["epoch"] == 1
    train(tiny_scenes, tmp_path / "resumed", TrainConfig(), resume=True)
    straight = load_file(str(tmp_path / "straight" / "checkpoints" / "state.safetensors"))
    resumed = load_file(str(tmp_path / "resumed" / "checkpoints" / "state.safetensors"))
    assert straight.keys() == resumed.keys()
    for key in straight:
        if key.startswith(("model.", "optimizer.")):
            torch.testing.assert_close(resumed[key], straight[key], rtol=1e-5, atol=1e-6)


def test_ema_weights_are_released_and_a_resumed_run_replays_them(tiny_scenes, tmp_path):
    """With an EMA the released weights are the average, not the last step's, and the average
    is part of the checkpoint: a resumed run ends on the same one."""
    config = TrainConfig(epochs=2, ema_decay=0.99, **FAST)
    train(tiny_scenes, tmp_path / "straight", config)
    with pytest.raises(Interrupt):
        train(tiny_scenes, tmp_path / "resumed", config, on_epoch=lambda _: _interrupt())
    train(tiny_scenes, tmp_path / "resumed", TrainConfig(), resume=True)
    straight = load_file(str(tmp_path / "straight" / "checkpoints" / "state.safetensors"))
    resumed = load_file(str(tmp_path / "resumed" / "checkpoints" / "state.safetensors"))
    averaged = {k for k in straight if k.startswith("ema.")}
    assert averaged and averaged == {k for k in resumed if k.startswith("ema.")}
    for key in averaged:
        torch.testing.assert_close(resumed[key], straight[key], rtol=1e-5, atol=1e-6)
    released = load_file(str(tmp_path / "straight" / "model.safetensors"))
    best = load_file(str(tmp_path / "straight" / "checkpoints" / "best.safetensors"))
    last_step = {k[6:]: v for k, v in straight.items() if k.startswith("model.")}
    weight = "head.1.weight"
    torch.testing.assert_close(released[weight], best[weight])
    assert not torch.allclose(released[weight], last_step[weight])  # the average, not the last


def test_ema_decay_ramps_up_and_bad_decays_are_refused(tiny_scenes, tmp_path):
    from secmlops.training.trainer import ema_decay_at, update_ema

    assert ema_decay_at(0, 0.999) == pytest.approx(0.1)
    assert ema_decay_at(90, 0.999) == pytest.approx(0.91)
    assert ema_decay_at(10**6, 0.999) == 0.999
    ema, model = torch.nn.BatchNorm1d(2), torch.nn.BatchNorm1d(2)
    with torch.no_grad():
        model.weight.fill_(3.0)
    model.num_batches_tracked.fill_(7)
    update_ema(ema, model, 0.75)
    assert torch.allclose(ema.weight, torch.full((2,), 1.5))  # 0.75 * 1 + 0.25 * 3
    assert int(ema.num_batches_tracked) == 7  # counters are copied, not averaged
    with pytest.raises(ModelError, match="EMA decay"):
        train(tiny_scenes, tmp_path / "m", TrainConfig(epochs=1, ema_decay=1.0, **FAST))


def test_crop_training_steps_on_windows_and_releases_a_whole_image_model(
    tiny_scenes, tmp_path, monkeypatch
):
    """Training on crops: every step sees crop-sized images (what it costs), the released model
    detects on whole images at the full input size, and a resumed run replays it exactly."""
    shapes: list[tuple[int, ...]] = []
    original = models.CompactCenterNet.forward

    def recording_forward(self, images, targets=None):
        if self.training:
            shapes.append(tuple(images.shape))
        return original(self, images, targets)

    config = TrainConfig(epochs=2, train_crop=(64, 96), **FAST)
    with monkeypatch.context() as patched:
        patched.setattr(models.CompactCenterNet, "forward", recording_forward)
        train(tiny_scenes, tmp_path / "straight", config)
    assert shapes and {s[-2:] for s in shapes} == {(64, 96)}
    card = models.read_card(tmp_path / "straight")
    assert card.input_size == (128, 160) and card.training["train_crop"] == [64, 96]
    with pytest.raises(Interrupt):
        train(tiny_scenes, tmp_path / "resumed", config, on_epoch=lambda _: _interrupt())
    train(tiny_scenes, tmp_path / "resumed", TrainConfig(), resume=True)
    straight = load_file(str(tmp_path / "straight" / "checkpoints" / "state.safetensors"))
    resumed = load_file(str(tmp_path / "resumed" / "checkpoints" / "state.safetensors"))
    for key in straight:
        if key.startswith("model."):
            torch.testing.assert_close(resumed[key], straight[key], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("crop", "message"),
    [
        ((60, 96), "multiples of 16"),
        ((144, 96), "does not fit the input size 128x160"),
        ((16, 32), "at least 32x32"),
    ],
)
def test_bad_training_crops_are_refused_before_any_work(tiny_scenes, tmp_path, crop, message):
    with pytest.raises(ModelError, match=message):
        train(tiny_scenes, tmp_path / "m", TrainConfig(epochs=1, train_crop=crop, **FAST))


def test_crops_are_refused_for_detectors_that_resize_their_inputs(tiny_scenes, tmp_path):
    config = TrainConfig(architecture="ssdlite320", epochs=1, train_crop=(64, 96), **FAST)
    with pytest.raises(ModelError, match="crop training needs compact_centernet"):
        train(tiny_scenes, tmp_path / "m", config)


def _interrupt() -> None:
    raise Interrupt


def test_existing_model_is_not_overwritten_by_accident(tiny_model, tiny_scenes):
    before = (tiny_model / "model.safetensors").read_bytes()
    with pytest.raises(ModelError, match="already holds a model"):
        train(tiny_scenes, tiny_model, TrainConfig(epochs=1, **FAST))
    assert (tiny_model / "model.safetensors").read_bytes() == before


def test_resume_without_checkpoint_is_refused(tiny_scenes, tmp_path):
    with pytest.raises(ModelError, match="no checkpoint to resume from"):
        train(tiny_scenes, tmp_path / "fresh", TrainConfig(epochs=1, **FAST), resume=True)


def test_training_on_data_without_people_is_refused(tmp_path):
    import numpy as np

    with write_dataset(tmp_path / "empty") as writer:
        for i in range(4):
            writer.add(f"{i}.png", 64, 48, image=np.zeros((48, 64, 3), np.uint8))
        writer.splits = {"train": [1, 2, 3], "val": [4], "test": []}
    with pytest.raises(DataError, match="no annotated person"):
        train(tmp_path / "empty", tmp_path / "m", TrainConfig(epochs=1, **FAST))
    assert not (tmp_path / "m" / "model.json").exists()


def test_unknown_architecture_is_refused_before_any_work(tiny_scenes, tmp_path):
    with pytest.raises(ModelError, match="unknown architecture"):
        train(tiny_scenes, tmp_path / "m", TrainConfig(architecture="nope"))


def test_defaults_follow_the_data(tiny_scenes):
    from secmlops.data.dataset import load_dataset

    assert choose_input_size(load_dataset(tiny_scenes)) == (128, 160)
    assert choose_epochs(800, 16) == 12  # 50 steps an epoch -> 600 steps
    assert choose_epochs(10_000, 16) == 8  # at least a few passes over big data
    assert choose_epochs(16, 16) == 60  # and a bounded number over tiny data
    # Inputs up to 384 train on whole images; larger ones (PETS at 432x576 or 576x768) on crops.
    assert choose_train_crop((240, 320)) == (240, 320)
    assert choose_train_crop((432, 576)) == (288, 384)
    assert choose_train_crop((576, 768)) == (288, 384)


def test_learning_rate_warms_up_then_decays():
    config = TrainConfig(learning_rate=1.0, warmup_steps=10)
    rates = [learning_rate_at(step, 100, config) for step in range(100)]
    assert rates[0] == pytest.approx(0.1) and rates[9] == pytest.approx(1.0)
    assert rates[10] > rates[50] > rates[99] >= 0.01


def test_adversarial_training_records_its_defence_and_resumes_exactly(tiny_scenes, tmp_path):
    from secmlops.attacks.projected_gradient import AttackConfig
    from secmlops.training.defences import AdversarialConfig

    adversarial = AdversarialConfig(
        attack=AttackConfig(method="pgd", eps=4 / 255, steps=2), mix=0.5, eps_warmup_epochs=1
    )
    config = TrainConfig(epochs=2, adversarial=adversarial, **FAST)
    train(tiny_scenes, tmp_path / "straight", config)
    card = models.read_card(tmp_path / "straight")
    assert card.training["adversarial"] == {
        "method": "pgd",
        "eps": pytest.approx(4 / 255),
        "steps": 2,
        "norm": "inf",
        "step_size": pytest.approx(2.5 * 4 / 255 / 2),
        "random_start": True,
        "objective": "loss",
        "schedule": "fixed",
        "mix": 0.5,
        "eps_warmup_epochs": 1,
        "objectives": ["loss"],
    }

    def stop_after_first_epoch(summary):
        raise Interrupt

    with pytest.raises(Interrupt):
        train(tiny_scenes, tmp_path / "resumed", config, on_epoch=stop_after_first_epoch)
    # The resumed run takes its adversarial settings from the checkpoint, not from the caller.
    train(tiny_scenes, tmp_path / "resumed", TrainConfig(), resume=True)
    assert models.read_card(tmp_path / "resumed").training["adversarial"]["steps"] == 2
    straight = load_file(str(tmp_path / "straight" / "checkpoints" / "state.safetensors"))
    resumed = load_file(str(tmp_path / "resumed" / "checkpoints" / "state.safetensors"))
    for key in straight:
        if key.startswith(("model.", "optimizer.")):
            torch.testing.assert_close(resumed[key], straight[key], rtol=1e-5, atol=1e-6)


def test_adversarial_batches_differ_from_clean_training(tiny_scenes, tmp_path):
    from secmlops.attacks.projected_gradient import fgsm_rs
    from secmlops.training.defences import AdversarialConfig

    clean = train(tiny_scenes, tmp_path / "clean", TrainConfig(epochs=1, **FAST))
    defended = train(
        tiny_scenes,
        tmp_path / "fgsm",
        TrainConfig(epochs=1, adversarial=AdversarialConfig(fgsm_rs(8 / 255), mix=1.0), **FAST),
    )
    # Same seed, same augmentation: only the adversarial examples can move the loss.
    assert defended.history[0]["loss"] != pytest.approx(clean.history[0]["loss"], rel=1e-3)
    assert models.read_card(tmp_path / "clean").training["adversarial"] is None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"mix": 0.0}, "mix"), ({"mix": 1.5}, "mix"), ({"eps_warmup_epochs": -1}, "warm-up")],
)
def test_invalid_adversarial_settings_are_refused(kwargs, message):
    from secmlops.attacks.projected_gradient import AttackConfig
    from secmlops.training.defences import AdversarialConfig

    with pytest.raises(ModelError, match=message):
        AdversarialConfig(attack=AttackConfig(), **kwargs)


def test_eps_warms_up_linearly_over_the_first_epochs():
    from secmlops.attacks.projected_gradient import AttackConfig
    from secmlops.training.defences import AdversarialConfig

    adversarial = AdversarialConfig(attack=AttackConfig(), eps_warmup_epochs=2)
    assert adversarial.eps_fraction(0, steps_per_epoch=10) == pytest.approx(0.05)
    assert adversarial.eps_fraction(9, steps_per_epoch=10) == pytest.approx(0.5)
    assert adversarial.eps_fraction(19, steps_per_epoch=10) == 1.0
    assert adversarial.eps_fraction(500, steps_per_epoch=10) == 1.0
    no_warmup = AdversarialConfig(attack=AttackConfig(), eps_warmup_epochs=0)
    assert no_warmup.eps_fraction(0, steps_per_epoch=10) == 1.0


def test_adversarial_training_is_chosen_by_name():
    from secmlops.training.defences import adversarial_config

    assert adversarial_config("none", "4/255", 3, 0.5) is None
    pgd = adversarial_config("pgd", "4/255", 3, 0.5)
    assert (pgd.attack.method, pgd.attack.steps, pgd.mix) == ("pgd", 3, 0.5)
    assert pgd.attack.eps == pytest.approx(4 / 255)
    fgsm = adversarial_config("fgsm-rs", 0.03, 7, 1.0)
    assert (fgsm.attack.method, fgsm.attack.steps) == ("fgsm-rs", 1)
    with pytest.raises(ModelError, match="unknown adversarial training 'trades'"):
        adversarial_config("trades", "4/255", 3, 0.5)
    with pytest.raises(ModelError, match="eps"):
        adversarial_config("pgd", "lots", 3, 0.5)


def test_the_operating_point_follows_the_target_false_alarm_rate(tiny_model, tiny_scenes):
    """A looser false-alarm budget can only lower the threshold and raise recall; the chosen
    threshold is the one the validation split gives at that budget."""
    from secmlops.data.dataset import load_dataset
    from secmlops.training.batches import prepare_split
    from secmlops.training.trainer import choose_operating_point

    model = models.load(tiny_model)
    dataset = load_dataset(tiny_scenes)
    val = prepare_split(dataset, dataset.split("val"), tuple(model.input_size))
    strict = choose_operating_point(model, val, 0.1)
    loose = choose_operating_point(model, val, 2.0)
    assert strict == models.read_card(tiny_model).operating_point
    assert loose.score_threshold <= strict.score_threshold
    assert loose.metrics["recall"] >= strict.metrics["recall"]
    assert strict.metrics["fppi"] <= 0.1 and loose.metrics["fppi"] <= 2.0
    fixed = choose_operating_point(model, None, 0.1)
    assert fixed.chosen_by == "fixed" and fixed.score_threshold == 0.3
