"""Evidence that the suite's attacks work: the sanity checks of an adversarial evaluation.

A robust figure is only as good as the attack behind it. A model that masks its gradients
(rounds its input, saturates, shatters the gradient: Athalye, Carlini, Wagner 2018, "Obfuscated
Gradients Give a False Sense of Security", arXiv:1802.00420) looks robust to a gradient attack
without being robust. Carlini, Athalye, Papernot et al. 2019 ("On Evaluating Adversarial
Robustness", arXiv:1902.06705) list what an honest evaluation shows, and this module measures
three of them on a spread of the split's images with people, at the operating point:

- the eps sweep: recall under the white-box attacks falls as eps grows, and is near zero at a
  large eps (64/255 changes a pixel by a quarter of its range; a detector that still finds
  people there is not robust, its attack is broken);
- effort: 4x the steps, or 4x the random restarts, barely lowers recall further (if it did,
  the suite's budget understates the attacker);
- transfer: the white-box attack hides at least as many people as the same attack crafted on an
  independently trained model (the baseline) and replayed; a transfer attack that does better
  means the white-box gradients are not the model's true ones.

The white-box attacks are TOG-vanishing (APGD schedule, `secmlops.attacks.objectness`) and
"worst case", the per-image worst of vanishing and the training-loss PGD. This module only
measures; the gate (`secmlops.evaluation.gate_sanity`) judges the figures with the policy's
tolerances.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

from torch import Tensor, nn

from secmlops import models
from secmlops.attacks.projected_gradient import AttackConfig
from secmlops.evaluation import art_attacks
from secmlops.evaluation.attack_runs import (
    Predictions,
    Transform,
    attack_transform,
    predict_under_transform,
    spread_indices,
    worst_per_image,
)
from secmlops.evaluation.miss_rate import operating_point_metrics
from secmlops.policy import AttackSuitePolicy
from secmlops.training.batches import PreparedSplit

# "More effort" in the checks: this many times the suite's steps, and its restarts.
EFFORT_FACTOR = 4


def objectness_attack(objective: str, eps_level: int, steps: int) -> AttackConfig:
    """The suite's score-level attack at eps `eps_level`/255: PGD on `objective` ("vanishing" or
    "fabrication") with the APGD step schedule from a random start."""
    return AttackConfig(
        method="pgd", eps=eps_level / 255, steps=steps, objective=objective,  # type: ignore[arg-type]
        schedule="apgd",
    )  # fmt: skip


def loss_pgd_attack(eps_level: int, steps: int) -> AttackConfig:
    """Our PGD on the training losses with exactly ART's settings (the cross-check's attack)."""
    eps = eps_level / 255
    return AttackConfig(
        method="pgd", eps=eps, steps=steps, step_size=art_attacks.pgd_step_size(eps, steps),
        random_start=False,
    )  # fmt: skip


def predict_with_restarts(
    model: nn.Module,
    prepared: PreparedSplit,
    attack: AttackConfig,
    restarts: int,
    threshold: float | None,
    batch_size: int,
    *,
    source: nn.Module | None = None,
    loss_keys: Sequence[str] | None = None,
    then: Callable[[Tensor], Tensor] | None = None,
) -> Predictions:
    """Predictions of `model` under `attack` run `restarts` times from different random starts,
    keeping per image the run that leaves the fewest people found at `threshold` (without an
    operating point there is nothing to choose by: the first run).

    Args:
        source: the model the attack is crafted on (default: `model` itself, white box).
        then: what happens to the attacked images before `model` sees them (an input
            defence the attack does not know of); default: nothing.
    """
    crafted_on = source or model
    runs = {}
    for seed in range(restarts if threshold is not None else 1):
        transform = attack_transform(crafted_on, prepared, attack, loss_keys, seed=seed)
        if then is not None:
            transform = _followed_by(transform, then)
        runs[f"restart_{seed}"] = predict_under_transform(model, prepared, batch_size, transform)
    if len(runs) == 1 or threshold is None:
        return runs["restart_0"]
    return worst_per_image(prepared.records, runs, threshold)[0]


def _followed_by(transform: Transform, then: Callable[[Tensor], Tensor]) -> Transform:
    return lambda images, window: then(transform(images, window))


def sanity_subset(prepared: PreparedSplit, count: int) -> PreparedSplit:
    """`count` images with people, spread over the split (people are what the checks count)."""
    with_people = [i for i, boxes in enumerate(prepared.boxes) if len(boxes)]
    picked = spread_indices(len(with_people), count).tolist() if with_people else []
    return prepared.subset([with_people[i] for i in picked])


def measure_sanity(
    model: nn.Module,
    prepared: PreparedSplit,
    suite: AttackSuitePolicy,
    threshold: float,
    *,
    baseline: nn.Module | None = None,
    baseline_dir: Path | None = None,
    batch_size: int = 16,
) -> dict[str, Any]:
    """The report's `sanity` section: recall at `threshold` under the checks' attacks.

    Args:
        prepared: the evaluated split; the checks use `suite.sanity_images` of its images with
            people.
        baseline: an independently trained model to transfer from (None: the transfer check
            has no evidence and the gate fails it).

    Returns:
        images, people, threshold, sweep (per eps level: vanishing and worst_case recall),
        effort (the suite's recall at the largest eps, and with more steps and restarts),
        transfer (white-box and transferred recall at the largest eps), seconds.
    """
    started = time.perf_counter()
    card = cast(models.ModelCard, model.secmlops_card)
    loss_keys = models.loss_keys(card.architecture)
    subset = sanity_subset(prepared, suite.sanity_images)
    records = subset.records

    def recall(predictions: Predictions) -> float:
        return operating_point_metrics(records, predictions, threshold)["recall"]

    def vanishing(level: int, steps: int, restarts: int, source: nn.Module | None = None):
        attack = objectness_attack("vanishing", level, steps)
        return predict_with_restarts(
            model, subset, attack, restarts, threshold, batch_size, source=source
        )

    steps, restarts = suite.pgd_steps, suite.restarts
    largest = max(suite.linf_eps_levels)
    sweep, white_box = [], {}
    for level in sorted({*suite.linf_eps_levels, *suite.sanity_eps_levels}):
        hidden = vanishing(level, steps, restarts)
        loss_pgd = predict_under_transform(
            model, subset, batch_size,
            attack_transform(model, subset, loss_pgd_attack(level, steps), loss_keys),
        )  # fmt: skip
        worst, _ = worst_per_image(records, {"vanishing": hidden, "pgd": loss_pgd}, threshold)
        white_box[level] = recall(hidden)
        sweep.append({"eps": level, "vanishing": white_box[level], "worst_case": recall(worst)})

    effort = {
        "eps": largest,
        "steps": steps,
        "restarts": restarts,
        "recall": white_box[largest],
        "more_steps": {
            "steps": steps * EFFORT_FACTOR,
            "recall": recall(vanishing(largest, steps * EFFORT_FACTOR, restarts)),
        },
        "more_restarts": {
            "restarts": restarts * EFFORT_FACTOR,
            "recall": recall(vanishing(largest, steps, restarts * EFFORT_FACTOR)),
        },
    }
    transfer: dict[str, Any] = {
        "eps": largest,
        "white_box_recall": white_box[largest],
        "source": None,
        "transfer_recall": None,
    }
    if baseline is not None:
        base_card = cast(models.ModelCard, baseline.secmlops_card)
        transfer["source"] = {"dir": str(baseline_dir), "weights_sha256": base_card.weights_sha256}
        transfer["transfer_recall"] = recall(vanishing(largest, steps, restarts, source=baseline))
    return {
        "images": len(records),
        "people": sum(len(boxes) for boxes in subset.boxes),
        "threshold": threshold,
        "sweep": sweep,
        "effort": effort,
        "transfer": transfer,
        "seconds": time.perf_counter() - started,
    }
