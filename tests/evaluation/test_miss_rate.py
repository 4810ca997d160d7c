"""MR^-2 and the operating point, against the Caltech toolbox's definition worked out by hand."""

import math

import numpy as np
import pytest

from secmlops.data.dataset import ImageAnnotations
from secmlops.evaluation.miss_rate import (
    MissRateProtocol,
    log_average_miss_rate,
    miss_rate_curve,
    operating_point_metrics,
    per_image_counts,
    threshold_at_fppi,
)

# Image A: two people and an ignore region; image B: one person.
A = ImageAnnotations(
    1, "a.png", 200, 200, boxes=((0, 0, 10, 20), (20, 0, 30, 20)), ignore=((40, 0, 80, 40),)
)
B = ImageAnnotations(2, "b.png", 200, 200, boxes=((0, 0, 10, 20),))
IMAGES = [A, B]
PREDICTIONS = {
    1: {
        # .9 on person 1 (true); .8 inside the ignore region (its area over the detection's
        # is 1: ignored); .7 on nothing (false); .6 on person 1 again, already taken (false).
        "boxes": np.array([[0, 0, 10, 20], [50, 10, 60, 30], [100, 100, 110, 120], [0, 0, 10, 20]]),
        "scores": np.array([0.9, 0.8, 0.7, 0.6]),
    },
    # .5 on person 3, shifted 1 px: IoU 180/220 = 0.82 (true).
    2: {"boxes": np.array([[1, 0, 11, 20]]), "scores": np.array([0.5])},
}


def test_curve_and_mr2_follow_the_caltech_definition():
    # Non-ignored detections by score: T(.9) F(.7) F(.6) T(.5); 3 people, 2 images.
    # Curve (fppi, miss): (0, 2/3) (0.5, 2/3) (1, 2/3) (1, 1/3).
    fppi, miss, scores = miss_rate_curve(IMAGES, PREDICTIONS)
    assert fppi.tolist() == [0.0, 0.5, 1.0, 1.0]
    assert miss.tolist() == pytest.approx([2 / 3, 2 / 3, 2 / 3, 1 / 3])
    assert scores.tolist() == [0.9, 0.7, 0.6, 0.5]
    # References 10^[-2:.25:0]: the eight below 1 read the last point at or below them, miss
    # 2/3 (at 0 or 0.5 FPPI); at 1 FPPI the last point has miss 1/3.
    expected = math.exp((8 * math.log(2 / 3) + math.log(1 / 3)) / 9)
    assert log_average_miss_rate(IMAGES, PREDICTIONS) == pytest.approx(expected, abs=1e-12)


def test_perfect_and_blind_detectors_reach_the_floor_and_one():
    perfect = {
        1: {"boxes": np.array(A.boxes), "scores": np.array([0.9, 0.8])},
        2: {"boxes": np.array(B.boxes), "scores": np.array([0.7])},
    }
    assert log_average_miss_rate(IMAGES, perfect) == pytest.approx(1e-10)  # max(1e-10, 0)
    assert log_average_miss_rate(IMAGES, {}) == 1.0
    # Only false alarms: recall 0 at every reference point.
    noise = {1: {"boxes": np.array([[150, 150, 160, 170]]), "scores": np.array([0.9])}}
    assert log_average_miss_rate(IMAGES, noise) == 1.0


def test_a_curve_that_starts_above_a_reference_reads_recall_zero_there():
    # Two false alarms outscore the only true detection: the first point is at 1 FPPI.
    single = [B]
    predictions = {2: {"boxes": np.array([[90, 90, 99, 99], [0, 0, 10, 20]]),
                       "scores": np.array([0.9, 0.1])}}  # fmt: skip
    # Points: (1, miss 1), (1, miss 0). References below 1: miss 1 (no point at or below:
    # recall 0); at 1: miss 0 -> floor 1e-10. MR = exp((8 ln 1 + ln 1e-10) / 9).
    expected = math.exp(math.log(1e-10) / 9)
    assert log_average_miss_rate(single, predictions) == pytest.approx(expected)


def test_operating_point_figures():
    at = operating_point_metrics(IMAGES, PREDICTIONS, 0.7)
    assert at["recall"] == pytest.approx(1 / 3) and at["miss_rate"] == pytest.approx(2 / 3)
    assert at["precision"] == 0.5 and at["fppi"] == 0.5  # the ignored .8 counts for nothing
    assert (at["true_positives"], at["false_positives"], at["people"], at["images"]) == (
        1, 1, 3, 2,
    )  # fmt: skip
    nothing = operating_point_metrics(IMAGES, PREDICTIONS, 0.95)
    assert nothing["recall"] == 0 and nothing["precision"] == 1.0 and nothing["fppi"] == 0


def test_threshold_at_fppi_keeps_the_most_detections_within_the_budget():
    # False positives score .7 and .6; 2 images.
    assert threshold_at_fppi(IMAGES, PREDICTIONS, 1.0) == 0.5  # both fit: everything kept
    assert threshold_at_fppi(IMAGES, PREDICTIONS, 0.5) == 0.7  # one fits: the .6 goes
    assert threshold_at_fppi(IMAGES, PREDICTIONS, 0.25) == 0.9  # none fits
    assert threshold_at_fppi(IMAGES, {}, 0.1) == 1.0
    # Tied scores go in or out together: a false and a true detection both at .7.
    tied = {2: {"boxes": np.array([[0, 0, 10, 20], [90, 90, 99, 99]]),
                "scores": np.array([0.7, 0.7])}}  # fmt: skip
    threshold = threshold_at_fppi([B], tied, 0.5)
    assert threshold > 0.7
    assert operating_point_metrics([B], tied, threshold)["fppi"] == 0


def test_height_range_turns_people_into_ignore_regions_and_drops_detections():
    tall = MissRateProtocol(min_height=50)
    # Everyone here is 20 px tall: nobody counts, and detections under 50/1.25 = 40 px go.
    assert operating_point_metrics(IMAGES, PREDICTIONS, 0.0, tall)["people"] == 0
    assert miss_rate_curve(IMAGES, PREDICTIONS, tall)[0].size == 0
    counted = MissRateProtocol(min_height=15)
    assert operating_point_metrics(IMAGES, PREDICTIONS, 0.0, counted)["people"] == 3


def test_per_image_counts():
    counts = per_image_counts(IMAGES, PREDICTIONS, 0.5)
    assert counts["found"].tolist() == [1, 1]
    assert counts["false_positives"].tolist() == [2, 0]
    assert counts["people"].tolist() == [2, 1]
