"""The person-worn patch: placed on the torso, pasted exactly, hides people noise does not."""

import time

import pytest
import torch
from torchvision.ops import box_iou

from secmlops import models
from secmlops.attacks.person_patch import (
    PersonPatchConfig,
    apply_patch,
    place_boxes,
    random_patch,
    total_variation,
    train_patch,
)
from secmlops.data.dataset import load_dataset
from secmlops.errors import ModelError
from secmlops.training.batches import prepare_split


def test_patch_sits_on_the_torso_with_a_side_proportional_to_the_height():
    boxes = torch.tensor([[10.0, 20.0, 30.0, 80.0], [0.0, 0.0, 8.0, 10.0]])
    placed = place_boxes(boxes, 0.25)
    # Box 1: h=60, side 15, centre x 20, centre y 20 + 0.4*60 = 44.
    torch.testing.assert_close(placed[0], torch.tensor([12.5, 36.5, 27.5, 51.5]))
    side = placed[:, 2] - placed[:, 0]
    torch.testing.assert_close(side, placed[:, 3] - placed[:, 1])  # square
    torch.testing.assert_close(side, torch.tensor([15.0, 2.5]))
    torch.testing.assert_close((placed[1, 0] + placed[1, 2]) / 2, torch.tensor(4.0))
    torch.testing.assert_close((placed[1, 1] + placed[1, 3]) / 2, torch.tensor(4.0))
    assert place_boxes(torch.zeros(0, 4), 0.25).shape == (0, 4)


def _pixel_centres_inside(placed: torch.Tensor, height: int, width: int) -> torch.Tensor:
    ys = torch.arange(height).float().view(-1, 1) + 0.5
    xs = torch.arange(width).float().view(1, -1) + 0.5
    inside = torch.zeros(height, width, dtype=torch.bool)
    for x1, y1, x2, y2 in placed.tolist():
        inside |= (xs >= x1) & (xs <= x2) & (ys >= y1) & (ys <= y2)
    return inside


def test_apply_patch_pastes_inside_the_placement_only_and_passes_gradients():
    generator = torch.Generator().manual_seed(0)
    images = torch.rand((2, 3, 64, 80), generator=generator) * 0.5
    boxes = [torch.tensor([[10.0, 4.0, 30.0, 60.0], [50.0, 10.0, 70.0, 50.0]]), torch.zeros(0, 4)]
    colour = torch.tensor([0.9, 0.1, 0.7])
    patch = colour.view(3, 1, 1).expand(3, 8, 8).clone().requires_grad_(True)
    patched = apply_patch(images, boxes, patch, 0.25)

    inside = _pixel_centres_inside(place_boxes(boxes[0], 0.25), 64, 80)
    assert int(inside.sum()) > 50  # the placements cover pixels at all
    torch.testing.assert_close(patched[0][:, ~inside], images[0][:, ~inside], rtol=0, atol=0)
    expected = colour.view(3, 1).expand(3, int(inside.sum()))
    torch.testing.assert_close(patched[0][:, inside], expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(patched[1], images[1], rtol=0, atol=0)  # nobody: unchanged

    (grad,) = torch.autograd.grad(patched.sum(), patch)
    assert float(grad.abs().sum()) > 0

    # A person whose patch would be under 2 pixels wide gets none.
    tiny = [torch.tensor([[10.0, 10.0, 12.0, 14.0]]), torch.zeros(0, 4)]
    torch.testing.assert_close(apply_patch(images, tiny, patch, 0.25), images, rtol=0, atol=0)


def test_eot_transforms_stay_in_range_and_are_reproducible():
    images = torch.full((1, 3, 64, 80), 0.5)
    boxes = [torch.tensor([[10.0, 4.0, 40.0, 60.0]])]
    patch = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(1))

    def draw(seed: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed)
        return apply_patch(images, boxes, patch, 0.3, generator=generator, eot=True)

    first, again, other = draw(3), draw(3), draw(4)
    assert float(first.min()) >= 0 and float(first.max()) <= 1
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    assert not torch.equal(first, other)
    assert not torch.equal(first, apply_patch(images, boxes, patch, 0.3))


def test_total_variation_is_zero_for_flat_patches():
    assert float(total_variation(torch.full((3, 8, 8), 0.3))) == 0
    assert float(total_variation(torch.rand(3, 8, 8))) > 0.1


