"""A person-worn adversarial patch: one printed square on the torso that hides its wearer.

Threat model: a physical attacker, black-box at deployment but white-box when the patch is made
(they hold a copy of the detector, or one close enough to transfer). They print ONE universal
square patch and wear it on the torso. Its pixels are unbounded (any printable colour), but its
size is bounded relative to the wearer: side = `fraction` x person box height, centred on the
torso. It must work for every wearer and frame, and survive the camera: scale, tilt, lighting,
contrast and sensor noise, which the optimisation samples at every step (expectation over
transformation). The attacker needs no labels at deployment; they need person boxes only to
know where the patch sits on their training images.

- Thys, Van Ranst, Goedeme 2019, "Fooling automated surveillance cameras: adversarial patches
  to attack person detection", arXiv:1904.08653: a patch on the torso minimising the detector's
  objectness, with a total-variation term (their eq. 2) so it stays printable.
- Xu et al. 2020, "Adversarial T-shirt! Evading Person Detectors in A Physical World",
  arXiv:1910.11099: the same threat worn on clothing, under stronger physical transformations.
- EOT: Athalye, Engstrom, Ilyas, Kwok 2018, "Synthesizing Robust Adversarial Examples",
  arXiv:1707.07397: optimise the expected loss over a distribution of transformations.

The objective is TOG-vanishing's (`secmlops.attacks.objectness.vanishing_objective`): minimise
sum(softplus(logit)) over the objectness map, i.e. push every cell towards "no person".
`random_patch` is the control: the same occlusion with random pixels, which tells an adversarial
patch from one that merely covers the torso.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from secmlops.attacks.objectness import vanishing_objective
from secmlops.attacks.projected_gradient import fold_batch_norm, loss_mode
from secmlops.errors import ModelError

# Where the patch centre sits, as a share of the box height below its top (the torso).
TORSO_HEIGHT = 0.4
# People whose patch would be narrower than this (pixels) get none: nothing printable fits.
MIN_SIDE_PX = 2.0
# EOT ranges (Thys et al. 2019, section 3.3, and their PatchTransformer).
EOT_SCALE = (0.8, 1.2)
EOT_ROTATION_DEG = 20.0
EOT_BRIGHTNESS = 0.1
EOT_CONTRAST = (0.8, 1.2)
EOT_NOISE = 0.03
EOT_JITTER = 0.05  # of the person's height, on each axis


@dataclass(frozen=True)
class PersonPatchConfig:
    """One patch's settings.

    Args:
        fraction: patch side over person box height, in (0, 1].
        steps: optimisation steps.
        batch_size: training images per step.
        resolution: the patch's own pixels (square), resampled onto each person.
        step_size: Adam learning rate on the patch pixels (pixels clamped to [0,1] after each).
        tv_weight: weight of the total variation (printable smoothness, Thys et al. eq. 2).
        seed: seeds the initial pixels, the image sampling and the transformations.
    """

    fraction: float = 0.25
    steps: int = 150
    batch_size: int = 8
    resolution: int = 32
    step_size: float = 0.01
    tv_weight: float = 2.5
    seed: int = 0

    def __post_init__(self) -> None:
        if not (0 < self.fraction <= 1):
            raise ModelError(
                f"fraction must be in (0, 1] of the person's height, got {self.fraction}"
            )
        if self.steps < 1:
            raise ModelError(f"steps must be at least 1, got {self.steps}")
        if self.batch_size < 1:
            raise ModelError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.resolution < 2:
            raise ModelError(f"resolution must be at least 2 pixels, got {self.resolution}")
        if not (self.step_size > 0 and math.isfinite(self.step_size)):
            raise ModelError(f"step_size must be a positive number, got {self.step_size}")
        if not (self.tv_weight >= 0 and math.isfinite(self.tv_weight)):
            raise ModelError(f"tv_weight must be a non-negative number, got {self.tv_weight}")


def place_boxes(boxes: Tensor, fraction: float) -> Tensor:
    """Where the patch goes on each person.

    Args:
        boxes: [n,4] person boxes x1y1x2y2.
        fraction: patch side over box height.

    Returns:
        [n,4] square boxes x1y1x2y2 of side fraction*h, centred horizontally on the box and
        vertically at y1 + 0.4*h (the torso).
    """
    boxes = boxes.reshape(-1, 4).float()
    height = boxes[:, 3] - boxes[:, 1]
    half = fraction * height / 2
    cx = (boxes[:, 0] + boxes[:, 2]) / 2
    cy = boxes[:, 1] + TORSO_HEIGHT * height
    return torch.stack([cx - half, cy - half, cx + half, cy + half], dim=1)


def total_variation(patch: Tensor) -> Tensor:
    """Mean absolute difference between neighbouring pixels of `patch` [3,r,r] (Thys et al.
    eq. 2, normalised by the number of pixels): low for smooth, printable patches."""
    dx = (patch[:, :, 1:] - patch[:, :, :-1]).abs().sum()
    dy = (patch[:, 1:, :] - patch[:, :-1, :]).abs().sum()
    return (dx + dy) / patch.numel()


def apply_patch(
    images: Tensor,
    boxes: Sequence[Tensor],
    patch: Tensor,
    fraction: float,
    *,
    generator: torch.Generator | None = None,
    eot: bool = False,
) -> Tensor:
    """Paste `patch` on every person of every image, differentiably w.r.t. the patch.

    Args:
        images: float [B,3,H,W] in [0,1].
        boxes: per image, [n,4] person boxes x1y1x2y2 in the images' pixels.
        patch: [3,r,r] in [0,1].
        fraction: patch side over person box height.
        generator: a CPU generator for the EOT draws; None uses the global RNG.
        eot: transform each person's copy at random: scale x U(0.8,1.2), rotation U(-20,20)
            degrees, brightness + U(-0.1,0.1), contrast x U(0.8,1.2), uniform noise +-0.03 on the
            patch pixels, centre jitter +-0.05 h on each axis.

    Returns:
        [B,3,H,W] clamped to [0,1]; images without people come back unchanged, and people whose
        patch side (after EOT scaling) would be under 2 pixels get none. Later people overwrite
        earlier ones.
    """
    if images.dim() != 4 or images.shape[1] != 3:
        raise ModelError(f"images must be a [B,3,H,W] batch, got shape {tuple(images.shape)}")
    if not images.is_floating_point():
        raise ModelError(f"images must be float in [0,1], got {images.dtype}")
    if len(boxes) != len(images):
        raise ModelError(f"{len(images)} images but {len(boxes)} box tensors")
    if patch.dim() != 3 or patch.shape[0] != 3 or patch.shape[1] != patch.shape[2]:
        raise ModelError(f"a patch is a square [3,r,r], got shape {tuple(patch.shape)}")
    height, width = images.shape[-2:]
    device = images.device
    out = []
    for image, image_boxes in zip(images, boxes, strict=True):
        placed = place_boxes(image_boxes, fraction).cpu()
        n = len(placed)
        side = placed[:, 2] - placed[:, 0]
        centre = (placed[:, :2] + placed[:, 2:]) / 2
        angle = torch.zeros(n)
        copies = patch.unsqueeze(0).expand(n, -1, -1, -1)
        if eot and n:
            side, angle, centre, copies = _transform(side, centre, copies, fraction, generator)
        keep = side >= MIN_SIDE_PX
        if not bool(keep.any()):
            out.append(image)
            continue
        theta = _affine(side[keep], angle[keep], centre[keep], height, width).to(device)
        grids = F.affine_grid(theta, [int(keep.sum()), 3, height, width], align_corners=False)
        for copy, grid, length in zip(copies[keep.to(device)], grids, side[keep], strict=True):
            # The camera averages the print over each pixel: shrink the patch to about its size
            # on the image first (every patch pixel then gets a gradient, no aliasing).
            texels = min(max(math.ceil(float(length)), 2), copy.shape[-1])
            source = F.adaptive_avg_pool2d(copy, texels) if texels < copy.shape[-1] else copy
            rendered = F.grid_sample(
                source.unsqueeze(0).to(images.dtype),
                grid.unsqueeze(0).to(images.dtype),
                mode="bilinear",
                padding_mode="border",
                align_corners=False,
            )[0]
            inside = (grid.abs() <= 1).all(dim=-1)  # [H,W]: pixel centres on the patch
            image = torch.where(inside.unsqueeze(0), rendered, image)
        out.append(image)
    return torch.stack(out).clamp(0, 1)


def _transform(
    side: Tensor,
    centre: Tensor,
    copies: Tensor,
    fraction: float,
    generator: torch.Generator | None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """EOT draws for n people: their sides, angles (radians), centres and patch copies."""
    n, device = len(side), copies.device

    def uniform(low: float, high: float, *shape: int) -> Tensor:
        return low + (high - low) * torch.rand((n, *shape), generator=generator)

    person_h = side / fraction
    side = side * uniform(*EOT_SCALE)
    angle = uniform(-EOT_ROTATION_DEG, EOT_ROTATION_DEG) * math.pi / 180
    centre = centre + uniform(-EOT_JITTER, EOT_JITTER, 2) * person_h.unsqueeze(1)
    contrast = uniform(*EOT_CONTRAST, 1, 1, 1).to(device)
    brightness = uniform(-EOT_BRIGHTNESS, EOT_BRIGHTNESS, 1, 1, 1).to(device)
    noise = uniform(-EOT_NOISE, EOT_NOISE, *copies.shape[1:]).to(device)
    return side, angle, centre, (copies * contrast + brightness + noise).clamp(0, 1)


def _affine(side: Tensor, angle: Tensor, centre: Tensor, height: int, width: int) -> Tensor:
    """Per person [k,2,3]: from the image's normalised coordinates (align_corners=False) to the
    patch's, for a square of `side` pixels rotated by `angle` about `centre` (x, y pixels)."""
    cos, sin, half = angle.cos(), angle.sin(), side / 2
    a, b = width / 2, height / 2
    dx, dy = a - centre[:, 0], b - centre[:, 1]
    row_x = torch.stack([cos * a, sin * b, cos * dx + sin * dy], dim=1)
    row_y = torch.stack([-sin * a, cos * b, -sin * dx + cos * dy], dim=1)
    return torch.stack([row_x, row_y], dim=1) / half.view(-1, 1, 1)


