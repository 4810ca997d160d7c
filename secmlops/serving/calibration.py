"""The screener's calibration, measured on clean images and shipped (signed) with the model."""

from __future__ import annotations

from pathlib import Path

import torch

from secmlops.serving.screening import Screener, ScreenerCalibration

SCREENING_FILE = "screening.json"


def calibrate_model(
    model_dir: Path, data_dir: Path, split: str = "val", max_images: int = 200
) -> ScreenerCalibration:
    """Calibrate the screener of a model on clean images of its data; store it with the model.

    The calibration becomes one of the model's artifact files (`screening.json`), so it is
    signed with the model and travels with it through the registry to serving. Images are
    scored at their original size, as serving sees uploads.

    Raises:
        DataError: the split is missing, too small for the false-alarm rate, or its images
            differ in size.
    """
    from secmlops.data.dataset import load_dataset
    from secmlops.errors import DataError
    from secmlops.evaluation.inference import select_split
    from secmlops.fsutil import atomic_write_json
    from secmlops.models import load
    from secmlops.training.batches import read_image_tensor

    dataset = load_dataset(Path(data_dir))
    records = select_split(dataset, split)[:max_images]
    images = [read_image_tensor(dataset.image_path(r)) for r in records]
    if len({tuple(im.shape) for im in images}) > 1:
        raise DataError(f"{data_dir}: {split} images differ in size; calibrate on one camera")
    model = load(Path(model_dir))
    try:
        screener = Screener.calibrate(model, torch.stack(images))
    except ValueError as exc:
        raise DataError(f"{data_dir} ({split}): {exc}") from None
    atomic_write_json(Path(model_dir) / SCREENING_FILE, screener.calibration.to_json())
    return screener.calibration
