"""Scatter plots of the study as PNG files, drawn with Pillow.

Pillow is already a dependency (image I/O); matplotlib is not installed in this project's
environment, and two labelled scatter plots do not justify adding it and its five dependencies
to the pinned lock. Text uses Pillow's bundled scalable font, which covers ASCII only.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

WIDTH, HEIGHT = 960, 640
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 90, 230, 60, 70
# Colour-blind-safe palette (Okabe and Ito, 2008), one colour per group, in first-seen order.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#999999")
FRONT_COLOUR = "#D55E00"
# what ImageFont.load_default gives: FreeType when Pillow has it, else the bitmap font
_Font = ImageFont.FreeTypeFont | ImageFont.ImageFont


@dataclass(frozen=True)
class PlotPoint:
    """One configuration on a plot.

    Attributes:
        x, y: its coordinates (finite).
        label: the configuration id, written beside the marker.
        group: legend entry (colour).
        marked: drawn filled and outlined (the Pareto front), else hollow.
    """

    x: float
    y: float
    label: str
    group: str
    marked: bool = False


def scatter_png(
    points: Sequence[PlotPoint],
    path: Path,
    *,
    title: str,
    x_label: str,
    y_label: str,
    front: bool = False,
) -> None:
    """Draw a labelled scatter plot into a PNG file.

    Args:
        points: the configurations.
        path: the PNG to write.
        title: drawn above the plot.
        x_label, y_label: axis titles.
        front: connect the marked points as a Pareto staircase (both axes maximised).

    Raises:
        ValueError: no points, or a coordinate that is not finite.
    """
    if not points:
        raise ValueError("a plot needs at least one point")
    if not all(math.isfinite(p.x) and math.isfinite(p.y) for p in points):
        raise ValueError(f"{path.name}: every plotted value must be finite")
    image = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(image)
    font, small = ImageFont.load_default(size=15), ImageFont.load_default(size=12)
    x_ticks = _ticks([p.x for p in points])
    y_ticks = _ticks([p.y for p in points])
    left, top = MARGIN_LEFT, MARGIN_TOP
    right, bottom = WIDTH - MARGIN_RIGHT, HEIGHT - MARGIN_BOTTOM

    def px(x: float, y: float) -> tuple[float, float]:
        fx = (x - x_ticks[0]) / (x_ticks[-1] - x_ticks[0])
        fy = (y - y_ticks[0]) / (y_ticks[-1] - y_ticks[0])
        return left + fx * (right - left), bottom - fy * (bottom - top)

    for value in x_ticks:
        x, _ = px(value, y_ticks[0])
        draw.line([(x, top), (x, bottom)], fill="#e6e6e6")
        text = _format(value, x_ticks)
        draw.text((x, bottom + 8), text, font=small, fill="black", anchor="mt")
    for value in y_ticks:
        _, y = px(x_ticks[0], value)
        draw.line([(left, y), (right, y)], fill="#e6e6e6")
        draw.text((left - 8, y), _format(value, y_ticks), font=small, fill="black", anchor="rm")
    draw.rectangle([left, top, right, bottom], outline="black")
    draw.text(((left + right) / 2, 20), title, font=font, fill="black", anchor="mt")
    draw.text(((left + right) / 2, HEIGHT - 22), x_label, font=font, fill="black", anchor="mb")
    _vertical_text(image, y_label, font, (18, (top + bottom) // 2))

    colours: dict[str, str] = {}
    for p in points:
        colours.setdefault(p.group, PALETTE[len(colours) % len(PALETTE)])
    if front:
        staircase = sorted((p for p in points if p.marked), key=lambda p: (-p.x, p.y))
        corners: list[tuple[float, float]] = []
        for previous, point in itertools.pairwise(staircase):
            corners += [px(previous.x, previous.y), px(point.x, previous.y)]
        if staircase:
            corners.append(px(staircase[-1].x, staircase[-1].y))
        if len(corners) > 1:
            draw.line(corners, fill=FRONT_COLOUR, width=2)
    markers = []
    for p in sorted(points, key=lambda p: p.marked):
        x, y = px(p.x, p.y)
        radius = 7 if p.marked else 6
        box = (x - radius, y - radius, x + radius, y + radius)
        markers.append(box)
        if p.marked:
            draw.ellipse(box, fill=colours[p.group], outline="black", width=2)
        else:
            draw.ellipse(box, fill="white", outline=colours[p.group], width=3)
    taken = list(markers)
    for p in points:
        x, y = px(p.x, p.y)
        spot = _label_spot(draw, p.label, small, (x, y), taken)
        draw.text(spot, p.label, font=small, fill="#333333")
        taken.append(draw.textbbox(spot, p.label, font=small))
    _legend(draw, colours, small, front, (right + 20, top))
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG", optimize=True)


def _label_spot(
    draw: ImageDraw.ImageDraw,
    text: str,
    font: _Font,
    at: tuple[float, float],
    taken: list[tuple[float, float, float, float]],
) -> tuple[float, float]:
    """Where to write a point's label: right of it, else left, else further down or up,
    whichever first overlaps no marker and no label already written."""
    x, y = at
    width = draw.textlength(text, font=font)
    candidates = [(x + 10, y - 8), (x - 10 - width, y - 8)]
    for step in range(1, 6):
        candidates += [(x + 10, y - 8 + 13 * step), (x + 10, y - 8 - 13 * step)]
    for spot in candidates:
        box = draw.textbbox(spot, text, font=font)
        if not any(_overlap(box, other) for other in taken):
            return spot
    return candidates[0]


def _overlap(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _legend(
    draw: ImageDraw.ImageDraw,
    colours: dict[str, str],
    font: _Font,
    front: bool,
    origin: tuple[int, int],
) -> None:
    x, y = origin
    for group, colour in colours.items():
        draw.ellipse([x, y, x + 12, y + 12], fill="white", outline=colour, width=3)
        draw.text((x + 20, y + 6), group, font=font, fill="black", anchor="lm")
        y += 22
    if front:
        y += 6
        draw.ellipse([x, y, x + 12, y + 12], fill="#777777", outline="black", width=2)
        draw.text((x + 20, y + 6), "filled: Pareto front", font=font, fill="black", anchor="lm")
        y += 22
        draw.line([(x, y + 6), (x + 12, y + 6)], fill=FRONT_COLOUR, width=2)
        draw.text((x + 20, y + 6), "front", font=font, fill="black", anchor="lm")


def _vertical_text(image: Image.Image, text: str, font: _Font, centre: tuple[int, int]) -> None:
    left, top, right, bottom = font.getbbox(text)
    # getbbox is typed float (a stroke may be fractional); without a stroke it gives ints
    label = Image.new("RGB", (int(right - left) + 4, int(bottom - top) + 4), "white")
    ImageDraw.Draw(label).text((2 - left, 2 - top), text, font=font, fill="black")
    rotated = label.rotate(90, expand=True)
    image.paste(rotated, (centre[0] - rotated.width // 2, centre[1] - rotated.height // 2))


def _ticks(values: Sequence[float], target: int = 6) -> list[float]:
    """Round tick values spanning `values` with a little room on both sides."""
    low, high = min(values), max(values)
    span = high - low
    pad = span * 0.08 if span > 0 else max(abs(high) * 0.1, 0.05)
    # Costs and mAPs are never negative: an axis reaching below zero would only waste room.
    low, high = (low - pad if low - pad >= 0 or low < 0 else 0.0), high + pad
    raw = (high - low) / target
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.floor(low / step) * step
    count = math.ceil((high - first) / step - 1e-9)
    return [first + i * step for i in range(count + 1)]


def _format(value: float, ticks: Sequence[float]) -> str:
    step = ticks[1] - ticks[0] if len(ticks) > 1 else 1.0
    exponent = math.floor(math.log10(step) + 1e-9)
    # A step of 2.5 x 10^k needs one more decimal than 1, 2 or 5 x 10^k.
    extra = 1 if round(step / 10**exponent, 6) == 2.5 else 0
    return f"{value:.{max(0, -exponent + extra)}f}"