def random_patch(config: PersonPatchConfig) -> Tensor:
    """The control: uniform random pixels [3,r,r], seeded by `config.seed` (also where
    `train_patch` starts from), to tell an adversarial patch from plain occlusion."""
    generator = torch.Generator().manual_seed(config.seed)
    return torch.rand((3, config.resolution, config.resolution), generator=generator)


def train_patch(
    model: nn.Module, images: Tensor, boxes: Sequence[Tensor], config: PersonPatchConfig
) -> Tensor:
    """Optimise one universal patch over the training images' people, with EOT.

    Each step minimises, over `batch_size` images drawn from those with people (a fresh
    shuffle each pass), mean sum(softplus(objectness logits)) of the patched images (minus
    `vanishing_objective`) + tv_weight * total_variation(patch), with Adam; pixels are clamped
    to [0,1] after each step. Batch norm is frozen and no weight gradients are made.

    Args:
        model: a detector with an objectness map (the compact CenterNet), on any device.
        images: [N,3,H,W] at the model's input size: uint8, or float in [0,1]. Kept where they
            are; each batch moves to the model's device.
        boxes: per image, [n,4] person boxes x1y1x2y2 in the images' pixels.
        config: the patch's settings.

    Returns:
        The patch, float [3,r,r] in [0,1] on the CPU. Deterministic given `config.seed`.

    Raises:
        ModelError: no image has a person, the inputs disagree, or the model has no
            objectness map.
    """
    if len(boxes) != len(images):
        raise ModelError(f"{len(images)} images but {len(boxes)} box tensors")
    eligible = [i for i, b in enumerate(boxes) if len(b) > 0]
    if not eligible:
        raise ModelError("no training image has a person to wear the patch")
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(config.seed)
    start = torch.rand((3, config.resolution, config.resolution), generator=generator)
    patch = start.to(device).requires_grad_(True)  # = random_patch(config)
    optimiser = torch.optim.Adam([patch], lr=config.step_size)
    order: list[int] = []
    with loss_mode(fold_batch_norm(model)) as attacked, torch.enable_grad():
        for _ in range(config.steps):
            batch: list[int] = []
            while len(batch) < min(config.batch_size, len(eligible)):
                if not order:
                    order = [
                        eligible[i] for i in torch.randperm(len(eligible), generator=generator)
                    ]
                batch.append(order.pop())
            chosen = images[batch].to(device)
            chosen = chosen.float() / 255 if chosen.dtype == torch.uint8 else chosen.float()
            chosen_boxes = [boxes[i].to(device) for i in batch]
            patched = apply_patch(
                chosen, chosen_boxes, patch, config.fraction, generator=generator, eot=True
            )
            loss = -vanishing_objective(attacked, patched).mean()
            loss = loss + config.tv_weight * total_variation(patch)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            with torch.no_grad():
                patch.clamp_(0, 1)
    return patch.detach().cpu()
