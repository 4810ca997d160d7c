"""The reference profile: the feature distribution the model was validated on.

Drift is only meaningful against what the model saw when it passed its gates, so the reference
is built from the model's own validation split, by the model itself (detection features depend
on the weights), with exactly the features serving logs (`secmlops.monitoring.features`) at the
images' original size, one image per forward pass as serving does. The profile also holds the
PCA projection of the backbone embedding (`embedding.py`), fitted on the same images, which
serving uses to log the reduced embedding. The profile is written into the model directory before
it is signed, so a tampered reference fails signature verification with the model instead of
silently hiding drift.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import cast

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from secmlops.data.dataset import load_dataset, read_rgb
from secmlops.errors import DataError, ModelError
from secmlops.evaluation.inference import select_split
from secmlops.fsutil import atomic_write_bytes
from secmlops.models import ModelCard
from secmlops.monitoring.embedding import (
    EmbeddingProjection,
    capture_embeddings,
    fit_projection,
)
from secmlops.monitoring.features import (
    DETECTION_FEATURES,
    IMAGE_FEATURES,
    request_features,
)

REFERENCE_FILE = "reference-profile.json"
REFERENCE_FORMAT = "secmlops.reference/v2"
FEATURE_COLUMNS = IMAGE_FEATURES + DETECTION_FEATURES
# Kept beside the features: the attack monitor can derive a score threshold from clean images.
SCORE_COLUMN = "adversarial_score"
REFERENCE_COLUMNS = (*FEATURE_COLUMNS, SCORE_COLUMN)
# Fewer rows than this make the K-S test too weak to say anything about a window.
MIN_REFERENCE_ROWS = 20


def describe_images(
    model: nn.Module, images: list[Tensor], projection: EmbeddingProjection | None = None
) -> list[dict[str, float]]:
    """Serving's per-image features plus the free adversarial score, one dict per image.

    Args:
        model: a detector in eval mode (torchvision contract).
        images: float [3,H,W] tensors in [0,1], each at its original size.
        projection: when given, the projected backbone embedding is added as emb_* columns.

    Returns:
        One dict per image with every column of `REFERENCE_COLUMNS` (+ the embedding's).

    Raises:
        ValueError: the model is in training mode.
    """
    rows, embeddings = _describe(model, images)
    if projection is not None:
        for row, projected in zip(rows, projection.project(embeddings), strict=True):
            row.update(zip(projection.columns, map(float, projected), strict=True))
    return rows


def _describe(model: nn.Module, images: list[Tensor]) -> tuple[list[dict[str, float]], np.ndarray]:
    from secmlops.serving.screening import detect_and_score

    device = next(model.parameters()).device
    # Detections are described at the release's operating point, as serving logs them.
    threshold = cast(ModelCard, model.secmlops_card).serving_threshold()
    rows: list[dict[str, float]] = []
    embeddings: list[Tensor] = []
    for image in images:
        # One image per pass, as serving does: batching would pad and change the detections.
        batch = image.unsqueeze(0).to(device)
        with capture_embeddings(model) as captured:
            detections, scores = detect_and_score(model, batch)
        embeddings.append(captured[0][0])
        found = {k: v.cpu() for k, v in detections[0].items()}
        features = request_features(batch, found, threshold)
        rows.append({**features, SCORE_COLUMN: float(scores[0])})
    return rows, torch.stack(embeddings).numpy() if embeddings else np.empty((0, 0))


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
) -> tuple[pd.DataFrame, EmbeddingProjection]:
    """Per-image reference features of a model on a dataset split, and the embedding PCA.

    Args:
        model_dir: the model directory (`secmlops.models.load`).
        data_dir: the dataset version the model was validated on.
        split: the split to profile (the validation split: the training split is memorised).
        max_images: cap on images profiled (the K-S test gains little beyond a few hundred).

    Returns:
        One row per image (columns `REFERENCE_COLUMNS` and the projection's emb_* columns), and
        the PCA projection of the backbone embedding fitted on these images.

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
    rows, embeddings = _describe(model, images)
    projection = fit_projection(embeddings)
    frame = pd.DataFrame(rows, columns=list(REFERENCE_COLUMNS))
    frame[list(projection.columns)] = projection.project(embeddings)
    return frame, projection


def profile_model(
    model_dir: Path, data_dir: Path, split: str = "val", max_images: int = 300
) -> Path:
    """Build a model's reference profile on a split and save it into the model directory.

    Run it before signing: the profile is one of the model's signed files.

    Returns:
        The written `reference-profile.json`.

    Raises:
        ModelError: the model directory is invalid.
        DataError: the split is missing or too small.
    """
    frame, projection = build_reference(model_dir, data_dir, split, max_images)
    return save_reference(frame, model_dir, projection)


def save_reference(
    df: pd.DataFrame, model_dir: Path, projection: EmbeddingProjection | None = None
) -> Path:
    """Write the profile (records + embedding projection) as `reference-profile.json` into the
    model directory, atomically.

    Returns:
        The written path.

    Raises:
        DataError: a column is missing, a value is not finite, or there are too few rows.
    """
    columns = _profile_columns(projection)
    _check_frame(df, f"reference for {model_dir}", columns)
    path = Path(model_dir) / REFERENCE_FILE
    profile = {
        "format": REFERENCE_FORMAT,
        "records": df[columns].to_dict(orient="records"),
        "embedding_projection": projection.to_json() if projection is not None else None,
    }
    atomic_write_bytes(path, (json.dumps(profile, allow_nan=False) + "\n").encode())
    return path


def load_profile(model_dir: Path) -> tuple[pd.DataFrame, EmbeddingProjection | None]:
    """Read a model's reference profile and its embedding projection (None: not recorded).

    Raises:
        ModelError: the file is missing, not valid JSON, or not a reference profile.
        DataError: a column is missing, a value is not finite, or there are too few rows.
    """
    path = Path(model_dir) / REFERENCE_FILE
    if not path.is_file():
        raise ModelError(f"{path}: missing; build it with `secmlops model profile`")
    try:
        profile = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(profile, dict) or profile.get("format") != REFERENCE_FORMAT:
        raise ModelError(f"{path}: not a {REFERENCE_FORMAT} profile")
    records = profile.get("records")
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise ModelError(f"{path}: 'records' must be a JSON list of records")
    raw_projection = profile.get("embedding_projection")
    projection = (
        EmbeddingProjection.from_json(raw_projection) if raw_projection is not None else None
    )
    columns = _profile_columns(projection)
    df = pd.DataFrame(records)
    _check_frame(df, str(path), columns)
    return df[columns].astype(float), projection


def load_reference(model_dir: Path) -> pd.DataFrame:
    """A model's reference rows (`load_profile` without the projection)."""
    return load_profile(model_dir)[0]


def load_projection(model_dir: Path) -> EmbeddingProjection | None:
    """The embedding projection of a model's reference profile; None when there is no profile
    or it records no projection (serving then logs no embedding)."""
    if not (Path(model_dir) / REFERENCE_FILE).is_file():
        return None
    return load_profile(model_dir)[1]


def _profile_columns(projection: EmbeddingProjection | None) -> list[str]:
    return [*REFERENCE_COLUMNS, *(projection.columns if projection is not None else ())]


def _check_frame(df: pd.DataFrame, source: str, columns: list[str]) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise DataError(f"{source}: missing columns {missing}")
    if len(df) < MIN_REFERENCE_ROWS:
        raise DataError(f"{source}: {len(df)} rows; a reference needs {MIN_REFERENCE_ROWS}")
    try:
        values = df[columns].astype(float).to_numpy()
    except (TypeError, ValueError):
        raise DataError(f"{source}: non-numeric values") from None
    if not np.isfinite(values).all():
        raise DataError(f"{source}: non-finite values (NaN or infinity)")
