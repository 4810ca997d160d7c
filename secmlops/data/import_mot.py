"""Import MOTChallenge ground truth plus its video into a dataset version.

MOTChallenge `gt.txt` (2D MOT 2015) has one box per line:
`frame, track_id, bb_left, bb_top, bb_width, bb_height, flag, x, y, z` with 1-based frames in
decoding order. `flag == 0` marks a region the benchmark ignores; we keep it as an ignore region
(`iscrowd: 1`) so it is neither a positive to find nor a false positive when matched. Boxes may
leave the image at the borders and are clipped to it.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

from secmlops.data.dataset import Box, contiguous_splits, write_dataset
from secmlops.errors import DataError

MIN_GT_FIELDS = 7
# The last frame of an open range "A:": past the end of any real video.
OPEN_END = 10**9


def parse_frame_range(spec: str | None) -> tuple[int, int] | None:
    """Parse an inclusive, 1-based frame range "A:B" (either side may be empty).

    Raises:
        DataError: the range is malformed or empty.
    """
    if spec is None or spec == "":
        return None
    parts = spec.split(":")
    try:
        if len(parts) != 2:
            raise ValueError
        first = int(parts[0]) if parts[0] else 1
        last = int(parts[1]) if parts[1] else OPEN_END
    except ValueError:
        raise DataError(f"--frames must look like A:B (1-based, inclusive), got {spec!r}") from None
    if first < 1 or last < first:
        raise DataError(f"--frames {spec!r} selects no frame (need 1 <= A <= B)")
    return first, last


def read_mot_gt(gt: Path) -> dict[int, dict[str, list[Box]]]:
    """Read a MOTChallenge gt.txt into {frame: {"boxes": [...], "ignore": [...]}} (x1y1x2y2).

    Raises:
        DataError: the file is missing, or a line is malformed (named by its line number).
    """
    frames: dict[int, dict[str, list[Box]]] = defaultdict(lambda: {"boxes": [], "ignore": []})
    try:
        text = Path(gt).read_text()
    except FileNotFoundError:
        raise DataError(f"{gt}: ground-truth file not found") from None
    except UnicodeDecodeError:
        raise DataError(f"{gt}: not a text file") from None
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.replace(" ", "").split(",")
        if len(fields) < MIN_GT_FIELDS:
            raise DataError(
                f"{gt}:{number}: expected at least {MIN_GT_FIELDS} comma-separated fields "
                f"(frame,id,left,top,width,height,flag,...), got {len(fields)}"
            )
        try:
            frame = int(float(fields[0]))
            left, top, width, height = (float(v) for v in fields[2:6])
            flag = int(float(fields[6]))
        except (ValueError, OverflowError):  # OverflowError: int(float("inf"))
            raise DataError(f"{gt}:{number}: non-numeric field in {line.strip()!r}") from None
        if frame < 1:
            raise DataError(f"{gt}:{number}: frame numbers are 1-based, got {frame}")
        if not all(math.isfinite(v) for v in (left, top, width, height)):
            raise DataError(f"{gt}:{number}: box has a non-finite coordinate")
        if width <= 0 or height <= 0:
            raise DataError(f"{gt}:{number}: box has non-positive size {width}x{height}")
        key = "boxes" if flag != 0 else "ignore"
        frames[frame][key].append((left, top, left + width, top + height))
    if not frames:
        raise DataError(f"{gt}: no boxes in the ground-truth file")
    return dict(frames)


def import_mot(
    video: Path,
    gt: Path,
    out: Path,
    *,
    frames: str | None = None,
    overwrite: bool = False,
    progress: Callable[[int], None] | None = None,
) -> Path:
    """Decode the selected video frames and write them with their boxes as a dataset version.

    Splits keep time order (80/10/10 of the selected frames) because neighbouring frames are
    near-duplicates. Frames without any box are kept as negatives.

    Args:
        video: the sequence's video file (any format OpenCV's FFmpeg backend decodes).
        gt: the MOTChallenge gt.txt.
        out: the dataset folder to create.
        frames: inclusive 1-based range "A:B" of frames to import; all frames if None.
        overwrite: replace an existing dataset at `out`.
        progress: called with 1 after each frame is written.

    Returns:
        `out`.

    Raises:
        DataError: missing or undecodable video, malformed gt, a box entirely outside its frame,
            or a frame range beyond the video.
    """
    import cv2  # heavy; only needed for video

    selected = parse_frame_range(frames)
    annotations = read_mot_gt(gt)
    video = Path(video)
    if not video.is_file():
        raise DataError(f"{video}: video file not found")
    capture = cv2.VideoCapture(str(video))
    try:
        if not capture.isOpened():
            raise DataError(f"{video}: cannot open video (corrupt or unsupported format)")
        with write_dataset(
            out, overwrite=overwrite, source={"format": "mot", "video": str(video), "gt": str(gt)}
        ) as writer:
            frame_ids: list[int] = []
            number = 0
            while True:
                ok, bgr = capture.read()
                if not ok:
                    break
                number += 1
                if selected and number < selected[0]:
                    continue
                if selected and number > selected[1]:
                    break
                height, width = bgr.shape[:2]
                found = annotations.get(number, {"boxes": [], "ignore": []})
                _check_inside(found["boxes"] + found["ignore"], width, height, gt, number)
                frame_ids.append(
                    writer.add(
                        f"frame_{number:06d}.jpg",
                        width,
                        height,
                        boxes=found["boxes"],
                        ignore=found["ignore"],
                        image=bgr[:, :, ::-1],
                    )
                )
                if progress:
                    progress(1)
            if number == 0:
                raise DataError(f"{video}: no decodable frame (corrupt or unsupported video)")
            if selected and selected[1] != OPEN_END and number < selected[1]:
                raise DataError(
                    f"{video}: --frames asks for frames up to {selected[1]}, the video has {number}"
                )
            writer.splits = contiguous_splits(frame_ids)
    finally:
        capture.release()
    return Path(out)


def _check_inside(boxes: list[Box], width: int, height: int, gt: Path, frame: int) -> None:
    for x1, y1, x2, y2 in boxes:
        if x2 <= 0 or y2 <= 0 or x1 >= width or y1 >= height:
            raise DataError(
                f"{gt}: frame {frame}: box ({x1:.1f}, {y1:.1f}, {x2:.1f}, {y2:.1f}) lies entirely "
                f"outside the {width}x{height} frame"
            )
