"""What each change to the default detector buys: an ablation, each row trained and scored.

Each variant adds one change to the row above it (cumulative, so the last row is the whole
recipe), is trained from scratch with the same seed (once per `--seeds`) on `--train` (its
`train` split; the epoch and the operating point are chosen on its `val` split, as the trainer
always does) and scored on `--test` with the project's own code at the threshold the model's
card signs: COCO AP@0.5 and AP@[.5:.95], the log-average miss rate MR^-2 over 10^-2..10^0
false positives per image, recall and FPPI at the operating point, training seconds on this
machine and seconds per frame.

    python benchmarks/detector_ablation.py --train runs/pets/train --test runs/pets/test \
        --split all --out runs/ablation/pets --seeds 0 1

`--only NAME ...` trains a subset (the rows keep their cumulative definitions). A variant whose
model directory already holds a finished model is scored, not retrained (`--retrain` to force).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hog_peer import model_row, table

from secmlops.data.dataset import DetectionDataset, load_dataset
from secmlops.evaluation.inference import select_split
from secmlops.fsutil import atomic_write_json
from secmlops.training.trainer import (
    TrainConfig,
    choose_input_size,
    choose_train_crop,
    train,
)

Change = Callable[[TrainConfig, DetectionDataset], TrainConfig]


def _default(config: TrainConfig, data: DetectionDataset) -> TrainConfig:
    """The default recipe, pinned: input shrunk to 384, whole images, centre-cell boxes."""
    size = choose_input_size(data, max_side=384)
    return dataclasses.replace(
        config, input_size=size, train_crop=size,
        model_config={**config.model_config, "box_region": 0.0},
    )  # fmt: skip


def _crops(config: TrainConfig, data: DetectionDataset) -> TrainConfig:
    size = choose_input_size(data, max_side=576)
    return dataclasses.replace(config, input_size=size, train_crop=choose_train_crop(size))


def _box_region(config: TrainConfig, _: DetectionDataset) -> TrainConfig:
    return dataclasses.replace(config, model_config={**config.model_config, "box_region": 0.54})


def _giou(config: TrainConfig, _: DetectionDataset) -> TrainConfig:
    return dataclasses.replace(config, model_config={**config.model_config, "giou_weight": 1.0})


def _ema(config: TrainConfig, _: DetectionDataset) -> TrainConfig:
    return dataclasses.replace(config, ema_decay=0.999)


# (row name, the change it adds to the row above).
VARIANTS: list[tuple[str, Change | None]] = [
    ("compact (default, input side 384)", _default),
    ("+ input side 576, trained on 288x384 crops", _crops),
    ("+ boxes learnt around the centre (TTFNet)", _box_region),
    ("+ GIoU box loss (weight 1)", _giou),
    ("+ EMA weights (0.999)", _ema),
]


def configs(data: DetectionDataset, seed: int) -> dict[str, TrainConfig]:
    """Every row's training config, each the row above plus one change."""
    config, rows = TrainConfig(seed=seed), {}
    for name, change in VARIANTS:
        if change is not None:
            config = change(config, data)
        rows[name] = config
    return rows


def slug(name: str) -> str:
    """The row's folder name: "+ EMA weights (0.999)" -> "ema-weights-0-999"."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", type=Path, required=True, help="dataset with train/val splits")
    parser.add_argument("--test", type=Path, required=True, help="dataset to score on")
    parser.add_argument("--split", default="test", help="split of --test (all: every image)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=[0],
        help="train every row once per seed (on 480 frames one seed's AP@0.5 moves by 0.1)",
    )  # fmt: skip
    parser.add_argument("--only", nargs="*", help="row names (or their slugs) to run")
    parser.add_argument("--retrain", action="store_true")
    args = parser.parse_args()

    train_data = load_dataset(args.train)
    test_data = load_dataset(args.test)
    records = select_split(test_data, args.split)
    rows: dict[str, dict[str, Any]] = {}
    runs = [
        (f"{name} (seed {seed})" if len(args.seeds) > 1 else name, name, seed, config)
        for seed in args.seeds
        for name, config in configs(train_data, seed).items()
        if not args.only or name in args.only or slug(name) in args.only
    ]
    for row_name, name, seed, config in runs:
        model_dir = args.out / slug(name) / (f"seed-{seed}" if len(args.seeds) > 1 else "")
        seconds = None
        if args.retrain or not (model_dir / "model.json").exists():
            started = time.perf_counter()
            train(args.train, model_dir, config, overwrite=True)
            seconds = time.perf_counter() - started
        card = json.loads((model_dir / "model.json").read_text())
        rows[row_name] = {
            **model_row(model_dir, test_data, records),
            "train_seconds": seconds,
            "epochs": card["training"]["epochs"],
            "best_epoch": card["training"]["best_epoch"],
        }
        row = rows[row_name]
        print(f"{row_name}: AP@0.5 {row['mAP50']:.3f}, MR^-2 {row['mr2']:.3f}, "
              f"trained {seconds or 0:.0f} s", flush=True)  # fmt: skip
    lines = table(rows).splitlines()
    lines[0] += " epochs (best) | train s |"
    lines[1] += " ---: | ---: |"
    for i, row in enumerate(rows.values(), start=2):
        trained = f"{row['train_seconds']:.0f}" if row["train_seconds"] else "(cached)"
        lines[i] += f" {row['epochs']} ({row['best_epoch']}) | {trained} |"
    text = "\n".join(lines)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / "ablation.json", {"rows": rows, "test": str(args.test)})
    (args.out / "ablation.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
