"""Augmentation must move boxes exactly as it moves pixels."""

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
