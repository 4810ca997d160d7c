"""Cost and benefit of the lifecycle controls: what each check costs and what it catches.

Each control runs for real on copies of the study's data and models (never on the originals),
against real tampering and real attacks:
- data verification: a signed manifest verified (time), then files tampered in `tamper_count`
  ways one at a time (edited, grown, deleted, added, annotations edited, manifest entry
  recomputed without re-signing), each restored after the check;
- poisoning screen: ART's BadDet object-disappearance and object-generation attacks poison the
  train split, the trigger-recurrence screen runs with the policy's threshold;
- signature verification at load: `verify_model` + load against a plain `models.load`, on
  `tamper_count` tampered copies of a signed release (weights edited, weights swapped with a
  consistent card, an inflated metric, a pickle dropped beside it, the signature removed,
  re-signed by an untrusted key);
- serving screening: the calibrated `Screener` against PGD uploads and clean traffic.
A control that is off catches nothing and costs nothing; its row says so with zeros, except
where the plain path still checks something (a plain load compares the weights with the card's
digest, so it does catch a careless edit). Latencies of the paths a request or a load takes
with and without a control are timed in turns (`resources.interleaved_latency`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from secmlops import models
from secmlops.attacks.backdoor import ATTACKS, poison_dataset
from secmlops.data.dataset import load_dataset
from secmlops.data.manifest import MANIFEST_NAME, manifest_bytes, sign_dataset, verify_dataset
from secmlops.data.poisoning import screen_dataset
from secmlops.errors import SecMLOpsError
from secmlops.serving.screening import Screener
from secmlops.supplychain.keys import Keyring, generate_keypair, load_private_key
from secmlops.supplychain.provenance import PROVENANCE_FILE, load_verified, sign_model
from secmlops.tradeoffs.resources import interleaved_latency, measured

DATA_TAMPERING = ("byte-edit", "append", "delete", "add-file", "annotations", "manifest-entry")
MODEL_TAMPERING = (
    "weights-byte", "weights-swap", "card-metric", "extra-pickle", "unsigned", "attacker-signed",
)  # fmt: skip
LOAD_REPEATS = 20


@dataclass
class ControlMeasurement:
    """Cost and benefit of one lifecycle control configuration; None where it does not apply."""

    pipeline_s: float
    peak_mem_mb: float
    detection_rate: float
    false_alarm_rate: float
    latency_p50_ms: float | None = None
    latency_p95_ms: float | None = None
    threat: str = ""


def off(threat: str) -> ControlMeasurement:
    """A control that does not run: no cost, no detection, no false alarm."""
    return ControlMeasurement(0.0, 0.0, 0.0, 0.0, threat=threat)


# ------------------------------------------------------------------------- data verification
def measure_data_verification(
    data_dir: Path, scratch: Path, tamper_count: int, repeats: int, seed: int
) -> ControlMeasurement:
    """Verification time of a signed copy of the data and its tamper detection rate.

    Args:
        data_dir: the dataset (copied, never modified).
        scratch: where the copy and a throw-away data-owner key go.
        tamper_count: tamperings, cycling through `DATA_TAMPERING`, each undone after its check.
        repeats: timed verifications of the untampered copy (their refusals are false alarms).
        seed: picks the tampered files and bytes.

    Raises:
        DataError: the data folder cannot be copied or signed.
    """
    copy = scratch / "data-verification"
    shutil.copytree(data_dir, copy, symlinks=True)
    private, public = generate_keypair(scratch / "keys", "study-data-owner")
    sign_dataset(copy, private)
    keyring = Keyring.from_paths([public])
    keyring = keyring.with_roles({"data_owner": keyring.ids})
    seconds, peaks, refused = [], [], 0
    for _ in range(repeats):
        with measured(torch.device("cpu")) as usage:
            refused += not _accepted(lambda: verify_dataset(copy, keyring))
        seconds.append(usage.seconds)
        peaks.append(usage.peak_mb)
    rng = np.random.default_rng(seed)
    images = sorted(p for p in (copy / "images").iterdir() if p.is_file())
    detected = 0
    for i in range(tamper_count):
        kind = DATA_TAMPERING[i % len(DATA_TAMPERING)]
        victim = images[int(rng.integers(len(images)))]
        restore = _tamper_data(copy, victim, kind, rng)
        try:
            detected += not _accepted(lambda: verify_dataset(copy, keyring))
        finally:
            restore()
    return ControlMeasurement(
        pipeline_s=float(np.median(seconds)),
        peak_mem_mb=float(max(peaks)),
        detection_rate=detected / tamper_count,
        false_alarm_rate=refused / repeats,
        threat=f"dataset tampering ({tamper_count} cases)",
    )


def _tamper_data(
    root: Path, victim: Path, kind: str, rng: np.random.Generator
) -> Callable[[], None]:
    """Apply one tampering to the dataset at `root`; return the function that undoes it."""
    target = root / "annotations.json" if kind == "annotations" else victim
    original = target.read_bytes()
    manifest = (root / MANIFEST_NAME).read_bytes()

    def restore() -> None:
        (root / "images" / "zz-extra.jpg").unlink(missing_ok=True)
        target.write_bytes(original)
        (root / MANIFEST_NAME).write_bytes(manifest)

    if kind in ("byte-edit", "manifest-entry"):
        edited = bytearray(original)
        edited[int(rng.integers(len(edited) // 4, len(edited)))] ^= 0x01  # past the headers
        target.write_bytes(bytes(edited))
        if kind == "manifest-entry":
            # The attacker also rewrites the file's manifest entry, but cannot re-sign it.
            entries = json.loads(manifest)
            relative = target.relative_to(root).as_posix()
            for entry in entries["files"]:
                if entry["path"] == relative:
                    entry["sha256"] = hashlib.sha256(bytes(edited)).hexdigest()
            (root / MANIFEST_NAME).write_bytes(manifest_bytes(entries))
    elif kind == "append":
        target.write_bytes(original + b"\x00" * 16)
    elif kind == "delete":
        target.unlink()
    elif kind == "add-file":
        (root / "images" / "zz-extra.jpg").write_bytes(original)
    else:  # annotations: one box moves by a pixel
        coco = json.loads(original)
        coco["annotations"][int(rng.integers(len(coco["annotations"])))]["bbox"][0] += 1
        target.write_text(json.dumps(coco))
    return restore


def _accepted(check: Callable[[], object]) -> bool:
    try:
        check()
    except SecMLOpsError:
        return False
    return True


# ---------------------------------------------------------------------------- poisoning screen
def measure_poisoning_screen(
    data_dir: Path,
    scratch: Path,
    fraction: float,
    trigger_side: int | None,
    threshold: float,
    seed: int,
) -> ControlMeasurement:
    """Share of BadDet-poisoned train images the screen flags, and of clean ones it flags.

    Both attacks (ODA, OGA) are pooled; the screen's time and memory are the larger of its two
    runs on the poisoned train splits.

    Args:
        data_dir: the clean dataset (poisoned copies are written to `scratch`).
        scratch: where the poisoned copies go (each removed after its screen).
        fraction: share of the train split poisoned by each attack.
        trigger_side: trigger side in pixels (None: BadDet's default for the image size).
        threshold: the policy's `poisoning_score_threshold`.
        seed: picks the poisoned images and ART's placements.

    Raises:
        DataError: too few eligible train images, or a trigger that does not fit.
    """
    poisoned_hits = poisoned_total = clean_hits = clean_total = 0
    seconds, peaks = [], []
    for attack in ATTACKS:
        root = scratch / f"poisoned-{attack}"
        ids = set(poison_dataset(data_dir, root, attack, fraction, trigger_side, seed))
        with measured(torch.device("cpu")) as usage:
            report = screen_dataset(root, "train", threshold=threshold)
        seconds.append(usage.seconds)
        peaks.append(usage.peak_mb)
        flagged = set(report.flagged_ids)
        train_ids = set(load_dataset(root).splits["train"])
        poisoned_hits += len(flagged & ids)
        poisoned_total += len(ids)
        clean_hits += len(flagged - ids)
        clean_total += len(train_ids - ids)
        shutil.rmtree(root)
    return ControlMeasurement(
        pipeline_s=float(max(seconds)),
        peak_mem_mb=float(max(peaks)),
        detection_rate=poisoned_hits / poisoned_total,
        false_alarm_rate=clean_hits / max(clean_total, 1),
        threat=f"BadDet ODA+OGA poisoning, {fraction:.0%} of train",
    )


# ---------------------------------------------------------------- signature verification at load
def measure_model_loading(
    model_dir: Path, scratch: Path, tamper_count: int, seed: int
) -> tuple[ControlMeasurement, ControlMeasurement]:
    """Plain `models.load` and `load_verified` on a signed release: latency and tamper catches.

    Args:
        model_dir: a trained model (copied and signed with a throw-away key).
        scratch: where the release, its tampered copies and the keys go.
        tamper_count: tampered copies, cycling through `MODEL_TAMPERING`.
        seed: picks the edited bytes and the swapped weights' scale.

    Returns:
        (plain load, verified load).
    """
    release = scratch / "release"
    shutil.copytree(model_dir, release, ignore=shutil.ignore_patterns("checkpoints"))
    private, public = generate_keypair(scratch / "keys", "study-model-signer")
    attacker, _ = generate_keypair(scratch / "keys", "study-attacker")
    sign_model(release, load_private_key(private))
    keyring = Keyring.from_paths([public])
    keyring = keyring.with_roles({"trainer": keyring.ids})
    loaders: dict[str, Callable[[Path], object]] = {
        "plain": lambda d: models.load(d),
        "verified": lambda d: load_verified(d, keyring),
    }
    rng = np.random.default_rng(seed)
    tampered = []
    for i in range(tamper_count):
        copy = scratch / f"tampered-{i}"
        shutil.copytree(release, copy)
        _tamper_model(copy, MODEL_TAMPERING[i % len(MODEL_TAMPERING)], rng, attacker)
        tampered.append(copy)
    latency = interleaved_latency(loaders, [release] * LOAD_REPEATS, torch.device("cpu"))
    results = []
    for name, load in loaders.items():
        refused = sum(not _accepted(partial(load, release)) for _ in range(3))
        with measured(torch.device("cpu")) as usage:
            load(release)
        detected = sum(not _accepted(partial(load, d)) for d in tampered)
        p50, p95 = latency[name]
        results.append(
            ControlMeasurement(
                pipeline_s=p50 / 1000,
                peak_mem_mb=usage.peak_mb,
                detection_rate=detected / tamper_count,
                false_alarm_rate=refused / 3,
                latency_p50_ms=p50,
                latency_p95_ms=p95,
                threat=f"model tampering ({tamper_count} cases)",
            )
        )
    return results[0], results[1]


def _tamper_model(release: Path, kind: str, rng: np.random.Generator, attacker_key: Path) -> None:
    """Tamper with a copy of a signed release in one of `MODEL_TAMPERING`'s ways."""
    weights = release / models.WEIGHTS_FILE
    if kind == "weights-byte":
        data = bytearray(weights.read_bytes())
        data[int(rng.integers(len(data) // 2, len(data)))] ^= 0x10  # in the tensor data
        weights.write_bytes(bytes(data))
    elif kind in ("weights-swap", "unsigned", "attacker-signed"):
        # The attacker's own weights, with a card that describes them: consistent to a plain load.
        model = models.load(release)
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.mul_(float(rng.uniform(0.9, 1.1)))
        card = models.read_card(release)
        models.save(
            model, release, metrics=card.metrics, training=card.training,
            operating_point=card.operating_point,
        )  # fmt: skip
        if kind == "unsigned":
            (release / PROVENANCE_FILE).unlink()
        elif kind == "attacker-signed":
            sign_model(release, load_private_key(attacker_key))
    elif kind == "card-metric":
        card = json.loads((release / models.CARD_FILE).read_text())
        card["metrics"]["val"] = {**card["metrics"].get("val", {}), "mAP50": 0.99}
        (release / models.CARD_FILE).write_text(json.dumps(card, indent=2))
    else:  # extra-pickle: a payload beside the weights, for any loader that globs for files
        (release / "evil.pt").write_bytes(b"\x80\x04\x95" + os.urandom(32))


# ------------------------------------------------------------------------- serving screening
def measure_screening(
    model: torch.nn.Module,
    calibration: Tensor,
    clean: Tensor,
    attacked: Tensor,
    escalation_rate: float,
    eps: float,
    device: torch.device,
    threat: str,
) -> tuple[ControlMeasurement, Screener]:
    """Calibrate a `Screener` on clean images, then measure its alarm rates.

    Args:
        model: the detector screened (eval mode, on `device`).
        calibration: clean images the thresholds are measured on, never judged on.
        clean: clean evaluation images (false alarms).
        attacked: the same images attacked (alarm rate), uint8-rounded like uploads.
        escalation_rate: the cascade's escalation rate (0: uncertainty alone).
        eps: the threat model's L-inf budget.
        device: where the model runs.
        threat: what the detection rate is measured against.

    Returns:
        The measurement (latency left to the caller, who times every serving path together)
        and the calibrated screener.
    """
    with measured(device) as usage:
        screener = Screener.calibrate(
            model, calibration.to(device), escalation_rate=escalation_rate, eps=eps
        )
    measurement = ControlMeasurement(
        pipeline_s=usage.seconds,
        peak_mem_mb=usage.peak_mb,
        detection_rate=_flagged(screener, attacked, device),
        false_alarm_rate=_flagged(screener, clean, device),
        threat=threat,
    )
    return measurement, screener


def _flagged(screener: Screener, images: Tensor, device: torch.device, batch: int = 16) -> float:
    flags = [
        screener(images[i : i + batch].to(device)).flagged.cpu()
        for i in range(0, len(images), batch)
    ]
    return float(torch.cat(flags).float().mean())
