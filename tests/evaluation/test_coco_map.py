"""mAP against cases small enough to compute by hand."""

import pytest
import torch

from secmlops.data.dataset import ImageAnnotations
from secmlops.evaluation.coco_map import coco_map

GT = [
    ImageAnnotations(1, "a.jpg", 100, 100, boxes=((10, 10, 30, 60),)),
    ImageAnnotations(2, "b.jpg", 100, 100, boxes=((50, 20, 70, 80),)),
]


def det(boxes, scores):
    return {"boxes": torch.tensor(boxes, dtype=torch.float32), "scores": torch.tensor(scores)}


def test_map50_matches_hand_computed_101_point_interpolation():
    # Ranked: 0.9 TP (P=1, R=.5), 0.8 FP (P=.5, R=.5), 0.7 TP (P=2/3, R=1).
    # Interpolated precision is 1 for recall <= .5 (51 of COCO's 101 points) and 2/3 above (50).
    predictions = {
        1: det([[10, 10, 30, 60], [80, 80, 95, 98]], [0.9, 0.8]),
        2: det([[50, 20, 70, 80]], [0.7]),
    }
    metrics = coco_map(GT, predictions)
    assert metrics["mAP50"] == pytest.approx((51 * 1.0 + 50 * (2 / 3)) / 101, abs=1e-6)
    assert metrics["ground_truth_boxes"] == 2
    assert metrics["detections"] == 3


def test_map50_95_penalises_loose_boxes():
    # IoU of the short box with its ground truth is 37/60: a hit at IoU 0.5-0.6, a miss above.
    loose = {1: det([[10, 10, 30, 60]], [0.9]), 2: det([[50, 20, 70, 57]], [0.8])}
    metrics = coco_map(GT, loose)
    assert metrics["mAP50"] == pytest.approx(1.0)
    assert metrics["mAP50_95"] == pytest.approx((3 * 1.0 + 7 * 51 / 101) / 10, abs=1e-6)


def test_detection_on_ignore_region_is_neither_hit_nor_false_positive():
    gt = [
        ImageAnnotations(
            1, "a.jpg", 100, 100, boxes=((10, 10, 30, 60),), ignore=((60, 10, 90, 90),)
        )
    ]
    with_ignored = {1: det([[62, 12, 88, 88], [10, 10, 30, 60]], [0.95, 0.9])}
    assert coco_map(gt, with_ignored)["mAP50"] == pytest.approx(1.0)
    # The same detection without the ignore region is a ranked-first false positive.
    plain = [ImageAnnotations(1, "a.jpg", 100, 100, boxes=((10, 10, 30, 60),))]
    assert coco_map(plain, with_ignored)["mAP50"] < 0.6


def test_no_detections_scores_zero():
    assert coco_map(GT, {})["mAP50"] == 0.0
    assert coco_map(GT, {1: det([], [])})["mAP50"] == 0.0
