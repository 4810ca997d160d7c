"""White-box gradient attacks on a detector's training losses, batched on the model's device.

Threat model: an evasion attacker who knows the model (white box) and adds a perturbation
`delta` to the pixels the detector sees (float [0,1], at the model's input), bounded in L-inf
(`||delta||_inf <= eps`, e.g. 4/255: invisible to a person) or in L2. The attack is untargeted:
it maximises the sum of the detector's training losses against the true boxes, which makes
people vanish, move or multiply.

- Projected gradient descent, PGD (Madry, Makelov, Schmidt, Tsipras, Vladu, 2018,
  "Towards Deep Learning Models Resistant to Adversarial Attacks", arXiv:1706.06083):
  `steps` signed (L-inf) or normalised (L2) gradient steps, each projected back into the eps-ball
  and the valid pixel range, from a random start inside the ball.
- FGSM with random start, FGSM-RS (Wong, Rice, Kolter, 2020, "Fast is better than free:
  Revisiting adversarial training", arXiv:2001.03994): one step of size 1.25*eps from a uniform
  random start; as strong a training signal as PGD at the price of one gradient.
- The APGD step schedule (Croce, Hein, 2020, "Reliable evaluation of adversarial robustness with
  an ensemble of diverse parameter-free attacks", arXiv:2003.01690), `schedule="apgd"`: steps
  start at 2*eps with momentum 0.75 and halve at fixed checkpoints when the objective stopped
  rising, restarting from the best point found; what makes a fixed step budget strong without
  tuning a step size per model. Progress is judged per image where the objective is per image
  (vanishing, fabrication) and per batch for the training losses.

The objective is the sum of the training losses ("loss") or a score-level one
(`secmlops.attacks.objectness`: "vanishing", "fabrication"), set by `AttackConfig.objective`.

Both run without leaving the device (no numpy round trips), without computing weight gradients
(only the input needs one), and on a copy of the model whose frozen batch norms are folded into
the convolutions before them (the same function, one layer fewer to run forward and backward at
every step): together what makes adversarial training affordable.
Under AMP the loss is computed in half precision; it is scaled before the backward pass so small
input gradients do not underflow (only their direction is used, so the scale cancels out).

ART's `ProjectedGradientDescent` is the independent reference these are checked against
(`secmlops.evaluation.robustness`): same model, same settings, robust mAP within 0.03.
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from secmlops.attacks.objectness import OBJECTIVES, fabrication_objective, vanishing_objective
from secmlops.errors import ModelError

Norm = Literal["inf", "2"]
Method = Literal["pgd", "fgsm-rs"]
Objective = Literal["loss", "vanishing", "fabrication"]
Schedule = Literal["fixed", "apgd"]
METHODS: tuple[str, ...] = ("pgd", "fgsm-rs")
# APGD's constants (Croce and Hein 2020, section 3): momentum, and the share of steps since the
# last checkpoint that must have raised the objective for the step size to stay.
_APGD_MOMENTUM = 0.75
_APGD_RHO = 0.75
# Loss scale under AMP: keeps float16 input gradients of a mean loss away from underflow.
_AMP_LOSS_SCALE = 2.0**12


@dataclass(frozen=True)
class AttackConfig:
    """One gradient attack's settings.

    Args:
        method: "pgd" or "fgsm-rs".
        eps: perturbation budget in [0,1] pixel units (4/255 = 0.0157 for L-inf).
        steps: gradient steps (FGSM-RS always takes one).
        norm: "inf" or "2".
        step_size: per-step size; default 2.5*eps/steps for PGD (Madry et al.), 1.25*eps for
            FGSM-RS (Wong et al.).
        random_start: start from a uniform point in the eps-ball (FGSM-RS requires it).
        objective: what the attack maximises: "loss" (the training losses against the true
            boxes), "vanishing" or "fabrication" (objectness scores, no ground truth needed).
        schedule: "fixed" steps of `step_size`, or "apgd" (PGD only: step size from 2*eps,
            momentum, halving at checkpoints; `step_size` must then be unset).
    """

    method: Method = "pgd"
    eps: float = 4 / 255
    steps: int = 10
    norm: Norm = "inf"
    step_size: float | None = None
    random_start: bool = True
    objective: Objective = "loss"
    schedule: Schedule = "fixed"

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ModelError(f"unknown attack {self.method!r}; choose one of {', '.join(METHODS)}")
        if self.norm not in ("inf", "2"):
            raise ModelError(f"unknown norm {self.norm!r}; choose inf or 2")
        if not (self.eps > 0 and math.isfinite(self.eps)):
            raise ModelError(f"eps must be a positive number, got {self.eps}")
        if self.norm == "inf" and self.eps > 1:
            raise ModelError(f"an L-inf eps is in [0,1] pixel units; {self.eps} exceeds 1")
        if self.steps < 1:
            raise ModelError(f"steps must be at least 1, got {self.steps}")
        if self.method == "fgsm-rs" and (self.steps != 1 or not self.random_start):
            raise ModelError("FGSM-RS takes exactly one step from a random start")
        if self.objective not in OBJECTIVES:
            raise ModelError(
                f"unknown attack objective {self.objective!r}; "
                f"choose one of {', '.join(OBJECTIVES)}"
            )
        if self.schedule not in ("fixed", "apgd"):
            raise ModelError(f"unknown step schedule {self.schedule!r}; choose fixed or apgd")
        if self.schedule == "apgd" and (self.method != "pgd" or self.step_size is not None):
            raise ModelError("the APGD schedule is for PGD and sets its own step sizes")

    @property
    def alpha(self) -> float:
        """The step size actually used."""
        if self.step_size is not None:
            return self.step_size
        return 1.25 * self.eps if self.method == "fgsm-rs" else 2.5 * self.eps / self.steps

    def scaled(self, fraction: float) -> AttackConfig:
        """The same attack with eps (and an explicit step size) times `fraction` (eps warm-up)."""
        step = None if self.step_size is None else self.step_size * fraction
        return AttackConfig(**{**asdict(self), "eps": self.eps * fraction, "step_size": step})

    def to_json(self) -> dict[str, Any]:
        """Plain-JSON form for model cards and reports (with the resolved step size)."""
        return {**asdict(self), "step_size": self.alpha}


def fgsm_rs(eps: float, norm: Norm = "inf") -> AttackConfig:
    """The FGSM-RS settings of Wong et al. (2020): one 1.25*eps step from a random start."""
    return AttackConfig(method="fgsm-rs", eps=eps, steps=1, norm=norm)


@contextmanager
def loss_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Let `model` return its losses without changing it: train mode, frozen batch norm and
    dropout, no weight gradients. Restores everything afterwards.

    Batch norm in train mode would both normalise with the adversarial batch's own statistics
    and update the running ones: an attack must neither see nor leave that side effect. This is
    the mode ART's detector wrappers use for loss gradients too.
    """
    was_training = model.training
    requires_grad = [p.requires_grad for p in model.parameters()]
    model.train()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm | nn.Dropout):
            module.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p, flag in zip(model.parameters(), requires_grad, strict=True):
            p.requires_grad_(flag)
        model.train(was_training)


