"""Synthetic pedestrian street scenes: the project's embedded default dataset.

Scene model. A pinhole camera looks along a flat street. The horizon is an image row; an
object standing on the ground with its feet at row y is `s * (y - horizon)` pixels tall for a
standard person, where `s` is a per-scene camera constant, so people shrink towards the horizon
as they would in a real camera. Each scene has:

- a background: sky gradient, building facades with windows or a line of vegetation, and a
  textured ground (paving tiles or asphalt converging to a vanishing point, or grass);
- pedestrians (articulated figures from `synthetic_figures`), some in crowd clusters;
- distractors that share a person's coarse shape (ball-topped posts, bollards, bins, trees,
  parked cars, signs) and foreground hedges, walls and cars that hide legs;
- lighting (global gain and contrast, a gradient, cast shadows, a soft shadow under each
  person), then blur, sensor noise and JPEG compression.

Items are drawn back to front, so nearer items occlude farther ones. A person's box is the
tight box of its own body mask before occlusion (amodal, carried objects and shadows excluded),
clipped to the image. A person less than 30% visible, or whose box is mostly outside the image,
becomes an ignore region instead of a box.

Every image draws from its own generator `np.random.default_rng([seed, index])`, so the
dataset is byte-identical for a seed whatever the number of worker processes.
"""

from __future__ import annotations

import math
import multiprocessing
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import cv2
import numpy as np

from secmlops.data.dataset import Box, save_image, split_ids, write_dataset
from secmlops.data.synthetic_figures import (
    DISTRACTORS,
    FOREGROUND,
    LABEL_BODY,
    Figure,
    draw_distractor,
    draw_person,
)
from secmlops.errors import DataError

GENERATOR_VERSION = "1"
MIN_VISIBLE = 0.3  # below this fraction of its body in view a person is an ignore region
MIN_INSIDE = 0.5  # a box with less than this fraction of its area inside the image is ignored
MIN_PERSON_PX = 12
_OCCLUDER = 255  # owner value of pixels covered by anything that is not a person
_CHUNKS_PER_WORKER = 8  # enough chunks to balance the workers, few enough to keep IPC cheap
_WALLS = [(170, 90, 70), (200, 190, 170), (150, 150, 150), (220, 210, 190), (120, 100, 90),
          (190, 160, 120)]  # fmt: skip


@dataclass
class PersonLayer:
    """One rendered person: body mask in canvas coordinates placed at `offset` (x, y)."""

    mask: np.ndarray
    offset: tuple[int, int]
    box: Box | None
    visible: float
    ignored: bool


@dataclass
class SceneRender:
    """A rendered scene with its annotations and, for tests, every person's layer."""

    image: np.ndarray
    boxes: list[Box]
    ignore: list[Box]
    persons: list[PersonLayer] = field(default_factory=list)


@dataclass
class _Item:
    feet_x: float
    feet_y: float
    kind: str  # "person" or a distractor kind
    unit: float  # pixel height of this item's size reference at its depth


def render_scene(
    rng_seed: tuple[int, int] | int, width: int = 320, height: int = 240
) -> tuple[np.ndarray, list[Box], list[Box]]:
    """Render one scene.

    Args:
        rng_seed: `(seed, index)` as `generate_scenes` uses it, or a plain integer.
        width: image width in pixels.
        height: image height in pixels.

    Returns:
        The RGB image (H, W, 3) uint8, person boxes and ignore regions (x1y1x2y2 pixels).
    """
    scene = render_scene_layers(rng_seed, width, height)
    return scene.image, scene.boxes, scene.ignore


