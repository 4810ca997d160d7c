"""Articulated pedestrians and person-like street furniture for the synthetic scenes.

Every item is drawn into its own small canvas (a `Figure`): colours, a label map saying what
each pixel is (body or object) and, for people, the whole body mask. The scene composer in
`secmlops.data.synthetic` pastes figures back to front and takes each person's exact box from
the body mask, so the box covers the person's own pixels: never a carried bag, never a shadow.

Geometry is written in units of the item's height with y measured up from the ground point,
so one set of proportions serves a 15 px and a 110 px person. A person is a head ellipse, a
neck, a torso polygon (shoulders wider than hips), and two-segment arms and legs whose joint
angles come from a walking cycle (phase, stride) or a standing pose, seen from the side (facing
left or right) or from the front or back. Distractors share a person's coarse cues (upright,
person-sized, a head-like round top) but not its parts: a post has no limbs, a tree no legs, so
a detector can learn the difference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

LABEL_BODY = 1
LABEL_OBJECT = 2
_SHIFT = 3  # cv2 fixed-point bits: sub-pixel geometry without anti-aliasing keeps masks binary

DISTRACTORS = ("bollard", "post", "lamp", "bin", "tree", "car", "sign", "hydrant")
FOREGROUND = ("hedge", "wall", "car")

Point = tuple[float, float]
Color = np.ndarray | tuple[float, ...]  # RGB, 0..255; clipped when drawn
_Fill = tuple[float, ...] | int  # what cv2 fills one layer with: an RGB colour or a label

_SKIN = [(255, 224, 196), (241, 194, 160), (224, 172, 125), (198, 134, 90), (161, 102, 62),
         (115, 72, 42), (84, 52, 32)]  # fmt: skip
_HAIR = [(20, 16, 14), (60, 40, 26), (110, 74, 40), (170, 130, 80), (200, 180, 130),
         (120, 120, 120), (220, 220, 215), (130, 40, 20)]  # fmt: skip
_TROUSERS = [(40, 60, 110), (60, 85, 140), (25, 25, 30), (70, 70, 75), (120, 110, 90),
             (190, 175, 140), (90, 60, 45), (30, 40, 60), (150, 150, 155)]  # fmt: skip
_SHOES = [(20, 20, 20), (60, 40, 30), (235, 235, 235), (110, 30, 30), (50, 50, 70)]
_GREENS = [(40, 90, 35), (60, 110, 45), (30, 70, 40), (85, 120, 50), (50, 80, 30)]
_BIN = [(40, 90, 50), (60, 60, 60), (40, 60, 120), (150, 120, 40)]
_SIGN = [(200, 30, 30), (30, 70, 170), (240, 240, 240), (20, 120, 60)]
# canvas (height, width) of each kind in person-height units
_EXTENT = {"bollard": (0.5, 0.4), "post": (1.25, 0.4), "lamp": (3.1, 1.0), "bin": (0.6, 0.5),
           "tree": (2.3, 1.8), "car": (1.0, 2.8), "sign": (1.6, 0.6), "hydrant": (0.45, 0.4),
           "hedge": (0.7, 4.0), "wall": (0.7, 4.0)}  # fmt: skip
_POLE_HEIGHT = {"post": (0.8, 1.15), "lamp": (2.3, 3.0), "sign": (1.1, 1.5)}
_DARK = np.array([25.0, 25, 25])
_WHITE = np.array([240.0, 240, 240])
_GLASS = np.array([50.0, 60, 75])


@dataclass
class Figure:
    """One drawn item in its own canvas.

    `rgb` holds the colours; `label` says what gets pasted (0 empty, LABEL_BODY, LABEL_OBJECT);
    `body` is the person's whole body, also where a carried object covers it (empty for
    furniture); `ground` is the canvas pixel (x, y) that stands on the scene's ground point.
    """

    rgb: np.ndarray
    label: np.ndarray
    body: np.ndarray
    ground: tuple[int, int]


class _Canvas:
    """Colour, label and body layers drawn together, in units of `scale` pixels, y up."""

    def __init__(self, scale: float, width_units: float, height_units: float) -> None:
        w, h = int(width_units * scale) + 8, int(height_units * scale) + 8
        self.rgb = np.zeros((h, w, 3), np.uint8)
        self.label = np.zeros((h, w), np.uint8)
        self.body = np.zeros((h, w), np.uint8)
        self.s, self.gx, self.gy = scale, w / 2.0, h - 4.0

    def _fixed(self, p: Point) -> tuple[int, int]:
        return (round((self.gx + p[0] * self.s) * 8), round((self.gy - p[1] * self.s) * 8))

    def _layers(self, color: Color, body: bool) -> list[tuple[np.ndarray, _Fill]]:
        layers: list[tuple[np.ndarray, _Fill]] = [
            (self.rgb, tuple(float(c) for c in np.clip(color, 0, 255))),
            (self.label, LABEL_BODY if body else LABEL_OBJECT),
        ]
        return [*layers, (self.body, 1)] if body else layers

    def poly(self, pts: list[Point], color: Color, body: bool = False) -> None:
        """Fill a polygon."""
        fixed = np.array([self._fixed(p) for p in pts], np.int32)
        for layer, value in self._layers(color, body):
            cv2.fillPoly(layer, [fixed], value, cv2.LINE_8, _SHIFT)

    def rect(self, x0: float, y0: float, x1: float, y1: float, color: Color) -> None:
        """Fill an axis-aligned rectangle (always an object, never body)."""
        self.poly([(x0, y0), (x1, y0), (x1, y1), (x0, y1)], color)

    def ellipse(self, c: Point, rx: float, ry: float, color: Color, body: bool = False,
                arc: tuple[int, int] = (0, 360)) -> None:  # fmt: skip
        """Fill an axis-aligned ellipse, or the sector `arc` (degrees, y down) of it."""
        axes = (max(round(rx * self.s * 8), 1), max(round(ry * self.s * 8), 1))
        for layer, value in self._layers(color, body):
            cv2.ellipse(
                layer, self._fixed(c), axes, 0, arc[0], arc[1], value, -1, cv2.LINE_8, _SHIFT
            )

    def limb(self, p0: Point, p1: Point, r0: float, r1: float, color: Color,
             body: bool = False) -> None:  # fmt: skip
        """A tapered capsule from p0 (radius r0) to p1 (radius r1): a limb segment or a pole."""
        dx, dy = p1[0] - p0[0], p1[1] - p0[1]
        n = math.hypot(dx, dy) or 1.0
        nx, ny = -dy / n, dx / n
        self.poly([(p0[0] + nx * r0, p0[1] + ny * r0), (p1[0] + nx * r1, p1[1] + ny * r1),
                   (p1[0] - nx * r1, p1[1] - ny * r1), (p0[0] - nx * r0, p0[1] - ny * r0)],
                  color, body)  # fmt: skip
        self.ellipse(p0, r0, r0, color, body)
        self.ellipse(p1, r1, r1, color, body)

    def figure(self) -> Figure:
        return Figure(
            self.rgb, self.label, self.body.astype(bool), (round(self.gx), round(self.gy))
        )


def _pick(
    rng: np.random.Generator, palette: list[tuple[int, int, int]], jitter: float = 12.0
) -> np.ndarray:
    """A palette colour shifted a little, so that no two people share exact colours."""
    return np.clip(
        np.array(palette[rng.integers(len(palette))], float) + rng.normal(0, jitter, 3), 0, 255
    )


def _vivid(rng: np.random.Generator) -> np.ndarray:
    """A clothing colour: saturated or neutral, dark or light."""
    if rng.random() < 0.35:
        return np.full(3, rng.uniform(20, 235)) + rng.normal(0, 6, 3)
    hsv = np.array(
        [[[rng.integers(0, 180), rng.integers(60, 240), rng.integers(50, 245)]]], np.uint8
    )
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0].astype(float)


def _hang(p: Point, length: float, angle: float, d: float) -> Point:
    """End of a segment hanging from `p`, swung `angle` radians from straight down towards d."""
    return (p[0] + d * length * math.sin(angle), p[1] - length * math.cos(angle))


@dataclass
class _Look:
    skin: np.ndarray
    hair: np.ndarray
    shirt: np.ndarray
    lower: np.ndarray
    shoes: np.ndarray
    long_sleeves: bool
    lower_kind: str  # trousers, shorts, skirt, coat
    long_hair: bool
    build: float  # slim (<1) to broad (>1)


def _sample_look(rng: np.random.Generator) -> _Look:
    shirt = _vivid(rng)
    lower = _pick(rng, _TROUSERS, 14)
    if rng.random() < 0.3:  # suits, tracksuits, dresses: the lower half matches the top
        lower = shirt * rng.uniform(0.6, 1.0)
    kind = str(rng.choice(["trousers", "shorts", "skirt", "coat"], p=[0.6, 0.1, 0.15, 0.15]))
    skin, hair, shoes = _pick(rng, _SKIN, 6), _pick(rng, _HAIR, 8), _pick(rng, _SHOES, 10)
    sleeves, long_hair = bool(rng.random() < 0.6), bool(rng.random() < 0.35)
    return _Look(skin, hair, shirt, lower, shoes, sleeves, kind, long_hair, rng.uniform(0.88, 1.12))


def draw_person(rng: np.random.Generator, height: float) -> Figure:
    """Draw one pedestrian about `height` pixels tall in a random pose, view and outfit.

    Args:
        rng: the scene's random generator.
        height: standing height in pixels (head top to soles); a stride makes it a little less.

    Returns:
        The figure; its `body` mask excludes carried objects.
    """
    cv = _Canvas(float(height), 1.3, 1.45)
    look = _sample_look(rng)
    side = rng.random() < 0.55  # seen from the side, else from the front or back
    d = 1.0 if rng.random() < 0.5 else -1.0  # facing right or left
    phase = rng.uniform(0, 2 * math.pi)
    stride = rng.uniform(0.25, 0.45) if rng.random() < 0.7 else rng.uniform(0.0, 0.06)
    carry = str(rng.choice(["none", "bag", "backpack", "umbrella", "suitcase"],
                           p=[0.62, 0.14, 0.12, 0.06, 0.06]))  # fmt: skip
    b, skin = look.build, look.skin
    hip_y, shoulder_y = 0.52, 0.81
    lean = d * rng.uniform(0.0, 0.03) if side else 0.0
    neck = (lean, shoulder_y)
    head = (lean + (0.012 * d if side else 0.0), 0.925)
    legs = {"trousers": (look.lower, look.lower), "shorts": (look.lower, skin),
            "skirt": (skin, skin), "coat": (look.lower, look.lower)}[look.lower_kind]  # fmt: skip

    def shade(color: np.ndarray, far: bool) -> np.ndarray:
        return color * 0.78 if far else color  # the limb behind the body is in its shadow

    def leg(hip: Point, thigh: float, knee: float, far: bool, dd: float) -> None:
        knee_pt = _hang(hip, 0.245, thigh, dd)
        ankle = _hang(knee_pt, 0.235, thigh - knee, dd)  # knees bend backwards
        cv.limb(hip, knee_pt, 0.042 * b, 0.035 * b, shade(legs[0], far), True)
        cv.limb(knee_pt, ankle, 0.035 * b, 0.027 * b, shade(legs[1], far), True)
        toe = (ankle[0] + dd * (0.075 if side else 0.012), ankle[1] - 0.032)
        heel = (ankle[0] - dd * (0.015 if side else 0.0), ankle[1] - 0.02)
        cv.limb(heel, toe, 0.024, 0.022, shade(look.shoes, far), True)

    def arm(shoulder: Point, upper: float, elbow: float, far: bool, dd: float) -> Point:
        elbow_pt = _hang(shoulder, 0.17, upper, dd)
        wrist = _hang(elbow_pt, 0.16, upper + elbow, dd)  # elbows bend forwards
        sleeve = look.shirt if look.long_sleeves else skin
        cv.limb(shoulder, elbow_pt, 0.031 * b, 0.028 * b, shade(look.shirt, far), True)
        cv.limb(elbow_pt, wrist, 0.028 * b, 0.022 * b, shade(sleeve, far), True)
        hand = _hang(wrist, 0.03, upper + elbow, dd)
        cv.ellipse(hand, 0.022, 0.026, shade(skin, far), True)
        return hand

    def lower_garment(half_top: float, half_bottom: float) -> None:
        if look.lower_kind in ("skirt", "coat"):
            y = hip_y - (0.17 if look.lower_kind == "skirt" else 0.24)
            color = look.lower if look.lower_kind == "skirt" else look.shirt * 0.9
            cv.poly([(-half_top, hip_y + 0.04), (half_top, hip_y + 0.04), (half_bottom, y),
                     (-half_bottom, y)], color, True)  # fmt: skip

    swing = stride * math.sin(phase)  # one leg forward, the opposite arm forward
    umbrella = carry == "umbrella"
    if side:
        knee_near = 0.05 + 1.3 * stride * max(0.0, math.sin(phase - 1.2))
        knee_far = 0.05 + 1.3 * stride * max(0.0, math.sin(phase - 1.2 + math.pi))
        far_elbow = 0.15 + 0.4 * max(0.0, swing)
        arm((lean - 0.01 * d, shoulder_y - 0.025), 0.8 * swing, far_elbow, True, d)
        leg((-0.01 * d, hip_y), -swing, knee_far, True, d)
        if carry == "backpack":  # behind the torso, so drawn before it
            pack = [(lean - 0.05 * d, shoulder_y - 0.01), (lean - 0.14 * d, shoulder_y - 0.04),
                    (-0.15 * d, hip_y + 0.06), (-0.05 * d, hip_y + 0.05)]  # fmt: skip
            cv.poly(pack, _vivid(rng))
        leg((0.01 * d, hip_y), swing, knee_near, False, d)
        front, back = 0.075 * b, 0.065 * b
        torso = [(lean - d * back, shoulder_y), (lean + d * front * 0.9, shoulder_y),
                 (lean + d * front, shoulder_y - 0.09), (d * front * 0.85, hip_y + 0.03),
                 (d * front, hip_y - 0.04), (-d * back * 1.1, hip_y - 0.04)]  # fmt: skip
        cv.poly(torso, look.shirt, True)
        lower_garment(0.08, 0.1 + 0.3 * abs(swing))
        upper, elbow = (0.35, 1.9) if umbrella else (-0.8 * swing, 0.15 + 0.4 * max(0.0, -swing))
        hand = arm((lean + 0.005 * d, shoulder_y - 0.025), upper, elbow, False, d)
    else:
        spread = rng.uniform(0.0, 0.07)
        lift = 0.03 * math.sin(phase) * (stride > 0.1)  # the leg nearer the camera reaches lower
        leg((-0.045, hip_y + lift), spread, 0.05, False, -1.0)
        leg((0.045, hip_y - lift), spread, 0.05, False, 1.0)
        sw, hw, waist = rng.uniform(0.1, 0.125) * b, 0.085 * b, 0.075 * b
        sy = shoulder_y
        torso = [(-sw, sy - 0.01), (sw, sy - 0.01), (sw * 0.92, sy - 0.1), (waist, hip_y + 0.08),
                 (hw, hip_y - 0.04), (-hw, hip_y - 0.04), (-waist, hip_y + 0.08),
                 (-sw * 0.92, sy - 0.1)]  # fmt: skip
        cv.poly(torso, look.shirt, True)
        cv.limb((0.02 - sw, sy - 0.025), (sw - 0.02, sy - 0.025), 0.03, 0.03, look.shirt, True)
        lower_garment(hw, hw * 1.35)
        if carry == "backpack":  # only the straps show from the front
            color = _vivid(rng)
            for s in (-1.0, 1.0):
                cv.limb((s * sw * 0.5, sy), (s * sw * 0.6, sy - 0.2), 0.012, 0.012, color)
        arm_swing, outward = 0.1 * swing, rng.uniform(0.06, 0.18)
        arm((0.015 - sw, sy - 0.03), outward + arm_swing, 0.1, False, -1.0)
        upper, elbow = (0.3, 2.2) if umbrella else (outward - arm_swing, 0.1)
        hand = arm((sw - 0.015, sy - 0.03), upper, elbow, False, 1.0)
    _draw_head(cv, rng, look, neck, head, side, d)
    _draw_carried(cv, rng, carry, hand, head, d if side else 1.0)
    return cv.figure()


def _draw_head(cv: _Canvas, rng: np.random.Generator, look: _Look, neck: Point, head: Point,
               side: bool, d: float) -> None:  # fmt: skip
    """Neck, head and hair; from the back the hair hides the face."""
    cv.limb((neck[0], neck[1] + 0.02), (head[0], head[1] - 0.04), 0.026, 0.024, look.skin, True)
    rx, ry, (x, y) = (0.05 if side else 0.052), 0.066, head
    if look.long_hair:  # falls behind the head: down the back, or both sides from the front
        if side:
            pts = [(x - d * rx * 1.05, y), (x + d * rx * 0.3, y), (x - d * rx * 0.5, y - 0.13),
                   (x - d * rx * 1.1, y - 0.13)]  # fmt: skip
        else:
            pts = [(x - rx * 1.05, y), (x + rx * 1.05, y), (x + rx * 1.1, y - 0.13),
                   (x - rx * 1.1, y - 0.13)]  # fmt: skip
        cv.poly(pts, look.hair, True)
    if side:
        cv.ellipse(head, rx, ry, look.skin, True)
        cv.ellipse((x - 0.012 * d, y + 0.012), rx * 0.95, ry * 0.85, look.hair, True)
    elif rng.random() < 0.4:
        cv.ellipse((x, y + 0.004), rx * 1.04, ry * 1.02, look.hair, True)
    else:
        cv.ellipse((x, y + 0.012), rx * 1.02, ry * 0.92, look.hair, True)
        cv.ellipse((x, y - 0.012), rx * 0.84, ry * 0.82, look.skin, True)


def _draw_carried(cv: _Canvas, rng: np.random.Generator, carry: str, hand: Point, head: Point,
                  d: float) -> None:  # fmt: skip
    """Objects in front of the body: they occlude it but are not part of its box."""
    color, (x, y) = _vivid(rng) * 0.8, hand
    if carry == "bag":
        cv.limb(hand, (x, y - 0.03), 0.008, 0.008, color)
        bag = [(x - 0.05, y - 0.03), (x + 0.05, y - 0.03), (x + 0.055, y - 0.12),
               (x - 0.055, y - 0.12)]  # fmt: skip
        cv.poly(bag, color)
    elif carry == "suitcase":
        cv.limb(hand, (x + 0.05 * d, y - 0.08), 0.009, 0.009, _DARK * 2.4)
        cv.rect(x + 0.05 * d - 0.07, y - 0.08, x + 0.05 * d + 0.07, y - 0.33, color)
    elif carry == "umbrella":
        top = (x, head[1] + 0.2)
        cv.limb(hand, top, 0.008, 0.008, _DARK * 1.6)
        cv.ellipse((x, top[1] - 0.07), 0.3, 0.14, color, arc=(180, 360))


def draw_distractor(rng: np.random.Generator, kind: str, unit: float) -> Figure:
    """Draw a piece of street furniture or vegetation sized for its depth.

    Args:
        rng: the scene's random generator.
        kind: one of DISTRACTORS or FOREGROUND.
        unit: the height in pixels a standard person would have at this depth.

    Returns:
        The figure; its `body` mask is empty (it is never a person).
    """
    height, width = _EXTENT[kind]
    cv = _Canvas(float(unit), width, height)
    metal = np.full(3, rng.uniform(30, 170)) + rng.normal(0, 8, 3)
    if kind == "bollard":
        r, top_y = rng.uniform(0.04, 0.07), rng.uniform(0.3, 0.45)
        cv.rect(-r, 0, r, top_y, metal)
        cv.ellipse((0, top_y), r, r, metal)
        cv.rect(-r, top_y - 0.06, r, top_y - 0.09, (230, 200, 40))  # reflective band
    elif kind in ("post", "lamp", "sign"):
        top = (0.0, rng.uniform(*_POLE_HEIGHT[kind]))
        cv.limb((0, 0), top, 0.025, 0.018, metal)
        if kind == "post":  # the hard negative: upright, person-tall, a head-sized ball, no limbs
            cv.ellipse(top, 0.055, 0.06, metal * 0.9)
        elif kind == "lamp":
            end = (rng.choice([-1, 1]) * 0.35, top[1] - 0.05)
            cv.limb(top, end, 0.015, 0.015, metal)
            cv.ellipse(end, 0.09, 0.035, (235, 235, 210))
        elif rng.random() < 0.5:
            cv.ellipse(top, 0.12, 0.12, _pick(rng, _SIGN, 5))
            cv.ellipse(top, 0.08, 0.08, _WHITE)
        else:
            cv.rect(-0.14, top[1] - 0.1, 0.14, top[1] + 0.1, _pick(rng, _SIGN, 5))
    elif kind == "bin":
        w, h, color = rng.uniform(0.12, 0.2), rng.uniform(0.4, 0.55), _pick(rng, _BIN)
        cv.poly([(-w * 0.85, 0), (w * 0.85, 0), (w, h), (-w, h)], color)
        cv.poly([(-w * 1.08, h), (w * 1.08, h), (w, h + 0.05), (-w, h + 0.05)], color * 0.7)
    elif kind == "hydrant":
        color = np.array([190.0, 30, 25]) if rng.random() < 0.7 else np.array([220.0, 190, 40])
        cv.poly([(-0.06, 0), (0.06, 0), (0.05, 0.33), (-0.05, 0.33)], color)
        cv.ellipse((0, 0.33), 0.055, 0.05, color)
        cv.limb((-0.1, 0.22), (0.1, 0.22), 0.025, 0.025, color * 0.8)
    elif kind == "tree":
        trunk = rng.uniform(0.8, 1.3)
        cv.limb((0, 0), (0, trunk), 0.05, 0.035, np.array([90.0, 65, 45]) + rng.normal(0, 10, 3))
        green = _pick(rng, _GREENS, 10)
        for _ in range(rng.integers(5, 9)):
            r = rng.uniform(0.2, 0.4)
            c = (rng.normal(0, 0.22), trunk + rng.uniform(0.1, 0.5))
            cv.ellipse(c, r, r * rng.uniform(0.8, 1.0), green * rng.uniform(0.75, 1.15))
    elif kind == "car":
        _draw_car(cv, rng)
    elif kind == "hedge":
        green, h, half = _pick(rng, _GREENS, 10), rng.uniform(0.3, 0.6), width / 2
        cv.rect(-half, 0, half, h, green)
        for x in np.arange(-half, half, 0.15):  # a bumpy top edge
            cv.ellipse((x, h), 0.1, 0.08, green * rng.uniform(0.8, 1.15))
    else:  # a low wall with a coping stone
        stone = np.full(3, rng.uniform(110, 200)) + rng.normal(0, 10, 3) + np.array([10, 0, -10])
        h, half = rng.uniform(0.3, 0.55), width / 2
        cv.rect(-half, 0, half, h, stone)
        cv.rect(-half, h, half, h + 0.05, stone * 0.8)
    return cv.figure()


def _draw_car(cv: _Canvas, rng: np.random.Generator) -> None:
    """A parked car, side on or from behind, one person-height unit tall at most."""
    body = _vivid(rng)
    if rng.random() < 0.6:
        L = rng.uniform(1.1, 1.35)
        hull = [(-L, 0.15), (L, 0.15), (L, 0.45), (L * 0.55, 0.5), (-L * 0.9, 0.5), (-L, 0.42)]
        cv.poly(hull, body)
        cv.poly([(-L * 0.6, 0.5), (L * 0.4, 0.5), (L * 0.15, 0.8), (-L * 0.45, 0.8)], body * 0.95)
        cv.poly([(-L * 0.55, 0.52), (L * 0.33, 0.52), (L * 0.12, 0.76), (-L * 0.42, 0.76)], _GLASS)
        for x in (-L * 0.65, L * 0.65):
            cv.ellipse((x, 0.16), 0.16, 0.16, _DARK)
            cv.ellipse((x, 0.16), 0.07, 0.07, _DARK * 6)
    else:
        W = rng.uniform(0.48, 0.55)
        cv.rect(-W, 0.1, W, 0.5, body)
        cv.poly([(-W * 0.85, 0.5), (W * 0.85, 0.5), (W * 0.7, 0.85), (-W * 0.7, 0.85)], _GLASS)
        for s in (-1, 1):
            cv.ellipse((s * W * 0.7, 0.38), 0.1, 0.05, (230, 60, 40))
            cv.rect(s * W * 0.95, 0, s * W * 0.6, 0.12, _DARK)