def fold_batch_norm(model: nn.Module) -> nn.Module:
    """A copy of `model` with every batch norm that directly follows a convolution folded into it.

    With its statistics frozen (as in `loss_mode`), batch norm is a per-channel affine map, and a
    convolution followed by an affine map is one convolution: the copy computes the same function
    with less work. Layers it cannot fold (anything not inside a Sequential right after a Conv2d)
    stay as they are. The original model is not touched.
    """
    folded = copy.deepcopy(model).eval()
    for module in folded.modules():
        if not isinstance(module, nn.Sequential):
            continue
        for first, second in itertools.pairwise(list(module._modules)):
            conv, norm = module._modules[first], module._modules[second]
            if (
                isinstance(conv, nn.Conv2d)
                and isinstance(norm, nn.BatchNorm2d)
                and norm.running_mean is not None
            ):
                fused = fuse_conv_bn_eval(conv, norm)
                if conv.weight.is_contiguous(memory_format=torch.channels_last):
                    fused = fused.to(memory_format=torch.channels_last)  # keep the fast layout
                module._modules[first] = fused
                module._modules[second] = nn.Identity()
    return folded.train(model.training)


def attack_loss(
    model: nn.Module,
    images: Tensor,
    targets: Sequence[dict[str, Tensor]],
    loss_keys: Sequence[str] | None = None,
) -> Tensor:
    """Sum of the detector's training losses (or of `loss_keys`) on `images`."""
    losses = model(images, list(targets))
    keys = loss_keys or tuple(losses)
    return sum((losses[k].float() for k in keys), torch.zeros((), device=images.device))


