"""The trainer's two further defences: adversarial training that mixes attack objectives (the
vanishing one included), and patches on people's torsos (random, or optimised against the
model being trained)."""

import json
import math

import pytest
import torch

from secmlops import models
from secmlops.attacks.person_patch import place_boxes
from secmlops.attacks.projected_gradient import AttackConfig, perturb
from secmlops.errors import InvalidRequest, ModelError
from secmlops.training import defences, trainer
from secmlops.training.defences import AdversarialConfig, adversarial_config, patch_augment
from secmlops.training.request import OBJECTIVE_FORMS, TrainingRequest
from secmlops.training.trainer import CHECKPOINT_DIR, TrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")

SIZE = (64, 80)  # height, width


def _targets(boxes):
    return [{"boxes": b, "labels": torch.ones(len(b), dtype=torch.int64)} for b in boxes]


# ------------------------------------------------------------------ objectives


def test_each_part_of_the_adversarial_share_is_crafted_with_its_objective():
    torch.manual_seed(0)
    model = models.build("compact_centernet", input_size=SIZE).train()
    images = torch.rand(4, 3, *SIZE, generator=torch.Generator().manual_seed(1))
    targets = _targets([torch.tensor([[10.0, 8.0, 30.0, 56.0]])] * 4)
    attack = AttackConfig(method="pgd", eps=8 / 255, steps=2)
    adversarial = AdversarialConfig(
        attack, mix=1.0, eps_warmup_epochs=0, objectives=("loss", "vanishing")
    )

    mixed = defences.adversarial_mix(
        model, images, targets, adversarial, 0, 1, torch.Generator().manual_seed(5), False
    )

    generator = torch.Generator().manual_seed(5)
    loss_part = perturb(model, images[:2], targets[:2], attack, generator=generator)
    state = generator.get_state()
    vanishing = AttackConfig(method="pgd", eps=8 / 255, steps=2, objective="vanishing")
    vanishing_part = perturb(model, images[2:], targets[2:], vanishing, generator=generator)
    assert torch.equal(mixed[:2], loss_part)
    assert torch.equal(mixed[2:], vanishing_part)
    # The check can fail: the loss objective from the same state crafts other images.
    generator.set_state(state)
    assert not torch.equal(
        mixed[2:], perturb(model, images[2:], targets[2:], attack, generator=generator)
    )


def test_a_share_that_does_not_divide_gives_the_first_objectives_one_more_image(monkeypatch):
    calls = []

    def fake_perturb(model, images, targets, config, **kwargs):
        calls.append((config.objective, len(images), len(targets)))
        return images + 1

    monkeypatch.setattr(defences, "perturb", fake_perturb)
    images = torch.zeros(8, 3, 4, 4)
    adversarial = AdversarialConfig(
        AttackConfig(), mix=5 / 8, eps_warmup_epochs=0, objectives=("vanishing", "loss")
    )
    out = defences.adversarial_mix(None, images, _targets([torch.zeros(0, 4)] * 8), adversarial,
                                   0, 1, torch.Generator(), False)  # fmt: skip
    assert calls == [("vanishing", 3, 3), ("loss", 2, 2)]
    assert out.shape == images.shape
    assert (out[:5] == 1).all() and (out[5:] == 0).all()


@pytest.mark.parametrize(
    ("objectives", "message"),
    [
        (("loss", "fog"), "unknown attack objective 'fog'"),
        (("vanishing", "vanishing"), "'vanishing' is listed more than once"),
        ((), "at least one attack objective"),
    ],
)
def test_invalid_objectives_are_refused(objectives, message):
    with pytest.raises(ModelError, match=message):
        AdversarialConfig(AttackConfig(), objectives=objectives)
    with pytest.raises(ModelError, match=message):
        adversarial_config("pgd", "4/255", 3, 0.5, objectives=objectives)


def test_objectives_need_adversarial_training_and_agree_with_the_attack():
    with pytest.raises(ModelError, match="need adversarial training"):
        adversarial_config("none", "4/255", 3, 0.5, objectives=("loss", "vanishing"))
    with pytest.raises(ModelError, match="'fabrication' is not among the training objectives"):
        AdversarialConfig(AttackConfig(objective="fabrication"), objectives=("loss",))


