"""Detectors behind one contract, and the model directory format.

A model directory holds `model.safetensors` (weights, never pickle) and `model.json` (the model
card: architecture, its config, input size, classes, the weights' SHA-256, metrics, training
parameters and the operating point: the score threshold the release serves at). `load` rebuilds
the architecture from the card and refuses a directory whose files are missing, malformed or do
not match each other.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model
from torch import nn

from secmlops.errors import ModelError
from secmlops.fsutil import atomic_write_json, sha256_file
from secmlops.models.compact_centernet import LOSS_KEYS as CENTERNET_LOSS_KEYS
from secmlops.models.compact_centernet import CompactCenterNet
from secmlops.models.torchvision_detectors import TORCHVISION_BUILDERS, TORCHVISION_LOSS_KEYS

DEFAULT_ARCHITECTURE = "compact_centernet"
WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "model.json"
ARCHITECTURES = (DEFAULT_ARCHITECTURE, *TORCHVISION_BUILDERS)


class OperatingPoint(BaseModel):
    """The score threshold a release serves at, and how it was chosen.

    `chosen_by` "fppi": the lowest threshold with at most `target_fppi` false positives per
    image on `split` (validation); "fixed": a set value (no validation split to choose on).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    score_threshold: float = Field(ge=0, le=1)
    chosen_by: Literal["fppi", "fixed"]
    target_fppi: float | None = None
    split: str | None = None
    metrics: dict[str, float] = {}


class ModelCard(BaseModel):
    """The contents of `model.json`."""

    model_config = ConfigDict(extra="forbid")

    format_version: Literal[1] = 1
    architecture: str
    config: dict[str, Any]
    input_size: tuple[int, int]
    classes: list[str] = ["person"]
    weights_sha256: str
    created_at: str
    metrics: dict[str, Any] = {}
    training: dict[str, Any] = {}
    operating_point: OperatingPoint | None = None

    def serving_threshold(self) -> float:
        """The score threshold detections must reach to be acted on.

        Raises:
            ModelError: the card has no operating point (a model from before it was recorded,
                or an import that did not set one): no threshold is guessed.
        """
        if self.operating_point is None:
            raise ModelError(
                "model.json has no operating_point: retrain, or import with --score-threshold, "
                "so the release says which score it serves at"
            )
        return self.operating_point.score_threshold


def build(name: str = DEFAULT_ARCHITECTURE, **config: Any) -> nn.Module:
    """Build a detector by architecture name with freshly initialised weights.

    Args:
        name: one of `ARCHITECTURES`.
        **config: architecture keyword arguments; `input_size=(height, width)` for all of them.

    Raises:
        ModelError: unknown architecture or invalid configuration.
    """
    try:
        if name == DEFAULT_ARCHITECTURE:
            model: nn.Module = CompactCenterNet(**config)
        elif name in TORCHVISION_BUILDERS:
            cfg = dict(config)
            input_size = cfg.pop("input_size", (320, 320))
            model = TORCHVISION_BUILDERS[name](input_size, **cfg)
            model.input_size = tuple(input_size)  # type: ignore[assignment]
        else:
            raise ModelError(
                f"unknown architecture {name!r}; choose one of {', '.join(ARCHITECTURES)}"
            )
    except (TypeError, ValueError) as exc:
        raise ModelError(f"invalid configuration for {name}: {exc}") from None
    model.secmlops_spec = {"architecture": name, "config": config}  # type: ignore[assignment]
    return model


def loss_keys(name: str) -> tuple[str, ...]:
    """Keys of the training-mode loss dict of architecture `name` (ART's `attack_losses`)."""
    if name == DEFAULT_ARCHITECTURE:
        return CENTERNET_LOSS_KEYS
    return TORCHVISION_LOSS_KEYS[name]


def has_objectness_map(model: nn.Module) -> bool:
    """Whether `objectness_logits` works on `model` (the score-level attacks need it)."""
    return callable(getattr(_unwrap(model), "objectness_logits", None))