def attack_objective(
    model: nn.Module,
    images: Tensor,
    targets: Sequence[dict[str, Tensor]],
    objective: Objective,
    loss_keys: Sequence[str] | None = None,
) -> Tensor:
    """What the attack maximises on `images`: per image [B], or one scalar for the training
    losses (which a detector normalises over the whole batch)."""
    if objective == "vanishing":
        return vanishing_objective(model, images)
    if objective == "fabrication":
        return fabrication_objective(model, images)
    return attack_loss(model, images, targets, loss_keys)


def perturb(
    model: nn.Module,
    images: Tensor,
    targets: Sequence[dict[str, Tensor]],
    config: AttackConfig,
    *,
    generator: torch.Generator | None = None,
    loss_keys: Sequence[str] | None = None,
    amp: bool = False,
) -> Tensor:
    """Adversarial versions of `images` under `config` (PGD or FGSM-RS).

    Args:
        model: a detector following the torchvision contract (losses in train mode).
        images: float [B,3,H,W] in [0,1] on the model's device.
        targets: per image {"boxes" [n,4] x1y1x2y2 pixels, ...}: the truth the attack moves away
            from.
        config: the attack.
        generator: for the random start (a generator on the images' device); None uses the
            global RNG.
        loss_keys: which losses to maximise (default: all).
        amp: compute the losses under autocast (CUDA mixed precision).

    Returns:
        Detached float [B,3,H,W] in [0,1], within eps of `images` in the config's norm.
    """
    if images.dim() != 4:
        raise ModelError(f"images must be a [B,3,H,W] batch, got shape {tuple(images.shape)}")
    clean = images.detach().float()
    if len(clean) == 0:
        return clean
    delta = (
        _random_start(clean, config, generator) if config.random_start else torch.zeros_like(clean)
    )
    delta = (clean + delta).clamp_(0, 1) - clean
    scale = _AMP_LOSS_SCALE if amp else 1.0
    # enable_grad: a caller inside torch.no_grad() still gets an attack, not a silent no-op.
    with loss_mode(fold_batch_norm(model)) as attacked, torch.enable_grad():
        if config.schedule == "apgd":
            return _apgd(attacked, clean, delta, targets, config, loss_keys, amp)
        for _ in range(config.steps):
            delta.requires_grad_(True)
            with torch.autocast(clean.device.type, enabled=amp):
                loss = attack_objective(
                    attacked, clean + delta, targets, config.objective, loss_keys
                )
            (grad,) = torch.autograd.grad(loss.sum() * scale, delta)
            with torch.no_grad():
                grad = torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0)
                delta = delta.detach() + config.alpha * _direction(grad, config.norm)
                delta = _project(delta, config.eps, config.norm)
                delta = (clean + delta).clamp_(0, 1) - clean
    return (clean + delta).detach()


def apgd_checkpoints(steps: int) -> list[int]:
    """The iterations at which APGD may halve its step size (Croce and Hein 2020, eq. 4, as
    their reference code rounds it): the first after int(0.22 * steps), then windows shrinking
    by int(0.03 * steps) down to int(0.06 * steps) (each at least 1)."""
    window = max(int(0.22 * steps), 1)
    shrink, shortest = max(int(0.03 * steps), 1), max(int(0.06 * steps), 1)
    checkpoints, at = [], window
    while at < steps:
        checkpoints.append(at)
        window = max(window - shrink, shortest)
        at += window
    return checkpoints


