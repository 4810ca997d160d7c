"""MOTChallenge import, on the real PETS 2009 S2.L1 files and on broken inputs."""

from collections import Counter

import pytest

from secmlops.data.dataset import load_dataset
from secmlops.data.import_mot import OPEN_END, import_mot, parse_frame_range, read_mot_gt
from secmlops.errors import DataError

from ..conftest import PETS_DIR, requires_pets


@requires_pets
def test_real_pets_frames_import_with_every_box_and_ignore_region(tmp_path):
    out = import_mot(PETS_DIR / "vtest.avi", PETS_DIR / "gt.txt", tmp_path / "pets", frames="1:30")
    dataset = load_dataset(out)
    assert len(dataset.images) == 30
    assert {(im.width, im.height) for im in dataset.images} == {(768, 576)}
    expected = Counter()
    for line in (PETS_DIR / "gt.txt").read_text().splitlines():
        fields = line.split(",")
        if 1 <= int(float(fields[0])) <= 30:
            expected["boxes" if int(float(fields[6])) else "ignore"] += 1
    assert sum(len(im.boxes) for im in dataset.images) == expected["boxes"]
    assert sum(len(im.ignore) for im in dataset.images) == expected["ignore"]
    for im in dataset.images:
        for x1, y1, x2, y2 in im.boxes + im.ignore:
            assert 0 <= x1 < x2 <= im.width and 0 <= y1 < y2 <= im.height
    # Video frames keep time order across splits so near-duplicates do not leak into test.
    assert max(dataset.splits["train"]) < min(dataset.splits["val"]) < min(dataset.splits["test"])


@requires_pets
def test_real_pets_boxes_leaving_the_frame_are_clipped(tmp_path):
    frames = read_mot_gt(PETS_DIR / "gt.txt")
    leaving = sorted(n for n, f in frames.items() for b in f["boxes"] if b[3] > 576)
    assert leaving, "the real gt has boxes below the frame's bottom edge"
    spec = f"{leaving[0]}:{leaving[0]}"
    out = import_mot(PETS_DIR / "vtest.avi", PETS_DIR / "gt.txt", tmp_path / "one", frames=spec)
    (image,) = load_dataset(out).images
    assert max(box[3] for box in image.boxes) == 576.0


def write_gt(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def tiny_video(tmp_path):
    import cv2
    import numpy as np

    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 5, (64, 48))
    for i in range(5):
        writer.write(np.full((48, 64, 3), 40 * i, dtype=np.uint8))
    writer.release()
    return path


def test_flag_zero_becomes_ignore_region_and_boxes_are_clipped(tmp_path, tiny_video):
    gt = write_gt(
        tmp_path / "gt.txt",
        ["1,1,-5,10,20,30,1,-1,-1,-1", "1,2,40,5,10,20,0,-1,-1,-1", "3,1,50,30,30,30,1,-1,-1,-1"],
    )
    dataset = load_dataset(import_mot(tiny_video, gt, tmp_path / "out"))
    first, third = dataset.images[0], dataset.images[2]
    assert first.boxes == ((0.0, 10.0, 15.0, 40.0),)
    assert first.ignore == ((40.0, 5.0, 50.0, 25.0),)
    assert third.boxes == ((50.0, 30.0, 64.0, 48.0),)
    assert len(dataset.images) == 5  # frames without boxes are kept as negatives


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (["1,1,10,10,20"], r"gt.txt:1: expected at least 7"),
        (["1,1,10,10,20,30,1", "2,1,ten,10,20,30,1"], r"gt.txt:2: non-numeric"),
        (["1,1,10,10,-20,30,1"], r"gt.txt:1: box has non-positive size"),
        (["0,1,10,10,20,30,1"], r"gt.txt:1: frame numbers are 1-based"),
        (["1,1,100,100,20,30,1"], r"frame 1: box .* lies entirely outside the 64x48 frame"),
        ([""], r"no boxes"),
    ],
    ids=["short-line", "non-numeric", "negative-size", "frame-zero", "outside", "empty"],
)
def test_bad_ground_truth_is_refused_and_nothing_is_written(tmp_path, tiny_video, lines, message):
    gt = write_gt(tmp_path / "gt.txt", lines)
    with pytest.raises(DataError, match=message):
        import_mot(tiny_video, gt, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not any(p.name.startswith(".out") for p in tmp_path.iterdir())


def test_missing_and_corrupt_videos_are_refused(tmp_path):
    gt = write_gt(tmp_path / "gt.txt", ["1,1,10,10,20,30,1"])
    with pytest.raises(DataError, match="video file not found"):
        import_mot(tmp_path / "missing.avi", gt, tmp_path / "out")
    corrupt = tmp_path / "corrupt.avi"
    corrupt.write_bytes(b"RIFF" + bytes(range(256)) * 40)
    with pytest.raises(DataError, match="corrupt or unsupported"):
        import_mot(corrupt, gt, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(DataError, match="ground-truth file not found"):
        import_mot(corrupt, tmp_path / "nope.txt", tmp_path / "out")


def test_frame_range_beyond_the_video_is_refused(tmp_path, tiny_video):
    gt = write_gt(tmp_path / "gt.txt", ["1,1,10,10,20,30,1"])
    with pytest.raises(DataError, match="up to 9, the video has 5"):
        import_mot(tiny_video, gt, tmp_path / "out", frames="2:9")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("spec", ["5", "a:b", "0:3", "4:2", "1:2:3"])
def test_malformed_frame_ranges_are_refused(spec):
    with pytest.raises(DataError, match="--frames"):
        parse_frame_range(spec)


def test_frame_ranges_parse():
    assert parse_frame_range("1:600") == (1, 600)
    assert parse_frame_range("601:") == (601, OPEN_END)
    assert parse_frame_range(None) is None