def test_objectives_round_trip_and_old_cards_default_to_the_loss():
    adversarial = adversarial_config("fgsm-rs", "4/255", 1, 0.5, objectives=("loss", "vanishing"))
    data = json.loads(json.dumps(adversarial.to_json()))
    assert data["objectives"] == ["loss", "vanishing"]
    again = AdversarialConfig.from_json(data)
    assert again.objectives == ("loss", "vanishing") and again.to_json() == data
    old = {k: v for k, v in data.items() if k != "objectives"}
    assert AdversarialConfig.from_json(old).objectives == ("loss",)
    # Before objectives existed the whole share used the attack's own objective.
    older = {k: v for k, v in old.items() if k not in ("objective", "schedule")}
    assert AdversarialConfig.from_json(older).objectives == ("loss",)
    vanishing = {**old, "objective": "vanishing"}
    assert AdversarialConfig.from_json(vanishing).objectives == ("vanishing",)


def test_a_checkpoint_replays_both_defences_and_an_old_one_loads_without_them(tmp_path):
    config = TrainConfig(
        epochs=3, input_size=(128, 160), patch_augmentation=0.25, patch_attack_steps=3,
        adversarial=adversarial_config("pgd", "4/255", 2, 0.5, objectives=("loss", "vanishing")),
    )  # fmt: skip
    checkpoints = tmp_path / CHECKPOINT_DIR
    checkpoints.mkdir()
    (checkpoints / "state.json").write_text(json.dumps({"config": config.to_json()}))
    resolved = trainer._resolve_config(TrainConfig(), None, checkpoints)
    assert resolved.patch_augmentation == 0.25 and resolved.patch_attack_steps == 3
    assert resolved.adversarial is not None
    assert resolved.adversarial.objectives == ("loss", "vanishing")
    assert resolved.to_json() == config.to_json()

    old = config.to_json()
    del old["patch_augmentation"], old["patch_attack_steps"], old["adversarial"]["objectives"]
    (checkpoints / "state.json").write_text(json.dumps({"config": old}))
    resolved = trainer._resolve_config(TrainConfig(), None, checkpoints)
    assert resolved.patch_augmentation == 0.0 and resolved.adversarial.objectives == ("loss",)
    assert resolved.patch_attack_steps == 0


# ------------------------------------------------------------------ patch augmentation


def _people():
    """Two images with two separated people each, and one without anybody."""
    images = torch.rand(3, 3, 128, 160, generator=torch.Generator().manual_seed(2))
    boxes = [
        torch.tensor([[10.0, 10.0, 40.0, 80.0], [90.0, 40.0, 120.0, 110.0]]),
        torch.tensor([[20.0, 30.0, 50.0, 100.0], [100.0, 5.0, 135.0, 75.0]]),
        torch.zeros(0, 4),
    ]
    return images, boxes


def _squares(boxes, fraction, height=128, width=160):
    """Masks [n,H,W] of the squares `place_boxes` puts at `fraction` of each person's height."""
    ys = torch.arange(height).view(-1, 1) + 0.5
    xs = torch.arange(width).view(1, -1) + 0.5
    return torch.stack([
        (xs >= x1) & (xs <= x2) & (ys >= y1) & (ys <= y2)
        for x1, y1, x2, y2 in place_boxes(boxes, fraction).tolist()
    ])  # fmt: skip


def test_patch_augmentation_covers_torsos_and_nothing_else():
    images, boxes = _people()
    out = patch_augment(images, boxes, 1.0, torch.Generator().manual_seed(0))
    assert out.shape == images.shape and out is not images
    changed = (out != images).any(dim=1)  # [B,H,W]
    # The largest square a patch can cover: side 0.35 h x 1.2 (EOT scale), turned by 20
    # degrees, moved by 0.05 h on each axis, plus a pixel: inside place_boxes at 0.66 h.
    for image in range(2):
        reach = _squares(boxes[image], 0.66)
        torso = _squares(boxes[image], 0.15)
        for person in range(2):
            assert int((changed[image] & torso[person]).sum()) >= 20, (image, person)
        assert not changed[image][~reach.any(dim=0)].any()
    assert torch.equal(out[2], images[2])  # nobody to wear a patch
    assert torch.equal(images, _people()[0])  # the input is left as it was


def test_patch_augmentation_is_seeded_and_off_at_zero():
    images, boxes = _people()
    first = patch_augment(images, boxes, 1.0, torch.Generator().manual_seed(4))
    again = patch_augment(images, boxes, 1.0, torch.Generator().manual_seed(4))
    other = patch_augment(images, boxes, 1.0, torch.Generator().manual_seed(5))
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert torch.equal(patch_augment(images, boxes, 0.0, torch.Generator().manual_seed(4)), images)
    many = images[:2].repeat(6, 1, 1, 1)
    patched = patch_augment(many, boxes[:2] * 6, 0.5, torch.Generator().manual_seed(0))
    changed = int((patched != many).flatten(1).any(dim=1).sum())
    assert 0 < changed < len(many)


