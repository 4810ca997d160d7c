"""Natural image corruptions at ImageNet-C severities: what a street camera does to a detector
without any attacker.

Hendrycks & Dietterich, 2019, "Benchmarking Neural Network Robustness to Common Corruptions and
Perturbations" (ImageNet-C, arXiv:1903.12261) defines 15 corruptions at severities 1..5. These are
the five a pedestrian camera meets most: sensor noise at night (`gaussian_noise`), defocus and
dirt on the lens (`gaussian_blur`), over-exposure (`brightness`), haze and fog (`contrast`) and
compression on the way to the server (`jpeg`), each with ImageNet-C's severity constants.

Threat model: none; these are not adversarial. They measure how much accuracy the detector loses
to ordinary conditions, which is the baseline every adversarial number should be read against.

All functions take and return float [B,3,H,W] tensors in [0,1] and are deterministic: the only
random one (noise) draws from a generator the caller seeds.
"""

from __future__ import annotations

import io
import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

CORRUPTIONS: tuple[str, ...] = ("gaussian_noise", "gaussian_blur", "brightness", "contrast", "jpeg")
SEVERITIES = (1, 2, 3, 4, 5)

# ImageNet-C's constants, severity 1..5 (imagenet_c/corruptions.py of the paper's code).
_NOISE_STD = (0.08, 0.12, 0.18, 0.26, 0.38)
_BLUR_SIGMA = (1.0, 2.0, 3.0, 4.0, 6.0)  # pixels of a 224-pixel ImageNet image
_BRIGHTNESS_SHIFT = (0.1, 0.2, 0.3, 0.4, 0.5)  # added to HSV value
_CONTRAST_FACTOR = (0.4, 0.3, 0.2, 0.1, 0.05)
_JPEG_QUALITY = (25, 18, 15, 10, 7)
_IMAGENET_SIDE = 224


def corruption_params(name: str, severity: int, image_size: tuple[int, int]) -> dict[str, Any]:
    """The concrete settings a corruption uses at `severity` on images of `image_size` (H, W).

    Raises:
        ValueError: unknown corruption or severity outside 1..5.
    """
    index = _severity_index(severity)
    if name == "gaussian_noise":
        return {"severity": severity, "std": _NOISE_STD[index]}
    if name == "gaussian_blur":
        return {"severity": severity, "sigma": round(_blur_sigma(index, image_size), 4)}
    if name == "brightness":
        return {"severity": severity, "value_shift": _BRIGHTNESS_SHIFT[index]}
    if name == "contrast":
        return {"severity": severity, "factor": _CONTRAST_FACTOR[index]}
    if name == "jpeg":
        return {"severity": severity, "quality": _JPEG_QUALITY[index]}
    raise ValueError(f"unknown corruption {name!r}; choose one of {', '.join(CORRUPTIONS)}")


def corrupt(
    name: str, images: Tensor, severity: int, generator: torch.Generator | None = None
) -> Tensor:
    """Apply corruption `name` at `severity` (1..5) to float [B,3,H,W] images in [0,1].

    Args:
        name: one of `CORRUPTIONS`.
        images: the clean batch (not modified).
        severity: ImageNet-C severity, 1 (mild) to 5 (severe).
        generator: CPU generator for the noise (only `gaussian_noise` draws from it).

    Returns:
        The corrupted batch, same shape and device, clipped to [0,1].

    Raises:
        ValueError: unknown corruption or severity outside 1..5.
    """
    functions = {
        "gaussian_noise": lambda x, s: gaussian_noise(x, s, generator),
        "gaussian_blur": gaussian_blur,
        "brightness": brightness,
        "contrast": contrast,
        "jpeg": jpeg,
    }
    if name not in functions:
        raise ValueError(f"unknown corruption {name!r}; choose one of {', '.join(CORRUPTIONS)}")
    return functions[name](images, severity)


def gaussian_noise(
    images: Tensor, severity: int, generator: torch.Generator | None = None
) -> Tensor:
    """Additive white Gaussian noise, std 0.08..0.38 (sensor noise in low light)."""
    std = _NOISE_STD[_severity_index(severity)]
    # Drawn on the CPU so the same seed gives the same noise on every device.
    noise = torch.randn(images.shape, generator=generator).to(images.device)
    return (images + noise * std).clamp_(0, 1)


def gaussian_blur(images: Tensor, severity: int) -> Tensor:
    """Gaussian blur (defocus, a dirty lens).

    ImageNet-C's sigma is in pixels of a 224-pixel image; it is scaled by the short side / 224 so a
    severity blurs away the same share of the image's detail at any input size.
    """
    sigma = _blur_sigma(_severity_index(severity), (images.shape[-2], images.shape[-1]))
    radius = max(1, math.ceil(3 * sigma))
    offsets = torch.arange(-radius, radius + 1, device=images.device, dtype=images.dtype)
    kernel = torch.exp(-(offsets**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    channels = images.shape[1]
    # Separable: one horizontal and one vertical pass; edge pixels repeat (no dark frame).
    horizontal = kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1)
    vertical = kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1)
    out = F.pad(images, (radius, radius, 0, 0), mode="replicate")
    out = F.conv2d(out, horizontal, groups=channels)
    out = F.pad(out, (0, 0, radius, radius), mode="replicate")
    out = F.conv2d(out, vertical, groups=channels)
    return out.clamp_(0, 1)


def brightness(images: Tensor, severity: int) -> Tensor:
    """Raise the HSV value by 0.1..0.5, keeping hue and saturation (over-exposure)."""
    shift = _BRIGHTNESS_SHIFT[_severity_index(severity)]
    value = images.amax(dim=1, keepdim=True)
    new_value = (value + shift).clamp(max=1.0)
    # Scaling RGB by new/old value moves V and keeps H and S; black (V = 0) has no hue and
    # becomes grey at the new value.
    scaled = images * (new_value / value.clamp(min=1e-6))
    return torch.where(value > 0, scaled, new_value.expand_as(images)).clamp_(0, 1)


def contrast(images: Tensor, severity: int) -> Tensor:
    """Shrink every pixel towards its channel's mean by a factor 0.4..0.05 (haze, fog)."""
    factor = _CONTRAST_FACTOR[_severity_index(severity)]
    mean = images.mean(dim=(2, 3), keepdim=True)
    return ((images - mean) * factor + mean).clamp_(0, 1)


def jpeg(images: Tensor, severity: int) -> Tensor:
    """JPEG encode and decode at quality 25..7 (compression between camera and server)."""
    quality = _JPEG_QUALITY[_severity_index(severity)]
    pixels = (images.detach().cpu().clamp(0, 1) * 255).round().to(torch.uint8)
    decoded = []
    for image in pixels.permute(0, 2, 3, 1).numpy():
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
        buffer.seek(0)
        decoded.append(np.asarray(Image.open(buffer).convert("RGB")))
    out = torch.from_numpy(np.stack(decoded)).permute(0, 3, 1, 2).float().div_(255)
    return out.to(images.device)


def _severity_index(severity: int) -> int:
    if severity not in SEVERITIES:
        raise ValueError(f"corruption severity must be 1..5 (ImageNet-C), got {severity!r}")
    return severity - 1


def _blur_sigma(index: int, image_size: tuple[int, int]) -> float:
    return _BLUR_SIGMA[index] * min(image_size) / _IMAGENET_SIDE
