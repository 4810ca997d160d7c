"""Decoded, resized training tensors and on-device batch augmentation.

The whole split is decoded once into a uint8 tensor at the model's input size: small datasets
fit in memory many times over, and re-decoding JPEGs every epoch would cost more CPU than the
compact model's forward pass. Augmentation runs batched in torch on the training device.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from secmlops.data.dataset import DetectionDataset, ImageAnnotations, read_rgb
from secmlops.models.compact_centernet import resize_to_input

# A box cut by the augmentation crop that keeps less than this share of its area becomes an
# ignore region: neither teaching the model to fire on a sliver nor to stay silent on a person.
MIN_VISIBLE_FRACTION = 0.5


@dataclass
class PreparedSplit:
    """A split decoded at the model's input size: pixels plus boxes in input pixels."""

    images: Tensor  # uint8 [N, 3, H, W]
    boxes: list[Tensor]  # float [n_i, 4] x1y1x2y2 in input pixels
    ignore: list[Tensor]
    records: list[ImageAnnotations]

    def __len__(self) -> int:
        return len(self.records)

    def subset(self, indices: Sequence[int]) -> PreparedSplit:
        """The images at `indices`, in that order."""
        picked = list(indices)
        return PreparedSplit(
            self.images[picked],
            [self.boxes[i] for i in picked],
            [self.ignore[i] for i in picked],
            [self.records[i] for i in picked],
        )


def read_image_tensor(path: Path) -> Tensor:
    """Decode one image file to float [3,H,W] in [0,1] (the detector contract's input)."""
    return torch.from_numpy(read_rgb(path)).permute(2, 0, 1).float().div_(255)


def prepare_split(
    dataset: DetectionDataset,
    records: Sequence[ImageAnnotations],
    input_size: tuple[int, int],
    progress: Callable[[int], None] | None = None,
    threads: int = 2,
) -> PreparedSplit:
    """Decode and resize every image of `records` into one uint8 tensor."""

    def one(record: ImageAnnotations) -> Tensor:
        image = resize_to_input(
            read_image_tensor(dataset.image_path(record)).unsqueeze(0), input_size
        )[0]
        if progress:
            progress(1)
        return image.mul(255).round_().clamp_(0, 255).to(torch.uint8)

    with ThreadPoolExecutor(max_workers=threads) as pool:
        images = list(pool.map(one, records))
    boxes, ignore = [], []
    for record in records:
        factor = torch.tensor(
            [input_size[1] / record.width, input_size[0] / record.height] * 2, dtype=torch.float32
        )
        boxes.append(torch.tensor(record.boxes, dtype=torch.float32).reshape(-1, 4) * factor)
        ignore.append(torch.tensor(record.ignore, dtype=torch.float32).reshape(-1, 4) * factor)
    return PreparedSplit(torch.stack(images), boxes, ignore, list(records))


@dataclass(frozen=True)
class AugmentConfig:
    """Photometric and geometric augmentation strengths."""

    flip: float = 0.5
    scale: tuple[float, float] = (0.75, 1.3)
    translate: float = 0.1
    brightness: float = 0.25
    contrast: float = 0.25
    saturation: float = 0.3
    noise_std: float = 0.0