def _objectness(model, images):
    """The detector's summed person evidence (softplus of its objectness logits) per image."""
    from secmlops.attacks.objectness import vanishing_objective
    from secmlops.attacks.projected_gradient import loss_mode

    with loss_mode(model) as attacked, torch.no_grad():
        return vanishing_objective(attacked, images)


def test_the_epoch_patch_hides_more_of_the_people_than_a_random_one():
    """The attack the defence trains on is an attack: worn with the same draws, the epoch's
    optimised patch leaves the model less person evidence than the random one; making it
    leaves the model as it was, and the seed alone decides it."""
    torch.manual_seed(0)
    model = models.build("compact_centernet", input_size=(128, 160)).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    images, boxes = _people()
    patch = defences.epoch_patch(model, images, boxes, steps=20, seed=1)
    assert patch.shape == (3, 32, 32) and patch.min() >= 0 and patch.max() <= 1
    random = patch_augment(images, boxes, 1.0, torch.Generator().manual_seed(1))
    optimised = patch_augment(images, boxes, 1.0, torch.Generator().manual_seed(1), patch)
    assert _objectness(model, optimised[:2]).sum() < _objectness(model, random[:2]).sum()
    assert torch.equal(optimised[2], images[2])  # nobody to wear it
    assert model.training
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert torch.equal(defences.epoch_patch(model, images, boxes, steps=20, seed=1), patch)


def test_patch_augmentation_outside_0_1_is_refused(tiny_scenes, tmp_path):
    with pytest.raises(ModelError, match=r"probability in \[0, 1\], got 1.5"):
        trainer.train(tiny_scenes, tmp_path / "m", TrainConfig(epochs=1, patch_augmentation=1.5))


# ------------------------------------------------------------------ a run with both


