"""The defences applied to training batches: adversarial augmentation and patch augmentation.

- Adversarial augmentation (Madry et al. 2018; FGSM-RS, Wong et al. 2020): a `mix` share of
  every batch is replaced by adversarial versions crafted against the current weights, split
  between attack objectives (the training losses, and TOG-vanishing on the objectness map).
- Patch augmentation: patches on the people's torsos, against person-worn patches: random ones
  (Cutout-style occlusion), or each epoch's universal adversarial patch against the current
  weights (universal adversarial training, Shafahi et al. 2020, with the person-worn patch of
  Thys et al. 2019 as the perturbation; Wu, Tong, Vorobeychik 2020, arXiv:1909.09552, and Rao,
  Stutz, Schiele 2020, arXiv:2005.02313, train classifiers on optimised patches the same way).

Both draw only from the generators the trainer hands them, so a resumed run replays exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, cast

import torch
from torch import Tensor, nn

from secmlops.attacks.budget import parse_eps
from secmlops.attacks.objectness import OBJECTIVES
from secmlops.attacks.person_patch import PersonPatchConfig, apply_patch, train_patch
from secmlops.attacks.projected_gradient import AttackConfig, Objective, fgsm_rs, perturb
from secmlops.errors import ModelError

# Patch augmentation: the random patch's own pixels (square) and the range its side is drawn
# from, as a share of the wearer's box height (the evaluation's person patch is 0.25).
AUGMENT_PATCH_RESOLUTION = 32
AUGMENT_PATCH_FRACTION = (0.15, 0.35)
# Adversarial patch augmentation: Adam's learning rate on the epoch's patch pixels, three times
# the evaluation's (0.01 x 150 steps), so that a few dozen steps move pixels across their range.
ADVERSARIAL_PATCH_STEP_SIZE = 0.03


@dataclass(frozen=True)
class AdversarialConfig:
    """Adversarial augmentation: which attack crafts the examples and how many replace clean ones.

    Args:
        attack: the training-time attack (PGD-K or FGSM-RS, see `secmlops.attacks`).
        mix: fraction of every batch replaced by adversarial versions of its images (0..1].
            Keeping clean images in the batch limits the clean-accuracy cost of the defence.
        eps_warmup_epochs: eps grows linearly from 0 to `attack.eps` over these epochs; a
            detector that cannot yet find people learns nothing from attacks on them.
        objectives: what the attack maximises, one equal consecutive part of the adversarial
            share per objective (`secmlops.attacks.objectness.OBJECTIVES`). ("loss",) moves
            away from the true boxes, which on a CenterNet mostly fabricates boxes; adding
            "vanishing" (TOG-vanishing, Chow et al. 2020, arXiv:2004.04320) trains on images
            whose every objectness score was pushed down: the attack that hides people at the
            operating point. Each part's attack is `attack` with its objective replaced, so
            `attack.objective` must be "loss" (unset) or one of them.
    """

    attack: AttackConfig
    mix: float = 0.5
    eps_warmup_epochs: int = 2
    objectives: tuple[str, ...] = ("loss",)

    def __post_init__(self) -> None:
        if not 0 < self.mix <= 1:
            raise ModelError(f"mix must be in (0, 1], got {self.mix}")
        if self.eps_warmup_epochs < 0:
            raise ModelError(f"eps warm-up must be >= 0 epochs, got {self.eps_warmup_epochs}")
        objectives = (self.objectives,) if isinstance(self.objectives, str) else self.objectives
        object.__setattr__(self, "objectives", tuple(objectives))  # a JSON list, or a name
        if not self.objectives:
            raise ModelError("adversarial training needs at least one attack objective")
        unknown = [o for o in self.objectives if o not in OBJECTIVES]
        if unknown:
            raise ModelError(
                f"unknown attack objective {unknown[0]!r}; choose from {', '.join(OBJECTIVES)}"
            )
        repeated = sorted({o for o in self.objectives if self.objectives.count(o) > 1})
        if repeated:
            raise ModelError(f"attack objective {repeated[0]!r} is listed more than once")
        if self.attack.objective != "loss" and self.attack.objective not in self.objectives:
            raise ModelError(
                f"the attack's objective {self.attack.objective!r} is not among the training "
                f"objectives ({', '.join(self.objectives)}), which replace it"
            )

    def to_json(self) -> dict[str, Any]:
        """The form recorded in model.json (`training.adversarial`) and in checkpoints."""
        return {
            **self.attack.to_json(),
            "mix": self.mix,
            "eps_warmup_epochs": self.eps_warmup_epochs,
            "objectives": list(self.objectives),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> AdversarialConfig:
        """Inverse of `to_json`."""
        attack = AttackConfig(
            **{k: data[k] for k in ("method", "eps", "steps", "norm", "step_size", "random_start")},
            # Absent from cards and checkpoints written before score-level objectives existed.
            objective=data.get("objective", "loss"),
            schedule=data.get("schedule", "fixed"),
        )
        return cls(
            attack=attack, mix=data["mix"], eps_warmup_epochs=data["eps_warmup_epochs"],
            # Absent before training could mix objectives: the whole share used the attack's
            # own objective, the loss for every run the CLI, DAG or study could start.
            objectives=tuple(data.get("objectives", (attack.objective,))),
        )  # fmt: skip

    def eps_fraction(self, step: int, steps_per_epoch: int) -> float:
        """Share of the full eps used at global optimizer step `step` (0-based)."""
        warmup_steps = self.eps_warmup_epochs * steps_per_epoch
        return 1.0 if warmup_steps == 0 else min(1.0, (step + 1) / warmup_steps)


def adversarial_config(
    method: str,
    eps: str | float,
    steps: int,
    mix: float,
    eps_warmup_epochs: int = 2,
    objectives: tuple[str, ...] = ("loss",),
) -> AdversarialConfig | None:
    """The adversarial augmentation a user asked for by name ("none", "pgd" or "fgsm-rs"),
    its adversarial share split between `objectives` (see `AdversarialConfig`).

    Raises:
        ModelError: an unknown method or invalid settings (eps, steps, mix, objectives), or
            objectives other than the default with no adversarial training to apply them.
    """
    if method == "none":
        if tuple(objectives) != ("loss",):
            raise ModelError(
                f"attack objectives {'+'.join(objectives)!r} need adversarial training; "
                "choose pgd or fgsm-rs, or leave the objectives at loss"
            )
        return None
    if method == "fgsm-rs":
        attack = fgsm_rs(parse_eps(eps))
    elif method == "pgd":
        attack = AttackConfig(method="pgd", eps=parse_eps(eps), steps=steps)
    else:
        raise ModelError(f"unknown adversarial training {method!r}; choose none, pgd or fgsm-rs")
    return AdversarialConfig(
        attack=attack, mix=mix, eps_warmup_epochs=eps_warmup_epochs, objectives=tuple(objectives)
    )


def epoch_patch(
    model: nn.Module, images: Tensor, boxes: Sequence[Tensor], steps: int, seed: int
) -> Tensor:
    """The universal person-worn patch of the current weights, for one epoch of patch augmentation.

    Universal adversarial training (Shafahi, Najibi, Xu et al. 2020, "Universal Adversarial
    Training", AAAI, arXiv:1811.11304) against the attack the evaluation runs: `train_patch`
    (TOG-vanishing objective, EOT, Thys et al. 2019) for `steps` Adam steps over the training
    images' people, from a fresh random start, at the middle of the augmentation's size range.
    Made once per epoch, so its cost is `steps` small batches per epoch, and a run resumed at an
    epoch boundary makes the same patch from the same weights.

    Args:
        model: the detector being trained (left as it was).
        images: the training split's images (uint8 or float), at the model's input size.
        boxes: their person boxes.
        steps: optimisation steps.
        seed: seeds the start, the sampling and the EOT draws.

    Returns:
        The patch, float [3, AUGMENT_PATCH_RESOLUTION, AUGMENT_PATCH_RESOLUTION] in [0,1], CPU.

    Raises:
        ModelError: no training image has a person, or the model has no objectness map.
    """
    low, high = AUGMENT_PATCH_FRACTION
    config = PersonPatchConfig(
        fraction=(low + high) / 2, steps=steps, resolution=AUGMENT_PATCH_RESOLUTION,
        step_size=ADVERSARIAL_PATCH_STEP_SIZE, seed=seed,
    )  # fmt: skip
    return train_patch(model, images, boxes, config)


def patch_augment(
    images: Tensor,
    boxes: list[Tensor],
    probability: float,
    generator: torch.Generator,
    patch: Tensor | None = None,
) -> Tensor:
    """Put a patch on the torso of every person in a `probability` share of `images`.

    A defence against person-worn adversarial patches (Thys, Van Ranst, Goedeme 2019,
    arXiv:1904.08653, `secmlops.attacks.person_patch`), trained where that attack sits, so a
    detector learns that a covered torso still belongs to a person. Without `patch` it is
    random pixels: Cutout-style occlusion. With the epoch's adversarial patch (`epoch_patch`)
    it is adversarial training with the attack's own kind of example. Neither is certified;
    the evaluation's adversarial person patch judges whether it helped.

    Every call draws, from `generator` (the epoch's CPU generator: a resumed run replays it),
    which images are patched, one fresh patch of uniform random pixels
    [3, AUGMENT_PATCH_RESOLUTION, AUGMENT_PATCH_RESOLUTION] for the batch (worn unless `patch`
    is given), and its side as a share of each wearer's height, U(AUGMENT_PATCH_FRACTION);
    `apply_patch` then places it with its EOT draws (scale, rotation, colour, noise, jitter).
    People too small for a 2-pixel patch, and the ignore regions, wear none.

    Args:
        images: float [B,3,H,W] in [0,1] (after `augment_batch`).
        boxes: per image, [n,4] person boxes x1y1x2y2 in the images' pixels (after it too).
        probability: per image, in [0,1].
        generator: a CPU generator.
        patch: the patch to wear, [3,r,r] in [0,1] (default: the random one drawn).

    Returns:
        The batch with the chosen images patched (a new tensor; the others unchanged).
    """
    chosen = torch.rand(len(images), generator=generator) < probability
    side = AUGMENT_PATCH_RESOLUTION
    random = torch.rand((3, side, side), generator=generator)
    worn = random if patch is None else patch
    low, high = AUGMENT_PATCH_FRACTION
    fraction = low + (high - low) * float(torch.rand((), generator=generator))
    index = chosen.nonzero().flatten()
    if len(index) == 0:
        return images
    patched = apply_patch(
        images[index.to(images.device)],
        [boxes[i] for i in index.tolist()],
        worn.to(images.device, images.dtype),
        fraction,
        generator=generator,
        eot=True,
    )
    return images.index_copy(0, index.to(images.device), patched)


def adversarial_mix(
    model: nn.Module,
    images: Tensor,
    targets: list[dict[str, Tensor]],
    adversarial: AdversarialConfig,
    global_step: int,
    steps_per_epoch: int,
    generator: torch.Generator,
    amp: bool,
) -> Tensor:
    """Replace the first `mix` share of the (already shuffled) batch by adversarial examples:
    consecutive parts of equal size (the first ones one image larger when it does not divide),
    one per objective, in the order of `adversarial.objectives`, each attacked on its own."""
    count = max(1, round(adversarial.mix * len(images)))
    attack = adversarial.attack.scaled(adversarial.eps_fraction(global_step, steps_per_epoch))
    size, extra = divmod(count, len(adversarial.objectives))
    crafted, start = [], 0
    for i, objective in enumerate(adversarial.objectives):
        end = start + size + (i < extra)
        if end > start:  # a batch smaller than the objectives leaves the last ones out
            part = replace(attack, objective=cast(Objective, objective))
            chunk, chunk_targets = images[start:end], targets[start:end]
            crafted.append(perturb(model, chunk, chunk_targets, part, generator=generator, amp=amp))
        start = end
    return torch.cat([*crafted, images[count:]])
