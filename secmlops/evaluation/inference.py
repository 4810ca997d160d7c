"""Running a detector over datasets and folders, and scoring it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from secmlops.data.dataset import IMAGE_SUFFIXES, DetectionDataset, ImageAnnotations
from secmlops.errors import DataError
from secmlops.evaluation.coco_map import coco_map
from secmlops.fsutil import atomic_write_json
from secmlops.training.batches import PreparedSplit, read_image_tensor


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's parameters."""
    return next(model.parameters()).device


@torch.no_grad()
def predict_prepared(
    model: nn.Module,
    prepared: PreparedSplit,
    batch_size: int = 32,
    progress: Callable[[int], None] | None = None,
) -> dict[int, dict[str, Tensor]]:
    """Detections for a prepared split, in each image's original pixels."""
    model.eval()
    device = model_device(model)
    in_h, in_w = prepared.images.shape[-2:]
    predictions: dict[int, dict[str, Tensor]] = {}
    for start in range(0, len(prepared), batch_size):
        batch = prepared.images[start : start + batch_size].to(device).float().div_(255)
        outputs = model(batch)
        for record, out in zip(prepared.records[start : start + batch_size], outputs, strict=True):
            factor = torch.tensor(
                [record.width / in_w, record.height / in_h] * 2, device=out["boxes"].device
            )
            predictions[record.id] = {
                "boxes": (out["boxes"] * factor).cpu(),
                "scores": out["scores"].cpu(),
            }
        if progress:
            progress(len(outputs))
    return predictions


@torch.no_grad()
def predict_tensors(model: nn.Module, images: Sequence[Tensor], batch_size: int = 16) -> list[dict]:
    """Detections for float [3,H,W] images of any sizes (the model resizes internally)."""
    model.eval()
    device = model_device(model)
    results: list[dict] = []
    for start in range(0, len(images), batch_size):
        chunk = [im.to(device) for im in images[start : start + batch_size]]
        results.extend({k: v.cpu() for k, v in out.items()} for out in model(chunk))
    return results


def list_images(folder: Path) -> list[Path]:
    """Image files directly in `folder`, sorted by name.

    Raises:
        DataError: the folder is missing or holds no image.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: image folder not found")
    files = sorted(
        p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
    )
    if not files:
        raise DataError(f"{folder}: no images found ({', '.join(IMAGE_SUFFIXES)})")
    return files


def predict_folder(
    model: nn.Module,
    folder: Path,
    out: Path,
    batch_size: int = 8,
    progress: Callable[[int], None] | None = None,
) -> list[dict[str, Any]]:
    """Detect people in every image of `folder` and write COCO-style results to `out`.

    Every image is decoded before anything is written, so an unreadable image fails the run
    without leaving a partial results file.

    Returns:
        The list written: `{"file_name", "category_id": 1, "bbox": [x, y, w, h], "score"}` in the
        original image's pixels.
    """
    files = list_images(folder)
    results: list[dict[str, Any]] = []
    for start in range(0, len(files), batch_size):
        chunk = files[start : start + batch_size]
        tensors = [read_image_tensor(p) for p in chunk]
        for path, det in zip(chunk, predict_tensors(model, tensors, batch_size), strict=True):
            for (x1, y1, x2, y2), score in zip(
                det["boxes"].tolist(), det["scores"].tolist(), strict=True
            ):
                results.append(
                    {
                        "file_name": path.name,
                        "category_id": 1,
                        "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
                        "score": round(score, 5),
                    }
                )
        if progress:
            progress(len(chunk))
    atomic_write_json(Path(out), results)
    return results


def evaluate_records(
    model: nn.Module,
    dataset: DetectionDataset,
    records: Sequence[ImageAnnotations],
    batch_size: int = 16,
    progress: Callable[[int], None] | None = None,
) -> dict[str, float]:
    """COCO mAP of `model` on `records`, decoding each image at its original size."""
    predictions: dict[int, dict[str, Tensor]] = {}
    for start in range(0, len(records), batch_size):
        chunk = records[start : start + batch_size]
        tensors = [read_image_tensor(dataset.image_path(r)) for r in chunk]
        for record, det in zip(chunk, predict_tensors(model, tensors, batch_size), strict=True):
            predictions[record.id] = det
        if progress:
            progress(len(chunk))
    return coco_map(records, predictions)


def select_split(dataset: DetectionDataset, split: str) -> list[ImageAnnotations]:
    """The records of `split`, or of every image when `split == "all"`."""
    return list(dataset.images) if split == "all" else dataset.split(split)
