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
# RGB -> (luma (ITU-R BT.601), red-green, yellow-blue): the three planes every feature reads,
# made by one matrix product over the pixels.
_OPPONENT = torch.tensor([[0.299, 1.0, 0.5], [0.587, -1.0, 0.5], [0.114, 0.0, -1.0]])


def image_features(images: Tensor) -> list[dict[str, float]]:
    """Input features of a float [B,3,H,W] batch in [0,1] (one dict per image), any layout.

    Memory-bound: each full-resolution pass costs about as much as the arithmetic, so the planes
    are made once, contiguous, and the Laplacian and the 3x3 box blur are sums of shifted views
    (about a third of the time of `conv2d` and `avg_pool2d` on one plane).
    """
    planes = (images.permute(0, 2, 3, 1) @ _OPPONENT.to(images)).permute(0, 3, 1, 2).contiguous()
    luma, rg, yb = planes[:, 0], planes[:, 1].flatten(1), planes[:, 2].flatten(1)
    colourfulness = torch.sqrt(rg.std(1) ** 2 + yb.std(1) ** 2) + 0.3 * (
        torch.sqrt(rg.mean(1) ** 2 + yb.mean(1) ** 2)
    )
    # 4-neighbour Laplacian on the interior (what a padded conv2d, cropped by one, gives).
    centre = luma[:, 1:-1, 1:-1]
    laplacian = luma[:, :-2, 1:-1] + luma[:, 2:, 1:-1] + luma[:, 1:-1, :-2] + luma[:, 1:-1, 2:]
    laplacian = laplacian - 4 * centre
    columns = torch.stack(
        [
            luma.flatten(1).mean(1),
            luma.flatten(1).std(1),
            laplacian.abs().flatten(1).mean(1),
            colourfulness,
            (luma - _box_blur(luma)).abs().flatten(1).mean(1),
        ],
        dim=1,
    ).tolist()
    return [dict(zip(IMAGE_FEATURES, row, strict=True)) for row in columns]


def _box_blur(plane: Tensor) -> Tensor:
    """3x3 mean of [B,H,W] over the neighbours inside the image (avg_pool2d with padding 1 and
    count_include_pad=False), as two separable 3-sums divided by the count of each window."""
    padded = F.pad(plane, (1, 1, 1, 1))
    rows = padded[:, :-2] + padded[:, 1:-1] + padded[:, 2:]
    sums = rows[..., :-2] + rows[..., 1:-1] + rows[..., 2:]
    height, width = plane.shape[-2:]
    counts_h = torch.full((height,), 3.0, dtype=plane.dtype, device=plane.device)
    counts_w = torch.full((width,), 3.0, dtype=plane.dtype, device=plane.device)
    counts_h[[0, -1]] -= 1
    counts_w[[0, -1]] -= 1
    return sums / (counts_h[:, None] * counts_w[None, :])


def detection_features(
    detections: dict[str, Tensor], image_area: float, score_threshold: float
) -> dict[str, float]:
    """Statistics of one image's detections at the release's operating point (scores >=
    `score_threshold`), as serving acts on them."""
    keep = detections["scores"] >= score_threshold
    scores, boxes = detections["scores"][keep], detections["boxes"][keep]
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) / max(image_area, 1.0)
    return {
        "detections": float(len(scores)),
        "score_mean": float(scores.mean()) if len(scores) else 0.0,
        "score_max": float(scores.max()) if len(scores) else 0.0,
        "box_area_mean": float(areas.mean()) if len(areas) else 0.0,
    }


def request_features(
    image: Tensor, detections: dict[str, Tensor], score_threshold: float
) -> dict[str, float]:
    """What serving logs for one request, and the reference profile holds for one image: the
    input features of a [1,3,H,W] image and the statistics of its detections (CPU tensors) at
    the operating point."""
    height, width = image.shape[-2:]
    return {
        **image_features(image.cpu())[0],
        **detection_features(detections, float(width * height), score_threshold),
    }