def _apgd(
    attacked: nn.Module,
    clean: Tensor,
    delta: Tensor,
    targets: Sequence[dict[str, Tensor]],
    config: AttackConfig,
    loss_keys: Sequence[str] | None,
    amp: bool,
) -> Tensor:
    """APGD (Croce and Hein 2020, algorithm 1) from `clean + delta`; returns the best point seen
    per image (`steps` updates, each followed by one gradient evaluation)."""
    batch = len(clean)
    shape = (batch, 1, 1, 1)
    scale = _AMP_LOSS_SCALE if amp else 1.0

    def evaluate(x: Tensor) -> tuple[Tensor, Tensor]:
        x = x.detach().requires_grad_(True)
        with torch.autocast(clean.device.type, enabled=amp):
            value = attack_objective(attacked, x, targets, config.objective, loss_keys)
        (grad,) = torch.autograd.grad(value.sum() * scale, x)
        per_image = value.detach().float().reshape(-1).expand(batch).clone()
        return per_image, torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0)

    def project(x: Tensor) -> Tensor:
        return (clean + _project(x - clean, config.eps, config.norm)).clamp_(0, 1)

    x = clean + delta
    value, grad = evaluate(x)
    best_value, best_x, best_grad = value.clone(), x.clone(), grad.clone()
    eta = torch.full(shape, 2 * config.eps, device=clean.device)
    previous_x, previous_value = x.clone(), value.clone()
    checkpoints = apgd_checkpoints(config.steps)
    last_checkpoint, rises = 0, torch.zeros(batch, device=clean.device)
    eta_at_checkpoint, best_at_checkpoint = eta.clone(), best_value.clone()
    for k in range(config.steps):
        with torch.no_grad():
            z = project(x + eta * _direction(grad, config.norm))
            momentum = 1.0 if k == 0 else _APGD_MOMENTUM
            x, previous_x = project(x + momentum * (z - x) + (1 - momentum) * (x - previous_x)), x
        value, grad = evaluate(x)
        with torch.no_grad():
            rises += (value > previous_value).float()
            previous_value = value
            improved = value > best_value
            best_value = torch.where(improved, value, best_value)
            best_x[improved], best_grad[improved] = x[improved], grad[improved]
            if k + 1 in checkpoints:
                window = k + 1 - last_checkpoint
                stalled = rises < _APGD_RHO * window
                unchanged = (eta.view(-1) == eta_at_checkpoint.view(-1)) & (
                    best_value == best_at_checkpoint
                )
                halve = stalled | unchanged
                eta[halve] /= 2
                # Restart the halved images from their best point (with its gradient).
                x, grad = x.clone(), grad.clone()
                x[halve], grad[halve] = best_x[halve], best_grad[halve]
                previous_x = torch.where(halve.view(shape), x, previous_x)
                last_checkpoint, rises = k + 1, torch.zeros_like(rises)
                eta_at_checkpoint, best_at_checkpoint = eta.clone(), best_value.clone()
    return best_x.detach()


def _random_start(clean: Tensor, config: AttackConfig, generator: torch.Generator | None) -> Tensor:
    noise = torch.rand(clean.shape, generator=generator, device=clean.device, dtype=clean.dtype)
    if config.norm == "inf":
        return (noise * 2 - 1) * config.eps
    # L2: a uniformly random point of the eps-ball (direction from a Gaussian, radius ~ U^(1/d)).
    direction = torch.randn(clean.shape, generator=generator, device=clean.device)
    direction = direction / direction.flatten(1).norm(dim=1).clamp(min=1e-12).view(-1, 1, 1, 1)
    radius = noise.flatten(1)[:, :1] ** (1.0 / clean[0].numel())
    return direction * radius.view(-1, 1, 1, 1) * config.eps


def _direction(grad: Tensor, norm: Norm) -> Tensor:
    if norm == "inf":
        return grad.sign()
    return grad / grad.flatten(1).norm(dim=1).clamp(min=1e-12).view(-1, 1, 1, 1)


def _project(delta: Tensor, eps: float, norm: Norm) -> Tensor:
    if norm == "inf":
        return delta.clamp(-eps, eps)
    length = delta.flatten(1).norm(dim=1).clamp(min=1e-12).view(-1, 1, 1, 1)
    return delta * (eps / length).clamp(max=1.0)