def objectness_logits(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Per-location person logits of `model` on float [B,3,H,W] images: [B, h, w].

    Raises:
        ModelError: the architecture exposes no objectness map (the torchvision detectors'
            scores come out of NMS and anchor matching; the score-level attacks do not reach
            them).
    """
    method = getattr(_unwrap(model), "objectness_logits", None)
    if method is None:
        name = getattr(model, "secmlops_spec", {}).get("architecture", type(model).__name__)
        raise ModelError(
            f"{name} exposes no objectness map: the vanishing, fabrication and person-patch "
            f"attacks need one ({DEFAULT_ARCHITECTURE} has it)"
        )
    return method(images)


def save(
    model: nn.Module,
    model_dir: Path,
    *,
    metrics: dict[str, Any] | None = None,
    training: dict[str, Any] | None = None,
    operating_point: OperatingPoint | None = None,
) -> ModelCard:
    """Write `model.safetensors` and `model.json` into `model_dir` (each atomically).

    The weights are written first and the card last, so a reader that finds a card also finds
    the weights it describes (the card carries their digest).
    """
    spec = getattr(model, "secmlops_spec", None)
    if spec is None:
        raise ModelError("model was not created by secmlops.models.build; cannot describe it")
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    weights = model_dir / WEIGHTS_FILE
    tmp = model_dir / f".{WEIGHTS_FILE}.tmp"
    save_model(_unwrap(model), str(tmp))
    tmp.replace(weights)
    card = ModelCard(
        architecture=spec["architecture"],
        config=_jsonable(spec["config"]),
        input_size=tuple(getattr(model, "input_size", spec["config"].get("input_size", (0, 0)))),
        weights_sha256=sha256_file(weights),
        created_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        metrics=metrics or {},
        training=_jsonable(training or {}),
        operating_point=operating_point,
    )
    atomic_write_json(model_dir / CARD_FILE, card.model_dump(mode="json"))
    return card


def read_card(model_dir: Path) -> ModelCard:
    """Read and validate `model.json`.

    Raises:
        ModelError: the directory or card is missing or malformed.
    """
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ModelError(f"{model_dir}: model directory not found")
    path = model_dir / CARD_FILE
    try:
        return ModelCard.model_validate_json(path.read_text())
    except FileNotFoundError:
        raise ModelError(f"{path}: missing (a model directory needs {CARD_FILE})") from None
    except (ValidationError, UnicodeDecodeError) as exc:
        first = exc.errors()[0] if isinstance(exc, ValidationError) else {"msg": str(exc)}
        where = ".".join(str(p) for p in first.get("loc", ()))
        raise ModelError(f"{path}: malformed model card ({where}: {first['msg']})") from None


def load(model_dir: Path, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a detector from a model directory, in eval mode, on `device`.

    Raises:
        ModelError: a file is missing, the card is malformed, the weights do not match the
            card's digest, or the weights do not fit the architecture.
    """
    model_dir = Path(model_dir)
    card = read_card(model_dir)
    weights = model_dir / WEIGHTS_FILE
    if not weights.is_file():
        raise ModelError(f"{weights}: missing (a model directory needs {WEIGHTS_FILE})")
    if sha256_file(weights) != card.weights_sha256:
        raise ModelError(f"{weights}: SHA-256 does not match {CARD_FILE}; the weights were changed")
    with open(weights, "rb") as handle:
        head = handle.read(4)
    if head.startswith((b"PK\x03\x04", b"\x80")):  # torch.save zip, or a raw pickle
        raise ModelError(f"{weights}: a pickle, not safetensors; pickles are never loaded")
    model = build(card.architecture, **card.config)
    try:
        load_model(model, str(weights), strict=True, device=str(device))
    except (SafetensorError, RuntimeError, OSError) as exc:
        summary = str(exc).splitlines()[0][:200]
        raise ModelError(f"{weights}: weights do not fit {card.architecture} ({summary})") from None
    model.secmlops_card = card  # type: ignore[assignment]
    return model.to(device).eval()


def _unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "_orig_mod", model)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value
