"""Throughput of the synthetic scene generator, and what it generates.

Generates a dataset into a temporary folder and prints images per second, total seconds,
persons per image and the distribution of box heights (the detector's scale range).

    python benchmarks/synthetic_generation.py --images 1000
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from secmlops.data.dataset import SPLITS, load_dataset
from secmlops.data.synthetic import generate_scenes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000, help="images to generate")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--workers", type=int, default=None, help="default: one per CPU")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "synthetic"
        start = time.perf_counter()
        generate_scenes(out, args.images, args.seed, width=args.width, height=args.height,
                        workers=args.workers)  # fmt: skip
        seconds = time.perf_counter() - start
        dataset = load_dataset(out)
        megabytes = sum(f.stat().st_size for f in (out / "images").iterdir()) / 1e6

    persons = np.array([len(img.boxes) for img in dataset.images])
    ignored = np.array([len(img.ignore) for img in dataset.images])
    heights = np.array([b[3] - b[1] for img in dataset.images for b in img.boxes])
    print(f"images:            {args.images} at {args.width}x{args.height}, seed {args.seed}")
    print(f"total:             {seconds:.2f} s ({args.images / seconds:.1f} images/s)")
    print(f"disk:              {megabytes:.1f} MB")
    print(f"persons per image: mean {persons.mean():.2f}, min {persons.min()}, "
          f"max {persons.max()}, images with none {np.mean(persons == 0):.1%}")  # fmt: skip
    print(f"ignore regions:    {ignored.mean():.2f} per image")
    percentiles = (0, 5, 25, 50, 75, 95, 100)
    values = np.percentile(heights, percentiles)
    summary = ", ".join(f"p{p} {v:.0f}" for p, v in zip(percentiles, values, strict=True))
    print(f"box height px:     {summary}")
    for name in SPLITS:
        print(f"split {name:<5}        {len(dataset.splits.get(name, []))} images")


if __name__ == "__main__":
    main()
