"""The classical peer: OpenCV's HOG+SVM people detector next to our models, scored the same way.

What a user would pick without SecMLOps is OpenCV's pedestrian detector: histograms of oriented
gradients with a linear SVM trained on INRIA Person (Dalal and Triggs, "Histograms of Oriented
Gradients for Human Detection", CVPR 2005), `cv2.HOGDescriptor` with
`HOGDescriptor_getDefaultPeopleDetector()` and `detectMultiScale`. This benchmark runs it on a
dataset split at the images' original resolution (optionally upscaled first: its 64x128 window
holds a person about 96 px tall, larger than many people on these cameras), uses the SVM
margins as scores, chooses its operating point as the trainer does for our models (the lowest
score threshold with at most the policy's FPPI, 0.1, on a validation split) and scores it with
the project's own code (`score_predictions`: COCO AP@0.5 and AP@[.5:.95], MR^-2, and recall and
FPPI at the operating point). Each `--model` is scored on the same images at the threshold its
card signs. Seconds per frame are detection only (no JPEG decoding), one frame at a time, on
`--threads` CPU threads for every detector.

    python benchmarks/hog_peer.py --data runs/pets/test --split all \
        --threshold-data runs/pets/train --model undefended=runs/exp/pets-undefended \
        --hog-upscale 1 2 --hog-shrink --out runs/hog/pets-test.json

`--hog-upscale` takes one factor or several (one table row each). The boxes are HOG's raw
windows by default; `--hog-shrink` adds, per factor, a row with each window shrunk to the person
in it, its threshold chosen on the shrunk validation boxes. The geometry is the paper's: the
64x128 window holds a person about 96 px tall with some 16 px of margin on all four sides, so a
window of height h loses h/8 at top and bottom and a quarter of its width on each side (OpenCV's
`samples/python/peopledetect.py` draws a milder 15% / 5%). Raw windows are roughly 1.9 times the
area of a tight person box, so most of their overlaps stay below IoU 0.5.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from named_paths import name_path_pairs

from secmlops import models
from secmlops.data.dataset import DetectionDataset, ImageAnnotations, load_dataset, read_rgb
from secmlops.errors import DataError
from secmlops.evaluation.attack_runs import Predictions, score_predictions
from secmlops.evaluation.inference import predict_prepared, select_split
from secmlops.evaluation.miss_rate import threshold_at_fppi
from secmlops.fsutil import atomic_write_json
from secmlops.training.batches import prepare_split
from secmlops.training.trainer import TrainConfig

# Dalal and Triggs' window: 16 px of margin on each side of a 64x128 window (fractions per side).
SHRINK_WIDTH, SHRINK_HEIGHT = 16 / 64, 16 / 128
# detectMultiScale parameters of Dalal and Triggs' detector as OpenCV's samples run it.
WIN_STRIDE, PADDING, SCALE = (8, 8), (8, 8), 1.05


def people_detector() -> cv2.HOGDescriptor:
    """OpenCV's default 64x128 HOG descriptor with its INRIA-trained linear SVM."""
    hog = cv2.HOGDescriptor()
    hog.setSVMDetector(np.asarray(cv2.HOGDescriptor.getDefaultPeopleDetector(), np.float32))
    return hog


def hog_detect(
    hog: cv2.HOGDescriptor, rgb: np.ndarray, upscale: float
) -> tuple[np.ndarray, np.ndarray]:
    """Detections on one RGB uint8 image, as (boxes [N,4] x1y1x2y2 float, scores [N]) in the
    image's original pixels; the image is resized by `upscale` first (1: as it is)."""
    bgr = np.ascontiguousarray(rgb[:, :, ::-1])  # OpenCV's colour order
    if upscale != 1:
        bgr = cv2.resize(bgr, None, fx=upscale, fy=upscale, interpolation=cv2.INTER_LINEAR)
    rects, weights = hog.detectMultiScale(bgr, winStride=WIN_STRIDE, padding=PADDING, scale=SCALE)
    xywh = np.asarray(rects, dtype=np.float64).reshape(-1, 4)
    boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1) / upscale
    # Windows may reach into the padding outside the frame; the people are inside it.
    height, width = rgb.shape[:2]
    boxes = np.clip(boxes, 0, [width, height, width, height])
    return boxes, np.asarray(weights, dtype=np.float64).reshape(-1)


