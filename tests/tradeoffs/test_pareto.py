"""The Pareto front: exact on hand-made sets, and against brute force on random ones."""

import itertools
import math
import random

import pytest

from secmlops.tradeoffs.pareto import dominates, pareto_front


def test_dominance_needs_at_least_as_good_on_both_and_better_on_one() -> None:
    assert dominates((0.8, 0.5), (0.7, 0.5))
    assert dominates((0.8, 0.5), (0.7, 0.4))
    assert not dominates((0.8, 0.4), (0.7, 0.5))  # a trade-off, not a domination
    assert not dominates((0.7, 0.5), (0.7, 0.5))  # equal points keep each other


def test_front_of_the_measured_shape_keeps_each_trade_off() -> None:
    # clean mAP, robust mAP: undefended, FGSM-RS, PGD, a worse PGD, JPEG (dominated by FGSM-RS)
    points = [(0.865, 0.015), (0.784, 0.425), (0.753, 0.452), (0.70, 0.40), (0.78, 0.20)]
    assert pareto_front(points) == [True, True, True, False, False]


def test_ties_are_all_kept_and_one_point_is_its_own_front() -> None:
    assert pareto_front([(0.5, 0.5), (0.5, 0.5), (0.4, 0.4)]) == [True, True, False]
    assert pareto_front([(0.1, 0.2)]) == [True]
    assert pareto_front([]) == []


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_coordinates_are_refused(bad: float) -> None:
    with pytest.raises(ValueError, match="finite"):
        pareto_front([(0.5, bad)])
    with pytest.raises(ValueError, match="finite"):
        dominates((0.5, 0.5), (bad, 0.1))


def test_front_matches_its_definition_on_random_sets() -> None:
    rng = random.Random(0)
    for _ in range(200):
        # Rounded values make ties and shared coordinates frequent.
        points = [
            (round(rng.random(), 1), round(rng.random(), 1)) for _ in range(rng.randint(1, 9))
        ]
        front = pareto_front(points)
        for i, point in enumerate(points):
            beaten = any(
                o[0] >= point[0] and o[1] >= point[1] and o != point
                for j, o in enumerate(points)
                if j != i
            )
            assert front[i] is (not beaten), (points, i)
        # No marked point dominates another marked point.
        marked = [p for p, f in zip(points, front, strict=True) if f]
        assert not any(dominates(a, b) for a, b in itertools.permutations(marked, 2))
