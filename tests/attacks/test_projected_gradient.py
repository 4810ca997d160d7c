"""On-device PGD / FGSM-RS: budgets hold, the loss rises beyond what noise does, no side effects."""

import pytest
import torch

from secmlops import models
from secmlops.attacks.budget import parse_eps
from secmlops.attacks.projected_gradient import (
    AttackConfig,
    apgd_checkpoints,
    attack_loss,
    fgsm_rs,
    fold_batch_norm,
    loss_mode,
    perturb,
)
from secmlops.data.dataset import load_dataset
from secmlops.errors import ModelError
from secmlops.training.batches import prepare_split


@pytest.fixture(scope="module")
def batch(tiny_model, tiny_scenes):
    """A trained tiny detector and 8 of its scenes with their true boxes, at its input size."""
    model = models.load(tiny_model)
    dataset = load_dataset(tiny_scenes)
    prepared = prepare_split(dataset, dataset.images[:8], tuple(model.input_size))
    images = prepared.images.float() / 255
    targets = [
        {"boxes": b, "labels": torch.ones(len(b), dtype=torch.int64), "ignore": ig}
        for b, ig in zip(prepared.boxes, prepared.ignore, strict=True)
    ]
    return model, images, targets


def _loss(model, images, targets) -> float:
    with loss_mode(model), torch.no_grad():
        return float(attack_loss(model, images, targets))


@pytest.mark.parametrize(
    "config",
    [
        AttackConfig(method="pgd", eps=4 / 255, steps=5),
        AttackConfig(method="pgd", eps=0.5, steps=5, norm="2"),
        fgsm_rs(4 / 255),
    ],
    ids=["pgd-linf", "pgd-l2", "fgsm-rs"],
)
def test_attack_stays_in_budget_and_raises_the_loss_more_than_noise(batch, config):
    model, images, targets = batch
    torch.manual_seed(0)
    adversarial = perturb(model, images, targets, config)
    delta = adversarial - images
    if config.norm == "inf":
        assert float(delta.abs().max()) <= config.eps + 1e-6
        noise = (torch.rand_like(images) * 2 - 1).sign() * config.eps
    else:
        assert float(delta.flatten(1).norm(dim=1).max()) <= config.eps + 1e-4
        noise = torch.randn_like(images)
        noise = noise / noise.flatten(1).norm(dim=1).view(-1, 1, 1, 1) * config.eps
    assert adversarial.min() >= 0 and adversarial.max() <= 1
    clean_loss = _loss(model, images, targets)
    noisy_loss = _loss(model, (images + noise).clamp(0, 1), targets)
    attacked_loss = _loss(model, adversarial, targets)
    # A real gradient attack beats a random perturbation of the same size by a wide margin.
    assert attacked_loss > clean_loss + 3 * abs(noisy_loss - clean_loss), (
        clean_loss,
        noisy_loss,
        attacked_loss,
    )


def test_more_steps_make_a_stronger_attack(batch):
    model, images, targets = batch
    one = perturb(model, images, targets, AttackConfig(eps=2 / 255, steps=1, random_start=False))
    ten = perturb(model, images, targets, AttackConfig(eps=2 / 255, steps=10, random_start=False))
    assert _loss(model, ten, targets) > _loss(model, one, targets)


def test_attack_leaves_the_model_as_it_found_it(batch):
    model, images, targets = batch
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    perturb(model, images, targets, AttackConfig(eps=4 / 255, steps=2))
    assert model.training
    assert all(p.requires_grad for p in model.parameters())
    assert all(p.grad is None for p in model.parameters())
    for key, value in model.state_dict().items():  # batch-norm running statistics included
        torch.testing.assert_close(value, before[key], rtol=0, atol=0)
    model.eval()