def shrink(boxes: np.ndarray) -> np.ndarray:
    """Boxes with the window's margin taken off: the person inside each window."""
    w = (boxes[:, 2] - boxes[:, 0])[:, None]
    h = (boxes[:, 3] - boxes[:, 1])[:, None]
    pad = np.concatenate([SHRINK_WIDTH * w, SHRINK_HEIGHT * h], axis=1)
    return boxes + np.concatenate([pad, -pad], axis=1)


def predict_hog(
    dataset: DetectionDataset, records: Sequence[ImageAnnotations], upscale: float
) -> tuple[Predictions, float]:
    """HOG+SVM detections of every record (raw window boxes), and mean seconds per frame
    spent detecting (decoding excluded, as for the models)."""
    hog = people_detector()
    predictions: Predictions = {}
    spent = 0.0
    for record in records:
        rgb = read_rgb(dataset.image_path(record))
        start = time.perf_counter()
        boxes, scores = hog_detect(hog, rgb, upscale)
        spent += time.perf_counter() - start
        predictions[record.id] = {
            "boxes": torch.from_numpy(boxes).float(),
            "scores": torch.from_numpy(scores).float(),
        }
    return predictions, spent / max(len(records), 1)


def shrunk(predictions: Predictions) -> Predictions:
    """The same detections with every box shrunk to the person."""
    return {
        image_id: {"boxes": torch.from_numpy(shrink(det["boxes"].double().numpy())).float(),
                   "scores": det["scores"]}
        for image_id, det in predictions.items()
    }  # fmt: skip


def hog_rows(
    data: tuple[DetectionDataset, list[ImageAnnotations]],
    val: tuple[DetectionDataset, list[ImageAnnotations]],
    upscale: float,
    with_shrink: bool,
    target_fppi: float,
) -> dict[str, dict[str, Any]]:
    """The HOG+SVM row(s) at one upscale factor: threshold at `target_fppi` on `val`, figures
    on `data`."""
    print(f"HOG+SVM {upscale:g}x on {len(val[1])} validation frames ...", flush=True)
    val_pred, _ = predict_hog(*val, upscale)
    print(f"HOG+SVM {upscale:g}x on {len(data[1])} evaluated frames ...", flush=True)
    test_pred, per_frame = predict_hog(*data, upscale)
    variants = {"": (val_pred, test_pred)}
    if with_shrink:
        variants[", shrunk"] = (shrunk(val_pred), shrunk(test_pred))
    rows = {}
    for suffix, (on_val, on_test) in variants.items():
        threshold = threshold_at_fppi(val[1], on_val, target_fppi)
        rows[f"HOG+SVM {upscale:g}x{suffix}"] = {
            **score_predictions(data[1], on_test, threshold),
            "threshold": threshold,
            "seconds_per_frame": per_frame,
            "val": score_predictions(val[1], on_val, threshold),
            "upscale": upscale,
            "shrunk": bool(suffix),
        }
    return rows


def model_row(
    model_dir: Path, dataset: DetectionDataset, records: list[ImageAnnotations]
) -> dict[str, Any]:
    """One trained model's figures at the threshold its card signs, on `records`."""
    model = models.load(model_dir)
    card = models.read_card(model_dir)  # what `load` attaches, typed
    threshold = card.serving_threshold()
    prepared = prepare_split(dataset, records, card.input_size, threads=1)
    start = time.perf_counter()
    # One frame at a time, as a camera delivers them and as HOG runs.
    predictions = predict_prepared(model, prepared, batch_size=1)
    per_frame = (time.perf_counter() - start) / max(len(records), 1)
    return {
        **score_predictions(records, predictions, threshold),
        "threshold": threshold,
        "seconds_per_frame": per_frame,
        "input_size": list(card.input_size),
    }


