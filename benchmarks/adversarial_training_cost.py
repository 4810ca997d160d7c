"""Cost and benefit of adversarial training, measured in one run on one dataset.

(b) Epoch cost of PGD-K adversarial training (every image replaced, mix 1.0) against a clean
    epoch, next to the floor of K+1: each adversarial step runs K attack passes plus the
    training pass. Timed over the optimizer steps of one epoch (data decoding and validation
    excluded), the first `--warmup-steps` steps dropped, best of `--repeats`.
(c) FGSM-RS against PGD-K adversarial training at the same eps and mix: epoch cost of each
    against a clean epoch, and the robust mAP@0.5 each trained model keeps under PGD-10 (our
    attack, cross-checked against ART's in the evaluation suite); goal: FGSM-RS costs <= 2.2x a
    clean epoch while keeping >= 80% of PGD training's robust mAP.

Training the three models takes a while on a CPU; `--models-from DIR` reuses the clean, pgd and
fgsm-rs models a previous run left in DIR (their epoch costs are still measured in this run).

    python benchmarks/adversarial_training_cost.py --data runs/data/synthetic-n1000-seed0
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from pathlib import Path

import torch

from secmlops import models
from secmlops.attacks.projected_gradient import AttackConfig, fgsm_rs
from secmlops.data.dataset import load_dataset
from secmlops.evaluation.attack_runs import map_under_attack
from secmlops.training.batches import prepare_split
from secmlops.training.defences import AdversarialConfig
from secmlops.training.trainer import TrainConfig, train


class _StopAfterSteps(Exception):
    pass


def epoch_seconds(
    data: Path, scratch: Path, config: TrainConfig, steps: int, warmup: int, repeats: int
) -> float:
    """Seconds one full epoch of optimizer steps takes, from `steps` timed steps (best of runs)."""
    best = float("inf")
    for repeat in range(repeats):
        clock = _StepClock(warmup + steps)
        with contextlib.suppress(_StopAfterSteps):
            train(data, scratch / f"timing-{repeat}", config, overwrite=True, on_step=clock)
        timed = clock.stamps[warmup:]
        per_step = (timed[-1] - timed[0]) / (len(timed) - 1)
        best = min(best, per_step * clock.steps_per_epoch)
    return best


class _StepClock:
    """Trainer `on_step` callback: time-stamps steps, stops the run after `limit` of them."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.stamps: list[float] = []
        self.steps_per_epoch = 0

    def __call__(self, step: int, steps_per_epoch: int) -> None:
        self.stamps.append(time.perf_counter())
        self.steps_per_epoch = steps_per_epoch
        if len(self.stamps) > self.limit:
            raise _StopAfterSteps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path("runs/benchmarks/adversarial-training"))
    parser.add_argument("--eps", type=float, default=4 / 255)
    parser.add_argument("--pgd-steps", type=int, default=3, help="K of PGD-K training")
    parser.add_argument("--mix", type=float, default=0.5, help="mix of the trained models")
    parser.add_argument("--epochs", type=int, help="epochs of the trained models (default: auto)")
    parser.add_argument("--timed-steps", type=int, default=12)
    parser.add_argument("--warmup-steps", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--eval-images", type=int, default=100)
    parser.add_argument("--models-from", type=Path, help="reuse clean/, pgd/, fgsm-rs/ from here")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    k = args.pgd_steps
    pgd = AttackConfig(method="pgd", eps=args.eps, steps=k)
    fgsm = fgsm_rs(args.eps)
    base = {"epochs": args.epochs, "seed": 0}
    configs = {
        "clean": TrainConfig(**base),
        "pgd": TrainConfig(**base, adversarial=AdversarialConfig(pgd, mix=args.mix)),
        "fgsm-rs": TrainConfig(**base, adversarial=AdversarialConfig(fgsm, mix=args.mix)),
    }

    # (b) and the cost half of (c): epoch times, all measured in this run.
    timing = {
        "clean": TrainConfig(seed=0),
        f"pgd-{k} mix 1.0": TrainConfig(seed=0, adversarial=AdversarialConfig(pgd, mix=1.0)),
        f"pgd-{k} mix {args.mix}": configs["pgd"],
        f"fgsm-rs mix {args.mix}": configs["fgsm-rs"],
    }
    seconds = {
        name: epoch_seconds(
            args.data, args.out, config, args.timed_steps, args.warmup_steps, args.repeats
        )
        for name, config in timing.items()
    }
    clean_epoch = seconds["clean"]

    # The benefit half of (c): train (or reuse) the three models, then attack each with PGD-10.
    source = args.models_from or args.out
    dataset = load_dataset(args.data)
    records = dataset.split("test")[: args.eval_images]
    robust: dict[str, dict[str, float]] = {}
    for name, config in configs.items():
        model_dir = source / name
        if not (model_dir / models.CARD_FILE).exists():
            train(args.data, model_dir, config, overwrite=True)
        model = models.load(model_dir)
        prepared = prepare_split(dataset, records, tuple(model.input_size))
        attack = AttackConfig(method="pgd", eps=args.eps, steps=10, random_start=False)
        robust[name] = {
            "clean": map_under_attack(model, prepared, None)["mAP50"],
            "pgd10": map_under_attack(model, prepared, attack)["mAP50"],
        }

    print(f"data {args.data}, eps {args.eps:.4f}, torch threads {torch.get_num_threads()}")
    print(f"\n(b) epoch cost against a clean epoch ({clean_epoch:.1f} s)")
    print(f"{'training':24s}{'epoch s':>9s}{'ratio':>8s}{'floor':>8s}{'ratio/floor':>13s}")
    floors = {
        "clean": 1.0,
        f"pgd-{k} mix 1.0": k + 1.0,
        f"pgd-{k} mix {args.mix}": 1 + args.mix * k,
        f"fgsm-rs mix {args.mix}": 1 + args.mix,
    }
    for name, value in seconds.items():
        ratio = value / clean_epoch
        print(f"{name:24s}{value:9.1f}{ratio:8.2f}{floors[name]:8.2f}{ratio / floors[name]:13.2f}")
    print(f"goal: pgd-{k} mix 1.0 within 10% of the floor (ratio/floor <= 1.10)")

    print(f"\n(c) trained models (mix {args.mix}), mAP@0.5 on {len(records)} test images")
    print(f"{'model':10s}{'clean':>8s}{'PGD-10':>8s}")
    for name, values in robust.items():
        print(f"{name:10s}{values['clean']:8.3f}{values['pgd10']:8.3f}")
    fgsm_cost = seconds[f"fgsm-rs mix {args.mix}"] / clean_epoch
    kept = robust["fgsm-rs"]["pgd10"] / max(robust["pgd"]["pgd10"], 1e-9)
    print(f"FGSM-RS cost {fgsm_cost:.2f}x a clean epoch (goal <= 2.2x)")
    print(f"FGSM-RS keeps {kept:.0%} of PGD-{k} training's robust mAP (goal >= 80%)")
    (args.out / "results.json").write_text(
        json.dumps({"epoch_seconds": seconds, "robust": robust, "args": vars(args)}, default=str)
    )


if __name__ == "__main__":
    main()