def test_folded_copy_computes_the_same_losses_with_fewer_layers(batch):
    model, images, targets = batch
    folded = fold_batch_norm(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # original untouched
    with loss_mode(model), torch.no_grad():
        expected = model(images, targets)
    with loss_mode(folded), torch.no_grad():
        got = folded(images, targets)
    for key, value in expected.items():
        torch.testing.assert_close(got[key], value, rtol=1e-4, atol=1e-5)


def test_random_start_is_reproducible_with_a_generator(batch):
    model, images, targets = batch
    config = fgsm_rs(4 / 255)
    first = perturb(model, images, targets, config, generator=torch.Generator().manual_seed(5))
    again = perturb(model, images, targets, config, generator=torch.Generator().manual_seed(5))
    other = perturb(model, images, targets, config, generator=torch.Generator().manual_seed(6))
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    assert not torch.equal(first, other)


def test_mixed_precision_path_still_finds_the_gradient(batch):
    # On the CPU autocast runs bfloat16: coarser than CUDA's float16, so a harder test of the
    # loss scaling that keeps small input gradients from vanishing.
    model, images, targets = batch
    config = AttackConfig(eps=4 / 255, steps=3, random_start=False)
    adversarial = perturb(model, images, targets, config, amp=True)
    assert float((adversarial - images).abs().max()) <= config.eps + 1e-6
    assert _loss(model, adversarial, targets) > _loss(model, images, targets)


def test_empty_batch_and_wrong_shapes(batch):
    model, images, targets = batch
    assert perturb(model, images[:0], [], AttackConfig()).shape[0] == 0
    with pytest.raises(ModelError, match=r"\[B,3,H,W\]"):
        perturb(model, images[0], targets[:1], AttackConfig())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"method": "cw"}, "unknown attack"),
        ({"norm": "1"}, "unknown norm"),
        ({"eps": 0.0}, "positive"),
        ({"eps": float("nan")}, "positive"),
        ({"eps": 4.0}, "pixel units"),
        ({"steps": 0}, "at least 1"),
        ({"method": "fgsm-rs", "steps": 3}, "exactly one step"),
        ({"method": "fgsm-rs", "steps": 1, "random_start": False}, "random start"),
        ({"objective": "confuse"}, "unknown attack objective"),
        ({"schedule": "cosine"}, "unknown step schedule"),
        ({"schedule": "apgd", "step_size": 0.01}, "sets its own step sizes"),
        ({"schedule": "apgd", "method": "fgsm-rs", "steps": 1}, "APGD schedule is for PGD"),
    ],
)
def test_invalid_settings_are_refused(kwargs, message):
    with pytest.raises(ModelError, match=message):
        AttackConfig(**kwargs)


def test_step_sizes_follow_the_papers():
    assert AttackConfig(eps=0.04, steps=10).alpha == pytest.approx(0.01)  # Madry: 2.5 eps / K
    assert fgsm_rs(0.04).alpha == pytest.approx(0.05)  # Wong: 1.25 eps
    assert AttackConfig(eps=0.04, steps=10).scaled(0.5).eps == pytest.approx(0.02)


@pytest.mark.parametrize(
    ("text", "value"), [("4/255", 4 / 255), ("0.0157", 0.0157), (" 8 / 255 ", 8 / 255), (0.5, 0.5)]
)
def test_eps_is_read_as_a_fraction_or_a_number(text, value):
    assert parse_eps(text) == pytest.approx(value)


@pytest.mark.parametrize("text", ["four", "4/0", "-1", "0", "nan"])
def test_unreadable_eps_is_refused(text):
    with pytest.raises(ModelError, match="eps"):
        parse_eps(text)


# ------------------------------------------------------------------ score-level objectives
def _people_found(model, images, threshold: float = 0.3) -> int:
    model.eval()
    with torch.no_grad():
        return sum(int((out["scores"] >= threshold).sum()) for out in model(images))


@pytest.fixture(scope="module")
def finder(small_model, small_scenes):
    """A detector that finds people (the tiny one barely does), and 16 of its scenes."""
    model = models.load(small_model)
    dataset = load_dataset(small_scenes)
    prepared = prepare_split(dataset, dataset.images[:16], tuple(model.input_size))
    targets = [
        {"boxes": b, "labels": torch.ones(len(b), dtype=torch.int64), "ignore": ig}
        for b, ig in zip(prepared.boxes, prepared.ignore, strict=True)
    ]
    return model, prepared.images.float() / 255, targets


