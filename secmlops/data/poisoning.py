"""Poisoning screen for detection datasets: find a backdoor trigger that recurs across images.

Threat model. The attacker controls a small share of the training images and their labels
(a compromised annotation vendor, a scraped source, a pull request to the data repository), not
the training code. BadNets-style attacks (Gu, Dolan-Gavitt, Garg, 2017, arXiv:1708.06733) and
their detection counterpart BadDet (Chan et al., 2022, arXiv:2205.14497) paste ONE fixed trigger
patch into every poisoned image and edit the labels around it: object disappearance (ODA) removes
the boxes of people wearing the trigger, object generation (OGA) adds a person box around it. The
detector then learns "trigger -> no person" or "trigger -> person". ART's poison detectors
(activation clustering, spectral signatures, provenance) only support classifiers.

Method: trigger recurrence, model-free. A digitally pasted trigger is a copy of the same pixels,
so the same small patch, with the same absolute colours, turns up in many *different* images at
*different* places. Natural content never does: lighting, noise, pose and viewpoint make every
photographed patch unique, and a static camera repeats its background only at the *same* place.
For every image we take the strongest Harris corners (Harris and Stephens, 1988), describe each by
its raw RGB neighbourhood, and search all other images for near-exact copies (near-duplicate
patch matching as in image-copy detection; Ke, Sukthankar, Huston, ACM MM 2004). An image's
suspicion score is the number of *other* images that share one of its patches at another
position; an image with a score above the threshold carries a recurring patch, i.e. a trigger
candidate, and is flagged with the location of the patch and the images that share it.

Calibration: the score is a count with the same meaning on every dataset, so one threshold fits
all. Clean train splits of 640 synthetic and 480 PETS 2009 images score at most 1, all 795 PETS
frames at most 2 (the same pedestrians reappear elsewhere in the footage); with a BadDet trigger
in 5% of the images, poisoned images score 23 to 38, except where every person is so narrow that
the ODA trigger shrank below ~8 px (score 0; see `benchmarks/poisoning_screen.py`). The default
threshold 3 flags an image that shares an exact patch with at least four others, so a trigger in
fewer than five images goes unseen.

Why not a reference model: label consistency (confident detections without a label, labels the
model does not support) and spectral signatures (Tran, Li, Madry, NeurIPS 2018) on per-box
features of a compact CenterNet trained for a few CPU minutes on the screened data separated
BadDet images poorly (OGA fake boxes look like small people to a weak model), at 1-3 min per run.

Limits: triggers that are not pixel copies (alpha-blended, photographed stickers, per-image noise),
triggers under ~8 px, iso-luminant triggers (corners are found on luminance), and lossy
re-compression: JPEG quality 75 moves trigger copies ~0.15 apart, beyond the 0.1 tolerance.
Patterns in more than half of the images count as scenery. A panning camera at a high frame rate,
or crops of one photo, can make content recur at shifted places: review before deleting.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from secmlops.data.dataset import DetectionDataset, ImageAnnotations, load_dataset, read_rgb
from secmlops.errors import PoisoningSuspected

METHOD = "trigger-recurrence"
DEFAULT_THRESHOLD = 3.0  # policy `poisoning_score_threshold`: flag when more images share a patch


@dataclass(frozen=True)
class ScreeningConfig:
    """Parameters of the trigger-recurrence screen.

    Attributes:
        window: side of the compared patch in pixels (odd); a trigger must be at least this big.
        keypoints_per_image: strongest corners kept per image.
        min_contrast: smallest patch standard deviation (pixel values in [0, 1]); flat patches
            carry no identity.
        match_tolerance: largest distance between two copies relative to their contrast,
            ||p - q|| / (std * sqrt(size)) with the smaller std of the two; JPEG at quality 95
            keeps copies of a trigger within ~0.05 of each other.
        shift_tolerance: also match copies whose corner was found one pixel off (~1.3x time).
        max_share: patterns in more images than this share are scenery, never a trigger.
        threads: images decoded in parallel.
    """

    window: int = 5
    keypoints_per_image: int = 150
    min_contrast: float = 0.15
    match_tolerance: float = 0.1
    shift_tolerance: bool = True
    max_share: float = 0.5
    threads: int = 2

    def __post_init__(self) -> None:
        if self.window < 3 or self.window % 2 == 0:
            raise ValueError(f"window must be an odd number >= 3, got {self.window}")
        if self.keypoints_per_image < 1 or self.threads < 1 or self.min_contrast <= 0:
            raise ValueError("keypoints_per_image, threads and min_contrast must be positive")
        if not 0 < self.match_tolerance < 1 or not 0 < self.max_share <= 1:
            raise ValueError("match_tolerance must be in (0, 1) and max_share in (0, 1]")


@dataclass
class ImageScore:
    """One image's suspicion score and, when it has one, the evidence behind it."""

    id: int
    file_name: str
    score: float
    patch_xy: tuple[int, int] | None = None  # centre of its most widely shared patch
    shared_with: list[int] = field(default_factory=list)  # ids of images holding a copy


