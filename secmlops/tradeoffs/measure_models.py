"""Cost and benefit of the model configurations: training, accuracy under attack, latency.

Every model is trained by the lifecycle's own trainer and attacked with the robustness suite's
ART attacks (`secmlops.evaluation.art_attacks`) and its pedestrian attacks, so the study
measures exactly what the pipeline would deploy and gate. Beside mAP@0.5 under every ART attack,
each configuration is judged as a pedestrian detection system at its own signed operating point
(`secmlops.evaluation.attack_runs.score_predictions`): clean recall and MR^-2, recall under
TOG-vanishing, the per-image worst case of FGSM, PGD, vanishing and fabrication at the main
attack's eps (`worst_per_image`), and recall with the person-worn patch of Thys et al. 2019
(trained on the model's own training split, `secmlops.evaluation.patches`).

Input preprocessing defences (ART's `JpegCompression` and `SpatialSmoothing`) run on every image
in front of the detector, clean or attacked. Their main robust figures come from attacks computed
against the undefended forward pass: a *non-adaptive* attacker who does not know the defence is
there. That overstates them: an attacker who knows can differentiate through the defence
approximately (BPDA, Athalye, Carlini, Wagner, 2018, arXiv:1802.00420). The `adaptive` figure
is that attacker: ART's PGD with the defence inside the estimator, whose non-differentiable
preprocessing ART passes gradients through as the identity (its `estimate_gradient`). The
pedestrian figures of a preprocessing configuration are non-adaptive too; for the person-worn
patch that is the physical case (a printed patch, then the camera's compression).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import Tensor, nn

from secmlops import models
from secmlops.attacks.person_patch import PersonPatchConfig, train_patch
from secmlops.errors import ModelError
from secmlops.evaluation import art_attacks
from secmlops.evaluation.attack_runs import (
    Predictions,
    predict_under_transform,
    score_predictions,
    worst_per_image,
)
from secmlops.evaluation.coco_map import coco_map
from secmlops.evaluation.patches import SEED as PATCH_SEED
from secmlops.evaluation.patches import training_people, wear_transform
from secmlops.evaluation.robustness import SCORE_ATTACKS
from secmlops.evaluation.sanity import objectness_attack, predict_with_restarts
from secmlops.tradeoffs.configurations import (
    Budget,
    EvalAttack,
    InputPreprocessing,
    ModelConfiguration,
)
from secmlops.tradeoffs.report import PEDESTRIAN_COLUMNS
from secmlops.tradeoffs.resources import Usage, measured
from secmlops.training.batches import PreparedSplit
from secmlops.training.request import TrainingRequest
from secmlops.training.trainer import train

EVAL_BATCH = 16
Transform = Callable[[Tensor], Tensor]


@dataclass
class TrainedModel:
    """A model trained for one configuration, and what training it cost."""

    config_id: str
    model_dir: Path
    usage: Usage
    epochs: int
    best_epoch: int


@dataclass
class ModelMeasurement:
    """Cost and benefit of one model configuration (mAP@0.5 throughout).

    Attributes:
        training_s: training wall time (for a preprocessing configuration, its model's).
        pipeline_s: training plus evaluation (clean and every attack) wall time.
        peak_mem_mb: the larger peak of training and evaluation (see `resources`).
        clean_map: mAP on the clean evaluation images (after the preprocessing defence).
        robust: attack name -> mAP under it (non-adaptive for preprocessing defences).
        adaptive_map: mAP under the main attack with BPDA through the preprocessing defence;
            the main attack's own figure when there is no defence to adapt to.
        training_cpu_s: the process's CPU time during training (see `resources.Usage`).
        pedestrian: `PEDESTRIAN_COLUMNS` -> figure at the model's operating point.
    """

    config_id: str
    training_s: float
    pipeline_s: float
    peak_mem_mb: float
    clean_map: float
    robust: dict[str, float] = field(default_factory=dict)
    adaptive_map: float = float("nan")
    training_cpu_s: float = float("nan")
    pedestrian: dict[str, float] = field(default_factory=dict)


def train_configuration(
    config: ModelConfiguration,
    data_dir: Path,
    model_dir: Path,
    budget: Budget,
    seed: int,
    device: torch.device,
) -> TrainedModel:
    """Train the model of one configuration with the lifecycle's trainer; time and measure it.

    Args:
        config: the configuration whose `training` defence is used.
        data_dir: the dataset (train and val splits).
        model_dir: where the model is written (replaced if present).
        budget: epochs, batch size, warm-up steps, eps warm-up.
        seed: the trainer's seed.
        device: where training runs.

    Returns:
        The model directory with the training's wall time, CPU time and peak memory.

    Raises:
        DataError, ModelError: see `secmlops.training.trainer.train`.
    """
    training = config.training
    defended = training.method != "none"
    request = TrainingRequest(
        epochs=budget.epochs, seed=seed, adversarial=training.method,
        eps=training.eps_level / 255 if defended else TrainingRequest.eps,
        mix=training.mix if defended else TrainingRequest.mix, attack_steps=training.steps,
        eps_warmup_epochs=budget.eps_warmup_epochs, objectives=training.objectives,
        patch_augmentation=training.patch_augmentation,
        patch_attack_steps=training.patch_attack_steps,
    )  # fmt: skip
    config_train = request.train_config(
        batch_size=budget.batch_size, warmup_steps=budget.warmup_steps, device=str(device),
        target_fppi=budget.target_fppi,
    )  # fmt: skip
    with measured(device) as usage:
        result = train(data_dir, model_dir, config_train, overwrite=True)
    return TrainedModel(config.id, model_dir, usage, result.epochs, result.best_epoch)


def art_preprocessor(preprocessing: InputPreprocessing) -> Any:
    """ART's preprocessing defence for `preprocessing`, on NCHW float images in [0, 1]."""
    from art.defences.preprocessor import JpegCompression, SpatialSmoothing

    if preprocessing.kind == "jpeg":
        return JpegCompression(
            clip_values=(0.0, 1.0), quality=preprocessing.quality, channels_first=True,
            apply_fit=False, apply_predict=True,
        )  # fmt: skip
    return SpatialSmoothing(
        window_size=preprocessing.window, channels_first=True, clip_values=(0.0, 1.0),
        apply_fit=False, apply_predict=True,
    )  # fmt: skip


def input_defence(preprocessing: InputPreprocessing | None) -> Transform:
    """The inference-time defence as a tensor transform (identity when there is none)."""
    if preprocessing is None:
        return lambda images: images
    defence = art_preprocessor(preprocessing)

    def defend(images: Tensor) -> Tensor:
        cleaned, _ = defence(images.detach().cpu().numpy().astype(np.float32))
        return torch.from_numpy(np.ascontiguousarray(cleaned, dtype=np.float32))

    return defend


def evaluate_configuration(
    config: ModelConfiguration,
    trained: TrainedModel,
    prepared: PreparedSplit,
    budget: Budget,
    device: torch.device,
) -> ModelMeasurement:
    """Clean and robust figures and the evaluation cost of one configuration (latency:
    `detector`).

    Args:
        config: the configuration (its preprocessing defence, if any, is applied here).
        trained: the model it deploys (for preprocessing: the model of its training defence).
        prepared: the evaluation images at the model's input size.
        budget: the attacks.
        device: where the model runs.

    Returns:
        The measurement; training figures are the trained model's.

    Raises:
        ModelError: the model has no operating point or no objectness map to judge it by.
    """
    model = models.load(trained.model_dir, device=device)
    card = _card(model)
    if card.operating_point is None or not models.has_objectness_map(model):
        raise ModelError(
            f"{trained.model_dir}: the study judges a model at its signed operating point with "
            "the objectness attacks; this one has no operating point or no objectness map"
        )
    defend = input_defence(config.preprocessing)
    estimator = art_attacks.art_detector(model, card.architecture, device)
    robust: dict[str, float] = {}
    # Worst-case members at the main attack's eps: method -> predictions.
    at_main: dict[str, Predictions] = {}
    with measured(device) as usage:
        clean = predict_under_transform(model, prepared, EVAL_BATCH, lambda x, _: defend(x))
        with art_attacks.input_gradients_only(model):
            for attack in budget.attacks:
                craft = _crafter(estimator, attack, prepared)
                predictions = predict_under_transform(
                    model, prepared, EVAL_BATCH, _then(craft, defend)
                )
                robust[attack.name] = coco_map(prepared.records, predictions)["mAP50"]
                if attack.level == budget.main_level:
                    at_main[attack.method] = predictions
            adaptive = robust[budget.main_attack]
            if config.preprocessing is not None:
                adaptive = _adaptive_map(model, card.architecture, device, config, prepared, budget)
        pedestrian = _pedestrian_figures(model, card, prepared, budget, defend, clean, at_main)
    return ModelMeasurement(
        config_id=config.id,
        training_s=trained.usage.seconds,
        pipeline_s=trained.usage.seconds + usage.seconds,
        peak_mem_mb=max(trained.usage.peak_mb, usage.peak_mb),
        clean_map=coco_map(prepared.records, clean)["mAP50"],
        robust=robust,
        adaptive_map=adaptive,
        training_cpu_s=trained.usage.cpu_seconds,
        pedestrian=pedestrian,
    )


def _pedestrian_figures(
    model: nn.Module,
    card: models.ModelCard,
    prepared: PreparedSplit,
    budget: Budget,
    defend: Transform,
    clean: Predictions,
    at_main: dict[str, Predictions],
) -> dict[str, float]:
    """`PEDESTRIAN_COLUMNS` at the operating point: clean, vanishing, the worst case of
    `at_main` plus vanishing and fabrication, and the person-worn patch (all then `defend`)."""
    assert card.operating_point is not None
    threshold = card.operating_point.score_threshold
    records = prepared.records
    steps = next(a.steps for a in budget.attacks if a.name == budget.main_attack)
    members = dict(at_main)
    for kind in SCORE_ATTACKS:
        members[kind] = predict_with_restarts(
            model, prepared, objectness_attack(kind, budget.main_level, steps), budget.restarts,
            threshold, EVAL_BATCH, then=defend,
        )  # fmt: skip
    worst, _ = worst_per_image(records, members, threshold)
    patch_config = PersonPatchConfig(
        fraction=budget.person_patch_fraction, steps=budget.person_patch_steps, seed=PATCH_SEED
    )
    people = training_people(card.training.get("data"), card.input_size)
    patch = train_patch(model, people.images, people.boxes, patch_config)
    wear = wear_transform(prepared, patch, patch_config.fraction)
    worn = predict_under_transform(
        model, prepared, EVAL_BATCH, lambda images, window: defend(wear(images, window))
    )
    scored = {
        name: score_predictions(records, predictions, threshold)
        for name, predictions in (
            ("clean", clean), ("vanishing", members["vanishing"]), ("worst_case", worst),
            ("person_patch", worn),
        )
    }  # fmt: skip
    figures = {
        "clean_recall": scored["clean"]["recall"],
        "clean_mr2": scored["clean"]["mr2"],
        "vanishing_recall": scored["vanishing"]["recall"],
        "worst_case_recall": scored["worst_case"]["recall"],
        "worst_case_mr2": scored["worst_case"]["mr2"],
        "person_patch_recall": scored["person_patch"]["recall"],
    }
    assert tuple(figures) == PEDESTRIAN_COLUMNS
    return figures


def craft_attack(
    model: nn.Module, prepared: PreparedSplit, attack: EvalAttack, device: torch.device
) -> Tensor:
    """Every evaluation image attacked with ART (float [N,3,H,W] in [0,1], on the CPU).

    Used by the serving screen's alarm rate: the images an attacker would upload.

    Args:
        model: the detector attacked (white box), loaded by `secmlops.models.load`.
        prepared: the evaluation images at its input size, with their boxes.
        attack: the ART attack.
        device: where the model runs.
    """
    estimator = art_attacks.art_detector(model, _card(model).architecture, device)
    craft = _crafter(estimator, attack, prepared)
    batches = []
    with art_attacks.input_gradients_only(model):
        for start in range(0, len(prepared), EVAL_BATCH):
            window = slice(start, start + EVAL_BATCH)
            batches.append(craft(prepared.images[window].float().div(255), window))
    model.eval()
    return torch.cat(batches)


def _card(model: nn.Module) -> models.ModelCard:
    """The card `models.load` attached (nn.Module attributes type as Tensor | Module)."""
    return cast(models.ModelCard, model.secmlops_card)


def _then(
    craft: Callable[[Tensor, slice], Tensor], defend: Transform
) -> Callable[[Tensor, slice], Tensor]:
    """The attack as the deployed model meets it: `craft`, then the input defence."""
    return lambda images, window: defend(craft(images, window))


def _crafter(
    estimator: Any, attack: EvalAttack, prepared: PreparedSplit
) -> Callable[[Tensor, slice], Tensor]:
    """(clean CPU batch, its index range) -> the ART attack's adversarial batch."""

    def craft(images: Tensor, window: slice) -> Tensor:
        labels = art_attacks.art_labels(prepared.boxes[window], prepared.ignore[window])
        if attack.method == "fgsm":
            adversarial = art_attacks.fgsm(estimator, images.numpy(), labels, eps=attack.eps)
        else:
            adversarial = art_attacks.pgd(
                estimator, images.numpy(), labels, eps=attack.eps, steps=attack.steps
            )
        return torch.from_numpy(np.asarray(adversarial, dtype=np.float32))

    return craft


def _adaptive_map(
    model: nn.Module,
    architecture: str,
    device: torch.device,
    config: ModelConfiguration,
    prepared: PreparedSplit,
    budget: Budget,
) -> float:
    """mAP under the main attack computed *through* the preprocessing defence (BPDA)."""
    assert config.preprocessing is not None
    estimator = art_attacks.art_detector(model, architecture, device)
    estimator.set_params(preprocessing_defences=[art_preprocessor(config.preprocessing)])
    main = next(a for a in budget.attacks if a.name == budget.main_attack)
    craft = _crafter(estimator, main, prepared)
    defend = input_defence(config.preprocessing)
    predictions = predict_under_transform(
        model, prepared, EVAL_BATCH, lambda x, w: defend(craft(x, w))
    )
    return coco_map(prepared.records, predictions)["mAP50"]


def detector(
    config: ModelConfiguration, trained: TrainedModel, device: torch.device
) -> Callable[[Tensor], Any]:
    """What serving would run for this configuration: CPU float image batch -> detections.

    The preprocessing defence runs where ART runs it (numpy on the CPU), then the model on its
    device; timed by `resources.interleaved_latency`.
    """
    model = models.load(trained.model_dir, device=device)
    defend = input_defence(config.preprocessing)

    def run(images: Tensor) -> Any:
        with torch.no_grad():
            return model(defend(images).to(device))

    return run
