"""What to train: the one definition of a training run's parameters, their defaults and checks.

The training DAG's trigger form, scheduled runs, `secmlops train` and the trade-off study all
build a `TrainingRequest`, so a default lives in one place and eps is read into a float once, by
one rule (`secmlops.attacks.budget.parse_eps`). Kept free of torch: the DAG file that builds its
form from these defaults is parsed without importing the trainer.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import TYPE_CHECKING, Any

from secmlops.errors import InvalidRequest, ModelError
from secmlops.names import json_schema_pattern

if TYPE_CHECKING:
    from secmlops.training.trainer import TrainConfig

DEFENCE_METHODS: tuple[str, ...] = ("fgsm-rs", "pgd", "none")
# What the adversarial share is crafted to do: "+"-joined objectives, each on an equal part
# (`secmlops.training.defences.AdversarialConfig.objectives`).
OBJECTIVE_FORMS: tuple[str, ...] = ("loss", "vanishing", "loss+vanishing")
# `secmlops.models.ARCHITECTURES`, spelled out here so the trigger form needs no torch import
# (a test keeps the two equal).
ARCHITECTURES: tuple[str, ...] = (
    "compact_centernet",
    "fasterrcnn_mobilenet_v3",
    "fcos_resnet50",
    "ssdlite320",
)

# The trigger form writes eps as a fraction; TrainingRequest holds the float it reads as.
DEFAULT_EPS = "4/255"
# What the form accepts as eps: a positive number or a fraction with a non-zero numerator and
# denominator ("0" and "4/0" are refused at the form, not by a failed training task).
EPS_PATTERN = json_schema_pattern(
    r"(?=[0-9.]*[1-9])[0-9]*\.?[0-9]+(/(?=[0-9.]*[1-9])[0-9]*\.?[0-9]+)?"
)


@dataclass(frozen=True)
class TrainingRequest:
    """What to train: the one definition of a training run's parameters and their defaults.

    The defence defaults to FGSM with random start at 4/255 on half of every batch (docs/
    results.md: most of PGD-3 training's robustness at 1.5x a clean epoch instead of 2x);
    `adversarial="none"` trains without a defence. `attack_steps` is the training attack's PGD
    steps (3: PGD-3); the evaluation's PGD steps are the policy's `gate.attacks.pgd_steps`.
    `objectives` says what the training attack maximises ("loss+vanishing": half the
    adversarial share against the true boxes, half with every objectness score pushed down),
    and `patch_augmentation` is the probability that a training image's people wear a torso
    patch (the defence against person-worn patches): random pixels, or, with
    `patch_attack_steps` K, each epoch's universal adversarial patch, optimised K steps against
    the weights the epoch starts with. Adversarial training and patch augmentation are each a
    defence of its own.

    Raises:
        InvalidRequest: an unknown architecture, defence or objectives form, objectives other
            than "loss" without adversarial training, patch attack steps without patch
            augmentation, or an eps, mix, patch probability, step or epoch count out of range.
    """

    architecture: str = "compact_centernet"
    epochs: int | None = None
    seed: int = 0
    adversarial: str = "fgsm-rs"
    eps: float = 4 / 255  # DEFAULT_EPS
    mix: float = 0.5
    attack_steps: int = 3
    eps_warmup_epochs: int = 2
    objectives: str = "loss"
    patch_augmentation: float = 0.0
    patch_attack_steps: int = 0

    def __post_init__(self) -> None:
        from secmlops.attacks.budget import parse_eps

        if self.architecture not in ARCHITECTURES:
            raise InvalidRequest(
                f"unknown architecture {self.architecture!r}; choose one of "
                f"{', '.join(ARCHITECTURES)}"
            )
        if self.adversarial not in DEFENCE_METHODS:
            raise InvalidRequest(
                f"unknown adversarial training {self.adversarial!r}; choose one of "
                f"{', '.join(DEFENCE_METHODS)}"
            )
        try:
            parse_eps(self.eps)  # positive and finite
        except ModelError as exc:
            raise InvalidRequest(str(exc)) from None
        if not 0 < self.mix <= 1:
            raise InvalidRequest(f"mix must be in (0, 1], got {self.mix}")
        if self.attack_steps < 1 or self.eps_warmup_epochs < 0:
            raise InvalidRequest("attack_steps must be >= 1 and eps_warmup_epochs >= 0")
        if self.epochs is not None and self.epochs < 1:
            raise InvalidRequest(f"epochs must be at least 1, got {self.epochs}")
        if self.objectives not in OBJECTIVE_FORMS:
            raise InvalidRequest(
                f"unknown attack objectives {self.objectives!r}; choose one of "
                f"{', '.join(OBJECTIVE_FORMS)}"
            )
        if self.adversarial == "none" and self.objectives != "loss":
            raise InvalidRequest(
                f"objectives {self.objectives!r} need adversarial training; choose "
                "adversarial pgd or fgsm-rs, or leave the objectives at loss"
            )
        if not (
            isinstance(self.patch_augmentation, int | float)
            and not isinstance(self.patch_augmentation, bool)
            and math.isfinite(self.patch_augmentation)
            and 0 <= self.patch_augmentation <= 1
        ):
            raise InvalidRequest(
                f"patch_augmentation is a probability in [0, 1], got {self.patch_augmentation!r}"
            )
        if (
            not isinstance(self.patch_attack_steps, int)
            or isinstance(self.patch_attack_steps, bool)
            or self.patch_attack_steps < 0
        ):
            raise InvalidRequest(
                f"patch_attack_steps must be a whole number >= 0, got {self.patch_attack_steps!r}"
            )
        if self.patch_attack_steps and not self.patch_augmentation:
            raise InvalidRequest(
                "patch_attack_steps optimise the patches of patch augmentation; set "
                "patch_augmentation above 0, or leave patch_attack_steps at 0"
            )

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> TrainingRequest:
        """A request from DAG params or any mapping of the field names; eps may be a number or
        a fraction such as "4/255"; missing or empty (None) fields take the defaults.

        Raises:
            InvalidRequest: as the class.
        """
        from secmlops.attacks.budget import parse_eps

        names = {f.name for f in fields(cls)}
        known = {k: v for k, v in params.items() if k in names and v is not None}
        if "eps" in known:
            try:
                known["eps"] = parse_eps(known["eps"])
            except ModelError as exc:
                raise InvalidRequest(str(exc)) from None
        return cls(**known)

    @property
    def objective_list(self) -> tuple[str, ...]:
        """`objectives` as the trainer takes them, e.g. ("loss", "vanishing")."""
        return tuple(self.objectives.split("+"))

    @property
    def defended(self) -> bool:
        """Whether the request trains with a defence, adversarial training or patch
        augmentation (else there is no baseline to compare)."""
        return self.adversarial != "none" or self.patch_augmentation > 0

    def undefended(self) -> TrainingRequest:
        """The same request without any defence: the gate's defence-cost baseline."""
        return replace(
            self, adversarial="none", objectives="loss", patch_augmentation=0.0,
            patch_attack_steps=0,
        )  # fmt: skip

    def train_config(self, **options: Any) -> TrainConfig:
        """The trainer's configuration for this request; `options` sets the trainer's other
        fields (batch_size, learning_rate, input_size, device, ...)."""
        from secmlops.training.defences import adversarial_config
        from secmlops.training.trainer import TrainConfig

        defence = adversarial_config(
            self.adversarial, self.eps, self.attack_steps, self.mix, self.eps_warmup_epochs,
            self.objective_list,
        )  # fmt: skip
        return TrainConfig(
            architecture=self.architecture, epochs=self.epochs, seed=self.seed,
            adversarial=defence, patch_augmentation=float(self.patch_augmentation),
            patch_attack_steps=self.patch_attack_steps, **options,
        )  # fmt: skip

    def to_json(self) -> dict[str, Any]:
        """The request as plain JSON (for XCom and the run folder)."""
        return asdict(self)