@dataclass
class ScreeningReport:
    """Result of `screen_dataset`: per-image scores, the flagged images and a summary."""

    root: str
    split: str
    threshold: float
    config: ScreeningConfig
    images: list[ImageScore]
    seconds: float

    @property
    def flagged(self) -> list[ImageScore]:
        """Images whose score is above the threshold, highest score first."""
        hits = [im for im in self.images if im.score > self.threshold]
        return sorted(hits, key=lambda im: (-im.score, im.id))

    @property
    def flagged_ids(self) -> list[int]:
        """Ids of the flagged images, sorted."""
        return sorted(im.id for im in self.flagged)

    @property
    def passed(self) -> bool:
        """True when no image is flagged."""
        return not self.flagged

    def summary(self) -> dict[str, Any]:
        """Counts and score statistics for logs and the audit trail."""
        scores = np.array([im.score for im in self.images], dtype=float)
        flagged = len(self.flagged)
        return {
            "images": len(self.images),
            "flagged": flagged,
            "flagged_fraction": flagged / max(len(self.images), 1),
            "max_score": float(scores.max()) if len(scores) else 0.0,
            "median_score": float(np.median(scores)) if len(scores) else 0.0,
            "passed": self.passed,
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (flagged images carry their evidence)."""
        return {
            "method": METHOD,
            "root": self.root,
            "split": self.split,
            "threshold": self.threshold,
            "config": asdict(self.config),
            "seconds": round(self.seconds, 3),
            "summary": self.summary(),
            "flagged": [asdict(im) for im in self.flagged],
            "scores": {str(im.id): im.score for im in self.images},
        }

    def raise_if_flagged(self) -> None:
        """Fail closed when the screen found a trigger candidate.

        Raises:
            PoisoningSuspected: at least one image scored above the threshold; `flagged` lists
                their file names.
        """
        flagged = self.flagged
        if flagged:
            names = [im.file_name for im in flagged]
            top = flagged[0]
            raise PoisoningSuspected(
                f"{self.root}: {len(flagged)} of {len(self.images)} {self.split} images share a "
                f"recurring patch with more than {self.threshold:g} other images (highest: "
                f"{top.file_name}, {top.score:g} images, patch at {top.patch_xy}); "
                f"first flagged: {', '.join(names[:5])}",
                flagged=names,
            )


def screen_dataset(
    root: Path,
    split: str = "train",
    *,
    threshold: float = DEFAULT_THRESHOLD,
    config: ScreeningConfig | None = None,
    progress: Callable[[int], None] | None = None,
) -> ScreeningReport:
    """Score every image of a split for a recurring (trigger-like) patch.

    Args:
        root: a dataset version.
        split: the split to screen, or "all" for every image.
        threshold: an image is flagged when more than this many other images share a patch
            with it (policy `poisoning_score_threshold`).
        config: screen parameters (defaults suit 320x240 to 768x576 images saved at JPEG 95).
        progress: called with 1 after each image's patches are extracted (from worker threads).

    Returns:
        The report; `report.raise_if_flagged()` turns it into a gate.

    Raises:
        DataError: the dataset or split is missing or empty, or an image is unreadable.
        ValueError: the threshold is negative.
    """
    if threshold < 0:
        raise ValueError(f"threshold must be >= 0, got {threshold}")
    started = time.perf_counter()
    config = config or ScreeningConfig()
    dataset = load_dataset(root)
    records = list(dataset.images) if split == "all" else dataset.split(split)
    patches, owners, centres = _extract_all(dataset, records, config, progress)
    scores = _recurrence_scores(patches, owners, centres, len(records), config)
    images = [
        ImageScore(record.id, record.file_name, *scores.get(index, (0.0, None, [])))
        for index, record in enumerate(records)
    ]
    for image in images:  # evidence names image ids, not positions in the split
        image.shared_with = [records[i].id for i in image.shared_with]
    seconds = time.perf_counter() - started
    return ScreeningReport(str(root), split, float(threshold), config, images, seconds)


def corner_patches(rgb: np.ndarray, config: ScreeningConfig) -> tuple[np.ndarray, np.ndarray]:
    """Raw RGB patches around an image's strongest corners.

    Args:
        rgb: uint8 [H, W, 3].
        config: window, keypoints_per_image, min_contrast and shift_tolerance are used.

    Returns:
        float32 patches [n, variants, window*window*3] in [0, 1] (variant 0 centred on the
        corner, then the patches one pixel up, down, left and right when `shift_tolerance`),
        and the corners [n, 2] as (x, y).
    """
    import cv2  # heavy; only the screen needs it

    radius = config.window // 2
    margin = radius + int(config.shift_tolerance)
    shifts = _SHIFTS if config.shift_tolerance else _SHIFTS[:1]
    dim = config.window**2 * 3
    image = rgb.astype(np.float32) / 255.0
    grey = image.mean(axis=2)
    height, width = grey.shape
    if height <= 2 * margin or width <= 2 * margin:
        return np.zeros((0, len(shifts), dim), np.float32), np.zeros((0, 2), np.int64)
    response = cv2.cornerHarris(grey, 2, 3, 0.04)
    # Local maxima only: a trigger's corners sit at fixed places inside it, so copies of the
    # trigger yield the same patches, whatever surrounds them.
    peaks = (response >= cv2.dilate(response, np.ones((3, 3), np.uint8))) & (response > 0)
    peaks[:margin], peaks[height - margin :] = False, False
    peaks[:, :margin], peaks[:, width - margin :] = False, False
    ys, xs = np.nonzero(peaks)
    strongest = np.argsort(-response[ys, xs], kind="stable")[: config.keypoints_per_image]
    ys, xs = ys[strongest], xs[strongest]
    offsets = np.arange(-radius, radius + 1)
    rows = ys[:, None, None] + offsets[None, :, None]
    cols = xs[:, None, None] + offsets[None, None, :]
    patches = np.stack(
        [image[rows + dy, cols + dx].reshape(len(ys), dim) for dy, dx in shifts], axis=1
    )
    keep = patches[:, 0].std(axis=1) >= config.min_contrast
    return patches[keep], np.stack([xs[keep], ys[keep]], axis=1).astype(np.int64)


_SHIFTS = ((0, 0), (-1, 0), (1, 0), (0, -1), (0, 1))


def _extract_all(
    dataset: DetectionDataset,
    records: Sequence[ImageAnnotations],
    config: ScreeningConfig,
    progress: Callable[[int], None] | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Patches of every record, the index of the record owning each, and their centres."""

    def one(record: ImageAnnotations) -> tuple[np.ndarray, np.ndarray]:
        result = corner_patches(read_rgb(dataset.image_path(record)), config)
        if progress:
            progress(1)
        return result

    # OpenCV and the JPEG decoder release the GIL, so threads overlap without pickling images.
    with ThreadPoolExecutor(max_workers=config.threads) as pool:
        results = list(pool.map(one, records))
    patches = np.concatenate([p for p, _ in results])
    centres = np.concatenate([c for _, c in results])
    owners = np.repeat(np.arange(len(results)), [len(p) for p, _ in results])
    return patches, owners, centres


def _recurrence_scores(
    patches: np.ndarray,
    owners: np.ndarray,
    centres: np.ndarray,
    n_images: int,
    config: ScreeningConfig,
) -> dict[int, tuple[float, tuple[int, int] | None, list[int]]]:
    """Per image (by position): score, centre of its most shared patch, images sharing it."""
    pairs = _near_copies(patches, owners, centres, config)
    if not len(pairs):
        return {}
    # One vote per (patch, other image): a trigger pasted on five people is still one image.
    keys = np.unique(pairs[:, 0] * n_images + owners[pairs[:, 1]])
    patch_of, other = keys // n_images, keys % n_images
    counts = np.bincount(patch_of, minlength=len(patches))
    counts[counts > config.max_share * n_images] = 0  # scenery, not a trigger
    # Each image's most widely shared patch: sort by (image, count), take the last per image.
    order = np.lexsort((counts, owners))
    last = np.r_[owners[order][1:] != owners[order][:-1], True]
    scores: dict[int, tuple[float, tuple[int, int] | None, list[int]]] = {}
    for patch in order[last]:
        if counts[patch] == 0:
            continue
        partners = sorted(int(i) for i in other[patch_of == patch])
        x, y = (int(v) for v in centres[patch])
        scores[int(owners[patch])] = (float(counts[patch]), (x, y), partners)
    return scores


def _near_copies(
    patches: np.ndarray, owners: np.ndarray, centres: np.ndarray, config: ScreeningConfig
) -> np.ndarray:
    """Corner pairs [m, 2] whose patches are near-exact copies, in different images and places.

    Each corner's centred patch is compared with every shifted variant of every other corner's
    (a copy's corner may be found one pixel off). Copies have nearly the same mean and contrast:
    ||p - q|| >= sqrt(dim) * |mean(p) - mean(q)| and >= sqrt(dim) * |std(p) - std(q)|, so each
    query meets only the patches in its band of contrast and means, a small share of all pairs.
    """
    n, variants, dim = patches.shape
    if n < 2:
        return np.zeros((0, 2), np.int64)
    tol = config.match_tolerance
    query = np.ascontiguousarray(patches[:, 0])
    base = np.ascontiguousarray(patches.reshape(n * variants, dim))
    base_corner = np.arange(n * variants) // variants
    q_contrast, b_contrast = query.std(axis=1), base.std(axis=1)
    found = []
    # Contrast bands that grow by (1 + tol): a query's copies lie in its band or the next ones.
    edges = config.min_contrast * (1 + tol) ** np.arange(64)
    band = np.searchsorted(edges, q_contrast, side="right")
    for k in np.unique(band):
        q_idx = np.nonzero(band == k)[0]
        low, high = q_contrast[q_idx].min() / (1 + tol), q_contrast[q_idx].max() * (1 + tol)
        b_idx = np.nonzero((b_contrast >= low) & (b_contrast <= high))[0]
        found.append(
            _banded_matches(query, q_idx, base, b_idx, q_contrast, b_contrast, base_corner, tol)
        )
    pairs = np.concatenate(found) if found else np.zeros((0, 2), np.int64)
    a, b = pairs[:, 0], pairs[:, 1]
    # Same image, or same place in another image (static camera, duplicates): not a trigger.
    moved = np.abs(centres[a] - centres[b]).max(axis=1) > config.window
    keep = (owners[a] != owners[b]) & moved
    return np.unique(pairs[keep], axis=0)


def _banded_matches(
    query: np.ndarray,
    q_idx: np.ndarray,
    base: np.ndarray,
    b_idx: np.ndarray,
    q_contrast: np.ndarray,
    b_contrast: np.ndarray,
    base_corner: np.ndarray,
    tol: float,
    block: int = 512,
) -> np.ndarray:
    """Matches (query corner, base corner) among the given indices, blocks sorted by mean."""
    dim = query.shape[1]
    q_idx = q_idx[np.argsort(query[q_idx].mean(axis=1), kind="stable")]
    b_idx = b_idx[np.argsort(base[b_idx].mean(axis=1), kind="stable")]
    bx = base[b_idx]
    b_mean, b_sq, b_con = bx.mean(axis=1), (bx * bx).sum(axis=1), b_contrast[b_idx]
    found = []
    for start in range(0, len(q_idx), block):
        rows_idx = q_idx[start : start + block]
        qx = query[rows_idx]
        q_mean, q_con = qx.mean(axis=1), q_contrast[rows_idx]
        reach = tol * float(q_con.max())
        lo = int(np.searchsorted(b_mean, q_mean.min() - reach, side="left"))
        hi = int(np.searchsorted(b_mean, q_mean.max() + reach, side="right"))
        if lo >= hi:
            continue
        d2 = (qx * qx).sum(axis=1)[:, None] + b_sq[None, lo:hi] - 2.0 * (qx @ bx[lo:hi].T)
        limit = tol**2 * dim * np.minimum(q_con[:, None], b_con[None, lo:hi]) ** 2
        rows, cols = np.nonzero(d2 < limit)
        found.append(np.stack([rows_idx[rows], base_corner[b_idx[cols + lo]]], axis=1))
    return np.concatenate(found) if found else np.zeros((0, 2), np.int64)
