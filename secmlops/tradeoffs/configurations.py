"""The configurations of the security/performance trade-off study, as typed values.

Each configuration is one control at one setting, measured on the same data and hardware as
every other one of the study:

- model configurations change what the deployed detector computes, so they have an accuracy:
  no defence, adversarial training (FGSM-RS, PGD-K at an eps; on the training losses, or split
  with TOG-vanishing, with or without random patches worn on the torso), and input
  preprocessing at inference (ART's JPEG compression and spatial smoothing in front of a
  trained model);
- control configurations guard the lifecycle around the model and have a detection rate
  instead: data verification (signed manifest), the poisoning screen, signature verification at
  load, and adversarial-input screening at serving, each on or off.

`quick_grid` is the CI-sized study (synthetic data, minutes on two cores); `full_grid` is the
one whose results are published (docs/results/).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from secmlops.errors import PolicyError
from secmlops.policy import GatePolicy

MODEL_CONTROLS = ("none", "adversarial_training", "input_preprocessing")
LIFECYCLE_CONTROLS = (
    "data_verification",
    "poisoning_screen",
    "signature_at_load",
    "serving_screening",
)
CONTROLS = (*MODEL_CONTROLS, *LIFECYCLE_CONTROLS)

TrainingMethod = Literal["none", "fgsm-rs", "pgd"]
PreprocessingKind = Literal["jpeg", "spatial_smoothing"]
AttackMethod = Literal["fgsm", "pgd"]
# Steps of each epoch's adversarial patch in the adversarial-patch configurations (full, quick).
ADVERSARIAL_PATCH_STEPS = 50
QUICK_ADVERSARIAL_PATCH_STEPS = 5


@dataclass(frozen=True)
class EvalAttack:
    """One evasion attack of the benefit side: ART's FGSM or PGD, L-inf, white box, untargeted.

    Args:
        method: "fgsm" or "pgd".
        level: eps in 1/255 pixel steps (4 means 4/255).
        steps: PGD iterations (FGSM takes one).
    """

    method: AttackMethod
    level: int
    steps: int = 1

    @property
    def name(self) -> str:
        """The column name, as in robustness reports (`pgd_linf_4`)."""
        return f"{self.method}_linf_{self.level}"

    @property
    def eps(self) -> float:
        """eps in [0, 1] pixel units."""
        return self.level / 255


@dataclass(frozen=True)
class TrainingDefence:
    """How the model is trained: clean, or with adversarial augmentation.

    Args:
        method: "none", "fgsm-rs" (Wong et al. 2020) or "pgd" (Madry et al. 2018).
        eps_level: training eps in 1/255 steps (0 for "none").
        steps: PGD steps (ignored by FGSM-RS and "none").
        mix: share of every batch replaced by adversarial examples.
        objectives: what the training attack maximises (`TrainingRequest.objectives`):
            "loss", or "loss+vanishing" (half the adversarial share with TOG-vanishing).
        patch_augmentation: probability that a training image's people wear a torso patch
            (`TrainingRequest.patch_augmentation`).
        patch_attack_steps: steps of each epoch's adversarial patch (0: random patches;
            `TrainingRequest.patch_attack_steps`).
    """

    method: TrainingMethod = "none"
    eps_level: int = 0
    steps: int = 1
    mix: float = 0.5
    objectives: str = "loss"
    patch_augmentation: float = 0.0
    patch_attack_steps: int = 0

    def params(self) -> str:
        """Short human-readable settings for the table."""
        parts = ["clean training"]
        if self.method != "none":
            attack = "FGSM-RS" if self.method == "fgsm-rs" else f"PGD-{self.steps}"
            parts = [f"{attack} eps {self.eps_level}/255, mix {self.mix:g}"]
            if self.objectives != "loss":
                parts.append(f"objectives {self.objectives}")
        if self.patch_augmentation:
            kind = (
                f"adversarial ({self.patch_attack_steps} steps per epoch)"
                if self.patch_attack_steps
                else "random"
            )
            parts.append(f"{kind} torso patches on {self.patch_augmentation:.0%} of images")
        return ", ".join(parts)


@dataclass(frozen=True)
class InputPreprocessing:
    """An ART preprocessing defence applied to every image before the detector at inference.

    Args:
        kind: "jpeg" (`art.defences.preprocessor.JpegCompression`, Dziugaite et al. 2016) or
            "spatial_smoothing" (`SpatialSmoothing`, a median filter; Xu et al. 2018).
        quality: JPEG quality 1..95.
        window: median filter side in pixels.
    """

    kind: PreprocessingKind
    quality: int = 50
    window: int = 3

    def params(self) -> str:
        """Short human-readable settings for the table."""
        if self.kind == "jpeg":
            return f"JPEG quality {self.quality}"
        return f"median {self.window}x{self.window}"


@dataclass(frozen=True)
class ModelConfiguration:
    """A detector configuration: how it is trained and what runs in front of it.

    Args:
        id: unique name in the study (also the row id).
        control: one of `MODEL_CONTROLS`.
        training: the training defence.
        preprocessing: the inference-time input defence, if any. A preprocessing configuration
            reuses the trained model of the configuration with the same `training`.
    """

    id: str
    control: str
    training: TrainingDefence = field(default_factory=TrainingDefence)
    preprocessing: InputPreprocessing | None = None

    def params(self) -> str:
        """Short human-readable settings for the table."""
        if self.preprocessing is None:
            return self.training.params()
        return f"{self.preprocessing.params()} at inference; {self.training.params()}"


@dataclass(frozen=True)
class ControlConfiguration:
    """A lifecycle control (no effect on the model's output), on or off.

    Args:
        id: unique name in the study.
        control: one of `LIFECYCLE_CONTROLS`.
        enabled: whether the control runs.
        model: for serving screening, the id of the model configuration screened.
        escalation_rate: for serving screening, the share of clean requests that get the
            squeeze check (0: the free uncertainty score alone; see `secmlops.serving`).
    """

    id: str
    control: str
    enabled: bool
    model: str | None = None
    escalation_rate: float | None = None

    def params(self) -> str:
        """Short human-readable settings for the table."""
        if self.control == "signature_at_load" and not self.enabled:
            return "plain models.load (checks the weights against the card's digest only)"
        if not self.enabled:
            return "off (nothing runs)"
        if self.control == "serving_screening":
            signal = (
                "uncertainty only"
                if not self.escalation_rate
                else f"cascade, {self.escalation_rate:.0%} escalated"
            )
            return f"{signal}; model {self.model}"
        return {
            "data_verification": "signed SHA-256 manifest verified",
            "poisoning_screen": "trigger-recurrence screen, policy threshold",
            "signature_at_load": "provenance verified before load",
        }[self.control]


@dataclass(frozen=True)
class Budget:
    """How hard each configuration is measured.

    Args:
        epochs: training epochs (None: the trainer's default schedule for the data).
        batch_size: training batch size.
        warmup_steps: learning-rate warm-up steps.
        eps_warmup_epochs: adversarial eps ramp (see `AdversarialConfig`).
        eval_images: evaluation images (None: the whole split).
        attacks: the attacks robust mAP is measured under.
        main_attack: the attack the Pareto front is drawn for; the pedestrian figures under
            attack (vanishing, worst case) are measured at its eps.
        restarts: random restarts of the vanishing and fabrication attacks (worst kept).
        person_patch_steps: optimisation steps of the person-worn patch.
        person_patch_fraction: its side as a share of the wearer's height (the policy's).
        target_fppi: the FPPI the trainer picks each model's operating point at (the
            policy's), where recall and the worst case are judged.
        latency_images: calls timed one image at a time for inference latency (cycling through
            the evaluation images when there are fewer).
        tamper_count: tampered copies (dataset files, model directories) per detection rate.
        poison_fraction: share of the train split ART's BadDet poisons (each of ODA and OGA).
        poison_trigger_side: trigger side in pixels (None: BadDet's ~4% of the short side; the
            screen needs ~8 px, which small synthetic images do not reach at 4%).
        calibration_images: at most this many clean images calibrate the serving screener
            (from the val split; see `secmlops.tradeoffs.study.calibration_ids`).
        repeats: timed repetitions of manifest verification and model loading.
    """

    epochs: int | None
    batch_size: int
    warmup_steps: int
    eps_warmup_epochs: int
    eval_images: int | None
    attacks: tuple[EvalAttack, ...]
    main_attack: str
    latency_images: int
    tamper_count: int
    poison_fraction: float
    poison_trigger_side: int | None
    calibration_images: int
    repeats: int
    restarts: int
    person_patch_steps: int
    person_patch_fraction: float
    target_fppi: float

    def __post_init__(self) -> None:
        counts = {"tamper_count": self.tamper_count, "repeats": self.repeats,
                  "latency_images": self.latency_images, "restarts": self.restarts,
                  "person_patch_steps": self.person_patch_steps}  # fmt: skip
        for name, value in counts.items():
            if value < 1:
                raise PolicyError(f"study budget: {name} must be at least 1, got {value}")
        if self.main_attack not in {a.name for a in self.attacks}:
            raise PolicyError(f"main attack {self.main_attack} is not among the study's attacks")

    @property
    def main_level(self) -> int:
        """The main attack's eps in 1/255 steps: where the pedestrian figures are measured."""
        return next(a.level for a in self.attacks if a.name == self.main_attack)


@dataclass(frozen=True)
class StudyGrid:
    """Every configuration of one study and how hard each is measured."""

    name: str
    models: tuple[ModelConfiguration, ...]
    controls: tuple[ControlConfiguration, ...]
    budget: Budget
    seed: int = 0

    def __post_init__(self) -> None:
        ids = self.ids
        if len(set(ids)) != len(ids):
            raise PolicyError(f"configuration ids must be unique, got {ids}")
        trained = {m.id: m.training for m in self.models if m.preprocessing is None}
        for m in self.models:
            if m.preprocessing is not None and m.training not in trained.values():
                raise PolicyError(f"{m.id}: no configuration trains the model it preprocesses for")
        for c in self.controls:
            if c.control == "serving_screening" and c.model not in trained:
                raise PolicyError(f"{c.id}: screens unknown model configuration {c.model!r}")

    @property
    def ids(self) -> list[str]:
        """Every configuration id, in table order."""
        return [m.id for m in self.models] + [c.id for c in self.controls]

    def trained_model_id(self, training: TrainingDefence) -> str:
        """Id of the configuration that trains `training` (the model preprocessing reuses)."""
        return next(m.id for m in self.models if m.preprocessing is None and m.training == training)

    def to_json(self) -> dict[str, Any]:
        """Plain-JSON form for study.json."""
        return asdict(self)


def policy_attacks(
    levels: list[int], pgd_steps: int, extra_pgd_levels: tuple[int, ...] = ()
) -> tuple[tuple[EvalAttack, ...], str]:
    """The attacks of the policy's suite (FGSM and PGD at every eps level) and its main one.

    The main attack is PGD at the largest level: the strongest attack the gate judges.

    Args:
        levels: the policy's `gate.attacks.linf_eps_levels`.
        pgd_steps: the policy's `gate.attacks.pgd_steps`.
        extra_pgd_levels: more PGD levels to report (beyond what the gate judges).
    """
    attacks = (
        *(EvalAttack("fgsm", k) for k in sorted(levels)),
        *(EvalAttack("pgd", k, pgd_steps) for k in sorted({*levels, *extra_pgd_levels})),
    )
    return attacks, f"pgd_linf_{max(levels)}"


def _lifecycle_controls(defended: str) -> tuple[ControlConfiguration, ...]:
    return (
        ControlConfiguration("data-verify-off", "data_verification", enabled=False),
        ControlConfiguration("data-verify-on", "data_verification", enabled=True),
        ControlConfiguration("poison-screen-off", "poisoning_screen", enabled=False),
        ControlConfiguration("poison-screen-on", "poisoning_screen", enabled=True),
        ControlConfiguration("load-plain", "signature_at_load", enabled=False),
        ControlConfiguration("load-verified", "signature_at_load", enabled=True),
        ControlConfiguration("screen-off", "serving_screening", False, model="none"),
        ControlConfiguration("screen-uncertainty", "serving_screening", True, "none", 0.0),
        ControlConfiguration("screen-cascade", "serving_screening", True, "none", 0.3),
        ControlConfiguration(
            f"screen-cascade-{defended}", "serving_screening", True, defended, 0.3
        ),
    )


def _adversarial(
    method: TrainingMethod,
    level: int,
    steps: int,
    objectives: str = "loss",
    patch_augmentation: float = 0.0,
    patch_attack_steps: int = 0,
) -> ModelConfiguration:
    name = "fgsm-rs" if method == "fgsm-rs" else f"pgd{steps}"
    suffix = "-vanishing" if objectives != "loss" else ""
    if patch_augmentation:
        kind = "advpatch" if patch_attack_steps else "patch"
        suffix += f"-{kind}{round(patch_augmentation * 100)}"
    training = TrainingDefence(
        method, level, steps, 0.5, objectives, patch_augmentation, patch_attack_steps
    )
    return ModelConfiguration(f"{name}-eps{level}{suffix}", "adversarial_training", training)


def _pedestrian_defences(patch_steps: int) -> tuple[ModelConfiguration, ...]:
    """The defences against a PDS's own attacks, on the lifecycle's default FGSM-RS 4/255:
    the vanishing objective in training, and that plus patch augmentation on half the images,
    with random patches and with each epoch's adversarial patch of `patch_steps` steps
    (docs/results.md measures them against the person-worn patch)."""
    return (
        _adversarial("fgsm-rs", 4, 1, "loss+vanishing"),
        _adversarial("fgsm-rs", 4, 1, "loss+vanishing", 0.5),
        _adversarial("fgsm-rs", 4, 1, "loss+vanishing", 0.5, patch_steps),
    )


def quick_grid(gate: GatePolicy, seed: int = 0) -> StudyGrid:
    """The CI study: FGSM-RS at 4/255, the strongest pedestrian defence (loss+vanishing with
    adversarial patches), both preprocessing defences once; the policy's suite with fewer
    person-patch steps. PGD training and the other pedestrian defences are the full study's.

    Sized for ~100 synthetic 160x128 images on two CPU cores (see tests/tradeoffs).
    """
    suite = gate.attacks
    attacks, main = policy_attacks(list(suite.linf_eps_levels), suite.pgd_steps)
    fgsm = _adversarial("fgsm-rs", 4, 1)
    models = (
        ModelConfiguration("none", "none"),
        fgsm,
        # Its training split has ten batches an epoch: a few patch steps are already its cost.
        _pedestrian_defences(QUICK_ADVERSARIAL_PATCH_STEPS)[-1],
        ModelConfiguration("jpeg-q50", "input_preprocessing", preprocessing=_jpeg(50)),
        ModelConfiguration("smooth-3", "input_preprocessing", preprocessing=_smooth(3)),
    )
    budget = Budget(
        epochs=20, batch_size=8, warmup_steps=10, eps_warmup_epochs=2, eval_images=16,
        attacks=attacks, main_attack=main, latency_images=40, tamper_count=6,
        poison_fraction=0.1, poison_trigger_side=10, calibration_images=20, repeats=3,
        restarts=suite.restarts, person_patch_steps=min(suite.person_patch_steps, 30),
        person_patch_fraction=suite.person_patch_fraction,
        target_fppi=gate.operating_point.target_fppi,
    )  # fmt: skip
    return StudyGrid("quick", models, _lifecycle_controls(fgsm.id), budget, seed)


def full_grid(gate: GatePolicy, seed: int = 0) -> StudyGrid:
    """The published study: FGSM-RS and PGD-3 at eps 2, 4 and 8/255, the two pedestrian
    defences, JPEG (quality 50) and median smoothing (3x3) on the undefended model, and JPEG
    stacked on the lifecycle's default defence (FGSM-RS 4/255); the policy's suite."""
    suite = gate.attacks
    attacks, main = policy_attacks(
        list(suite.linf_eps_levels), suite.pgd_steps, extra_pgd_levels=(8,)
    )
    adversarial = tuple(
        _adversarial(method, level, 3) for method in ("fgsm-rs", "pgd") for level in (2, 4, 8)
    )
    default = next(m for m in adversarial if m.id == "fgsm-rs-eps4")
    models = (
        ModelConfiguration("none", "none"),
        *adversarial,
        *_pedestrian_defences(ADVERSARIAL_PATCH_STEPS),
        ModelConfiguration("jpeg-q50", "input_preprocessing", preprocessing=_jpeg(50)),
        ModelConfiguration("smooth-3", "input_preprocessing", preprocessing=_smooth(3)),
        ModelConfiguration(
            "fgsm-rs-eps4+jpeg-q50", "input_preprocessing", default.training, _jpeg(50)
        ),
    )
    budget = Budget(
        epochs=None, batch_size=16, warmup_steps=100, eps_warmup_epochs=2, eval_images=None,
        attacks=attacks, main_attack=main, latency_images=200, tamper_count=12,
        poison_fraction=0.05, poison_trigger_side=None,
        calibration_images=100, repeats=5, restarts=suite.restarts,
        person_patch_steps=suite.person_patch_steps,
        person_patch_fraction=suite.person_patch_fraction,
        target_fppi=gate.operating_point.target_fppi,
    )  # fmt: skip
    return StudyGrid("full", models, _lifecycle_controls(default.id), budget, seed)


def _jpeg(quality: int) -> InputPreprocessing:
    return InputPreprocessing("jpeg", quality=quality)


def _smooth(window: int) -> InputPreprocessing:
    return InputPreprocessing("spatial_smoothing", window=window)
