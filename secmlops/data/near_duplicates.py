"""Image fingerprints and the duplicate search across dataset splits (test-set leakage).

What it catches: the same picture in training and in evaluation, byte for byte (SHA-256) or after
a JPEG re-encode, a resize, a brightness or contrast change (perceptual hash): a scrape that
collected one photo twice, augmented copies exported as data, a frame saved twice. The test score
then measures memory, not generalisation, and someone who can slip evaluation images into
training can make a weak model pass the gate. Fingerprinting an image fully decodes it, so the
same pass also finds truncated or undecodable files.

Hash: the 64-bit DCT perceptual hash (pHash, Zauner 2010, "Implementation and Benchmarking of
Perceptual Image Hash Functions"), computed as the `imagehash` library does but with an area
resample: grayscale, 32x32, 2-D DCT-II, the 8x8 lowest frequencies, one bit per coefficient above
their median.
Measured on 250 images (synthetic and PETS): a JPEG re-encode at quality 60 or 10% darker moves
it by at most 2 bits, half the size by at most 4, 10% brighter by at most 4 except one saturated
image at 6. Among 1,000 distinct synthetic scenes no two are closer than 8 bits (a 64-bit dHash,
tried too, had a pair at 4). Frames of one static camera are another matter: the background
dominates the hash, so frames hundreds of frames apart can be 0..4 bits apart.

Search: every query against every reference as XOR + popcount over uint64 matrices, in chunks
that bound memory. It is exact (no candidate pruning that could miss a pair) and fast enough for
the sizes this project handles: 800 x 200 pairs take about a millisecond, 80,000 x 20,000 pairs
a few seconds. Multi-index hashing would prune better for millions of images, but degrades on
exactly the data that matters here (many similar hashes: frames of one camera).
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

HASH_NAME = "phash-64"
HASH_BITS = 64
_RESAMPLE_SIZE = 32
_LOW_FREQUENCIES = 8
_CHUNK_CELLS = 1 << 22  # XOR matrix cells per chunk: 4 M uint64 = 32 MB


def _dct_rows(n: int, keep: int) -> np.ndarray:
    """The first `keep` rows of the orthonormal DCT-II matrix of size n."""
    k = np.arange(keep)[:, None]
    i = np.arange(n)[None, :]
    rows = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    rows[0] /= np.sqrt(2.0)
    return rows


_DCT = _dct_rows(_RESAMPLE_SIZE, _LOW_FREQUENCIES)


def perceptual_hash(image: Image.Image) -> int:
    """64-bit pHash of a decoded image (any mode), as an unsigned integer.

    Args:
        image: a loaded PIL image.

    Returns:
        The hash; bit 63 is the DC coefficient, bits run row-major over the 8x8 frequencies.
    """
    small = image.convert("L").resize((_RESAMPLE_SIZE, _RESAMPLE_SIZE), Image.Resampling.BOX)
    pixels = np.asarray(small, dtype=np.float64)
    coefficients = _DCT @ pixels @ _DCT.T
    bits = (coefficients > np.median(coefficients)).ravel()
    return int(np.packbits(bits).view(">u8")[0])


def hamming_distance(a: int, b: int) -> int:
    """Number of bits in which two hashes differ."""
    return (a ^ b).bit_count()


@dataclass(frozen=True)
class NearMatch:
    """A query hash with at least one reference hash within the distance limit."""

    query: int  # index into the queries
    nearest: int  # index into the references of the closest one (lowest index on ties)
    distance: int  # Hamming distance to it, bits
    matches: int  # how many references are within the limit


def nearest_within(
    queries: np.ndarray, references: np.ndarray, max_distance: int
) -> list[NearMatch]:
    """Find, for every query, the references within `max_distance` bits.

    Args:
        queries: uint64 hashes.
        references: uint64 hashes.
        max_distance: the largest Hamming distance that counts as a near-duplicate.

    Returns:
        One `NearMatch` per query that has a match, in query order.
    """
    queries = np.ascontiguousarray(queries, dtype=np.uint64)
    references = np.ascontiguousarray(references, dtype=np.uint64)
    if queries.size == 0 or references.size == 0:
        return []
    rows = max(1, _CHUNK_CELLS // references.size)
    found: list[NearMatch] = []
    for start in range(0, queries.size, rows):
        block = queries[start : start + rows]
        distances = np.bitwise_count(block[:, None] ^ references[None, :])
        within = distances <= max_distance
        hit_rows = np.flatnonzero(within.any(axis=1))
        if hit_rows.size == 0:
            continue
        nearest = distances[hit_rows].argmin(axis=1)
        counts = within[hit_rows].sum(axis=1)
        for row, ref, count in zip(hit_rows, nearest, counts, strict=True):
            found.append(
                NearMatch(
                    query=start + int(row),
                    nearest=int(ref),
                    distance=int(distances[row, ref]),
                    matches=int(count),
                )
            )
    return found


@dataclass(frozen=True)
class Fingerprint:
    """What the duplicate search needs of one decoded image file."""

    sha256: str
    phash: int
    size: tuple[int, int]  # decoded width, height


def fingerprint_image(path: Path) -> Fingerprint | str:
    """Read, fully decode and hash one image file (safe to run in worker threads).

    Returns:
        Its fingerprint, or a sentence saying what is wrong with the file.
    """
    if path.is_symlink():
        return "is a symbolic link; a dataset version holds its own bytes"
    if not path.exists():
        return "image file not found"
    if not path.is_file():  # a FIFO or a device would block or never end
        return "is not a regular file"
    try:
        data = path.read_bytes()
        with Image.open(io.BytesIO(data)) as img:
            img.load()  # the full decode: a truncated file fails here, not at open
            size, phash = img.size, perceptual_hash(img)
    except Image.DecompressionBombError as exc:
        return f"refused to decode: {exc}"
    except Exception as exc:  # untrusted bytes: any decoder failure means "not an image"
        return f"does not decode as an image ({type(exc).__name__}: {exc})"
    return Fingerprint(hashlib.sha256(data).hexdigest(), phash, size)


def fingerprint_images(
    paths: Sequence[Path],
    workers: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> list[Fingerprint | str]:
    """`fingerprint_image` over many files in a thread pool, results in the order of `paths`.

    Args:
        paths: image files.
        workers: threads (None: one per CPU); PIL releases the GIL while it decodes.
        progress: called with 1 after each file.
    """

    def one(path: Path) -> Fingerprint | str:
        result = fingerprint_image(path)
        if progress:
            progress(1)
        return result

    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        return list(pool.map(one, paths))


@dataclass(frozen=True)
class Leak:
    """An image of a later split that duplicates one of an earlier split."""

    image: int
    split: str
    other: int  # the matching image of the earlier split (nearest one for near-duplicates)
    other_split: str
    exact: bool  # identical bytes
    distance: int  # Hamming distance of the perceptual hashes, bits
    matches: int  # images of earlier splits within the limit


def find_leaks(
    splits: dict[str, list[int]], prints: dict[int, Fingerprint], max_distance: int
) -> tuple[list[Leak], int]:
    """Compare each split's images with those of every split before it (train, val, test order).

    Args:
        splits: image ids per split, in evaluation order; an image belongs to one split only.
        prints: fingerprints by image id (ids without one are skipped).
        max_distance: Hamming distance at or below which two images are near-duplicates.

    Returns:
        The leaks (an image with identical bytes in an earlier split is reported once, as
        exact), and how many images repeat another's bytes within their own split.
    """
    first_by_sha: dict[str, tuple[int, str]] = {}
    leaks: list[Leak] = []
    copies_within = 0
    earlier: list[tuple[int, str]] = []
    for name, ids in splits.items():
        queries: list[int] = []
        for image_id in (i for i in ids if i in prints):
            other = first_by_sha.setdefault(prints[image_id].sha256, (image_id, name))
            if other[1] != name:
                leaks.append(Leak(image_id, name, other[0], other[1], True, 0, 1))
                continue
            copies_within += other[0] != image_id
            queries.append(image_id)
        matches = nearest_within(
            np.array([prints[i].phash for i in queries], dtype=np.uint64),
            np.array([prints[i].phash for i, _ in earlier], dtype=np.uint64),
            max_distance,
        )
        for m in matches:
            other_id, other_split = earlier[m.nearest]
            leaks.append(
                Leak(queries[m.query], name, other_id, other_split, False, m.distance, m.matches)
            )
        earlier.extend((i, name) for i in queries)
    return leaks, copies_within