# ------------------------------------------------------------------ the attack on a detector
@pytest.fixture(scope="module")
def scenes(small_model, small_scenes):
    """The detector that finds people, its training split and its held-out images."""
    model = models.load(small_model)
    dataset = load_dataset(small_scenes)
    size = tuple(model.input_size)
    train = prepare_split(dataset, dataset.split("train"), size)
    held_out = prepare_split(dataset, dataset.split("val") + dataset.split("test"), size)
    return model, train, held_out


def _people_found(model, images, boxes, threshold: float = 0.3) -> int:
    """Ground-truth people matched by a detection of score >= threshold at IoU >= 0.5."""
    model.eval()
    with torch.no_grad():
        outputs = model(images)
    found = 0
    for out, truth in zip(outputs, boxes, strict=True):
        predicted = out["boxes"][out["scores"] >= threshold]
        if len(truth) and len(predicted):
            found += int((box_iou(truth, predicted).max(dim=1).values >= 0.5).sum())
    return found


def test_trained_patch_hides_more_people_than_a_random_one(scenes, one_thread):
    """40 steps on the train split beat a random patch of the same size on held-out images
    (clean 20 / random 16 / adversarial 3 of 59 people here; 13-16 vs 3-7 over seeds 0-3).
    At the default fraction 0.25 the margin is thinner (14 vs 12 at seed 0)."""
    model, train, held_out = scenes
    config = PersonPatchConfig(fraction=0.4, steps=40, seed=0)
    started = time.perf_counter()
    patch = train_patch(model, train.images, train.boxes, config)
    seconds = time.perf_counter() - started
    assert patch.shape == (3, 32, 32)
    assert float(patch.min()) >= 0 and float(patch.max()) <= 1

    images = held_out.images.float() / 255
    boxes = held_out.boxes

    def found_with(worn: torch.Tensor) -> int:
        return _people_found(model, apply_patch(images, boxes, worn, config.fraction), boxes)

    clean = _people_found(model, images, boxes)
    control = found_with(random_patch(config))
    grey = found_with(torch.full_like(patch, 0.5))  # plain occlusion, for the record
    attacked = found_with(patch)
    print(
        f"\nheld-out people {sum(len(b) for b in boxes)}: found clean {clean}, random patch "
        f"{control}, grey patch {grey}, adversarial patch {attacked} (trained in {seconds:.1f} s)"
    )
    assert clean >= 10
    assert attacked < control
    # Deterministic given the seed.
    again = train_patch(model, train.images, train.boxes, PersonPatchConfig(steps=2, seed=5))
    torch.testing.assert_close(
        again, train_patch(model, train.images, train.boxes, PersonPatchConfig(steps=2, seed=5))
    )


def test_training_needs_people_and_leaves_the_model_alone(scenes):
    model, train, _ = scenes
    nobody = [torch.zeros(0, 4) for _ in train.boxes]
    with pytest.raises(ModelError, match="no training image has a person"):
        train_patch(model, train.images, nobody, PersonPatchConfig(steps=1))
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train_patch(model, train.images[:4], train.boxes[:4], PersonPatchConfig(steps=1, batch_size=2))
    assert not model.training
    assert all(p.grad is None for p in model.parameters())
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"fraction": 0.0}, "fraction"),
        ({"fraction": 1.5}, "fraction"),
        ({"steps": 0}, "steps"),
        ({"batch_size": 0}, "batch_size"),
        ({"resolution": 1}, "resolution"),
        ({"step_size": 0.0}, "step_size"),
        ({"tv_weight": -1.0}, "tv_weight"),
    ],
)
def test_invalid_settings_name_the_field(kwargs, field):
    with pytest.raises(ModelError, match=field):
        PersonPatchConfig(**kwargs)


def test_bad_inputs_are_refused():
    images = torch.rand(1, 3, 16, 16)
    boxes = [torch.tensor([[0.0, 0.0, 8.0, 16.0]])]
    with pytest.raises(ModelError, match="square"):
        apply_patch(images, boxes, torch.rand(3, 4, 5), 0.25)
    with pytest.raises(ModelError, match="box tensors"):
        apply_patch(images, [], torch.rand(3, 4, 4), 0.25)
    with pytest.raises(ModelError, match="float"):
        apply_patch((images * 255).to(torch.uint8), boxes, torch.rand(3, 4, 4), 0.25)
