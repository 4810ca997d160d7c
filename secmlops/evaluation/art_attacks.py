"""IBM's Adversarial Robustness Toolbox (ART 1.20) run against our detectors.

ART is the independent reference of the robustness gate: its attacks are written and reviewed
outside this project, so a robust mAP measured with them does not depend on our own attack code
being right (`secmlops.attacks` is cross-checked against ART's PGD for exactly that reason).

Every attack here is white box: it reads the model's loss gradient through ART's
`PyTorchObjectDetector`, which computes it with the model in train mode and batch norm and
dropout in eval mode, the same frozen-statistics mode as `secmlops.attacks.loss_mode`.
Images are float numpy [N,3,H,W] in [0,1] at the model's input size; boxes are in those pixels.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, cast

import numpy as np
import torch
from torch import Tensor, nn

from secmlops import models

# ART keeps only "boxes" and "labels" (and "masks") of a target dict, so ignore regions travel as
# boxes with this label and `_IgnoreRegionsFromLabels` turns them back into the model's "ignore".
IGNORE_LABEL = 0
PERSON_LABEL = 1


class _IgnoreRegionsFromLabels(nn.Module):
    """The detector, with targets whose label-0 boxes become its ignore regions.

    Without this, ART would drop the ignore regions and attack a different loss than
    `secmlops.attacks.perturb` does (one that punishes detections inside crowd regions).
    """

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.detector = detector

    def forward(
        self, images: Tensor | Sequence[Tensor], targets: Sequence[dict[str, Tensor]] | None = None
    ) -> Any:
        if targets is None:
            return self.detector(images)
        converted = []
        for target in targets:
            labels = target["labels"]
            converted.append(
                {
                    "boxes": target["boxes"][labels != IGNORE_LABEL],
                    "labels": labels[labels != IGNORE_LABEL],
                    "ignore": target["boxes"][labels == IGNORE_LABEL],
                }
            )
        return self.detector(images, converted)


def art_detector(model: nn.Module, architecture: str, device: torch.device) -> Any:
    """Wrap a detector as ART's `PyTorchObjectDetector`.

    Args:
        model: a detector following the torchvision contract, at its input size.
        architecture: its architecture name (selects the loss keys ART maximises).
        device: where the model lives.

    Returns:
        The ART estimator; its attack loss is the sum of the model's training losses.
    """
    from art.estimators.object_detection import PyTorchObjectDetector

    if device.type == "cuda" and device.index is not None:
        # ART always uses the current CUDA device.
        torch.cuda.set_device(device)
    # every detector carries its (height, width); nn.Module attributes type as Tensor | Module
    height, width = cast(tuple[int, int], model.input_size)
    return PyTorchObjectDetector(
        model=_IgnoreRegionsFromLabels(model),  # model= always: None makes ART download weights
        input_shape=(3, height, width),
        clip_values=(0, 1),
        channels_first=True,
        attack_losses=models.loss_keys(architecture),
        device_type="gpu" if device.type == "cuda" else "cpu",
    )


@contextmanager
def input_gradients_only(model: nn.Module) -> Iterator[None]:
    """Freeze the weights while ART attacks: its `loss_gradient` would otherwise compute every
    weight's gradient too, which no attack uses (about 20% of a PGD run on a CPU)."""
    flags = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(model.parameters(), flags, strict=True):
            p.requires_grad_(flag)


def art_labels(boxes: Sequence[Tensor], ignore: Sequence[Tensor]) -> list[dict[str, np.ndarray]]:
    """ART's `y`: per image the person boxes (label 1) followed by the ignore regions (label 0)."""
    labels: list[dict[str, np.ndarray]] = []
    for person, crowd in zip(boxes, ignore, strict=True):
        labels.append(
            {
                "boxes": torch.cat([person, crowd]).numpy().astype(np.float32).reshape(-1, 4),
                "labels": np.array(
                    [PERSON_LABEL] * len(person) + [IGNORE_LABEL] * len(crowd), dtype=np.int64
                ),
            }
        )
    return labels


def fgsm(estimator: Any, images: np.ndarray, labels: list[dict], eps: float) -> np.ndarray:
    """ART's Fast Gradient Sign Method: one signed gradient step of size `eps`.

    Threat model: white box, untargeted, L-inf ball of radius `eps` around the clean image.
    Goodfellow, Shlens, Szegedy, 2015, "Explaining and Harnessing Adversarial Examples",
    arXiv:1412.6572.
    """
    from art.attacks.evasion import FastGradientMethod

    attack = FastGradientMethod(
        estimator, norm=np.inf, eps=eps, eps_step=eps, batch_size=max(1, len(images))
    )
    return attack.generate(images, y=labels)


def fgsm_params(eps_level: int) -> dict[str, Any]:
    """The settings `fgsm` runs with, for the report."""
    return {"norm": "inf", "eps": eps_level / 255, "eps_255": eps_level}