def render_scene_layers(
    rng_seed: tuple[int, int] | int, width: int = 320, height: int = 240
) -> SceneRender:
    """Render one scene and keep each person's body mask (for checks of box tightness)."""
    seed = list(rng_seed) if isinstance(rng_seed, tuple) else rng_seed
    rng = np.random.default_rng(seed)
    horizon = rng.uniform(0.28, 0.42) * height
    cam = rng.uniform(0.55, 0.72)  # person height / (feet row - horizon)
    base = horizon + rng.uniform(0.02, 0.07) * height  # where facades meet the ground
    image = _background(rng, width, height, horizon, base)
    owner = np.zeros((height, width), np.uint8)
    items = _layout(rng, width, height, horizon, base, cam)
    persons: list[PersonLayer] = []
    sun = rng.uniform(-0.6, 0.6)  # shadow direction: sideways shift per unit of height
    for item in sorted(items, key=lambda it: it.feet_y):
        if item.kind == "person":
            fig = draw_person(rng, item.unit)
        else:
            fig = draw_distractor(rng, item.kind, item.unit)
        x0 = round(item.feet_x) - fig.ground[0]
        y0 = round(item.feet_y) - fig.ground[1]
        if item.kind == "person":
            rows = np.flatnonzero(fig.body.any(axis=1))
            y0 = round(item.feet_y) - int(rows[-1]) - 1  # soles exactly on the ground row
            _shadow(image, owner, item.feet_x, item.feet_y, item.unit, sun)
            persons.append(PersonLayer(fig.body, (x0, y0), None, 0.0, False))
            _paste(image, owner, fig, x0, y0, len(persons))
        else:
            _paste(image, owner, fig, x0, y0, None)
    _annotate(persons, owner, width, height)
    image = _finish(rng, image, horizon)
    boxes = [p.box for p in persons if p.box is not None and not p.ignored]
    ignore = [p.box for p in persons if p.box is not None and p.ignored]
    return SceneRender(image, boxes, ignore, persons)


def _layout(
    rng: np.random.Generator, width: int, height: int, horizon: float, base: float, cam: float
) -> list[_Item]:
    """Place people (some in a crowd) and distractors on the ground plane."""
    k = height / 240.0
    min_h = max(MIN_PERSON_PX, 18 * k)
    items: list[_Item] = []

    def person_at(y: float, x: float) -> None:
        unit = cam * rng.uniform(0.88, 1.12) * (y - horizon)  # per-person stature
        if unit >= min_h and unit <= 110 * k:
            items.append(_Item(x, y, "person", unit))

    def feet_row(target: float) -> float:
        return horizon + target / cam

    max_h = min(110 * k, cam * (height - horizon) * 1.08)
    n = 0 if rng.random() < 0.05 else int(rng.integers(2, 10))
    for _ in range(n):
        h = math.exp(rng.uniform(math.log(min_h), math.log(max(max_h, min_h + 1))))
        person_at(max(feet_row(h), base + 1), rng.uniform(-0.1, 1.1) * width)
    if n and rng.random() < 0.3:  # a crowd: people close together at one depth
        h = math.exp(rng.uniform(math.log(min_h * 1.3), math.log(max(max_h * 0.8, min_h * 1.4))))
        cy, cx = feet_row(h), rng.uniform(0.15, 0.85) * width
        for _ in range(rng.integers(3, 8)):
            person_at(max(cy + rng.normal(0, 0.08) * h, base + 1), cx + rng.normal(0, 0.7) * h)
    for _ in range(rng.integers(2, 8)):
        kind = str(rng.choice(DISTRACTORS))
        h = math.exp(rng.uniform(math.log(min_h), math.log(max(max_h, min_h + 1))))
        y = max(feet_row(h), base + 1)
        items.append(_Item(rng.uniform(-0.1, 1.1) * width, y, kind, cam * (y - horizon)))
    if rng.random() < 0.3:  # a near object that hides some people's legs
        y = rng.uniform(0.75, 1.02) * height
        items.append(
            _Item(rng.uniform(0, 1) * width, y, str(rng.choice(FOREGROUND)), cam * (y - horizon))
        )
    return items


def _paste(
    image: np.ndarray, owner: np.ndarray, fig: Figure, x0: int, y0: int, person: int | None
) -> None:
    """Copy a figure's drawn pixels into the image and record who owns each pixel now."""
    h, w = fig.label.shape
    H, W = owner.shape
    ix0, iy0, ix1, iy1 = max(x0, 0), max(y0, 0), min(x0 + w, W), min(y0 + h, H)
    if ix0 >= ix1 or iy0 >= iy1:
        return
    label = fig.label[iy0 - y0 : iy1 - y0, ix0 - x0 : ix1 - x0]
    drawn = label > 0
    image[iy0:iy1, ix0:ix1][drawn] = fig.rgb[iy0 - y0 : iy1 - y0, ix0 - x0 : ix1 - x0][drawn]
    who = np.where(label == LABEL_BODY, person or _OCCLUDER, _OCCLUDER).astype(np.uint8)
    owner[iy0:iy1, ix0:ix1][drawn] = who[drawn]