def augment_batch(
    images: Tensor,
    boxes: Sequence[Tensor],
    ignore: Sequence[Tensor],
    generator: torch.Generator,
    config: AugmentConfig,
    crop: tuple[int, int] | None = None,
) -> tuple[Tensor, list[dict[str, Tensor]]]:
    """Randomly flip, zoom, shift and recolour a float batch; move the boxes with the pixels.

    Args:
        images: float [B,3,H,W] in [0,1].
        boxes, ignore: per image [n,4] x1y1x2y2 pixels.
        generator: CPU generator that makes the augmentation reproducible (and resumable).
        crop: (height, width) of a window cut at a random place of each (zoomed) image, at the
            input's own scale (None: the whole image). A step on crops costs what a step on
            images of the crop's size costs, while people keep the resolution the model
            detects them at.

    Returns:
        The augmented images (crop-sized when cropping) and per-image targets
        {"boxes", "labels", "ignore"} in their pixels.
    """
    b, _, h, w = images.shape
    out_h, out_w = crop if crop is not None else (h, w)
    if out_h > h or out_w > w:
        raise ValueError(f"crop {crop} is larger than the images ({h}x{w})")
    device = images.device

    def uniform(low: float, high: float) -> Tensor:
        return (torch.rand(b, generator=generator) * (high - low) + low).to(device)

    flip = (torch.rand(b, generator=generator) < config.flip).to(device)
    # affine_grid maps output coords u to input coords x = zoom * u + shift (normalised [-1,1]).
    zoom = 1.0 / uniform(*config.scale)
    span_x, span_y = zoom, zoom
    reach_x: Tensor | float = config.translate
    reach_y: Tensor | float = config.translate
    if crop is not None:
        # A crop's window spans zoom * out/in of the image (normalised): it may sit anywhere
        # the window fits, plus the translation every image gets.
        span_x, span_y = zoom * out_w / w, zoom * out_h / h
        reach_x = config.translate + (1 - span_x).clamp(min=0)
        reach_y = config.translate + (1 - span_y).clamp(min=0)
    # (As `uniform(-reach, reach)`, so whole-image batches replay earlier runs bit for bit.)
    shift_x = torch.rand(b, generator=generator).to(device) * (2 * reach_x) - reach_x
    shift_y = torch.rand(b, generator=generator).to(device) * (2 * reach_y) - reach_y
    sign = torch.where(flip, -1.0, 1.0)
    theta = torch.zeros(b, 2, 3, device=device)
    theta[:, 0, 0], theta[:, 0, 2] = span_x * sign, shift_x
    theta[:, 1, 1], theta[:, 1, 2] = span_y, shift_y
    grid = F.affine_grid(theta, [b, 3, out_h, out_w], align_corners=False)
    images = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    # Saturation, contrast and brightness are all affine in RGB, so one batched 3x3 matrix and
    # an offset apply them together: a single pass over the pixels instead of five.
    saturation = uniform(1 - config.saturation, 1 + config.saturation).view(b, 1, 1)
    contrast = uniform(1 - config.contrast, 1 + config.contrast).view(b, 1, 1)
    brightness = uniform(-config.brightness, config.brightness).view(b, 1, 1)
    eye = torch.eye(3, device=device).expand(b, 3, 3)
    colour = contrast * (saturation * eye + (1 - saturation) / 3)
    mean = images.mean(dim=(1, 2, 3)).view(b, 1, 1)
    offset = (1 - contrast) * mean + brightness
    images = torch.baddbmm(offset, colour, images.reshape(b, 3, -1)).view(b, 3, out_h, out_w)
    if config.noise_std > 0:
        noise = torch.randn(images.shape, generator=generator).to(device)
        images = images + noise * uniform(0, config.noise_std).view(b, 1, 1, 1)
    images = images.clamp_(0, 1)

    targets = []
    for i in range(b):
        params = (float(span_x[i]), float(span_y[i]), float(sign[i]), float(shift_x[i]),
                  float(shift_y[i]))  # fmt: skip
        kept, cut = _move_boxes(boxes[i].to(device), params, (w, h), (out_w, out_h))
        moved_ignore, _ = _move_boxes(
            ignore[i].to(device), params, (w, h), (out_w, out_h), keep_all=True
        )
        targets.append(
            {
                "boxes": kept,
                "labels": torch.ones(len(kept), dtype=torch.int64, device=device),
                "ignore": torch.cat([moved_ignore, cut]),
            }
        )
    return images, targets


def _move_boxes(
    boxes: Tensor,
    params: tuple[float, float, float, float, float],
    in_size: tuple[int, int],
    out_size: tuple[int, int],
    keep_all: bool = False,
) -> tuple[Tensor, Tensor]:
    """Apply the inverse of the sampling grid to boxes; split into kept and cut-off boxes.

    `in_size` and `out_size` are (width, height) of the images before and after the grid.
    """
    if len(boxes) == 0:
        return boxes.reshape(0, 4), boxes.reshape(0, 4)
    span_x, span_y, sign, shift_x, shift_y = params
    (in_w, in_h), (w, h) = in_size, out_size
    # pixel -> normalised input coords -> output coords u = (x - shift) / (span * sign) -> pixel
    nx = (boxes[:, 0::2] / in_w) * 2 - 1
    ny = (boxes[:, 1::2] / in_h) * 2 - 1
    ux = (nx - shift_x) / (span_x * sign)
    uy = (ny - shift_y) / span_y
    px = (ux + 1) / 2 * w
    py = (uy + 1) / 2 * h
    x1, x2 = px.min(dim=1).values, px.max(dim=1).values
    y1, y2 = py[:, 0], py[:, 1]
    moved = torch.stack([x1, y1, x2, y2], dim=1)
    clipped = torch.stack([x1.clamp(0, w), y1.clamp(0, h), x2.clamp(0, w), y2.clamp(0, h)], dim=1)
    area = (x2 - x1) * (y2 - y1)
    visible = (clipped[:, 2] - clipped[:, 0]).clamp(min=0) * (clipped[:, 3] - clipped[:, 1]).clamp(
        min=0
    )
    present = visible > 0
    if keep_all:
        return clipped[present], moved[:0]
    enough = present & (visible >= MIN_VISIBLE_FRACTION * area)
    return clipped[enough], clipped[present & ~enough]