def pgd(
    estimator: Any, images: np.ndarray, labels: list[dict], eps: float, steps: int
) -> np.ndarray:
    """ART's projected gradient descent: `steps` signed steps of 2.5*eps/steps from the clean
    image (no random start, so the result is deterministic), each projected into the eps-ball.

    Threat model: white box, untargeted, L-inf ball of radius `eps`.
    Madry, Makelov, Schmidt, Tsipras, Vladu, 2018, "Towards Deep Learning Models Resistant to
    Adversarial Attacks", arXiv:1706.06083.
    """
    from art.attacks.evasion import ProjectedGradientDescent

    attack = ProjectedGradientDescent(
        estimator,
        norm=np.inf,
        eps=eps,
        eps_step=pgd_step_size(eps, steps),
        max_iter=steps,
        num_random_init=0,
        batch_size=max(1, len(images)),
        verbose=False,
    )
    return attack.generate(images, y=labels)


def pgd_step_size(eps: float, steps: int) -> float:
    """Madry et al.'s step size: the walk can cross the eps-ball 2.5 times."""
    return 2.5 * eps / steps


def pgd_params(eps_level: int, steps: int) -> dict[str, Any]:
    """The settings `pgd` runs with, for the report."""
    eps = eps_level / 255
    return {
        "norm": "inf",
        "eps": eps,
        "eps_255": eps_level,
        "max_iter": steps,
        "eps_step": pgd_step_size(eps, steps),
        "num_random_init": 0,
    }


class UniversalPatch:
    """ART's RobustDPatch: one square patch, the same for every image, trained to break
    detection, then pasted at a fixed place in the scene.

    Threat model: a physical, universal attacker. The patch is a printed sticker or poster in the
    camera's view: its pixels are unbounded (any colour) but confined to one square region of
    side `fraction` * the image's short side; it is trained once, white box, on a handful of
    images and must work on every frame without per-frame knowledge. Untargeted: it maximises
    the detector's loss against its own clean detections (y=None), so it needs no labels.
    Training uses expectation over transformation in brightness (lighting changes).
    Lee & Kolter, 2019, "On Physical Adversarial Patches for Object Detection",
    arXiv:1906.11897 (RobustDPatch), after Liu et al., 2018, "DPatch: An Adversarial Patch
    Attack on Object Detectors", arXiv:1806.02299.

    Args:
        estimator: the ART detector.
        image_size: (height, width) of the images.
        fraction: patch side as a share of the short side.
        iterations: signed-gradient steps (each one over all training images).
        step: pixel change per step. ART also rounds the training images to multiples of it,
            so it must stay small (a few /255).
        seed: seeds the initial patch and ART's transformation sampling.
    """

    def __init__(
        self,
        estimator: Any,
        image_size: tuple[int, int],
        fraction: float,
        *,
        iterations: int = 20,
        step: float = 8 / 255,
        seed: int = 0,
    ) -> None:
        from art.attacks.evasion import RobustDPatch

        height, width = image_size
        self.side = max(1, round(fraction * min(height, width)))
        # The centre of the frame, where people walk through a typical street camera's view. It
        # also occludes some of them: on a weak synthetic-data model an untrained random patch
        # already cost 0.39 -> 0.14 mAP@0.5 and training it took that to ~0.10, so read `patch`
        # as occlusion plus adversarial effect.
        self.location = ((height - self.side) // 2, (width - self.side) // 2)
        self.iterations = iterations
        self.step = step
        self.seed = seed
        self._attack = RobustDPatch(
            estimator,
            patch_shape=(3, self.side, self.side),
            patch_location=self.location,  # (row, column) of the top-left corner
            brightness_range=(0.8, 1.0),
            learning_rate=float(step),
            max_iter=iterations,
            batch_size=16,
            targeted=False,
            verbose=False,
        )
        # ART draws its initial patch from numpy's global RNG; ours is seeded.
        rng = np.random.default_rng(seed)
        self._attack._patch = (rng.integers(0, 256, (3, self.side, self.side)) / 255).astype(
            np.float32
        )

    def train(self, images: np.ndarray) -> np.ndarray:
        """Optimise the patch on `images`; returns it (float [3,side,side] in [0,1])."""
        # ART samples its transformations from Python's global RNG: seed it, then restore it.
        state = random.getstate()
        random.seed(self.seed)
        try:
            return self._attack.generate(images, y=None)
        finally:
            random.setstate(state)

    def apply(self, images: np.ndarray) -> np.ndarray:
        """`images` with the patch pasted at its place."""
        return self._attack.apply_patch(images)

    def params(self, trained_on: int) -> dict[str, Any]:
        """The settings, for the report."""
        return {
            "patch_side": self.side,
            "patch_location_yx": list(self.location),
            "iterations": self.iterations,
            "learning_rate": self.step,
            "brightness_range": [0.8, 1.0],
            "targeted": False,
            "trained_on_images": trained_on,
            "seed": self.seed,
        }