def test_a_run_with_both_defences_trains_and_records_them(tiny_scenes, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from secmlops.cli import app

    augmented, patched = [], []
    real_augment, real_patch = trainer.augment_batch, trainer.patch_augment

    def spy_augment(*args):
        images, targets = real_augment(*args)
        augmented.append([t["boxes"] for t in targets])
        return images, targets

    def spy_patch(images, boxes, probability, generator, patch):
        patched.append((boxes, probability, patch))
        return real_patch(images, boxes, probability, generator, patch)

    monkeypatch.setattr(trainer, "augment_batch", spy_augment)
    monkeypatch.setattr(trainer, "patch_augment", spy_patch)
    out = tmp_path / "defended"
    result = CliRunner().invoke(app, [
        "train", "--data", str(tiny_scenes), "--out", str(out), "--epochs", "1",
        "--batch-size", "8", "--adversarial", "fgsm-rs", "--objectives", "loss+vanishing",
        "--patch-augmentation", "0.5", "--patch-attack-steps", "2",
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert (
        "fgsm-rs adversarial training (loss+vanishing) and adversarial (2 steps) patch "
        "augmentation 0.5" in " ".join(result.output.split())
    )
    # Every step patched its augmented batch, with the boxes the augmentation moved.
    assert len(patched) == len(augmented) > 0
    for (boxes, probability, patch), moved in zip(patched, augmented, strict=True):
        assert probability == 0.5 and all(a is b for a, b in zip(boxes, moved, strict=True))
        assert patch is not None and patch.shape == (3, 32, 32)  # the epoch's adversarial one
    training = models.read_card(out).training
    assert training["patch_augmentation"] == 0.5 and training["patch_attack_steps"] == 2
    assert training["adversarial"]["objectives"] == ["loss", "vanishing"]
    state = json.loads((out / CHECKPOINT_DIR / "state.json").read_text())
    assert state["config"]["patch_augmentation"] == 0.5
    assert state["config"]["adversarial"]["objectives"] == ["loss", "vanishing"]


class Interrupt(Exception):
    pass


def test_a_resumed_run_with_both_defences_matches_the_uninterrupted_one(tiny_scenes, tmp_path):
    from safetensors.torch import load_file

    request = TrainingRequest(
        epochs=2, seed=3, objectives="loss+vanishing", patch_augmentation=0.5,
        patch_attack_steps=2,
    )  # fmt: skip
    config = request.train_config(batch_size=8, warmup_steps=4)
    trainer.train(tiny_scenes, tmp_path / "straight", config)

    def stop(summary):
        raise Interrupt

    with pytest.raises(Interrupt):
        trainer.train(tiny_scenes, tmp_path / "resumed", config, on_epoch=stop)
    # The defences come from the checkpoint, not from the caller's (undefended) config.
    trainer.train(tiny_scenes, tmp_path / "resumed", TrainConfig(), resume=True)
    training = models.read_card(tmp_path / "resumed").training
    assert training["patch_augmentation"] == 0.5 and training["patch_attack_steps"] == 2
    assert training["adversarial"]["objectives"] == ["loss", "vanishing"]
    straight = load_file(str(tmp_path / "straight" / CHECKPOINT_DIR / "state.safetensors"))
    resumed = load_file(str(tmp_path / "resumed" / CHECKPOINT_DIR / "state.safetensors"))
    for key in straight:
        if key.startswith(("model.", "optimizer.")):
            torch.testing.assert_close(resumed[key], straight[key], rtol=1e-5, atol=1e-6)


def test_the_cli_refuses_unknown_objectives_before_any_work(tmp_path):
    from typer.testing import CliRunner

    from secmlops.cli import EXIT_USER_ERROR, app

    result = CliRunner().invoke(app, [
        "train", "--data", str(tmp_path / "absent"), "--out", str(tmp_path / "m"),
        "--objectives", "foo",
    ])  # fmt: skip
    assert result.exit_code == EXIT_USER_ERROR, result.output
    assert "unknown attack objectives 'foo'" in result.output
    assert not (tmp_path / "m").exists()


# ------------------------------------------------------------------ the request


def test_the_request_parses_objectives_and_patch_augmentation():
    request = TrainingRequest.from_params(
        {"adversarial": "pgd", "objectives": "loss+vanishing", "patch_augmentation": 0.5}
    )
    assert request.objective_list == ("loss", "vanishing") and request.defended
    config = request.train_config()
    assert config.adversarial is not None
    assert config.adversarial.objectives == ("loss", "vanishing")
    assert config.patch_augmentation == 0.5
    assert TrainingRequest().train_config().adversarial.objectives == ("loss",)
    assert TrainingRequest().train_config().patch_augmentation == 0.0
    from secmlops.lifecycle.contracts import OBJECTIVE_FORMS as DAG_FORM_ENUM

    assert DAG_FORM_ENUM is OBJECTIVE_FORMS  # the trigger form offers exactly these
    for form in OBJECTIVE_FORMS:  # every form the trigger form offers trains
        TrainingRequest(objectives=form).train_config()


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"objectives": "foo"}, "unknown attack objectives 'foo'; choose one of loss, vanishing"),
        ({"objectives": "vanishing+loss"}, "loss, vanishing, loss\\+vanishing"),
        ({"adversarial": "none", "objectives": "vanishing"}, "need adversarial training"),
        ({"patch_augmentation": 1.5}, r"probability in \[0, 1\], got 1.5"),
        ({"patch_augmentation": -0.1}, r"probability in \[0, 1\]"),
        ({"patch_augmentation": math.nan}, r"probability in \[0, 1\]"),
        ({"patch_attack_steps": 3}, "set patch_augmentation above 0"),
        ({"patch_augmentation": 0.5, "patch_attack_steps": -1}, "whole number >= 0, got -1"),
        ({"patch_augmentation": 0.5, "patch_attack_steps": 2.5}, "whole number >= 0"),
    ],
)
def test_the_request_refuses_bad_defences(params, message):
    with pytest.raises(InvalidRequest, match=message):
        TrainingRequest.from_params(params)


def test_the_baseline_has_no_defence_at_all():
    request = TrainingRequest(
        objectives="loss+vanishing", patch_augmentation=0.3, patch_attack_steps=4
    )
    baseline = request.undefended()
    assert (
        baseline.adversarial, baseline.objectives, baseline.patch_augmentation,
        baseline.patch_attack_steps,
    ) == ("none", "loss", 0.0, 0)  # fmt: skip
    assert not baseline.defended
    assert baseline.train_config().adversarial is None
    assert baseline.train_config().patch_augmentation == 0.0
    # Patch augmentation alone is a defence: such a run still gets its undefended baseline.
    assert TrainingRequest(adversarial="none", patch_augmentation=0.3).defended
