"""Adversarial-input screening for the serving stage: which score, how well, at what cost.

For each model (by default the undefended `clean` and the FGSM-RS-trained `fgsm4` of /tmp/exp)
the script attacks the test split with our white-box PGD (L-inf, eps 4/255, 10 steps, random
start; images rounded to uint8 as a PNG upload would be), then scores clean and attacked images
with every candidate:
- feature squeezing (Xu, Evans, Qi, 2018, arXiv:1704.01155): heatmap L1 between the image and a
  squeezed copy (5-bit depth, 2x2 median, 3x3 median, the joint max of bit depth and 2x2), also
  on maps rendered from the returned detections only (any torchvision-contract model);
- input statistics with no extra forward: 3x3-median residual energy, diagonal (HH) detail;
- statistics of the forward pass itself: heatmap uncertainty (mean binary entropy), heatmap
  mass, mid-confidence peaks, and the entropy of the returned detection scores;
- the chosen design, `secmlops.serving.screening.Screener`: uncertainty on every image, the 2x2
  squeeze check on the suspicious ones (escalation rate 30%, and 50% for comparison).

It prints ROC-AUC on the test split (clean vs PGD), the detection rate at a threshold set on
clean val images for a 5% false-alarm rate, the false-alarm rate at that threshold on clean test
images under ImageNet-C corruptions (`secmlops.evaluation.corruptions`), the p50 ms per image
of each candidate at batch 1 against the bare forward, and a whole request (PNG decode, forward,
screening, log line) against the bare forward and against the same request without screening.
Every threshold comes from clean val images (no attacked image is used for tuning); every
reported number from test.

    OMP_NUM_THREADS=1 python benchmarks/adversarial_screening.py
    python benchmarks/adversarial_screening.py --model clean=runs/clean --model pgd=runs/pgd
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from sklearn.metrics import roc_auc_score
from torch import Tensor, nn

from secmlops import models
from secmlops.attacks.projected_gradient import AttackConfig, perturb
from secmlops.data.dataset import load_dataset
from secmlops.evaluation.corruptions import CORRUPTIONS, corrupt
from secmlops.serving.screening import (
    Screener,
    adversarial_score,
    detect_and_score,
    high_frequency_energy,
    median_smooth,
    render_detections,
    score_maps,
    squeeze_disagreement,
    uncertainty,
)
from secmlops.training.batches import PreparedSplit, prepare_split

SEVERITIES = (1, 3)
FALSE_ALARM_RATE = 0.05
ESCALATION_RATES = (0.3, 0.5)


class ContractOnly(nn.Module):
    """Hides the detector's type, so the screen must use the detections-only (generic) path."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.input_size = model.input_size

    def forward(self, images: Tensor) -> list[dict[str, Tensor]]:
        return self.model(images)


# ------------------------------------------------------------------------------- squeezers
def bit_depth(images: Tensor, bits: int = 5) -> Tensor:
    """Xu et al.'s colour-depth reduction to `bits` bits per channel."""
    levels = 2**bits - 1
    return torch.round(images * levels) / levels


# Paeth's 19-exchange median-of-9 network (Graphics Gems, 1990): min/max of whole shifted
# images, five times faster on a CPU than sorting the 9 neighbours of every pixel.
_MEDIAN9 = (
    (1, 2), (4, 5), (7, 8), (0, 1), (3, 4), (6, 7), (1, 2), (4, 5), (7, 8), (0, 3),
    (5, 8), (4, 7), (3, 6), (1, 4), (2, 5), (4, 7), (4, 2), (6, 4), (4, 2),
)  # fmt: skip


def median3(images: Tensor) -> Tensor:
    """3x3 median filter (edges reflected)."""
    padded = F.pad(images, (1, 1, 1, 1), mode="reflect")
    h, w = images.shape[-2:]
    p = [padded[..., i : i + h, j : j + w] for i in range(3) for j in range(3)]
    for a, b in _MEDIAN9:
        p[a], p[b] = torch.minimum(p[a], p[b]), torch.maximum(p[a], p[b])
    return p[4]


def quantize(images: Tensor) -> Tensor:
    """Round to 8 bits: what survives a PNG upload."""
    return (images * 255).round_().clamp_(0, 255) / 255