@pytest.mark.parametrize("schedule", ["fixed", "apgd"])
def test_vanishing_hides_people_that_noise_leaves(finder, schedule, one_thread):
    """TOG-vanishing needs no labels and leaves almost nobody; noise of the same budget does not."""
    model, images, targets = finder
    clean = _people_found(model, images)
    assert clean >= 20
    config = AttackConfig(eps=8 / 255, steps=10, objective="vanishing", schedule=schedule)
    no_labels = [{"boxes": torch.zeros(0, 4)} for _ in targets]  # the attacker has none
    vanished = perturb(model, images, no_labels, config, generator=torch.Generator().manual_seed(0))
    assert float((vanished - images).abs().max()) <= 8 / 255 + 1e-6
    noise = (images + (torch.rand_like(images) * 2 - 1).sign() * 8 / 255).clamp(0, 1)
    assert _people_found(model, vanished) <= clean // 10
    assert _people_found(model, noise) >= clean // 2


def test_fabrication_raises_objectness_everywhere(finder, one_thread):
    model, images, targets = finder
    config = AttackConfig(eps=8 / 255, steps=5, objective="fabrication")
    fabricated = perturb(model, images, targets, config, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = float(models.objectness_logits(model, images).sigmoid().mean())
        after = float(models.objectness_logits(model, fabricated).sigmoid().mean())
    assert after > 2 * before  # 0.047 -> 0.142 here
    assert _people_found(model, fabricated) > 2 * _people_found(model, images)


def test_apgd_stays_in_budget_and_is_no_weaker_than_fixed_steps(finder, one_thread):
    """APGD keeps the best point per image, so its objective is at least the start's, and with
    20 steps it matches fixed-step PGD (Croce and Hein's claim, checked here).

    Measured on this model (objective sums, APGD / fixed): 1.000 at 2/255 and 1.009 at 4/255
    with 20 steps; with 10 steps APGD came out 2% (2/255) and 9% (4/255) weaker on one machine
    and within 2% on another, so 10 steps is not where the claim is checked. The gate's worst
    case also holds ART's fixed-step PGD, so it never rests on APGD alone."""
    from secmlops.attacks.objectness import vanishing_objective

    model, images, targets = finder
    fixed = AttackConfig(eps=2 / 255, steps=20, objective="vanishing", random_start=False)
    apgd = AttackConfig(
        eps=2 / 255, steps=20, objective="vanishing", random_start=False, schedule="apgd"
    )
    with loss_mode(model), torch.no_grad():
        start = vanishing_objective(model, images)
        after_fixed = vanishing_objective(model, perturb(model, images, targets, fixed))
        adversarial = perturb(model, images, targets, apgd)
        after_apgd = vanishing_objective(model, adversarial)
    assert float((adversarial - images).abs().max()) <= 2 / 255 + 1e-6
    assert float(adversarial.min()) >= 0 and float(adversarial.max()) <= 1
    assert bool((after_apgd >= start).all())
    assert float(after_apgd.sum()) >= float(after_fixed.sum()) * 1.01  # objectives are negative


def test_apgd_checkpoints_follow_the_paper():
    # Windows 22, 19, 16, 13, 10, 7, 6, 6 (eq. 4: p_1 = 0.22, shrinking by 0.03, at least 0.06).
    assert apgd_checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
    assert apgd_checkpoints(10) == [2, 3, 4, 5, 6, 7, 8, 9]  # every window rounds to 1 step


def test_score_objectives_need_an_objectness_map(batch):
    _, images, targets = batch
    model = models.build("ssdlite320", input_size=(128, 160))
    with pytest.raises(ModelError, match="exposes no objectness map"):
        perturb(model, images[:1], targets[:1], AttackConfig(objective="vanishing"))
