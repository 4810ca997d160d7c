"""Attack throughput: our on-device PGD against ART's `ProjectedGradientDescent.generate`.

Same model, same images, same settings (L-inf, eps, steps, step size, no random start), in one
run; images per second, best of `--repeats`. ART runs as a user would call it: its
`PyTorchObjectDetector` around the model, then `ProjectedGradientDescent.generate` (which also
computes every weight's gradient, and drops the targets' ignore regions, so its loss differs from
ours inside crowd regions only). Both maximise the sum of the detector's training losses with
batch norm frozen; the script prints the largest pixel difference between the two adversarial
batches (sign flips of near-zero gradients make it 2*eps at a few pixels) and, with a trained
`--model`, the robust mAP@0.5 each one leaves.

    python benchmarks/pgd_throughput.py             # untrained model, fresh synthetic scenes
    python benchmarks/pgd_throughput.py --model runs/model --data runs/data/synthetic-n1000-seed0
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from secmlops import models
from secmlops.attacks.projected_gradient import AttackConfig, perturb
from secmlops.data.dataset import load_dataset
from secmlops.data.synthetic import generate_scenes
from secmlops.evaluation.attack_runs import map_under_transform
from secmlops.training.batches import PreparedSplit, prepare_split


def best_of(repeats: int, run: Callable[[], object]) -> tuple[float, object]:
    """Fastest wall time of `repeats` calls, and the last result."""
    times, result = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - started)
    return min(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="trained model directory (default: untrained)")
    parser.add_argument("--data", type=Path, help="dataset (default: 64 fresh synthetic scenes)")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--eps", type=float, default=4 / 255)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    with tempfile.TemporaryDirectory() as scratch:
        data = args.data or generate_scenes(Path(scratch) / "scenes", args.images, seed=11)
        dataset = load_dataset(data)
        records = (dataset.splits.get("test") and dataset.split("test")) or dataset.images
        records = records[: args.images]
        if args.model:
            model = models.load(args.model, device=device)
        else:
            model = models.build("compact_centernet", input_size=(240, 320)).to(device)
        model = model.to(memory_format=torch.channels_last).eval()
        prepared = prepare_split(dataset, records, tuple(model.input_size))

    images = prepared.images.float().div(255).to(device)
    targets = [
        {
            "boxes": b.to(device),
            "labels": torch.ones(len(b), dtype=torch.int64, device=device),
            "ignore": ig.to(device),
        }
        for b, ig in zip(prepared.boxes, prepared.ignore, strict=True)
    ]
    config = AttackConfig(method="pgd", eps=args.eps, steps=args.steps, random_start=False)

    def ours() -> torch.Tensor:
        batches = [
            perturb(
                model,
                images[i : i + args.batch_size],
                targets[i : i + args.batch_size],
                config,
            )
            for i in range(0, len(images), args.batch_size)
        ]
        if device.type == "cuda":
            torch.cuda.synchronize()
        return torch.cat(batches)

    from art.attacks.evasion import ProjectedGradientDescent
    from art.estimators.object_detection import PyTorchObjectDetector

    detector = PyTorchObjectDetector(
        model=model,
        input_shape=tuple(images.shape[1:]),
        clip_values=(0, 1),
        channels_first=True,
        attack_losses=models.loss_keys("compact_centernet"),
        device_type="gpu" if device.type == "cuda" else "cpu",
    )
    art_pgd = ProjectedGradientDescent(
        detector,
        norm=np.inf,
        eps=config.eps,
        eps_step=config.alpha,
        max_iter=config.steps,
        num_random_init=0,
        batch_size=args.batch_size,
        verbose=False,
    )
    x_numpy = images.cpu().numpy()
    y_numpy = [
        {"boxes": t["boxes"].cpu().numpy(), "labels": t["labels"].cpu().numpy()} for t in targets
    ]

    def art() -> np.ndarray:
        return art_pgd.generate(x_numpy, y=y_numpy)

    ours_seconds, ours_images = best_of(args.repeats, ours)
    art_seconds, art_images = best_of(args.repeats, art)
    n = len(images)
    print(
        f"PGD-{config.steps} L-inf eps {config.eps:.4f}, {n} images "
        f"{images.shape[-2]}x{images.shape[-1]}, batch {args.batch_size}, {device}, "
        f"torch threads {torch.get_num_threads()}"
    )
    print(f"{'':28s}{'seconds':>10s}{'images/s':>10s}")
    print(f"{'ART PGD.generate (baseline)':28s}{art_seconds:10.2f}{n / art_seconds:10.1f}")
    print(f"{'secmlops perturb':28s}{ours_seconds:10.2f}{n / ours_seconds:10.1f}")
    print(f"speed-up: {art_seconds / ours_seconds:.2f}x (goal >= 2x)")
    difference = np.abs(ours_images.cpu().numpy() - art_images).max()
    print(f"largest pixel difference between the two adversarial batches: {difference:.5f}")
    if args.model:
        print(
            f"robust mAP@0.5: ours {robust_map50(model, prepared, ours_images):.3f}, "
            f"ART {robust_map50(model, prepared, torch.from_numpy(art_images)):.3f}"
        )


def robust_map50(model: torch.nn.Module, prepared: PreparedSplit, images: torch.Tensor) -> float:
    """mAP@0.5 of `model` on (adversarial) input-size images of `prepared`."""
    return map_under_transform(model, prepared, 16, lambda _, window: images[window].cpu())["mAP50"]


if __name__ == "__main__":
    main()