# ------------------------------------------------------------------------- shared forwards
@dataclass
class Bundle:
    """Everything the candidates read about one set of images, from shared forward passes."""

    maps: Tensor
    detection_maps: Tensor
    squeezed: dict[str, Tensor]
    squeezed_detection_maps: Tensor
    residual: Tensor
    high_frequency: Tensor


def bundle(model: nn.Module, images: Tensor, batch_size: int) -> Bundle:
    """Forward passes of the images and of each squeezed copy, batch by batch."""
    parts: dict[str, list[Tensor]] = {}
    grid = (model.input_size[0] // 4, model.input_size[1] // 4)
    sizes = [tuple(images.shape[-2:])] * batch_size
    squeezers = ("bit5", "median2", "median3")

    def add(key: str, value: Tensor) -> None:
        parts.setdefault(key, []).append(value)

    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            x = images[start : start + batch_size]
            detections, maps = score_maps(model, x)
            add("maps", maps)
            add("detection_maps", render_detections(detections, sizes[: len(x)], grid))
            smoothed = median3(x)
            squeezed = {"bit5": bit_depth(x), "median2": median_smooth(x), "median3": smoothed}
            for name in squeezers:
                squeezed_detections, squeezed_maps = score_maps(model, squeezed[name])
                add(name, squeezed_maps)
                if name == "median2":
                    rendered = render_detections(squeezed_detections, sizes[: len(x)], grid)
                    add("squeezed_detection_maps", rendered)
            add("residual", (x - smoothed).abs().flatten(1).mean(1))
            add("high_frequency", high_frequency_energy(x))
    cat = {key: torch.cat(value) for key, value in parts.items()}
    return Bundle(
        maps=cat["maps"],
        detection_maps=cat["detection_maps"],
        squeezed={name: cat[name] for name in squeezers},
        squeezed_detection_maps=cat["squeezed_detection_maps"],
        residual=cat["residual"],
        high_frequency=cat["high_frequency"],
    )


def mid_confidence_peaks(maps: Tensor) -> Tensor:
    """Local maxima with probability in (0.05, 0.3): half-hearted detections."""
    peaks = maps == F.max_pool2d(maps, 3, stride=1, padding=1)
    return (peaks & (maps > 0.05) & (maps < 0.3)).flatten(1).sum(1).float()


# (group, extra forwards per image, score from a bundle)
CANDIDATES: dict[str, tuple[str, int, Callable[[Bundle], Tensor]]] = {
    "residual |x-med3(x)|": ("input", 0, lambda b: b.residual),
    "HH detail energy": ("input", 0, lambda b: b.high_frequency),
    "heatmap uncertainty": ("activation", 0, lambda b: uncertainty(b.maps)),
    "heatmap mass": ("activation", 0, lambda b: b.maps.flatten(1).sum(1)),
    "mid-confidence peaks": ("activation", 0, lambda b: mid_confidence_peaks(b.maps)),
    "det-score entropy*": ("activation", 0, lambda b: uncertainty(b.detection_maps)),
    "FS bit depth 5": ("squeeze", 1, lambda b: squeeze_disagreement(b.maps, b.squeezed["bit5"])),
    "FS median 2x2": ("squeeze", 1, lambda b: squeeze_disagreement(b.maps, b.squeezed["median2"])),
    "FS median 3x3": ("squeeze", 1, lambda b: squeeze_disagreement(b.maps, b.squeezed["median3"])),
    "FS joint bit5+med2": (
        "squeeze",
        2,
        lambda b: torch.maximum(
            squeeze_disagreement(b.maps, b.squeezed["bit5"]),
            squeeze_disagreement(b.maps, b.squeezed["median2"]),
        ),
    ),
    "FS median 2x2*": (
        "squeeze",
        1,
        lambda b: squeeze_disagreement(b.detection_maps, b.squeezed_detection_maps),
    ),
}


# ------------------------------------------------------------------------------------ data
def attacked(
    model: nn.Module, prepared: PreparedSplit, eps: float, steps: int, batch_size: int, seed: int
) -> Tensor:
    """PGD images of the whole split (uint8-rounded), attacking each image's true boxes."""
    config = AttackConfig(method="pgd", eps=eps, steps=steps)
    generator = torch.Generator().manual_seed(seed)
    out = []
    for start in range(0, len(prepared), batch_size):
        window = slice(start, start + batch_size)
        targets = [
            {"boxes": boxes, "labels": torch.ones(len(boxes), dtype=torch.int64), "ignore": ignore}
            for boxes, ignore in zip(prepared.boxes[window], prepared.ignore[window], strict=True)
        ]
        images = prepared.images[window].float() / 255
        out.append(quantize(perturb(model, images, targets, config, generator=generator)))
    return torch.cat(out)


def corrupted_sets(clean: Tensor) -> dict[str, Tensor]:
    """Every corruption at every severity in `SEVERITIES`, uint8-rounded, seeded."""
    sets = {}
    for name in CORRUPTIONS:
        for severity in SEVERITIES:
            generator = torch.Generator().manual_seed(severity)
            sets[f"{name}{severity}"] = quantize(corrupt(name, clean, severity, generator))
    return sets


# ----------------------------------------------------------------------------- evaluation
def evaluate(
    model: nn.Module,
    val_clean: Tensor,
    test_clean: Tensor,
    test_attacked: Tensor,
    corrupted: dict[str, Tensor],
    batch_size: int,
) -> dict[str, dict[str, Any]]:
    """AUC, detection rate and false alarms of every candidate and of the Screener."""
    bundles = {
        "val": bundle(model, val_clean, batch_size),
        "clean": bundle(model, test_clean, batch_size),
        "pgd": bundle(model, test_attacked, batch_size),
        **{name: bundle(model, images, batch_size) for name, images in corrupted.items()},
    }
    labels = np.r_[np.zeros(len(test_clean)), np.ones(len(test_attacked))]
    results = {}
    for name, (_, _, score) in CANDIDATES.items():
        scores = {key: score(b).cpu().numpy() for key, b in bundles.items()}
        threshold = np.quantile(scores["val"], 1 - FALSE_ALARM_RATE)
        results[name] = {
            "auc": roc_auc_score(labels, np.r_[scores["clean"], scores["pgd"]]),
            "tpr": float(np.mean(scores["pgd"] > threshold)),
            "false_alarms": {
                key: float(np.mean(scores[key] > threshold)) for key in ["clean", *corrupted]
            },
        }
    for rate in ESCALATION_RATES:
        screener = Screener.calibrate(
            model, val_clean, false_alarm_rate=FALSE_ALARM_RATE, escalation_rate=rate
        )
        screened = {
            key: _screen(screener, images, batch_size)
            for key, images in {"clean": test_clean, "pgd": test_attacked, **corrupted}.items()
        }
        scores = {key: s["score"].numpy() for key, s in screened.items()}
        results[f"Screener esc {rate:.0%}"] = {
            "auc": roc_auc_score(labels, np.r_[scores["clean"], scores["pgd"]]),
            "tpr": float(screened["pgd"]["flagged"].float().mean()),
            "false_alarms": {key: float((scores[key] > 1).mean()) for key in ["clean", *corrupted]},
            "flagged_not_degraded": {
                key: float(screened[key]["flagged"].float().mean()) for key in ["clean", *corrupted]
            },
            "escalated_clean": float(screened["clean"]["escalated"].float().mean()),
            "calibration": screener.calibration.to_json(),
        }
    return results


def _screen(screener: Screener, images: Tensor, batch_size: int) -> dict[str, Tensor]:
    parts = [screener(images[s : s + batch_size]) for s in range(0, len(images), batch_size)]
    return {
        "score": torch.cat([p.score for p in parts]).cpu(),
        "flagged": torch.cat([p.flagged for p in parts]).cpu(),
        "escalated": torch.cat([p.escalated for p in parts]).cpu(),
    }


# --------------------------------------------------------------------------------- timing
def interleaved_ms(
    runs: dict[str, Callable[[int], object]], calls: int
) -> dict[str, tuple[float, float]]:
    """p50 and p90 milliseconds of each run, called round-robin with image index 0, 1, 2...

    Round-robin rather than one run after another: the CPU is shared, and a load change then
    slows every run alike instead of whichever happened to be measured at the time.
    """
    for i in range(3):
        for run in runs.values():
            run(i)
    times: dict[str, list[float]] = {name: [] for name in runs}
    for i in range(calls):
        for name, run in runs.items():
            started = time.perf_counter()
            run(i)
            times[name].append((time.perf_counter() - started) * 1000)
    out = {}
    for name, values in times.items():
        values.sort()
        out[name] = (statistics.median(values), values[int(0.9 * (len(values) - 1))])
    return out


def timings(
    model: nn.Module, screener: Screener, clean: Tensor, pgd: Tensor, calls: int
) -> dict[str, tuple[float, float]]:
    """Batch-1 latency of the bare forward, each candidate, and a whole request."""
    contract = ContractOnly(model).eval()

    def on(stream: Tensor, run: Callable[[Tensor], object]) -> Callable[[int], object]:
        return lambda i: run(stream[i % len(stream)].unsqueeze(0))

    def squeeze_batched(*squeezers: Callable[[Tensor], Tensor]) -> Callable[[Tensor], object]:
        return lambda x: score_maps(model, torch.cat([x, *(squeeze(x) for squeeze in squeezers)]))

    def squeeze_sequential(x: Tensor) -> object:
        return score_maps(model, x), score_maps(model, median_smooth(x))

    candidates: dict[str, Callable[[Tensor], object]] = {
        "bare forward": model,
        "residual |x-med3(x)|": lambda x: (model(x), (x - median3(x)).abs().mean()),
        "HH detail energy": lambda x: (model(x), high_frequency_energy(x)),
        "heatmap uncertainty": lambda x: detect_and_score(model, x),
        "heatmap mass": lambda x: score_maps(model, x)[1].sum(),
        "mid-confidence peaks": lambda x: mid_confidence_peaks(score_maps(model, x)[1]),
        "det-score entropy*": lambda x: adversarial_score(contract, x),
        "FS bit depth 5": squeeze_batched(bit_depth),
        "FS median 2x2": lambda x: adversarial_score(model, x, "squeeze"),
        "FS median 2x2, 2 forwards": squeeze_sequential,
        "FS median 3x3": squeeze_batched(median3),
        "FS joint bit5+med2": squeeze_batched(bit_depth, median_smooth),
        "FS median 2x2*": lambda x: adversarial_score(contract, x, "squeeze"),
        "Screener (clean traffic)": screener,
    }
    runs = {name: on(clean, run) for name, run in candidates.items()}
    runs["Screener (PGD traffic)"] = on(pgd, screener)
    with torch.inference_mode():
        return interleaved_ms({**runs, **request_runs(model, screener, clean)}, calls)


def request_runs(
    model: nn.Module, screener: Screener, clean: Tensor
) -> dict[str, Callable[[int], object]]:
    """A whole request as the service runs it: PNG decode, detect (+ screen), a JSON log line."""
    pngs = []
    for image in clean:
        buffer = io.BytesIO()
        pixels = (image * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        Image.fromarray(pixels).save(buffer, format="PNG")
        pngs.append(buffer.getvalue())
    # An in-memory log: the file system's latency is not the screen's, and varies by machine.
    log = io.StringIO()

    def decode(i: int) -> Tensor:
        with Image.open(io.BytesIO(pngs[i % len(pngs)])) as probe:
            rgb = probe.convert("RGB")
        array = torch.frombuffer(bytearray(rgb.tobytes()), dtype=torch.uint8)
        # contiguous(): the permuted HWC view makes this CPU's forward ~2.5 ms slower (oneDNN
        # takes a slow path on its odd batch stride), more than the whole screen costs.
        return array.view(rgb.height, rgb.width, 3).permute(2, 0, 1).contiguous().float().div_(255)

    def write(detections: dict[str, Tensor], **extra: Any) -> None:
        keep = detections["scores"] >= 0.3  # what the service returns
        people = [
            {"box": [round(v, 1) for v in box], "score": round(s, 4)}
            for box, s in zip(
                detections["boxes"][keep].tolist(), detections["scores"][keep].tolist(), strict=True
            )
        ]
        log.seek(0)  # keep the buffer small; the cost measured is encoding and writing
        log.write(json.dumps({"detections": people, **extra}) + "\n")

    def screened_request(i: int) -> None:
        screening = screener(decode(i).unsqueeze(0))
        write(
            screening.detections[0],
            adversarial_score=float(screening.score[0]),
            flagged=bool(screening.flagged[0]),
            escalated=bool(screening.escalated[0]),
            degraded=bool(screening.degraded[0]),
        )

    return {
        "PNG decode": decode,
        "request: decode+forward+log": lambda i: write(model(decode(i).unsqueeze(0))[0]),
        "request: decode+Screener+log": screened_request,
    }


# ---------------------------------------------------------------------------------- report
def print_quality(results: dict[str, dict[str, dict[str, Any]]]) -> None:
    """ROC-AUC and detection rate per candidate and model."""
    names = list(results)
    rate = f"{FALSE_ALARM_RATE:.0%}"
    print(f"\nROC-AUC clean vs PGD (test) | detection rate at {rate} false alarms on clean val")
    header = f"{'candidate':26s} {'group':10s} {'+fwd':>4s}"
    for name in names:
        header += f" {'AUC ' + name:>12s} {'TPR ' + name:>11s}"
    print(header)
    for candidate in next(iter(results.values())):
        group, forwards = CANDIDATES.get(candidate, ("cascade", None))[:2]
        extra = "<=1" if forwards is None else str(forwards)
        line = f"{candidate:26s} {group:10s} {extra:>4s}"
        for name in names:
            row = results[name][candidate]
            line += f" {row['auc']:12.3f} {row['tpr']:11.2f}"
        print(line)
    print("* detections-only path (any torchvision-contract detector)")


def print_false_alarms(results: dict[str, dict[str, Any]], model: str) -> None:
    """False-alarm rate at the val-calibrated threshold on clean and corrupted test images."""
    sets = list(next(iter(results.values()))["false_alarms"])
    print(f"\nfalse alarms, model {model} (threshold: {FALSE_ALARM_RATE:.0%} on clean val)")
    print(f"{'candidate':26s}" + "".join(f" {_short(s):>8s}" for s in sets))
    for candidate, row in results.items():
        print(f"{candidate:26s}" + "".join(f" {row['false_alarms'][s]:8.2f}" for s in sets))
        if "flagged_not_degraded" in row:
            label = "  ...flagged, not degraded"
            print(f"{label:26s}" + "".join(f" {row['flagged_not_degraded'][s]:8.2f}" for s in sets))
            print(f"  ...share of clean escalated: {row['escalated_clean']:.2f}")


def _short(name: str) -> str:
    short = {"gaussian_noise": "noise", "gaussian_blur": "blur", "brightness": "bright"}
    for long, abbreviation in short.items():
        name = name.replace(long, abbreviation)
    return name


def print_timings(times: dict[str, tuple[float, float]]) -> None:
    """ms per image at batch 1, against the bare forward."""
    bare = times["bare forward"][0]
    print("\nlatency per image, batch 1, one CPU thread")
    print(f"{'what':30s} {'p50 ms':>8s} {'p90 ms':>8s} {'p50 / forward':>14s}")
    for name, (p50, p90) in times.items():
        print(f"{name:30s} {p50:8.2f} {p90:8.2f} {p50 / bare:14.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", action="append", metavar="NAME=DIR",
        help="model to screen for (repeatable; default: clean and fgsm4 of /tmp/exp)",
    )  # fmt: skip
    parser.add_argument("--data", type=Path, default=Path("/tmp/exp/data/synthetic-n1000-seed0"))
    parser.add_argument("--eps", type=float, default=4 / 255)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=20)
    parser.add_argument("--calls", type=int, default=60, help="timed calls per candidate")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    specs = args.model or ["clean=/tmp/exp/clean", "fgsm4=/tmp/exp/fgsm4"]
    torch.manual_seed(0)

    dataset = load_dataset(args.data)
    results: dict[str, dict[str, dict[str, Any]]] = {}
    times = {}
    for spec in specs:
        name, _, directory = spec.partition("=")
        model = models.load(Path(directory)).eval()
        size = tuple(model.input_size)
        val = prepare_split(dataset, dataset.split("val"), size, threads=1)
        test = prepare_split(dataset, dataset.split("test"), size, threads=1)
        started = time.perf_counter()
        test_pgd = attacked(model, test, args.eps, args.steps, args.batch_size, seed=1)
        print(f"[{name}] PGD on {len(test)} test images: {time.perf_counter() - started:.0f} s")
        val_clean, test_clean = val.images.float() / 255, test.images.float() / 255
        results[name] = evaluate(
            model, val_clean, test_clean, test_pgd, corrupted_sets(test_clean), args.batch_size
        )
        if not times:  # same architecture and input size: one model's timings stand for all
            screener = Screener.calibrate(model, val_clean, escalation_rate=ESCALATION_RATES[0])
            times = timings(model, screener, test_clean, test_pgd, args.calls)

    print_quality(results)
    for name, rows in results.items():
        print_false_alarms(rows, name)
    print_timings(times)
    if args.json:
        payload = {"results": results, "timings_ms": times, "eps": args.eps, "steps": args.steps}
        args.json.write_text(json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