def _shadow(
    image: np.ndarray, owner: np.ndarray, x: float, y: float, unit: float, sun: float
) -> None:
    """Darken an ellipse of ground under a person's feet (ground only, never another item)."""
    H, W = owner.shape
    cx, cy = x + sun * 0.2 * unit, y - 0.005 * unit
    ax, ay = (0.22 + 0.2 * abs(sun)) * unit, 0.045 * unit + 1
    x0, x1 = max(int(cx - ax) - 1, 0), min(int(cx + ax) + 2, W)
    y0, y1 = max(int(cy - ay) - 1, 0), min(int(cy + ay) + 2, H)
    if x0 >= x1 or y0 >= y1:
        return
    yy, xx = np.ogrid[y0:y1, x0:x1]
    inside = ((xx - cx) / ax) ** 2 + ((yy - cy) / ay) ** 2 <= 1.0
    inside &= owner[y0:y1, x0:x1] == 0
    image[y0:y1, x0:x1][inside] = (image[y0:y1, x0:x1][inside] * 0.55).astype(np.uint8)


def _annotate(persons: list[PersonLayer], owner: np.ndarray, width: int, height: int) -> None:
    """Amodal box, visible fraction and ignore flag of every person (owner map is final)."""
    counts = np.bincount(owner.ravel(), minlength=256)
    for i, p in enumerate(persons, start=1):
        rows, cols = np.flatnonzero(p.mask.any(axis=1)), np.flatnonzero(p.mask.any(axis=0))
        x1, y1 = p.offset[0] + int(cols[0]), p.offset[1] + int(rows[0])
        x2, y2 = p.offset[0] + int(cols[-1]) + 1, p.offset[1] + int(rows[-1]) + 1
        area = float((x2 - x1) * (y2 - y1))
        cx1, cy1, cx2, cy2 = max(x1, 0), max(y1, 0), min(x2, width), min(y2, height)
        if cx2 <= cx1 or cy2 <= cy1:
            continue  # entirely outside the image: neither a box nor an ignore region
        p.box = (float(cx1), float(cy1), float(cx2), float(cy2))
        p.visible = float(counts[i]) / float(p.mask.sum())
        p.ignored = p.visible < MIN_VISIBLE or (cx2 - cx1) * (cy2 - cy1) < MIN_INSIDE * area


