"""The robustness suite: a detector under attack and under natural corruptions, judged as a
pedestrian detection system is.

One call measures, on one dataset split, a model's clean figures and its figures under every
attack of the suite: COCO mAP@0.5 and mAP@[.5:.95], and the pedestrian figures at the operating
point signed in its model card (recall, miss rate, precision, false positives per image, and
the log-average miss rate MR^-2: `secmlops.evaluation.miss_rate`). The attacks, per eps level
k/255 of the suite:
- `fgsm_linf_<k>`, `pgd_linf_<k>`: ART's evasion attacks on the training losses (white box,
  untargeted, L-inf; `secmlops.evaluation.art_attacks`);
- `vanishing_linf_<k>`, `fabrication_linf_<k>`: TOG-vanishing and TOG-fabrication on the
  objectness map with the APGD step schedule and the suite's random restarts
  (`secmlops.attacks.objectness`; ours: ART has no score-level detector attack);
- `worst_case_linf_<k>`: per image, whichever of those four leaves the fewest people found at
  the operating point (then the most false alarms): the attacker AutoAttack assumes;
then the physical attacks (`secmlops.evaluation.patches`): ART's universal patch (`patch`,
RobustDPatch: unbounded pixels in a fixed square), the person-worn patch of Thys et al.
(`person_patch`, trained on the training split's people) and its random-pixel control
(`person_patch_random`); and five ImageNet-C corruptions (`secmlops.evaluation.corruptions`, not
adversarial). Architectures without an objectness map (the torchvision detectors) get no
vanishing, fabrication or person-patch entries; their worst case is over FGSM and PGD.

Threat model convention: the attacker controls the pixels the model sees, i.e. each image of the
split at the model's input size, float [0,1]; detections are scaled back to the original image
and scored against its ground truth. The loss attacks move away from the ground-truth boxes
(ignore regions stay ignore regions in the loss); the score-level ones need no ground truth.

Two checks say whether the attacks can be trusted. The cross-check runs our on-device PGD
(`secmlops.attacks.perturb`, the attack adversarial training uses) with ART's settings at the
largest eps: the two robust mAPs must agree within `CROSS_CHECK_TOLERANCE`. The sanity section
(`secmlops.evaluation.sanity`) measures the eps sweep to a large eps, the effect of more steps
and restarts, and a transfer attack from the baseline model: evidence against gradient masking.

The report (`REPORT_SCHEMA`) is the evidence the validation gate (`secmlops.evaluation.gate`)
decides on.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import Tensor, nn

from secmlops import models
from secmlops.data.dataset import ImageAnnotations, load_dataset
from secmlops.errors import DataError
from secmlops.evaluation import art_attacks
from secmlops.evaluation.attack_runs import (
    Predictions,
    attack_transform,
    predict_under_transform,
    score_predictions,
    worst_per_image,
)
from secmlops.evaluation.coco_map import coco_map
from secmlops.evaluation.corruptions import CORRUPTIONS, corrupt, corruption_params
from secmlops.evaluation.gate_checks import REPORT_SCHEMA
from secmlops.evaluation.inference import predict_prepared, select_split
from secmlops.evaluation.patches import (
    person_patch_attacks,
    skipped_person_patch,
    training_people,
    universal_patch_attack,
)
from secmlops.evaluation.sanity import (
    loss_pgd_attack,
    measure_sanity,
    objectness_attack,
    predict_with_restarts,
)
from secmlops.policy import AttackSuitePolicy
from secmlops.training.batches import PreparedSplit, prepare_split
from secmlops.training.trainer import pick_device

# Largest |ours - ART| robust mAP@0.5 difference accepted: both attack the same loss on the same
# batches, so beyond float noise flipping a few gradient signs they should agree exactly.
CROSS_CHECK_TOLERANCE = 0.03
# Seeds the corruption noise.
SEED = 0
# The score-level attacks, and the gradient attacks whose per-image worst is the worst case.
SCORE_ATTACKS = ("vanishing", "fabrication")
GRADIENT_ATTACKS = ("fgsm", "pgd", *SCORE_ATTACKS)

Progress = Callable[[str, int, int], None]  # (step about to run or "done", steps done, total)


# The suite is the policy's `gate.attacks` section itself: one schema and one set of bounds, so
# the gate can compare a report's suite with the policy's field by field.
RobustnessSuite = AttackSuitePolicy


def attack_names(suite: RobustnessSuite, *, score_attacks: bool = True) -> list[str]:
    """Names of a report's `attacks` entries, in the order they run.

    Args:
        score_attacks: whether the model has an objectness map for vanishing and fabrication.
    """
    kinds = GRADIENT_ATTACKS if score_attacks else ("fgsm", "pgd")
    return [
        *(f"{kind}_linf_{k}" for kind in kinds for k in suite.linf_eps_levels),
        *(f"worst_case_linf_{k}" for k in suite.linf_eps_levels),
        "patch",
        *(("person_patch", "person_patch_random") if score_attacks else ()),
        *CORRUPTIONS,
    ]


def report_defence(training: dict[str, Any]) -> dict[str, Any] | None:
    """The report's `model.defence`: the defences a model card's `training` records, or None.

    Any defence at all (adversarial training, patch augmentation) makes the gate ask for its
    cost against the undefended baseline, so none may go unreported.
    """
    defence: dict[str, Any] = {}
    if training.get("adversarial"):
        defence["adversarial"] = training["adversarial"]
    if training.get("patch_augmentation"):
        defence["patch_augmentation"] = training["patch_augmentation"]
        if training.get("patch_attack_steps"):
            defence["patch_attack_steps"] = training["patch_attack_steps"]
    return defence or None


def default_report_path(model_dir: Path, split: str) -> Path:
    """Where `secmlops evaluate --attacks` writes by default: next to the model directory."""
    return Path(model_dir).parent / f"robustness-{split}.json"


def evaluate_robustness(
    model_dir: Path,
    data_dir: Path,
    split: str,
    suite: RobustnessSuite,
    *,
    baseline_dir: Path | None = None,
    device: str = "auto",
    batch_size: int = 16,
    max_images: int | None = None,
    progress: Progress | None = None,
    gate_evidence: bool = True,
) -> dict[str, Any]:
    """Run the robustness suite on one split and return the report (nothing is written).

    Args:
        model_dir: the model directory to attack.
        data_dir: a dataset version.
        split: train, val, test or all.
        suite: the attacks and corruptions to run.
        baseline_dir: a second, independently trained model (the undefended baseline): the
            gate compares clean mAP against it, and the transfer check attacks from it.
        device: auto, cpu, cuda or cuda:N.
        batch_size: images per attack batch (ART's and ours alike).
        max_images: evaluate only the first N images of the split (quick runs, tests).
        progress: called with (step name, steps done, total) before each step and at the end.
        gate_evidence: run the cross-check and the sanity checks, the evidence that the attacks
            worked (False: a comparison report, e.g. of the undefended baseline, whose figures
            are shown beside a candidate's; its `cross_check` and `sanity` are None, so a gate
            fails it on missing evidence).

    Returns:
        The report, schema `REPORT_SCHEMA`: model, data, suite, operating_point, clean,
        attacks (name -> family, library, method, params, mAP50, mAP50_95, the pedestrian
        figures, seconds), cross_check, sanity, baseline.

    Raises:
        ModelError: a model directory is missing or invalid, or the device is unavailable.
        DataError: the dataset is invalid, the split unknown or empty, or max_images < 1.
    """
    started = time.perf_counter()
    if max_images is not None and max_images < 1:
        raise DataError(f"max_images must be at least 1, got {max_images}")
    if batch_size < 1:
        raise DataError(f"batch_size must be at least 1, got {batch_size}")
    torch_device = pick_device(device)
    model = models.load(model_dir, device=torch_device)
    # models.load attaches the card; nn.Module attributes type as Tensor | Module
    card = cast(models.ModelCard, model.secmlops_card)
    baseline = models.load(baseline_dir, device=torch_device) if baseline_dir else None
    dataset = load_dataset(data_dir)
    records = select_split(dataset, split)[:max_images]
    if not records:
        raise DataError(f"{data_dir}: split {split!r} has no images")
    prepared = prepare_split(dataset, records, card.input_size)
    point = card.operating_point
    # Without a signed operating point there is no threshold to judge at: the pedestrian
    # figures and the sanity checks stay absent and the gate fails on the missing evidence.
    threshold = point.score_threshold if point is not None else None
    score_attacks = models.has_objectness_map(model)

    names = attack_names(suite, score_attacks=score_attacks)
    evidence_steps = ["cross_check", "sanity"] if gate_evidence else []
    steps = ["clean", *names, *evidence_steps, *(["baseline"] if baseline else [])]
    done = 0

    def step(name: str) -> None:
        nonlocal done
        if progress:
            progress(name, done, len(steps))
        done += 1

    def entry(family: str, library: str, method: str, params: dict[str, Any], run: Runner):
        return _scored(records, threshold, family, library, method, params, run)

    step("clean")
    clean = score_predictions(records, predict_prepared(model, prepared, batch_size), threshold)
    estimator = art_attacks.art_detector(model, card.architecture, torch_device)
    attacks: dict[str, dict[str, Any]] = {}
    with art_attacks.input_gradients_only(model):
        for k in suite.linf_eps_levels:
            step(f"fgsm_linf_{k}")
            craft = partial(art_attacks.fgsm, estimator, eps=k / 255)
            run = partial(_art_evasion, model, prepared, batch_size, craft)
            params = art_attacks.fgsm_params(k)
            attacks[f"fgsm_linf_{k}"] = entry("evasion", "art", "FastGradientMethod", params, run)
        for k in suite.linf_eps_levels:
            step(f"pgd_linf_{k}")
            craft = partial(art_attacks.pgd, estimator, eps=k / 255, steps=suite.pgd_steps)
            run = partial(_art_evasion, model, prepared, batch_size, craft)
            params = art_attacks.pgd_params(k, suite.pgd_steps)
            method = "ProjectedGradientDescent"
            attacks[f"pgd_linf_{k}"] = entry("evasion", "art", method, params, run)
    for kind in SCORE_ATTACKS if score_attacks else ():
        for k in suite.linf_eps_levels:
            step(f"{kind}_linf_{k}")
            config = objectness_attack(kind, k, suite.pgd_steps)
            params = {**config.to_json(), "eps_255": k, "restarts": suite.restarts}
            run = partial(
                predict_with_restarts, model, prepared, config, suite.restarts, threshold,
                batch_size,
            )  # fmt: skip
            method = f"TOG-{kind} (APGD)"
            attacks[f"{kind}_linf_{k}"] = entry("evasion", "secmlops", method, params, run)
    for k in suite.linf_eps_levels:
        step(f"worst_case_linf_{k}")
        members = [f"{kind}_linf_{k}" for kind in GRADIENT_ATTACKS if f"{kind}_linf_{k}" in attacks]
        attacks[f"worst_case_linf_{k}"] = _worst_case(records, attacks, members, threshold)
    with art_attacks.input_gradients_only(model):
        step("patch")
        attacks["patch"] = universal_patch_attack(
            model, estimator, prepared, suite, batch_size, entry
        )
    if score_attacks:
        step("person_patch")
        try:
            train = training_people(card.training.get("data"), card.input_size)
        except DataError as exc:
            # Imported weights, or training data moved away: the rest of the report stands,
            # and the gate fails on the missing person-patch figures, saying so.
            attacks.update(skipped_person_patch(str(exc)))
        else:
            attacks.update(person_patch_attacks(model, prepared, train, suite, batch_size, entry))
        step("person_patch_random")
    for name in CORRUPTIONS:
        step(name)
        severity = suite.corruption_severity
        attacks[name] = _corruption(model, prepared, name, severity, batch_size, entry)
    for scored in attacks.values():
        scored.pop("_predictions", None)  # only the worst case needed them

    cross_check: dict[str, Any] | None = None
    sanity: dict[str, Any] | None = None
    if gate_evidence:
        cross_check, sanity = _gate_evidence(
            model, card, prepared, records, suite, attacks, threshold, baseline, baseline_dir,
            batch_size, step,
        )  # fmt: skip

    baseline_report = None
    if baseline is not None:
        step("baseline")
        # The baseline resizes the prepared images to its own input size itself (the detector
        # contract), so both models are scored on exactly the same pixels.
        base = coco_map(records, predict_prepared(baseline, prepared, batch_size))
        baseline_report = {
            "dir": str(baseline_dir),
            "weights_sha256": cast(models.ModelCard, baseline.secmlops_card).weights_sha256,
            "clean_mAP50": base["mAP50"],
        }
    if progress:
        progress("done", done, len(steps))

    return {
        "schema": REPORT_SCHEMA,
        "model": {
            "dir": str(model_dir),
            "weights_sha256": card.weights_sha256,
            "architecture": card.architecture,
            "defence": report_defence(card.training),
            # Lets the gate tell a held-out dataset evaluated whole from the training data.
            "trained_on": card.training.get("data"),
        },
        "data": {
            "dir": str(Path(data_dir).resolve()),
            "split": split,
            "images": len(records),
            "boxes": sum(len(r.boxes) for r in records),
        },
        "suite": suite.model_dump(mode="json"),
        "operating_point": point.model_dump(mode="json") if point is not None else None,
        "clean": clean,
        "attacks": attacks,
        "cross_check": cross_check,
        "sanity": sanity,
        "baseline": baseline_report,
        "seconds": time.perf_counter() - started,
    }


def _gate_evidence(
    model: nn.Module, card: models.ModelCard, prepared: PreparedSplit,
    records: list[ImageAnnotations], suite: RobustnessSuite, attacks: dict[str, dict[str, Any]],
    threshold: float | None, baseline: nn.Module | None, baseline_dir: Path | None,
    batch_size: int, step: Callable[[str], None],
) -> tuple[dict[str, Any], dict[str, Any] | None]:  # fmt: skip
    """The cross-check (our PGD against ART's) and the sanity checks: evidence for the gate
    that the suite's attacks worked, not that the model masked its gradients."""
    step("cross_check")
    level = max(suite.linf_eps_levels)  # the cross-check runs the strongest attack
    ours = coco_map(
        records,
        predict_under_transform(
            model, prepared, batch_size,
            attack_transform(
                model, prepared, loss_pgd_attack(level, suite.pgd_steps),
                models.loss_keys(card.architecture),
            ),
        ),
    )  # fmt: skip
    art_map50 = attacks[f"pgd_linf_{level}"]["mAP50"]
    difference = ours["mAP50"] - art_map50
    cross_check = {
        "attack": f"pgd_linf_{level}",
        "art_mAP50": art_map50,
        "ours_mAP50": ours["mAP50"],
        "difference": difference,
        "tolerance": CROSS_CHECK_TOLERANCE,
        "passed": bool(abs(difference) <= CROSS_CHECK_TOLERANCE),
    }

    step("sanity")
    sanity = (
        measure_sanity(
            model, prepared, suite, threshold, baseline=baseline, baseline_dir=baseline_dir,
            batch_size=batch_size,
        )
        if threshold is not None
        else None
    )  # fmt: skip
    return cross_check, sanity


# --------------------------------------------------------------------------- attack runners
Runner = Callable[[], Predictions]


def _scored(
    records: list[ImageAnnotations],
    threshold: float | None,
    family: str,
    library: str,
    method: str,
    params: dict[str, Any],
    run: Runner,
) -> dict[str, Any]:
    """One `attacks` entry: run, score and time an attack. `_predictions` stays in the entry
    until the worst case has read it (the report drops it)."""
    started = time.perf_counter()
    predictions = run()
    seconds = time.perf_counter() - started
    return {
        "family": family,
        "library": library,
        "method": method,
        "params": params,
        **score_predictions(records, predictions, threshold),
        "seconds": seconds,
        "_predictions": predictions,
    }


def _art_evasion(
    model: nn.Module,
    prepared: PreparedSplit,
    batch_size: int,
    craft: Callable[[np.ndarray, list[dict]], np.ndarray],
) -> Predictions:
    """Predictions under an ART evasion attack; ART sees exactly the batches our PGD sees."""

    def adversarial(images: Tensor, window: slice) -> Tensor:
        labels = art_attacks.art_labels(prepared.boxes[window], prepared.ignore[window])
        return torch.from_numpy(craft(images.numpy(), labels))

    return predict_under_transform(model, prepared, batch_size, adversarial)


def _worst_case(
    records: list[ImageAnnotations],
    attacks: dict[str, dict[str, Any]],
    members: list[str],
    threshold: float | None,
) -> dict[str, Any]:
    """The per-image worst of `members` at the operating point (nothing to choose by without
    one: the entry then carries only the members, and no figures)."""
    params: dict[str, Any] = {"members": members}
    if threshold is None:
        return {"family": "ensemble", "library": "secmlops", "method": "per-image worst",
                "params": params, "seconds": 0.0}  # fmt: skip
    started = time.perf_counter()
    worst, chosen = worst_per_image(
        records, {name: attacks[name]["_predictions"] for name in members}, threshold
    )
    params["chosen"] = chosen
    return {
        "family": "ensemble",
        "library": "secmlops",
        "method": "per-image worst",
        "params": params,
        **score_predictions(records, worst, threshold),
        # What an attacker pays: every member's time, and the choice.
        "seconds": sum(attacks[m]["seconds"] for m in members) + time.perf_counter() - started,
    }


def _corruption(
    model: nn.Module,
    prepared: PreparedSplit,
    name: str,
    severity: int,
    batch_size: int,
    entry: Callable[..., dict[str, Any]],
) -> dict[str, Any]:
    """Figures under one ImageNet-C corruption."""
    size = (int(prepared.images.shape[-2]), int(prepared.images.shape[-1]))
    params = corruption_params(name, severity, size)
    if name == "gaussian_noise":
        params["seed"] = SEED

    def run() -> Predictions:
        generator = torch.Generator().manual_seed(SEED)
        return predict_under_transform(
            model, prepared, batch_size, lambda x, _: corrupt(name, x, severity, generator)
        )

    return entry("corruption", "secmlops", name, params, run)
