"""Augmentation must move boxes exactly as it moves pixels."""

import pytest
import torch

from secmlops.training.batches import AugmentConfig, augment_batch

GEOMETRY_ONLY = AugmentConfig(brightness=0, contrast=0, saturation=0, noise_std=0)


def test_boxes_follow_flips_zooms_and_shifts():
    images = torch.zeros(8, 3, 96, 128)
    box = torch.tensor([[40.0, 20.0, 64.0, 80.0]])
    images[:, :, 20:80, 40:64] = 1.0
    generator = torch.Generator().manual_seed(0)
    out, targets = augment_batch(
        images, [box] * 8, [torch.zeros(0, 4)] * 8, generator, GEOMETRY_ONLY
    )
    checked = 0
    for image, target in zip(out, targets, strict=True):
        bright = (image[0] > 0.5).nonzero()
        if len(target["boxes"]) == 0:
            continue
        checked += 1
        x1, y1, x2, y2 = target["boxes"][0].tolist()
        # The bright rectangle's pixel extent matches the moved box to within a pixel.
        assert (
            abs(bright[:, 1].min().item() - x1) <= 1.5
            and abs(bright[:, 1].max().item() + 1 - x2) <= 1.5
        )
        assert (
            abs(bright[:, 0].min().item() - y1) <= 1.5
            and abs(bright[:, 0].max().item() + 1 - y2) <= 1.5
        )
    assert checked >= 6


def test_boxes_pushed_mostly_out_of_view_become_ignore_regions():
    images = torch.zeros(1, 3, 96, 128)
    edge_box = torch.tensor([[0.0, 0.0, 20.0, 96.0]])
    config = AugmentConfig(flip=0, scale=(1.3, 1.3), translate=0.0, brightness=0, contrast=0,
                           saturation=0, noise_std=0)  # fmt: skip
    _, (target,) = augment_batch(images, [edge_box], [torch.zeros(0, 4)], torch.Generator(), config)
    # Zooming in by 1.3 around the centre cuts the edge box to less than half of its area.
    assert len(target["boxes"]) == 0 and len(target["ignore"]) == 1


def test_colour_jitter_keeps_pixels_in_range_and_is_reproducible():
    images = torch.rand(4, 3, 32, 32)
    boxes = [torch.zeros(0, 4)] * 4
    a, _ = augment_batch(images, boxes, boxes, torch.Generator().manual_seed(5), AugmentConfig())
    b, _ = augment_batch(images, boxes, boxes, torch.Generator().manual_seed(5), AugmentConfig())
    assert torch.equal(a, b) and a.min() >= 0 and a.max() <= 1


def test_crops_cut_a_window_at_the_input_scale_and_move_the_boxes_into_it():
    """A crop keeps the image's scale (a person stays as many pixels tall) and the boxes land
    where the person's pixels landed; a person outside the window is not a target."""
    images = torch.zeros(16, 3, 96, 128)
    box = torch.tensor([[40.0, 20.0, 64.0, 80.0]])
    images[:, :, 20:80, 40:64] = 1.0
    config = AugmentConfig(scale=(1.0, 1.0), translate=0.0, brightness=0, contrast=0,
                           saturation=0, noise_std=0)  # fmt: skip
    generator = torch.Generator().manual_seed(1)
    out, targets = augment_batch(
        images, [box] * 16, [torch.zeros(0, 4)] * 16, generator, config, crop=(64, 64)
    )
    assert out.shape == (16, 3, 64, 64)
    seen = 0
    for image, target in zip(out, targets, strict=True):
        bright = (image[0] > 0.5).nonzero()
        if len(target["boxes"]) == 0:
            # Out of the window, or cut to less than half of it (then an ignore region).
            assert len(bright) < 0.5 * 24 * 60 + 64
            continue
        seen += 1
        x1, y1, x2, y2 = target["boxes"][0].tolist()
        assert abs(bright[:, 1].min().item() - x1) <= 1.5
        assert abs(bright[:, 1].max().item() + 1 - x2) <= 1.5
        assert abs(bright[:, 0].min().item() - y1) <= 1.5
        assert abs(bright[:, 0].max().item() + 1 - y2) <= 1.5
        if x1 > 0 and x2 < 64 and y1 > 0 and y2 < 64:
            assert x2 - x1 == pytest.approx(24, abs=0.5)  # no zoom: the input's own scale
    assert 4 <= seen < 16  # the window moves: the person is in some crops, not in all


def test_a_crop_larger_than_the_images_is_refused():
    images = torch.zeros(1, 3, 32, 32)
    with pytest.raises(ValueError, match="larger than the images"):
        augment_batch(images, [torch.zeros(0, 4)], [torch.zeros(0, 4)], torch.Generator(),
                      AugmentConfig(), crop=(48, 32))  # fmt: skip
