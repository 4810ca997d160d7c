"""The study calibrates the serving screener the way the product does: on held-out images."""

from secmlops.tradeoffs.study import calibration_ids


def test_a_large_enough_val_split_is_used_alone_never_training_images() -> None:
    splits = {"train": list(range(480)), "val": list(range(500, 560)), "test": [900, 901]}
    assert calibration_ids(splits, 100) == splits["val"]
    assert calibration_ids(splits, 30) == splits["val"][:30]


def test_training_images_fill_up_only_to_the_screeners_minimum() -> None:
    splits = {"train": list(range(80)), "val": list(range(100, 110)), "test": list(range(200, 210))}
    # 20 images resolve the default 5% false-alarm rate: all of val, then 10 training images;
    # the judged test images never.
    assert calibration_ids(splits, 100) == splits["val"] + splits["train"][:10]
    assert calibration_ids({"train": [0], "val": [], "test": [9]}, 100) == [0]
