"""Adversarial-input screening: finite, deterministic, higher on PGD than on clean images."""

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from torch import nn

from secmlops import models
from secmlops.attacks.projected_gradient import AttackConfig, perturb
from secmlops.data.dataset import load_dataset
from secmlops.evaluation.corruptions import corrupt
from secmlops.serving.screening import (
    Screener,
    ScreenerCalibration,
    adversarial_score,
    detect_and_score,
    high_frequency_energy,
    median_smooth,
    render_detections,
)
from secmlops.training.batches import prepare_split

EPS = 4 / 255


class ContractOnly(nn.Module):
    """Hides the detector's type: the screen must fall back to the detections-only path."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.input_size = model.input_size

    def forward(self, images):
        return self.model(images)


@pytest.fixture(scope="module")
def screened_model(tmp_path_factory):
    """A tiny detector trained well enough to be worth attacking (~20 s on one CPU thread)."""
    from secmlops.data.synthetic import generate_scenes
    from secmlops.training.trainer import TrainConfig, train

    root = tmp_path_factory.mktemp("screening")
    data = generate_scenes(root / "data", 64, seed=11, width=160, height=128, workers=1)
    train(data, root / "model", TrainConfig(epochs=30, batch_size=8, warmup_steps=10, seed=1))
    return models.load(root / "model"), load_dataset(data)


@pytest.fixture(scope="module")
def images(screened_model):
    """32 clean images to calibrate on, 32 others and their PGD versions (uint8-rounded)."""
    model, dataset = screened_model
    prepared = prepare_split(dataset, dataset.images, tuple(model.input_size))
    clean = prepared.images.float() / 255
    targets = [
        {"boxes": b, "labels": torch.ones(len(b), dtype=torch.int64), "ignore": ig}
        for b, ig in zip(prepared.boxes[32:], prepared.ignore[32:], strict=True)
    ]
    generator = torch.Generator().manual_seed(0)
    attack = AttackConfig(method="pgd", eps=EPS, steps=10)
    adversarial = perturb(model, clean[32:], targets, attack, generator=generator)
    return clean[:32], clean[32:], (adversarial * 255).round() / 255


def _auc(clean_scores: torch.Tensor, attacked_scores: torch.Tensor) -> float:
    labels = np.r_[np.zeros(len(clean_scores)), np.ones(len(attacked_scores))]
    return roc_auc_score(labels, torch.cat([clean_scores, attacked_scores]).numpy())


def test_median_smooth_is_the_2x2_median():
    x = torch.rand(2, 3, 7, 9, generator=torch.Generator().manual_seed(0))
    padded = np.pad(x.numpy(), ((0, 0), (0, 0), (0, 1), (0, 1)), mode="edge")
    windows = np.stack(
        [padded[..., :-1, :-1], padded[..., :-1, 1:], padded[..., 1:, :-1], padded[..., 1:, 1:]]
    )
    expected = np.median(windows, axis=0)
    np.testing.assert_allclose(median_smooth(x).numpy(), expected, atol=1e-6)
    spike = torch.zeros(1, 1, 5, 5)
    spike[0, 0, 2, 2] = 1.0
    assert float(median_smooth(spike).abs().max()) == 0.0  # a lone pixel is squeezed out


def test_an_eps_perturbation_adds_at_most_4_eps_of_high_frequency_energy():
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 32, 40, generator=generator)
    delta = (torch.rand(x.shape, generator=generator) * 2 - 1) * EPS
    attacked = (x + delta).clamp(0, 1)
    assert bool((high_frequency_energy(attacked) <= high_frequency_energy(x) + 4 * EPS).all())
    flat = torch.full((1, 3, 8, 8), 0.5)
    checkerboard = (torch.arange(8).view(-1, 1) + torch.arange(8)) % 2 * 2 - 1
    worst = high_frequency_energy(flat + EPS * checkerboard.float())
    assert math.isclose(float(worst[0]), 4 * EPS, rel_tol=1e-5)  # the bound is tight


@pytest.mark.parametrize("method", ["uncertainty", "squeeze"])
def test_score_is_finite_deterministic_and_batched(screened_model, images, method):
    model, _ = screened_model
    clean = images[0][:6]
    first = adversarial_score(model, clean, method)
    assert first.shape == (6,) and bool(torch.isfinite(first).all())
    assert torch.equal(first, adversarial_score(model, clean, method))
    as_list = adversarial_score(model, list(clean), method)
    torch.testing.assert_close(as_list, first, rtol=1e-4, atol=1e-6)
    one = adversarial_score(model, clean[2:3], method)
    torch.testing.assert_close(one[0], first[2], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("method", ["uncertainty", "squeeze"])
def test_score_separates_pgd_from_clean(screened_model, images, method):
    model, _ = screened_model
    _, clean, attacked = images
    clean_scores = adversarial_score(model, clean, method)
    attacked_scores = adversarial_score(model, attacked, method)
    assert _auc(clean_scores, attacked_scores) > 0.8


def test_detect_and_score_returns_the_models_own_detections(screened_model, images):
    model, _ = screened_model
    clean = images[1][:4]
    detections, scores = detect_and_score(model, clean)
    with torch.no_grad():
        expected = model(clean)
    for got, want in zip(detections, expected, strict=True):
        torch.testing.assert_close(got["boxes"], want["boxes"])
        torch.testing.assert_close(got["scores"], want["scores"])
    torch.testing.assert_close(scores, adversarial_score(model, clean))


def test_detections_only_path_works_for_any_contract_model(screened_model, images):
    model, _ = screened_model
    generic = ContractOnly(model).eval()
    _, clean, attacked = images
    for method in ("uncertainty", "squeeze"):
        clean_scores = adversarial_score(generic, clean, method)
        attacked_scores = adversarial_score(generic, attacked, method)
        assert bool(torch.isfinite(clean_scores).all())
        assert float(attacked_scores.mean()) > float(clean_scores.mean())


def test_render_detections_puts_each_score_at_its_centre_cell():
    detections = [
        {"boxes": torch.tensor([[0.0, 0.0, 8.0, 8.0], [2.0, 2.0, 6.0, 6.0]]),
         "scores": torch.tensor([0.4, 0.9])},
        {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0)},
    ]  # fmt: skip
    maps = render_detections(detections, [(16, 32), (16, 32)], (4, 8))
    assert maps.shape == (2, 1, 4, 8)
    assert float(maps[0, 0, 1, 1]) == pytest.approx(0.9)  # both centres land there: the max wins
    assert float(maps[0].sum()) == pytest.approx(0.9) and float(maps[1].sum()) == 0.0


@pytest.mark.parametrize("escalation_rate", [0.0, 0.3, 1.0])
def test_screener_flags_attacks_and_few_clean_images(screened_model, images, escalation_rate):
    model, _ = screened_model
    calibration_images, clean, attacked = images
    screener = Screener.calibrate(
        model, calibration_images, false_alarm_rate=0.1, escalation_rate=escalation_rate
    )
    on_calibration = screener(calibration_images)
    assert float(on_calibration.flagged.float().mean()) <= 0.1 + 1e-6
    on_clean, on_attacked = screener(clean), screener(attacked)
    assert _auc(on_clean.score, on_attacked.score) > 0.8
    assert float(on_attacked.flagged.float().mean()) > float(on_clean.flagged.float().mean())
    assert len(on_clean.detections) == len(clean)
    if escalation_rate == 0:
        assert not bool(on_attacked.escalated.any())
    if escalation_rate == 1:
        assert bool(on_calibration.escalated.all())
    # Escalated images are the ones whose free score reached the escalation level, only those.
    u = adversarial_score(model, attacked)
    cal = screener.calibration
    if cal.escalate_at is not None:
        assert torch.equal(on_attacked.escalated, u >= cal.escalate_at)


def test_screener_calls_heavy_noise_degraded_not_adversarial(screened_model, images):
    model, _ = screened_model
    calibration_images, clean, attacked = images
    screener = Screener.calibrate(model, calibration_images, false_alarm_rate=0.1)
    noisy = corrupt("gaussian_noise", clean, 1, torch.Generator().manual_seed(0))
    assert bool(screener(noisy).degraded.all())
    assert not bool(screener(noisy).flagged.any())
    assert not bool(screener(clean).degraded.any())
    assert not bool(screener(attacked).degraded.any())


def test_calibration_round_trips_through_json(screened_model, images):
    model, _ = screened_model
    screener = Screener.calibrate(model, images[0], false_alarm_rate=0.1)
    data = screener.calibration.to_json()
    assert ScreenerCalibration.from_json(data) == screener.calibration
    again = Screener(model, ScreenerCalibration.from_json(data))
    torch.testing.assert_close(again(images[2]).score, screener(images[2]).score)
    with pytest.raises(ValueError, match="unknown"):
        ScreenerCalibration.from_json({**data, "extra": 1})


def test_misuse_is_refused(screened_model, images):
    model, _ = screened_model
    calibration_images = images[0]
    with pytest.raises(ValueError, match="unknown screening method"):
        adversarial_score(model, calibration_images[:2], "magic")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="escalation_rate"):
        Screener.calibrate(model, calibration_images, false_alarm_rate=0.1, escalation_rate=0.05)
    with pytest.raises(ValueError, match="cannot resolve"):
        Screener.calibrate(model, calibration_images[:5], false_alarm_rate=0.1)
    model.train()
    try:
        with pytest.raises(ValueError, match="eval mode"):
            adversarial_score(model, calibration_images[:2])
    finally:
        model.eval()
