"""Pedestrian-detection figures: the log-average miss rate MR^-2 and the operating point.

A pedestrian detection system is judged by the people it misses at the false-alarm rate it runs
at, not by COCO mAP (which mixes missed people with false alarms). This module implements the
Caltech Pedestrian benchmark's evaluation (Dollar, Wojek, Schiele, Perona, "Pedestrian Detection:
An Evaluation of the State of the Art", PAMI 2012; toolbox `bbGt.m` evalRes/compOas/compRoc and
`dbEval.m`), which CityPersons and EuroCity Persons reuse:

- Matching, per image: detections in descending score order; each takes the unmatched person of
  highest overlap >= `iou` (IoU), and only when there is none, the ignore region of highest
  overlap, where overlap is the intersection over the DETECTION's area (an ignore region is
  usually larger than the people in it). A detection on an ignore region is neither a true nor
  a false positive, and one region absorbs any number of them. Unmatched detections are false
  positives.
- Height range (Caltech "reasonable": 50 px and up, >= 65% visible): people outside
  [min_height, max_height] become ignore regions, and detections outside the range widened by
  Caltech's factor 1.25 are dropped. The default range is everything: the cameras here show
  people 19..125 px tall, most under Caltech's 50 px floor. No visibility labels exist in these
  datasets, so no visibility filter is applied (occluded people the labellers marked as ignore
  regions are ignored). Caltech's aspect-ratio standardisation (`squarify`) is not applied.
- MR^-2: the miss rate at nine false-positives-per-image points 10^[-2:0.25:0], each read as
  the recall of the last point of the curve at or below that FPPI (0 when none is), averaged in
  log space: exp(mean(log(max(1e-10, 1 - recall)))).

The operating point of a release is one score threshold (`threshold_at_fppi` chooses it on
validation data); `operating_point_metrics` gives recall, miss rate, precision and FPPI there.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from secmlops.data.dataset import ImageAnnotations

Detections = Mapping[str, Any]  # {"boxes": [N,4] x1y1x2y2, "scores": [N]} (tensors or arrays)
# The nine reference FPPI points of MR^-2 (Dollar et al. 2012).
REFERENCE_FPPI = 10.0 ** np.arange(-2.0, 0.0001, 0.25)
# Caltech's margin on the height range for detections (bbGt loadAll with hRng).
HEIGHT_MARGIN = 1.25
_TRUE, _FALSE, _IGNORED = 1, 0, -1


@dataclass(frozen=True)
class MissRateProtocol:
    """Which people count and how detections match them (defaults: every labelled person)."""

    iou: float = 0.5
    min_height: float = 0.0
    max_height: float = math.inf


@dataclass(frozen=True)
class _Matched:
    """Every kept detection of a split: its score, outcome and image, plus people per image."""

    scores: np.ndarray  # float [D]
    outcome: np.ndarray  # int [D]: 1 true positive, 0 false positive, -1 ignored
    image: np.ndarray  # int [D]: index into the images
    people: np.ndarray  # int [I]: non-ignored people per image


def match_image(
    people: np.ndarray,
    ignore: np.ndarray,
    boxes: np.ndarray,
    scores: np.ndarray,
    protocol: MissRateProtocol = MissRateProtocol(),
) -> tuple[np.ndarray, np.ndarray, int]:
    """Caltech's greedy matching on one image.

    Args:
        people: [P,4] x1y1x2y2 person boxes; ignore: [R,4] ignore regions.
        boxes, scores: [D,4] and [D] detections.

    Returns:
        (outcome [D'] of the detections kept by the height range, in descending score order:
        1 true positive, 0 false positive, -1 ignored; their scores [D']; people counted).
    """
    people, ignore = _boxes(people), _boxes(ignore)
    boxes, scores = _boxes(boxes), np.asarray(scores, dtype=np.float64).reshape(-1)
    heights = people[:, 3] - people[:, 1]
    outside = (heights < protocol.min_height) | (heights > protocol.max_height)
    truth = np.concatenate([people[~outside], people[outside], ignore])
    counted = int((~outside).sum())
    det_h = boxes[:, 3] - boxes[:, 1]
    keep = (det_h >= protocol.min_height / HEIGHT_MARGIN) & (
        det_h <= protocol.max_height * HEIGHT_MARGIN
    )
    boxes, scores = boxes[keep], scores[keep]
    order = np.argsort(-scores, kind="stable")
    boxes, scores = boxes[order], scores[order]
    outcome = np.full(len(boxes), _FALSE, dtype=np.int64)
    if len(truth) == 0 or len(boxes) == 0:
        return outcome, scores, counted
    overlap = _overlaps(boxes, truth, counted)
    taken = np.zeros(counted, dtype=bool)
    for d in range(len(boxes)):
        persons = np.where(taken, -1.0, overlap[d, :counted])
        if counted and persons.max() >= protocol.iou:
            taken[int(persons.argmax())] = True
            outcome[d] = _TRUE
        elif len(truth) > counted and overlap[d, counted:].max() >= protocol.iou:
            outcome[d] = _IGNORED
    return outcome, scores, counted


def _overlaps(boxes: np.ndarray, truth: np.ndarray, counted: int) -> np.ndarray:
    """[D, G] overlaps: IoU with counted people, intersection over the detection's area with
    ignore regions (Caltech compOas)."""
    x1 = np.maximum(boxes[:, None, 0], truth[None, :, 0])
    y1 = np.maximum(boxes[:, None, 1], truth[None, :, 1])
    x2 = np.minimum(boxes[:, None, 2], truth[None, :, 2])
    y2 = np.minimum(boxes[:, None, 3], truth[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    det_area = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))[:, None]
    gt_area = ((truth[:, 2] - truth[:, 0]) * (truth[:, 3] - truth[:, 1]))[None, :]
    union = det_area + gt_area - inter
    iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    over_det = np.divide(inter, det_area, out=np.zeros_like(inter), where=det_area > 0)
    return np.concatenate([iou[:, :counted], over_det[:, counted:]], axis=1)


def _match_split(
    images: Sequence[ImageAnnotations],
    predictions: Mapping[int, Detections],
    protocol: MissRateProtocol,
) -> _Matched:
    scores, outcome, image, people = [], [], [], []
    for index, record in enumerate(images):
        found = predictions.get(record.id)
        boxes = _numpy(found["boxes"]) if found is not None else np.zeros((0, 4))
        score = _numpy(found["scores"]) if found is not None else np.zeros(0)
        result, kept, counted = match_image(
            np.asarray(record.boxes, dtype=np.float64), np.asarray(record.ignore, dtype=np.float64),
            boxes, score, protocol,
        )  # fmt: skip
        scores.append(kept)
        outcome.append(result)
        image.append(np.full(len(kept), index, dtype=np.int64))
        people.append(counted)
    return _Matched(
        np.concatenate(scores) if scores else np.zeros(0),
        np.concatenate(outcome) if outcome else np.zeros(0, dtype=np.int64),
        np.concatenate(image) if image else np.zeros(0, dtype=np.int64),
        np.asarray(people, dtype=np.int64),
    )


def miss_rate_curve(
    images: Sequence[ImageAnnotations],
    predictions: Mapping[int, Detections],
    protocol: MissRateProtocol = MissRateProtocol(),
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The miss-rate-vs-FPPI curve over all detections (Caltech compRoc).

    Returns:
        (fppi [D], miss rate [D], score thresholds [D]): point k keeps the k+1 highest-scoring
        non-ignored detections.
    """
    matched = _match_split(images, predictions, protocol)
    counted = matched.outcome != _IGNORED
    scores, outcome = matched.scores[counted], matched.outcome[counted]
    order = np.argsort(-scores, kind="stable")
    scores, outcome = scores[order], outcome[order]
    true_positives = np.cumsum(outcome == _TRUE)
    false_positives = np.cumsum(outcome == _FALSE)
    people = max(int(matched.people.sum()), 1)
    fppi = false_positives / max(len(images), 1)
    return fppi, 1.0 - true_positives / people, scores


def log_average_miss_rate(
    images: Sequence[ImageAnnotations],
    predictions: Mapping[int, Detections],
    protocol: MissRateProtocol = MissRateProtocol(),
) -> float:
    """MR^-2: the miss rate averaged in log space at the nine FPPI points of [1e-2, 1e0]."""
    fppi, miss, _ = miss_rate_curve(images, predictions, protocol)
    return _log_average(fppi, miss)


def _log_average(fppi: np.ndarray, miss: np.ndarray) -> float:
    # Prepending (-inf, miss 1) makes "no point at or below the reference" read as recall 0.
    xs = np.concatenate([[-np.inf], fppi])
    ys = np.concatenate([[1.0], miss])
    last = np.searchsorted(xs, REFERENCE_FPPI, side="right") - 1
    return float(np.exp(np.mean(np.log(np.maximum(1e-10, ys[last])))))


def operating_point_metrics(
    images: Sequence[ImageAnnotations],
    predictions: Mapping[int, Detections],
    threshold: float,
    protocol: MissRateProtocol = MissRateProtocol(),
) -> dict[str, float]:
    """The figures at one score threshold (detections with score >= `threshold`), and MR^-2.

    Returns:
        recall (0 when nobody is counted), miss_rate (1 - recall), precision (1 when nothing
        counted is detected), fppi, true_positives, false_positives, people, images, mr2.
    """
    matched = _match_split(images, predictions, protocol)
    kept = matched.scores >= threshold
    true_positives = int(((matched.outcome == _TRUE) & kept).sum())
    false_positives = int(((matched.outcome == _FALSE) & kept).sum())
    people = int(matched.people.sum())
    recall = true_positives / people if people else 0.0
    detected = true_positives + false_positives
    fppi, miss, _ = miss_rate_curve(images, predictions, protocol)
    return {
        "recall": recall,
        "miss_rate": 1.0 - recall,
        "precision": true_positives / detected if detected else 1.0,
        "fppi": false_positives / max(len(images), 1),
        "true_positives": float(true_positives),
        "false_positives": float(false_positives),
        "people": float(people),
        "images": float(len(images)),
        "mr2": _log_average(fppi, miss),
    }


def per_image_counts(
    images: Sequence[ImageAnnotations],
    predictions: Mapping[int, Detections],
    threshold: float,
    protocol: MissRateProtocol = MissRateProtocol(),
) -> dict[str, np.ndarray]:
    """People found, false positives and people counted per image (in the order of `images`)
    at `threshold`: what a per-image worst case compares."""
    matched = _match_split(images, predictions, protocol)
    kept = matched.scores >= threshold
    size = len(images)
    found = np.bincount(matched.image[kept & (matched.outcome == _TRUE)], minlength=size)
    false = np.bincount(matched.image[kept & (matched.outcome == _FALSE)], minlength=size)
    return {"found": found, "false_positives": false, "people": matched.people}


def threshold_at_fppi(
    images: Sequence[ImageAnnotations],
    predictions: Mapping[int, Detections],
    target_fppi: float,
    protocol: MissRateProtocol = MissRateProtocol(),
) -> float:
    """The lowest score threshold with at most `target_fppi` false positives per image.

    Detections of equal score go in or out together. When even the highest-scoring false
    positive breaks the budget, the threshold sits just above it (only the detections scoring
    higher, all true, are kept); with no false positive at all, it is the lowest score (1.0
    without any detection).
    """
    matched = _match_split(images, predictions, protocol)
    counted = matched.outcome != _IGNORED
    scores, outcome = matched.scores[counted], matched.outcome[counted]
    if len(scores) == 0:
        return 1.0
    budget = target_fppi * max(len(images), 1)
    false_scores = np.sort(scores[outcome == _FALSE])[::-1]
    if len(false_scores) <= budget:
        return float(scores.min())
    # The first false positive that breaks the budget: everything scoring as much is out.
    breaking = float(false_scores[math.floor(budget + 1e-9)])
    above = scores[scores > breaking]
    return float(above.min()) if len(above) else float(np.nextafter(breaking, np.inf))


def _boxes(value: Any) -> np.ndarray:
    return np.asarray(_numpy(value), dtype=np.float64).reshape(-1, 4)


def _numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):
        return value.detach().cpu().numpy()
    return np.asarray(value)