def _background(
    rng: np.random.Generator, width: int, height: int, horizon: float, base: float
) -> np.ndarray:
    """Sky, facades or vegetation, and textured ground, as uint8 RGB."""
    top = rng.uniform([90, 140, 200], [170, 200, 250])
    if rng.random() < 0.35:  # overcast
        top = np.full(3, rng.uniform(160, 225))
    t = np.clip(np.arange(height) / max(horizon, 1.0), 0, 1)[:, None, None]
    sky = top * (1 - t) + (top * 0.7 + 255 * 0.3) * t  # paler towards the horizon
    img = np.repeat(sky.astype(np.float32), width, axis=1)
    b = round(base)
    if rng.random() < 0.7:
        x = 0
        while x < width:
            w = int(rng.uniform(0.15, 0.45) * width)
            roof = int(rng.uniform(-0.1, 0.8) * horizon)
            wall = _pick_wall(rng)
            img[max(roof, 0) : b, x : x + w] = wall
            win = np.clip(wall * rng.uniform(0.35, 0.6) + rng.normal(0, 10, 3), 0, 255)
            step_x, step_y = rng.uniform(0.06, 0.1) * width, rng.uniform(0.1, 0.16) * height
            for wy in np.arange(roof + 0.3 * step_y, b - step_y, step_y):
                for wx in np.arange(x + 0.25 * step_x, x + w - 0.6 * step_x, step_x):
                    img[int(wy) : int(wy + 0.6 * step_y), int(wx) : int(wx + 0.5 * step_x)] = win
            x += w + int(rng.integers(0, 6))
    else:  # park edge: a band of foliage instead of buildings
        green = np.array([rng.uniform(40, 90), rng.uniform(80, 130), rng.uniform(30, 70)])
        edge = horizon - rng.uniform(0.1, 0.35) * height
        img[max(int(edge), 0) : b] = green
        for _ in range(int(width / 12)):
            c = (int(rng.uniform(0, width)), int(edge + rng.uniform(-0.05, 0.1) * height))
            r = int(rng.uniform(0.03, 0.08) * width)
            cv2.circle(img, c, r, tuple(float(v) for v in green * rng.uniform(0.7, 1.2)), -1)
    ground_kind = rng.choice(["paving", "asphalt", "grass"], p=[0.5, 0.35, 0.15])
    ground = {"paving": np.array([150.0, 145, 135]), "asphalt": np.array([85.0, 85, 90]),
              "grass": np.array([80.0, 125, 55])}[ground_kind] * rng.uniform(0.8, 1.2)  # fmt: skip
    img[b:] = ground
    vx = rng.uniform(0.2, 0.8) * width
    line = tuple(float(v) for v in ground * 0.75)
    if ground_kind == "paving":  # tile joints converging to the vanishing point sell perspective
        tb = (b - horizon) / max(height - horizon, 1.0)
        for xb in np.arange(vx - 4 * width, vx + 4 * width, rng.uniform(0.1, 0.3) * width):
            cv2.line(img, (int(vx + (xb - vx) * tb), b), (int(xb), height), line, 1)
        z = 1.0
        while horizon + (height - horizon) / z > b:
            y = int(horizon + (height - horizon) / z)
            cv2.line(img, (0, y), (width, y), line, 1)
            z += rng.uniform(0.25, 0.4)
    elif ground_kind == "asphalt":  # dashed lane markings and a pavement strip by the facades
        paint = tuple(float(v) for v in np.clip(ground * 1.9, 0, 235))
        for xb in vx + np.array([-1.0, 1.0]) * rng.uniform(0.5, 1.0) * width:
            for t0 in np.arange(0.0, 1.0, 0.16):
                t1 = t0 + 0.08
                p0 = (int(vx + (xb - vx) * t0), int(horizon + (height - horizon) * t0))
                p1 = (int(vx + (xb - vx) * t1), int(horizon + (height - horizon) * t1))
                if p0[1] > b:
                    cv2.line(img, p0, p1, paint, 1 + int(t0 > 0.5))
        curb = int(b + rng.uniform(0.02, 0.06) * height)
        img[b:curb] = ground * 1.6 + 10
        img[curb : curb + 1] = ground * 0.6
    texture: np.ndarray = rng.normal(0, 1, (height // 8 + 2, width // 8 + 2)).astype(np.float32)
    texture = cv2.resize(texture, (width, height), interpolation=cv2.INTER_LINEAR)
    img += (texture * rng.uniform(4, 12))[..., None]
    return np.clip(img, 0, 255).astype(np.uint8)


def _pick_wall(rng: np.random.Generator) -> np.ndarray:
    wall = _WALLS[rng.integers(len(_WALLS))]
    return np.clip(np.array(wall, float) + rng.normal(0, 12, 3), 0, 255)


def _finish(rng: np.random.Generator, image: np.ndarray, horizon: float) -> np.ndarray:
    """Lighting, cast shadow, blur, sensor noise: what the camera adds to the scene."""
    H, W = image.shape[:2]
    img: np.ndarray = image.astype(np.float32)
    if rng.random() < 0.3:  # a building's shadow falling across the street
        xs = rng.uniform([-0.2, 0.3, 0.3, -0.5], [0.5, 1.2, 1.5, 0.4]) * W
        pts = np.array([[xs[0], horizon], [xs[1], horizon], [xs[2], H], [xs[3], H]], np.int32)
        shade = np.ones((H, W), np.float32)
        cv2.fillPoly(shade, [pts], float(rng.uniform(0.55, 0.8)))
        img *= cv2.GaussianBlur(shade, (0, 0), 3)[..., None]
    gx, gy = rng.uniform(-0.25, 0.25), rng.uniform(-0.2, 0.2)
    ramp = (
        1
        + gx * np.linspace(-1, 1, W, dtype=np.float32)[None, :]
        + gy * np.linspace(-1, 1, H, dtype=np.float32)[:, None]
    )
    gain, contrast = rng.uniform(0.75, 1.2), rng.uniform(0.8, 1.15)
    img = (img - 128) * contrast + 128
    img *= (gain * ramp)[..., None]
    # cv2's stubs type the result as any int or float array; float32 in gives float32 out
    img = cast(np.ndarray, cv2.GaussianBlur(img, (0, 0), rng.uniform(0.35, 0.9)))
    img += rng.standard_normal(img.shape, dtype=np.float32) * rng.uniform(1.5, 6)
    return np.clip(img, 0, 255).astype(np.uint8)


def _render_chunk(
    job: tuple[int, int, int, int, int, str],
) -> list[tuple[str, list[Box], list[Box]]]:
    """Render images [start, stop) and save them; return their annotations (worker entry)."""
    seed, start, stop, width, height, images_dir = job
    out = []
    for index in range(start, stop):
        image, boxes, ignore = render_scene((seed, index), width, height)
        name = f"scene_{index + 1:06d}.jpg"
        save_image(image, Path(images_dir) / name, jpeg_quality=95)
        out.append((name, boxes, ignore))
    return out


def generate_scenes(
    out: Path,
    images: int,
    seed: int = 0,
    *,
    width: int = 320,
    height: int = 240,
    workers: int | None = None,
    overwrite: bool = False,
    progress: Callable[[int], None] | None = None,
) -> Path:
    """Generate a synthetic pedestrian dataset version at `out`.

    Workers are spawned processes, so a script that calls this with more than one worker needs
    the usual `if __name__ == "__main__":` guard.

    Args:
        out: the dataset folder to create.
        images: how many images to render.
        seed: the dataset seed; the same seed gives byte-identical images and annotations.
        width: image width in pixels.
        height: image height in pixels.
        workers: processes to render with (None: one per CPU); never changes the output.
        overwrite: replace an existing non-empty `out`.
        progress: called with the number of images just finished.

    Returns:
        `out`.

    Raises:
        DataError: `images` or the size or `workers` is not positive, or `out` exists and is
            not empty without `overwrite`.
    """
    if isinstance(images, bool) or not isinstance(images, int | np.integer) or images <= 0:
        raise DataError(f"images must be a positive integer, got {images!r}")
    if width < 64 or height < 64:
        raise DataError(f"image size must be at least 64x64, got {width}x{height}")
    workers = (os.cpu_count() or 1) if workers is None else workers
    if workers < 1:
        raise DataError(f"workers must be at least 1, got {workers}")
    chunk = max(1, min(32, math.ceil(images / (workers * _CHUNKS_PER_WORKER))))
    source = {"generator": "secmlops.data.synthetic", "version": GENERATOR_VERSION, "seed": seed,
              "images": images, "width": width, "height": height}  # fmt: skip
    with write_dataset(Path(out), overwrite=overwrite, source=source) as writer:
        jobs = [
            (seed, s, min(s + chunk, images), width, height, str(writer.images_dir))
            for s in range(0, images, chunk)
        ]
        for results in _run(jobs, min(workers, len(jobs))):
            for name, boxes, ignore in results:
                writer.add(name, width, height, boxes, ignore)
            if progress is not None:
                progress(len(results))
        writer.splits = split_ids([img.id for img in writer.images], (0.8, 0.1, 0.1), seed)
    return Path(out)


def _run(
    jobs: list[tuple[int, int, int, int, int, str]], workers: int
) -> Iterator[list[tuple[str, list[Box], list[Box]]]]:
    """Results of `jobs` in job order, rendered in this process or a spawn pool."""
    if workers <= 1:
        yield from map(_render_chunk, jobs)
        return
    # spawn, not fork: forking a process that holds torch or Airflow threads can deadlock
    with multiprocessing.get_context("spawn").Pool(workers, initializer=_init_worker) as pool:
        yield from pool.imap(_render_chunk, jobs)


def _init_worker() -> None:
    cv2.setNumThreads(1)  # the parallelism is across processes; threads would oversubscribe
