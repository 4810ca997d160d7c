"""The serving stage's adversarial-input score: is this upload a white-box evasion attack?

Threat model: an attacker who knows the production detector (white box) and uploads an image
perturbed within an L-inf ball (eps = 4/255 by default) to make people vanish or appear, e.g.
with PGD (Madry et al., 2018, arXiv:1706.06083). The score is a *detector*, not a defence: it
tells the service and the monitoring stage that an attack is likely, it changes no detection.
It is not robust to an adaptive attacker who also optimises against the score (Carlini & Wagner,
2017, "Adversarial Examples Are Not Easily Detected", arXiv:1705.07263; He et al., 2017,
arXiv:1706.04701, break feature squeezing this way); what it buys is that the standard
attacks are seen, and an attacker has to know about and model the screen.

Two signals, chosen by `benchmarks/adversarial_screening.py` for their cost:
- *uncertainty* (free: read off the forward pass that produces the detections): the mean
  binary entropy of the person heatmap. An untargeted attack on the detector's losses drives
  the heatmap away from its confident 0/1 state, filling it with half-confident evidence
  (suppressed people, invented ones), which is what this measures.
- *squeeze* disagreement: feature squeezing (Xu, Evans, Qi, 2018, "Feature Squeezing: Detecting
  Adversarial Examples in Deep Neural Networks", NDSS, arXiv:1704.01155) with their 2x2 median
  filter: the L1 distance between the heatmaps of the image and of its smoothed copy. A gradient
  perturbation is tuned to the exact pixels, so smoothing undoes much of its effect; a natural
  image barely changes. Stronger, but it costs a second forward pass.
`Screener` runs the free signal on every request and the squeeze check only on the requests the
free one finds suspicious (a cascade), so typical clean traffic pays almost nothing.

It also estimates the image's high-frequency energy: more of it than any eps-bounded change of a
calibration image can add means the image is noisy (sensor noise at night) or attacked beyond
the threat model's budget; either way it is `degraded`, not an eps-bounded evasion attempt, and
not counted as one.

CompactCenterNet gets a fast path (its heatmap comes from the same forward as its detections);
any other detector that follows the torchvision contract is scored on a map rendered from its
returned detections and their scores.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from secmlops.models.compact_centernet import CompactCenterNet

Images = Tensor | Sequence[Tensor]
Detections = list[dict[str, Tensor]]
ScoreMethod = Literal["uncertainty", "squeeze"]
METHODS: tuple[str, ...] = ("uncertainty", "squeeze")
DEFAULT_EPS = 4 / 255
# Share of clean images a calibrated screener may flag; calibrating it needs 1/rate images.
DEFAULT_FALSE_ALARM_RATE = 0.05
# Input pixels per cell of a map rendered from detections (CompactCenterNet's output stride).
MAP_STRIDE = 4
# Probabilities are clipped this far from 0 and 1 so the entropy of a confident cell is finite.
_PROB_CLIP = 1e-6


# ----------------------------------------------------------------------------------- signals
def median_smooth(images: Tensor) -> Tensor:
    """Xu et al.'s 2x2 median filter (their squeezer for ImageNet-size images).

    The median of four values is the mean of the middle two: (sum - max - min) / 2, which costs a
    few elementwise ops instead of a sort. Edges repeat, so the output keeps the input's size.

    Args:
        images: float [..., H, W] (a [B,3,H,W] batch or one [3,H,W] image).
    """
    padded = F.pad(images, (0, 1, 0, 1), mode="replicate")
    a, b = padded[..., :-1, :-1], padded[..., :-1, 1:]
    c, d = padded[..., 1:, :-1], padded[..., 1:, 1:]
    high = torch.maximum(torch.maximum(a, b), torch.maximum(c, d))
    low = torch.minimum(torch.minimum(a, b), torch.minimum(c, d))
    return (a + b + c + d - high - low) / 2


def high_frequency_energy(images: Images) -> Tensor:
    """Mean absolute diagonal (HH) detail of each image, float [B].

    HH = x[i,j] - x[i+1,j] - x[i,j+1] + x[i+1,j+1]. A perturbation bounded by eps in L-inf changes
    HH by at most 4*eps anywhere, which is what makes `ScreenerCalibration.noise_bound` a bound.
    """

    def one(x: Tensor) -> Tensor:
        hh = x[..., :-1, :-1] - x[..., 1:, :-1] - x[..., :-1, 1:] + x[..., 1:, 1:]
        return hh.abs().flatten(-3).mean(-1)

    if isinstance(images, Tensor) and images.dim() == 4:
        return one(images)
    return torch.stack([one(image) for image in images])


def score_maps(model: nn.Module, images: Images) -> tuple[Detections, Tensor]:
    """The detections and a person-probability map [B,1,h,w] of each image, from one forward.

    CompactCenterNet: its sigmoid heatmap. Any other detector: a map at `MAP_STRIDE` of the
    model's input size (or of the largest image) holding, at each detection's centre cell, the
    highest score there. The heatmap path is differentiable: an adaptive attack can target it.

    Raises:
        ValueError: the model is in training mode (it would return losses, and batch norm would
            use the batch's statistics).
    """
    if model.training:
        raise ValueError("screening needs the model in eval mode (call model.eval())")
    core = getattr(model, "_orig_mod", model)  # torch.compile wraps the module
    if isinstance(core, CompactCenterNet):
        batch, sizes = core._prepare(images)
        heatmap, size, offset = core._raw_outputs(batch)
        return core._decode(heatmap, size, offset, sizes), heatmap.sigmoid()
    detections = model(images)
    sizes = _image_sizes(images)
    reference = getattr(model, "input_size", None) or max(sizes)
    grid = (math.ceil(reference[0] / MAP_STRIDE), math.ceil(reference[1] / MAP_STRIDE))
    return detections, render_detections(detections, sizes, grid)


def render_detections(
    detections: Detections, image_sizes: Sequence[tuple[int, int]], grid: tuple[int, int]
) -> Tensor:
    """Detections as a [B,1,h,w] map: each box's score at its centre cell (the max if several).

    Args:
        detections: per image {"boxes" [n,4] x1y1x2y2 pixels, "scores" [n]}.
        image_sizes: (height, width) of each image, which the boxes are in.
        grid: (h, w) cells of the map.
    """
    grid_h, grid_w = grid
    device = detections[0]["scores"].device if detections else torch.device("cpu")
    maps = torch.zeros(len(detections), grid_h * grid_w, device=device)
    for i, (detection, (height, width)) in enumerate(zip(detections, image_sizes, strict=True)):
        boxes, scores = detection["boxes"], detection["scores"].float()
        if len(scores) == 0:
            continue
        cx = ((boxes[:, 0] + boxes[:, 2]) / 2 * grid_w / width).long().clamp(0, grid_w - 1)
        cy = ((boxes[:, 1] + boxes[:, 3]) / 2 * grid_h / height).long().clamp(0, grid_h - 1)
        maps[i] = maps[i].scatter_reduce(0, cy * grid_w + cx, scores, "amax")
    return maps.view(-1, 1, grid_h, grid_w)


def uncertainty(maps: Tensor) -> Tensor:
    """Mean binary entropy (nats) of each probability map [B,1,h,w], float [B]."""
    p = maps.float().clamp(_PROB_CLIP, 1 - _PROB_CLIP)
    entropy = -(p * p.log() + (1 - p) * (1 - p).log())
    return entropy.flatten(1).mean(1)


def squeeze_disagreement(maps: Tensor, squeezed_maps: Tensor) -> Tensor:
    """Mean L1 distance between the maps of images and of their squeezed copies, float [B].

    Both maps are max-pooled over 3x3 cells first: smoothing may legitimately move a peak by one
    cell, which is not the disagreement an attack causes.
    """

    def pooled(m: Tensor) -> Tensor:
        return F.max_pool2d(m.float(), 3, stride=1, padding=1)

    return (pooled(maps) - pooled(squeezed_maps)).abs().flatten(1).mean(1)


def detect_and_score(model: nn.Module, images: Images) -> tuple[Detections, Tensor]:
    """Detections plus the free (uncertainty) adversarial score [B], from a single forward pass.

    This is what the serving API should call instead of `model(images)`: the score costs
    microseconds on top of the forward pass the detections need anyway.
    """
    with torch.no_grad():
        detections, maps = score_maps(model, images)
        return detections, uncertainty(maps)


def adversarial_score(
    model: nn.Module, images: Images, method: ScoreMethod = "uncertainty"
) -> Tensor:
    """Uncalibrated adversarial-input score of each image, float [B]: higher is more suspicious.

    Args:
        model: a detector in eval mode following the torchvision contract.
        images: float [B,3,H,W] in [0,1], or a list of [3,H,W].
        method: "uncertainty" (one forward pass) or "squeeze" (the image and its median-smoothed
            copy in one forward pass of twice the batch).

    Raises:
        ValueError: unknown method, or the model is in training mode.
    """
    if method not in METHODS:
        raise ValueError(f"unknown screening method {method!r}; choose one of {', '.join(METHODS)}")
    with torch.no_grad():
        if method == "uncertainty":
            return uncertainty(score_maps(model, images)[1])
        count = len(images)
        # One batch of 2B costs less than two of B (better use of the vectorised kernels).
        _, maps = score_maps(model, _concat(images, _squeeze(images)))
        return squeeze_disagreement(maps[:count], maps[count:])


# ---------------------------------------------------------------------------------- screener
@dataclass(frozen=True)
class ScreenerCalibration:
    """Thresholds of a `Screener`, measured on clean images; JSON-serialisable.

    Args:
        uncertainty_threshold: uncertainty that clean images exceed at `false_alarm_rate`.
        escalate_at: uncertainty from which the squeeze check runs (None: never).
        squeeze_threshold: squeeze disagreement that clean images exceed at `false_alarm_rate`
            (None without escalation).
        noise_bound: high-frequency energy above which an image is `degraded`: the largest
            among the calibration images plus 4*eps, the most an eps-bounded change can add.
        false_alarm_rate: target share of clean images flagged.
        escalation_rate: target share of clean images that pay for the squeeze check.
        eps: the L-inf budget of the threat model.
        images: how many clean images the thresholds were measured on.
    """

    uncertainty_threshold: float
    escalate_at: float | None
    squeeze_threshold: float | None
    noise_bound: float
    false_alarm_rate: float
    escalation_rate: float
    eps: float
    images: int

    def to_json(self) -> dict[str, Any]:
        """Plain-JSON form (for a model card, policy or report)."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ScreenerCalibration:
        """Inverse of `to_json`.

        Raises:
            ValueError: a field is missing or unknown.
        """
        names = {f.name for f in fields(cls)}
        if set(data) != names:
            missing, unknown = sorted(names - set(data)), sorted(set(data) - names)
            raise ValueError(f"screener calibration: missing {missing}, unknown {unknown}")
        return cls(**data)


@dataclass(frozen=True)
class Screening:
    """What the screener says about a batch.

    Attributes:
        detections: the detector's output (the contract's list of dicts).
        score: float [B] in units of the alarm threshold: above 1 is an alarm.
        escalated: bool [B], the squeeze check ran (the free signal was suspicious).
        degraded: bool [B], more high-frequency energy than an eps-bounded attack can add:
            natural noise, or an attack beyond the threat model's budget.
    """

    detections: Detections
    score: Tensor
    escalated: Tensor
    degraded: Tensor

    @property
    def flagged(self) -> Tensor:
        """bool [B]: likely an eps-bounded evasion attack (an alarm on a non-degraded image)."""
        return (self.score > 1) & ~self.degraded


class Screener:
    """Detect and screen in one call: free uncertainty on every image, squeezing on suspects.

    The cascade keeps the median request at the cost of one forward pass while the squeeze check
    still sees every image that looks suspicious. An attacker who floods the service with
    attacks makes each of those requests cost about two forward passes, a bounded price.
    """

    def __init__(self, model: nn.Module, calibration: ScreenerCalibration) -> None:
        self.model = model
        self.calibration = calibration

    @classmethod
    def calibrate(
        cls,
        model: nn.Module,
        clean_images: Tensor,
        *,
        false_alarm_rate: float = DEFAULT_FALSE_ALARM_RATE,
        escalation_rate: float = 0.3,
        eps: float = DEFAULT_EPS,
        batch_size: int = 16,
    ) -> Screener:
        """Measure the thresholds on clean images (never on the images the screen is judged on).

        Args:
            model: the detector to screen for, in eval mode.
            clean_images: float [N,3,H,W] in [0,1], N >= 1 / false_alarm_rate.
            false_alarm_rate: largest share of the clean images allowed a score above 1.
            escalation_rate: target share of clean images that get the squeeze check; 0 turns it
                off (uncertainty alone), 1 squeezes every image. At least `false_alarm_rate`.
            eps: the threat model's L-inf budget (for `noise_bound`).
            batch_size: images per forward pass.

        Raises:
            ValueError: a rate out of range, or too few images for the false-alarm rate.
        """
        if not 0 < false_alarm_rate < 1:
            raise ValueError(f"false_alarm_rate must be in (0, 1), got {false_alarm_rate}")
        if escalation_rate != 0 and not false_alarm_rate <= escalation_rate <= 1:
            raise ValueError(
                f"escalation_rate must be 0 or in [false_alarm_rate, 1], got {escalation_rate}"
            )
        if len(clean_images) < math.ceil(1 / false_alarm_rate):
            raise ValueError(
                f"{len(clean_images)} clean images cannot resolve a false-alarm rate of "
                f"{false_alarm_rate}; need at least {math.ceil(1 / false_alarm_rate)}"
            )
        scores, squeezes, energies = [], [], []
        with torch.no_grad():
            for start in range(0, len(clean_images), batch_size):
                batch = clean_images[start : start + batch_size]
                _, maps = score_maps(model, batch)
                scores.append(uncertainty(maps))
                if escalation_rate > 0:
                    _, squeezed = score_maps(model, _squeeze(batch))
                    squeezes.append(squeeze_disagreement(maps, squeezed))
                energies.append(high_frequency_energy(batch))
        u = torch.cat(scores).float().cpu()
        escalate_at = squeeze_threshold = None
        if escalation_rate > 0:
            # Escalation "1" must include clean images less uncertain than any seen here.
            escalate_at = 0.0 if escalation_rate >= 1 else _quantile(u, 1 - escalation_rate)
            # Over all clean images rather than the escalated few: a stable estimate, and the
            # alarm (escalated AND above it) is then at most as frequent as intended.
            squeeze_threshold = _quantile(torch.cat(squeezes).float().cpu(), 1 - false_alarm_rate)
        calibration = ScreenerCalibration(
            uncertainty_threshold=_quantile(u, 1 - false_alarm_rate),
            escalate_at=escalate_at,
            squeeze_threshold=squeeze_threshold,
            noise_bound=float(torch.cat(energies).max()) + 4 * eps,
            false_alarm_rate=false_alarm_rate,
            escalation_rate=escalation_rate,
            eps=eps,
            images=len(clean_images),
        )
        return cls(model, calibration)

    def __call__(self, images: Images, energy: Tensor | None = None) -> Screening:
        """Detections and screening of a batch (float [B,3,H,W] in [0,1] or a list of [3,H,W]).

        Args:
            images: the batch.
            energy: `high_frequency_energy(images)` when the caller already has it (serving
                computes it per image while decoding, off the model's thread).
        """
        cal = self.calibration
        with torch.no_grad():
            detections, maps = score_maps(self.model, images)
            u = uncertainty(maps)
            score = u / max(cal.uncertainty_threshold, 1e-12)
            escalated = torch.zeros_like(u, dtype=torch.bool)
            if cal.escalate_at is not None and cal.squeeze_threshold is not None:
                escalated = u >= cal.escalate_at
                if bool(escalated.any()):
                    index = escalated.nonzero().flatten()
                    suspects = _select(images, index)
                    _, squeezed = score_maps(self.model, _squeeze(suspects))
                    ratio = squeeze_disagreement(maps[index], squeezed) / max(
                        cal.squeeze_threshold, 1e-12
                    )
                    # An escalated image never ranks below one that was not escalated; whether
                    # it alarms is the squeeze check's call alone.
                    floor = cal.escalate_at / max(cal.uncertainty_threshold, 1e-12)
                    score = score.clone()
                    score[index] = ratio.clamp(min=floor)
            if energy is None:
                energy = high_frequency_energy(images)
            degraded = energy.to(score.device) > cal.noise_bound
        return Screening(detections, score, escalated, degraded)


# ----------------------------------------------------------------------------------- helpers
def _image_sizes(images: Images) -> list[tuple[int, int]]:
    if isinstance(images, Tensor) and images.dim() == 4:
        return [(int(images.shape[-2]), int(images.shape[-1]))] * len(images)
    return [(int(image.shape[-2]), int(image.shape[-1])) for image in images]


def _squeeze(images: Images) -> Images:
    if isinstance(images, Tensor):
        return median_smooth(images)
    return [median_smooth(image) for image in images]


def _concat(first: Images, second: Images) -> Images:
    if isinstance(first, Tensor) and isinstance(second, Tensor) and first.dim() == 4:
        return torch.cat([first, second])
    return [*first, *second]


def _select(images: Images, index: Tensor) -> Images:
    if isinstance(images, Tensor) and images.dim() == 4:
        return images[index.to(images.device)]
    return [images[int(i)] for i in index]


def _quantile(values: Tensor, q: float) -> float:
    # "higher": a sample value, so at most (1 - q) of the samples lie strictly above it.
    return float(torch.quantile(values, q, interpolation="higher"))
