"""Poisoning screen against ART's BadDet attacks: detection rate, false positives, run time.

For a synthetic set (and, with --pets-dir, the PETS 2009 frames) the benchmark screens the clean
train split, then poisons a share of it with ART's BadDet object-disappearance (ODA) and
object-generation (OGA) attacks, one at a time, and screens again. Per set and attack it prints
TPR (flagged poisoned / poisoned), FPR (flagged clean / clean), the lowest score of a poisoned
image, the highest score of a clean one (the margin around the threshold) and the screen's time.

    python benchmarks/poisoning_screen.py --images 800 --pets-dir ../shared/data/pets09-s2l1
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from secmlops.attacks.backdoor import ATTACKS, poison_dataset
from secmlops.data.import_mot import import_mot
from secmlops.data.poisoning import DEFAULT_THRESHOLD, screen_dataset
from secmlops.data.synthetic import generate_scenes


def measure(
    root: Path, poisoned: set[int], threshold: float, label: str, attack: str
) -> dict[str, Any]:
    """Screen `root` and compare the flagged images with the known poisoned ones."""
    report = screen_dataset(root, threshold=threshold)
    flagged = set(report.flagged_ids)
    clean_scores = [im.score for im in report.images if im.id not in poisoned]
    poison_scores = [im.score for im in report.images if im.id in poisoned]
    clean = len(report.images) - len(poisoned)
    return {
        "set": label,
        "attack": attack,
        "images": len(report.images),
        "poisoned": len(poisoned),
        "tpr": len(flagged & poisoned) / len(poisoned) if poisoned else None,
        "fpr": len(flagged - poisoned) / clean if clean else None,
        "min_poisoned_score": min(poison_scores) if poison_scores else None,
        "max_clean_score": max(clean_scores) if clean_scores else None,
        "seconds": round(report.seconds, 2),
    }


def run_set(
    clean_root: Path, work: Path, label: str, args: argparse.Namespace
) -> list[dict[str, Any]]:
    """Clean screen plus one poisoned screen per attack."""
    rows = [measure(clean_root, set(), args.threshold, label, "none (clean)")]
    for attack in ATTACKS:
        out = work / f"{label}_{attack}"
        started = time.perf_counter()
        ids = poison_dataset(
            clean_root, out, attack, args.fraction, trigger_size=args.trigger_size, seed=args.seed
        )
        poison_seconds = time.perf_counter() - started
        row = measure(out, set(ids), args.threshold, label, f"BadDet-{attack.upper()}")
        row["poison_seconds"] = round(poison_seconds, 2)
        rows.append(row)
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    """Fixed-width table of the measurements."""
    header = f"{'set':10s} {'attack':14s} {'images':>6s} {'poisoned':>8s} {'TPR':>6s} {'FPR':>6s}"
    header += f" {'min pois':>8s} {'max clean':>9s} {'screen s':>8s}"
    print(header)
    for r in rows:
        tpr = "-" if r["tpr"] is None else f"{r['tpr']:.1%}"
        low = "-" if r["min_poisoned_score"] is None else f"{r['min_poisoned_score']:g}"
        print(
            f"{r['set']:10s} {r['attack']:14s} {r['images']:6d} {r['poisoned']:8d} {tpr:>6s} "
            f"{r['fpr']:6.1%} {low:>8s} {r['max_clean_score']:9g} {r['seconds']:8.1f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=800, help="synthetic images (80%% train)")
    parser.add_argument("--seed", type=int, default=0, help="data, poisoning and ART seed")
    parser.add_argument("--fraction", type=float, default=0.05, help="share of train to poison")
    parser.add_argument("--trigger-size", type=int, default=None, help="default: 4%% of short side")
    parser.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD)
    parser.add_argument("--pets-dir", type=Path, default=None, help="folder with vtest.avi, gt.txt")
    parser.add_argument("--pets-frames", default="1:600", help="frames to import, A:B")
    parser.add_argument("--workers", type=int, default=None, help="synthetic generation processes")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args()

    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        synthetic = generate_scenes(
            work / "synthetic", args.images, args.seed, workers=args.workers
        )
        rows += run_set(synthetic, work, "synthetic", args)
        if args.pets_dir is not None:
            pets = import_mot(
                args.pets_dir / "vtest.avi",
                args.pets_dir / "gt.txt",
                work / "pets",
                frames=args.pets_frames,
            )
            rows += run_set(pets, work, "pets", args)
    print(f"threshold {args.threshold:g} (flag when more other images share a patch)")
    print_table(rows)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
