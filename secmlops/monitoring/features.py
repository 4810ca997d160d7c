"""Per-image features that describe what the camera sees, for drift monitoring.

Cheap statistics of the input (a few milliseconds per image on a CPU), computed in torch on the
image the detector receives, plus statistics of its detections. Serving logs them with every
request; the monitoring stage compares their distribution in a window with the training-time
reference (Evidently).

- brightness: mean luma (ITU-R BT.601), 0..1; night, over-exposure.
- contrast: standard deviation of luma; haze, fog, a dirty lens.
- sharpness: mean absolute Laplacian of luma; defocus, motion blur.
- colourfulness: Hasler & Suesstrunk (2003) colourfulness metric on 0..1 RGB.
- hf_energy: mean absolute difference between luma and its 3x3 box blur; sensor noise and
  high-frequency perturbations (adversarial noise raises it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

IMAGE_FEATURES = ("brightness", "contrast", "sharpness", "colourfulness", "hf_energy")
DETECTION_FEATURES = ("detections", "score_mean", "score_max", "box_area_mean")
# A detection counts when its score reaches this (the usual operating point of the detector).
SCORE_THRESHOLD = 0.3

_LAPLACIAN = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]]).view(1, 1, 3, 3)


def image_features(images: Tensor) -> list[dict[str, float]]:
    """Input features of a float [B,3,H,W] batch in [0,1] (one dict per image)."""
    luma = (0.299 * images[:, 0] + 0.587 * images[:, 1] + 0.114 * images[:, 2]).unsqueeze(1)
    laplacian = F.conv2d(luma, _LAPLACIAN.to(images), padding=1)[..., 1:-1, 1:-1]
    blurred = F.avg_pool2d(luma, 3, stride=1, padding=1, count_include_pad=False)
    red, green, blue = images[:, 0], images[:, 1], images[:, 2]
    rg, yb = red - green, 0.5 * (red + green) - blue
    colourfulness = torch.sqrt(rg.flatten(1).std(1) ** 2 + yb.flatten(1).std(1) ** 2) + 0.3 * (
        torch.sqrt(rg.flatten(1).mean(1) ** 2 + yb.flatten(1).mean(1) ** 2)
    )
    columns = {
        "brightness": luma.flatten(1).mean(1),
        "contrast": luma.flatten(1).std(1),
        "sharpness": laplacian.abs().flatten(1).mean(1),
        "colourfulness": colourfulness,
        "hf_energy": (luma - blurred).abs().flatten(1).mean(1),
    }
    return [
        {name: float(values[i]) for name, values in columns.items()} for i in range(len(images))
    ]


def detection_features(detections: dict[str, Tensor], image_area: float) -> dict[str, float]:
    """Statistics of one image's detections (scores >= SCORE_THRESHOLD)."""
    keep = detections["scores"] >= SCORE_THRESHOLD
    scores, boxes = detections["scores"][keep], detections["boxes"][keep]
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) / max(image_area, 1.0)
    return {
        "detections": float(len(scores)),
        "score_mean": float(scores.mean()) if len(scores) else 0.0,
        "score_max": float(scores.max()) if len(scores) else 0.0,
        "box_area_mean": float(areas.mean()) if len(areas) else 0.0,
    }


def request_features(image: Tensor, detections: dict[str, Tensor]) -> dict[str, float]:
    """What serving logs for one request, and the reference profile holds for one image: the
    input features of a [1,3,H,W] image and the statistics of its detections (CPU tensors)."""
    height, width = image.shape[-2:]
    return {
        **image_features(image.cpu())[0],
        **detection_features(detections, float(width * height)),
    }
