"""COCO mean average precision via pycocotools, the reference implementation the field reports.

Ignore regions are COCO crowd annotations: a detection matched to one is neither a true nor a
false positive, which is how MOTChallenge treats its `flag == 0` boxes.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from secmlops.data.dataset import PERSON_CATEGORY_ID, ImageAnnotations, to_coco

Detections = Mapping[str, Any]  # {"boxes": [N,4] x1y1x2y2, "scores": [N]} (tensors or arrays)


def detections_to_coco(
    predictions: Mapping[int, Detections],
) -> list[dict[str, Any]]:
    """Flatten per-image detections into COCO result dicts (bbox as x, y, w, h)."""
    results = []
    for image_id, det in predictions.items():
        boxes = np.asarray(_as_numpy(det["boxes"]), dtype=np.float64).reshape(-1, 4)
        scores = np.asarray(_as_numpy(det["scores"]), dtype=np.float64).reshape(-1)
        for (x1, y1, x2, y2), score in zip(boxes, scores, strict=True):
            results.append(
                {
                    "image_id": int(image_id),
                    "category_id": PERSON_CATEGORY_ID,
                    "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)],
                    "score": float(score),
                }
            )
    return results


def coco_map(
    images: Sequence[ImageAnnotations], predictions: Mapping[int, Detections]
) -> dict[str, float]:
    """COCO mAP of `predictions` against the ground truth of `images`.

    Args:
        images: the ground truth (boxes and ignore regions) of the evaluated images.
        predictions: detections per image id; images without an entry have no detections.

    Returns:
        `mAP50` (AP at IoU 0.5), `mAP50_95` (AP averaged over IoU 0.5:0.95), `AR100`
        (recall with up to 100 detections) and `images`, `ground_truth_boxes`, `detections`.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    counts = {
        "images": float(len(images)),
        "ground_truth_boxes": float(sum(len(im.boxes) for im in images)),
        "detections": float(sum(len(_as_numpy(p["scores"])) for p in predictions.values())),
    }
    wanted = {im.id for im in images}
    results = [r for r in detections_to_coco(predictions) if r["image_id"] in wanted]
    if not results or counts["ground_truth_boxes"] == 0:
        # pycocotools cannot load an empty result list; with no detections AP is 0 by definition.
        return {"mAP50": 0.0, "mAP50_95": 0.0, "AR100": 0.0, **counts}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        ground_truth = COCO()
        ground_truth.dataset = to_coco(images)
        ground_truth.createIndex()
        detections = ground_truth.loadRes(results)
        evaluator = COCOeval(ground_truth, detections, iouType="bbox")
        evaluator.params.imgIds = sorted(wanted)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = evaluator.stats
    return {
        "mAP50": _undefined_as_zero(stats[1]),
        "mAP50_95": _undefined_as_zero(stats[0]),
        "AR100": _undefined_as_zero(stats[8]),
        **counts,
    }


def _undefined_as_zero(value: float) -> float:
    # pycocotools reports -1 when a quantity is undefined (no ground truth in range).
    return float(value) if value >= 0 else 0.0


def _as_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):
        return value.detach().cpu().numpy()
    return np.asarray(value)