def table(rows: dict[str, dict[str, Any]]) -> str:
    """The markdown table: one row per detector."""
    lines = [
        "| detector | AP@0.5 | mAP@[.5:.95] | MR^-2 | recall @op | FPPI @op | threshold "
        "| s/frame |",
        "| --- |" + " ---: |" * 7,
    ]
    for name, r in rows.items():
        lines.append(
            f"| {name} | {r['mAP50']:.3f} | {r['mAP50_95']:.3f} | {r['mr2']:.3f} "
            f"| {r['recall']:.3f} | {r['fppi']:.3f} | {r['threshold']:.3f} "
            f"| {r['seconds_per_frame']:.3f} |"
        )
    return "\n".join(lines)


def validation_images(
    data: DetectionDataset, evaluated: list[ImageAnnotations], threshold_data: Path | None
) -> tuple[DetectionDataset, list[ImageAnnotations]]:
    """The validation split HOG's threshold is chosen on: `threshold_data`'s, else `data`'s.

    Raises:
        SystemExit: there is no val split, or it is among the evaluated images (a threshold
            chosen on the test images would flatter HOG).
    """
    source = load_dataset(threshold_data) if threshold_data else data
    try:
        val = source.split("val")
    except DataError as exc:
        raise SystemExit(f"{exc}: give --threshold-data DIR with a val split") from None
    if source.root.resolve() == data.root.resolve():
        overlap = {r.id for r in val} & {r.id for r in evaluated}
        if overlap:
            raise SystemExit(
                f"{len(overlap)} val images of {data.root} are evaluated too: "
                "give --threshold-data DIR (another dataset's val split chooses the threshold)"
            )
    return source, val


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--split", default="test", help="a split of --data, or all")
    parser.add_argument("--threshold-data", type=Path, help="dataset whose val split sets HOG's")
    parser.add_argument("--model", action="append", default=[], help="NAME=MODEL_DIR to score")
    parser.add_argument(
        "--hog-upscale", type=float, nargs="+", default=[2.0],
        help="factor(s) HOG's input is resized by first (default 2: measured best)",
    )  # fmt: skip
    parser.add_argument("--hog-shrink", action="store_true", help="also rows with shrunk boxes")
    parser.add_argument("--target-fppi", type=float, default=TrainConfig.target_fppi)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads of every detector")
    parser.add_argument("--max-images", type=int, help="evaluate the first N images only")
    parser.add_argument("--out", type=Path, help="JSON file for the figures")
    args = parser.parse_args()

    # The same thread budget for OpenCV and torch, so seconds per frame compare.
    cv2.setNumThreads(args.threads)
    torch.set_num_threads(args.threads)
    dataset = load_dataset(args.data)
    records = select_split(dataset, args.split)[: args.max_images]
    val = validation_images(dataset, records, args.threshold_data)
    rows: dict[str, dict[str, Any]] = {}
    for factor in args.hog_upscale:
        rows.update(hog_rows((dataset, records), val, factor, args.hog_shrink, args.target_fppi))
    for name, model_dir in name_path_pairs(args.model, "model"):
        print(f"{name} ({model_dir}) on {len(records)} frames ...", flush=True)
        rows[name] = model_row(model_dir, dataset, records)
    print(
        f"\n{args.data} ({args.split}, {len(records)} frames); operating points at FPPI "
        f"{args.target_fppi:g} on val of {val[0].root} (HOG) or signed in model.json (models):"
    )
    print(table(rows))
    if args.out:
        atomic_write_json(args.out, {
            "data": str(args.data), "split": args.split, "images": len(records),
            "threshold_data": str(val[0].root), "target_fppi": args.target_fppi,
            "threads": args.threads, "rows": rows,
        })  # fmt: skip


if __name__ == "__main__":
    main()
