"""The Pareto front of a set of configurations that each trade one benefit against another.

A deployment wants both clean accuracy and robustness. A configuration is worth considering
only if no other one is at least as good on both and strictly better on one: the ones left are
the Pareto front, and choosing among them is a policy decision (how much clean accuracy a camera
may give up for robustness), not a measurement.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

Point = tuple[float, float]


def dominates(a: Point, b: Point) -> bool:
    """True when `a` is at least as good as `b` on both axes and strictly better on one.

    Both axes are benefits (higher is better). Identical points do not dominate each other, so
    two configurations measured equal are both kept.

    Args:
        a: (first benefit, second benefit).
        b: the same for the other configuration.

    Raises:
        ValueError: a coordinate is not a finite number (NaN would compare false either way and
            silently keep a broken point on the front).
    """
    for value in (*a, *b):
        if not math.isfinite(value):
            raise ValueError(f"Pareto coordinates must be finite numbers, got {a} and {b}")
    return a[0] >= b[0] and a[1] >= b[1] and (a[0] > b[0] or a[1] > b[1])


def pareto_front(points: Sequence[Point]) -> list[bool]:
    """Which points are on the Pareto front (maximising both coordinates).

    Quadratic in the number of points, which is the number of model configurations of a study
    (tens): clarity beats the O(n log n) sweep here.

    Args:
        points: (first benefit, second benefit) per configuration.

    Returns:
        One flag per point, in order: True when no other point dominates it.

    Raises:
        ValueError: a coordinate is not finite.
    """
    for point in points:
        if not all(math.isfinite(value) for value in point):
            raise ValueError(f"Pareto coordinates must be finite numbers, got {point}")
    return [
        not any(dominates(other, point) for j, other in enumerate(points) if j != i)
        for i, point in enumerate(points)
    ]
