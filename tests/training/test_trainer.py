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


def test_learning_rate_warms_up_then_decays():
    config = TrainConfig(learning_rate=1.0, warmup_steps=10)
    rates = [learning_rate_at(step, 100, config) for step in range(100)]
    assert rates[0] == pytest.approx(0.1) and rates[9] == pytest.approx(1.0)
    assert rates[10] > rates[50] > rates[99] >= 0.01
