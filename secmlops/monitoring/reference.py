"""The reference profile: the feature distribution the model was validated on.

Drift is only meaningful against what the model saw when it passed its gates, so the reference
is built from the model's own validation split, by the model itself (detection features depend
on the weights), with exactly the features serving logs (`secmlops.monitoring.features`) at the
images' original size, one image per forward pass as serving does. The profile is written into
the model directory before it is signed, so a tampered reference fails signature verification
with the model instead of silently hiding drift.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from secmlops.data.dataset import load_dataset, read_rgb
from secmlops.errors import DataError, ModelError
from secmlops.evaluation.inference import select_split
from secmlops.fsutil import atomic_write_bytes
from secmlops.monitoring.features import (
    DETECTION_FEATURES,
    IMAGE_FEATURES,
    detection_features,
    image_features,
)

REFERENCE_FILE = "reference-profile.json"
FEATURE_COLUMNS = IMAGE_FEATURES + DETECTION_FEATURES
# Kept beside the features: the attack monitor can derive a score threshold from clean images.
SCORE_COLUMN = "adversarial_score"
REFERENCE_COLUMNS = (*FEATURE_COLUMNS, SCORE_COLUMN)
# Fewer rows than this make the K-S test too weak to say anything about a window.
MIN_REFERENCE_ROWS = 20


def describe_images(model: nn.Module, images: list[Tensor]) -> list[dict[str, float]]:
    """Serving's per-image features plus the free adversarial score, one dict per image.

    Args:
        model: a detector in eval mode (torchvision contract).
        images: float [3,H,W] tensors in [0,1], each at its original size.

    Returns:
        One dict per image with every column of `REFERENCE_COLUMNS`.

    Raises:
        ValueError: the model is in training mode.
    """
    from secmlops.serving.screening import detect_and_score

    device = next(model.parameters()).device
    rows: list[dict[str, float]] = []
    for image in images:
        # One image per pass, as serving does: batching would pad and change the detections.
        batch = image.unsqueeze(0).to(device)
        detections, scores = detect_and_score(model, batch)
        height, width = image.shape[-2:]
        found = {k: v.cpu() for k, v in detections[0].items()}
        rows.append(
            {
                **image_features(batch.cpu())[0],
                **detection_features(found, float(width * height)),
                SCORE_COLUMN: float(scores[0]),
            }
        )
    return rows


def load_split_images(data_dir: Path, split: str = "val", max_images: int = 300) -> list[Tensor]:
    """The first `max_images` images of a dataset split ("all": every image) as float [3,H,W]
    tensors in [0,1].

    Raises:
        DataError: the dataset or split is missing or empty, or `max_images` is not positive.
    """
    if max_images < 1:
        raise DataError(f"max_images must be at least 1, got {max_images}")
    dataset = load_dataset(Path(data_dir))
    return [
        torch.from_numpy(read_rgb(dataset.image_path(item))).permute(2, 0, 1).float().div_(255)
        for item in select_split(dataset, split)[:max_images]
    ]


def build_reference(
    model_dir: Path, data_dir: Path, split: str = "val", max_images: int = 300
) -> pd.DataFrame:
    """Per-image reference features of a model on a dataset split.

    Args:
        model_dir: the model directory (`secmlops.models.load`).
        data_dir: the dataset version the model was validated on.
        split: the split to profile (the validation split: the training split is memorised).
        max_images: cap on images profiled (the K-S test gains little beyond a few hundred).

    Returns:
        One row per image, columns `REFERENCE_COLUMNS`.

    Raises:
        ModelError: the model directory is invalid.
        DataError: the split is missing or has fewer than `MIN_REFERENCE_ROWS` images.
    """
    from secmlops.models import load

    model = load(Path(model_dir))
    images = load_split_images(data_dir, split, max_images)
    if len(images) < MIN_REFERENCE_ROWS:
        raise DataError(
            f"{data_dir}: split {split!r} has {len(images)} images; a drift reference needs "
            f"at least {MIN_REFERENCE_ROWS}"
        )
    return pd.DataFrame(describe_images(model, images), columns=list(REFERENCE_COLUMNS))


def save_reference(df: pd.DataFrame, model_dir: Path) -> Path:
    """Write the profile as `reference-profile.json` (records orient) into the model directory.

    Returns:
        The written path.

    Raises:
        DataError: a column is missing, a value is not finite, or there are too few rows.
    """
    _check_frame(df, f"reference for {model_dir}")
    path = Path(model_dir) / REFERENCE_FILE
    records = df[list(REFERENCE_COLUMNS)].to_dict(orient="records")
    atomic_write_bytes(path, (json.dumps(records, allow_nan=False) + "\n").encode())
    return path


def load_reference(model_dir: Path) -> pd.DataFrame:
    """Read a model's reference profile.

    Raises:
        ModelError: the file is missing or not valid JSON.
        DataError: a column is missing, a value is not finite, or there are too few rows.
    """
    path = Path(model_dir) / REFERENCE_FILE
    if not path.is_file():
        raise ModelError(f"{path}: missing; build it with build_reference and save_reference")
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise ModelError(f"{path}: expected a JSON list of records")
    df = pd.DataFrame(records)
    _check_frame(df, str(path))
    return df[list(REFERENCE_COLUMNS)].astype(float)


def _check_frame(df: pd.DataFrame, source: str) -> None:
    missing = [c for c in REFERENCE_COLUMNS if c not in df.columns]
    if missing:
        raise DataError(f"{source}: missing columns {missing}")
    if len(df) < MIN_REFERENCE_ROWS:
        raise DataError(f"{source}: {len(df)} rows; a reference needs {MIN_REFERENCE_ROWS}")
    try:
        values = df[list(REFERENCE_COLUMNS)].astype(float).to_numpy()
    except (TypeError, ValueError):
        raise DataError(f"{source}: non-numeric values") from None
    if not np.isfinite(values).all():
        raise DataError(f"{source}: non-finite values (NaN or infinity)")
