"""Score-level attack objectives: make every person vanish, or fill the frame with false ones.

Threat model: a white-box evasion attacker with the same L-inf (or L2) budget as PGD
(`secmlops.attacks.projected_gradient`), who needs NO ground truth: the objectives act on the
detector's objectness map alone, so they run on any frame the camera sees.

- TOG-vanishing (Chow, Liu, Wei, Gursoy, Truex, Wei, Wu 2020, "Adversarial Objectness Gradient
  Attacks in Real-time Object Detection Systems", arXiv:2004.04320): descend the binary
  cross-entropy of every objectness score towards "no object". The gradient of
  sum(softplus(logit)) is sigmoid(logit), so it pushes hardest on the cells that are detections.
  Stealthy for a PDS: people disappear and no false alarm gives the attack away.
- TOG-fabrication (same paper): descend the cross-entropy towards "object" everywhere, so
  false people appear (a denial of service for whoever acts on alarms).

Both are objectives for `perturb` (`AttackConfig(objective="vanishing")`), so they inherit its
projection, random start, folded batch norm and step schedules. The training losses' PGD
(objective "loss") moves away from the true boxes and mostly fabricates boxes on a CenterNet;
it is the vanishing objective that measures how many people an attacker can hide.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from secmlops import models

OBJECTIVES: tuple[str, ...] = ("loss", "vanishing", "fabrication")


def vanishing_objective(model: nn.Module, images: Tensor) -> Tensor:
    """What TOG-vanishing maximises, per image [B]: minus the cross-entropy of every
    objectness logit against "object" absent (higher: fewer people left)."""
    logits = models.objectness_logits(model, images).float()
    return -F.softplus(logits).flatten(1).sum(1)


def fabrication_objective(model: nn.Module, images: Tensor) -> Tensor:
    """What TOG-fabrication maximises, per image [B]: minus the cross-entropy of every
    objectness logit against "object" present (higher: more false people)."""
    logits = models.objectness_logits(model, images).float()
    return -F.softplus(-logits).flatten(1).sum(1)
