"""The security/performance trade-off study: every control's cost and benefit, one table.

`run_study` trains and attacks every model configuration and exercises every lifecycle control
on the same data, in one process on one machine, so the figures compare; `train_into_cache` lets
further processes (one core or GPU each) train some of its models into a shared cache meanwhile.
Its outputs are staged in a temporary sibling of `out_dir` and renamed into place only when all
of them are written: a reader (the Airflow plugin) sees a complete study or none. Scratch material
(trained models, signed and tampered copies, poisoned datasets) lives in a temporary folder that
is always removed.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from secmlops import models
from secmlops.data.dataset import DetectionDataset, load_dataset
from secmlops.errors import DataError
from secmlops.evaluation.inference import select_split
from secmlops.fsutil import staged_directory
from secmlops.policy import Policy, load_policy, policy_digest
from secmlops.serving.screening import DEFAULT_FALSE_ALARM_RATE
from secmlops.tradeoffs import measure_controls as controls
from secmlops.tradeoffs import outputs as reporting
from secmlops.tradeoffs.cache import StudyCache
from secmlops.tradeoffs.configurations import (
    ControlConfiguration,
    InputPreprocessing,
    ModelConfiguration,
    StudyGrid,
    TrainingDefence,
    full_grid,
    quick_grid,
)
from secmlops.tradeoffs.measure_models import (
    ModelMeasurement,
    TrainedModel,
    craft_attack,
    detector,
    evaluate_configuration,
    train_configuration,
)
from secmlops.tradeoffs.report import Row
from secmlops.tradeoffs.resources import interleaved_latency, memory_method
from secmlops.training.batches import PreparedSplit, prepare_split
from secmlops.training.trainer import pick_device

Progress = Callable[[str], None]
# The variable the CLI reads the policy path from, so a study and a gate use the same file.


@dataclass(frozen=True)
class StudyResult:
    """A finished study.

    Attributes:
        out_dir: the folder holding every output (`reporting.OUTPUT_FILES`).
        rows: the table, one row per configuration.
        pareto_front: ids of the model configurations on the Pareto front.
        main_attack: the attack the front is drawn for.
        seconds: wall time of the whole study.
    """

    out_dir: Path
    rows: list[Row]
    pareto_front: list[str]
    main_attack: str
    seconds: float


def default_out_dir(tradeoffs_dir: Path) -> Path:
    """`<tradeoffs_dir>/<UTC timestamp>`: `Settings.tradeoffs_dir` is where the Airflow view
    lists studies."""
    return tradeoffs_dir / dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")


def run_study(
    data_dir: Path,
    out_dir: Path,
    quick: bool = False,
    *,
    eval_data: Path | None = None,
    eval_split: str = "test",
    policy_path: Path,
    seed: int = 0,
    device: str = "auto",
    grid: StudyGrid | None = None,
    command: str | None = None,
    overwrite: bool = False,
    cache_dir: Path | None = None,
    progress: Progress | None = None,
) -> StudyResult:
    """Measure the cost and benefit of every configuration and write the study into `out_dir`.

    Args:
        data_dir: the dataset models are trained on (train and val splits), whose copies are
            signed, tampered with and poisoned for the data controls.
        out_dir: the study folder to create (tradeoffs.csv, tradeoffs.md, report.html, the two
            PNG plots, study.json).
        quick: the CI grid (`quick_grid`) instead of the published one (`full_grid`).
        eval_data: the dataset models are evaluated on (default: `data_dir`).
        eval_split: its split (train, val, test or all).
        policy_path: the policy whose attack suite (eps levels, PGD steps) and poisoning
            threshold the study uses.
        seed: seeds training, tampering and poisoning.
        device: auto, cpu, cuda or cuda:N.
        grid: the configurations to measure (default: from `quick` and the policy).
        command: the command line recorded in study.json (default: the `run_study` call).
        overwrite: replace an existing non-empty `out_dir` (only once the new study is complete).
        cache_dir: keep trained models and finished model measurements here, and reuse those
            a previous run with the same settings left (see `secmlops.tradeoffs.cache`).
        progress: called with a line before each step.

    Returns:
        The study's table, Pareto front and wall time.

    Raises:
        DataError: a dataset is missing or invalid, the split is empty, or `cache_dir` holds
            another study's cache.
        ModelError: a model cannot be trained or loaded, or the device is unavailable.
        PolicyError: the policy is missing or invalid.
        FileExistsError: `out_dir` exists and is not empty, without `overwrite`.
    """
    started, started_at = time.perf_counter(), _now()
    say = progress or (lambda _: None)
    setup = _StudySetup.load(
        data_dir, quick, eval_data, eval_split, policy_path, seed, device, grid
    )
    policy_file, policy, grid = setup.policy_file, setup.policy, setup.grid
    torch_device, dataset, evaluation = setup.device, setup.dataset, setup.evaluation
    eval_root, records = setup.eval_root, setup.records
    load_start = os.getloadavg()
    out_dir = Path(out_dir)
    with (
        staged_directory(out_dir, overwrite=overwrite) as staging,
        tempfile.TemporaryDirectory(prefix="secmlops-tradeoffs-") as tmp,
    ):
        scratch = Path(tmp)
        cache = StudyCache(Path(cache_dir) if cache_dir else None, scratch, setup.settings())
        study = _Study(grid, dataset, Path(data_dir), evaluation, records, torch_device, say, cache)
        study.warm_up(scratch)
        rows = study.measure_models() + study.measure_controls(scratch, policy)
        study.time_requests(rows)
        front = reporting.mark_pareto(rows, grid.budget.main_attack)
        seconds = time.perf_counter() - started
        meta = {
            "schema": reporting.SCHEMA,
            "command": command or f"run_study({str(data_dir)!r}, {str(out_dir)!r}, quick={quick})",
            "started_at": started_at,
            "finished_at": _now(),
            "seconds": round(seconds, 1),
            "grid": grid.to_json(),
            "data": reporting.describe_dataset(Path(data_dir), dataset, "train"),
            "evaluation": {
                **reporting.describe_dataset(eval_root, evaluation, eval_split),
                "images": len(records),
            },
            "policy": {"path": str(policy_file), "digest": policy_digest(policy)},
            "device": str(torch_device),
            "memory_method": memory_method(torch_device),
            "load_average": {"start": list(load_start), "end": list(os.getloadavg())},
            "hardware": reporting.hardware(torch_device),
            "versions": reporting.versions(),
            "trained_models": study.training_summary(),
            "main_attack": grid.budget.main_attack,
            "pareto_front": front,
            "reused_from_cache": {
                "dir": str(cache_dir) if cache_dir else None,
                "units": cache.reused,
            },
        }
        reporting.write_outputs(staging, rows, grid, meta)
    return StudyResult(out_dir, rows, front, grid.budget.main_attack, seconds)


def train_into_cache(
    data_dir: Path,
    cache_dir: Path,
    config_ids: list[str],
    quick: bool = False,
    *,
    eval_data: Path | None = None,
    eval_split: str = "test",
    policy_path: Path,
    seed: int = 0,
    device: str = "auto",
    grid: StudyGrid | None = None,
    progress: Progress | None = None,
) -> list[TrainedModel]:
    """Train some of a study's models into its cache and stop: another process (or machine
    sharing the folder) can run the study meanwhile and reuse them, so two cores or two GPUs
    train at once. Every argument but `config_ids` must be what the study itself is given, or
    the cache's settings check refuses the folder.

    Args:
        config_ids: ids of model configurations whose models to train, in this order
            (a preprocessing configuration trains the model it runs on).

    Returns:
        The trained (or already cached) models.

    Raises:
        DataError: an unknown configuration id, or see `run_study`.
    """
    say = progress or (lambda _: None)
    setup = _StudySetup.load(
        data_dir, quick, eval_data, eval_split, policy_path, seed, device, grid
    )
    by_id = {config.id: config for config in setup.grid.models}
    unknown = [config_id for config_id in config_ids if config_id not in by_id]
    if unknown:
        raise DataError(
            f"unknown configuration {', '.join(unknown)}; the {setup.grid.name} grid has "
            f"{', '.join(by_id)}"
        )
    with tempfile.TemporaryDirectory(prefix="secmlops-tradeoffs-") as tmp:
        scratch = Path(tmp)
        cache = StudyCache(Path(cache_dir), scratch, setup.settings())
        study = _Study(
            setup.grid, setup.dataset, Path(data_dir), setup.evaluation, setup.records,
            setup.device, say, cache,
        )  # fmt: skip
        # The same warm-up as the study, so the first training's peak memory compares.
        study.warm_up(scratch)
        return [study.train_model(by_id[config_id]) for config_id in config_ids]


@dataclass(frozen=True)
class _StudySetup:
    """What a study's figures depend on, loaded and checked once."""

    policy_file: Path
    policy: Policy
    grid: StudyGrid
    device: torch.device
    data_dir: Path
    dataset: DetectionDataset
    eval_root: Path
    eval_split: str
    evaluation: DetectionDataset
    records: list[Any]

    @classmethod
    def load(
        cls,
        data_dir: Path,
        quick: bool,
        eval_data: Path | None,
        eval_split: str,
        policy_path: Path,
        seed: int,
        device: str,
        grid: StudyGrid | None,
    ) -> _StudySetup:
        policy_file = Path(policy_path)
        policy = load_policy(policy_file)
        grid = grid or (quick_grid if quick else full_grid)(policy.gate, seed)
        torch_device = pick_device(device)
        dataset = load_dataset(data_dir)
        eval_root = Path(eval_data or data_dir)
        evaluation = load_dataset(eval_root)
        records = select_split(evaluation, eval_split)[: grid.budget.eval_images]
        if not records:
            raise DataError(f"{eval_root}: split {eval_split!r} has no images to evaluate on")
        return cls(
            policy_file, policy, grid, torch_device, Path(data_dir), dataset, eval_root,
            eval_split, evaluation, records,
        )  # fmt: skip

    def settings(self) -> dict[str, Any]:
        """The cache key: a cache made under other settings is refused."""
        return {
            "grid": self.grid.to_json(), "data": str(self.data_dir.resolve()),
            "evaluation": [str(self.eval_root.resolve()), self.eval_split],
            "device": str(self.device), "policy": policy_digest(self.policy),
        }  # fmt: skip


class _Study:
    """The measurement state of one study: trained models, prepared images, attacked images."""

    def __init__(
        self,
        grid: StudyGrid,
        dataset: DetectionDataset,
        data_dir: Path,
        evaluation: DetectionDataset,
        records: list[Any],
        device: torch.device,
        say: Progress,
        cache: StudyCache,
    ) -> None:
        self.grid, self.budget = grid, grid.budget
        self.dataset, self.data_dir = dataset, data_dir
        self.evaluation, self.records = evaluation, records
        self.device, self.say = device, say
        self.trained: dict[TrainingDefence, TrainedModel] = {}
        self._prepared: dict[tuple[int, int], PreparedSplit] = {}
        # Row id -> (what serving runs for one image, the input size it gets): timed together.
        self._requests: dict[str, tuple[Callable[[Tensor], Any], tuple[int, int]]] = {}
        self.cache = cache
        # Attacked uploads per model, and calibration images per input size: several screening
        # configurations screen the same model, and a PGD pass over the split takes minutes.
        self._attacked: dict[str, Tensor] = {}
        self._calibration: dict[tuple[int, int], Tensor] = {}

    def warm_up(self, scratch: Path) -> None:
        """One epoch of PGD-1 training and an attacked, JPEG-defended evaluation of two images,
        thrown away. The first step of a fresh process pays one-time costs (library code paged
        in, thread pools, lazy imports) that would otherwise land on whichever configuration
        happens to be measured first, most visibly in its peak memory."""
        self.say("warm-up (discarded): one training epoch, one attacked evaluation")
        config = ModelConfiguration(
            "warm-up", "input_preprocessing", TrainingDefence("pgd", 4, 1),
            InputPreprocessing("jpeg"),
        )  # fmt: skip
        budget = replace(self.budget, epochs=1, eval_images=2, restarts=1, person_patch_steps=1)
        trained = train_configuration(
            config, self.data_dir, scratch / "warm-up", budget, self.grid.seed, self.device
        )
        size = self._input_size(trained.model_dir)
        prepared = prepare_split(self.evaluation, self.records[:2], size)
        evaluate_configuration(config, trained, prepared, budget, self.device)
        shutil.rmtree(scratch / "warm-up")

    # ------------------------------------------------------------------------------- models
    def measure_models(self) -> list[Row]:
        """Train (or reuse) every model and evaluate every model configuration, in grid order."""
        rows = []
        for config in self.grid.models:
            trained = self.train_model(config)
            self.say(f"evaluate {config.id} ({config.params()})")
            torch.manual_seed(self.grid.seed)
            measurement = self.cache.measurement(config.id)
            if measurement is None:
                measurement = evaluate_configuration(
                    config, trained, self.prepared(trained.model_dir), self.budget, self.device
                )
                self.cache.keep_measurement(measurement)
            rows.append(self._model_row(config, measurement))
            self._requests[config.id] = (
                detector(config, trained, self.device),
                self._input_size(trained.model_dir),
            )
        return rows

    def time_requests(self, rows: list[Row]) -> None:
        """Fill in the per-image latency of every serving path, timed in turns per input size."""
        by_id = {row["config_id"]: row for row in rows}
        for size in sorted({size for _, size in self._requests.values()}):
            self.say(f"latency of {len(self._requests)} serving paths at {size[0]}x{size[1]}")
            runs = {name: run for name, (run, s) in self._requests.items() if s == size}
            images = next(p for key, p in self._prepared.items() if key == size).images
            # Cycle through the evaluation images when the sample asks for more calls than
            # there are images: percentiles of ten calls would be little more than the extremes.
            singles = [
                images[i % len(images) : i % len(images) + 1].float().div(255)
                for i in range(self.budget.latency_images)
            ]
            for name, (p50, p95) in interleaved_latency(runs, singles, self.device).items():
                by_id[name]["latency_p50_ms"], by_id[name]["latency_p95_ms"] = p50, p95

    def _input_size(self, model_dir: Path) -> tuple[int, int]:
        height, width = models.read_card(model_dir).input_size
        return int(height), int(width)

    def train_model(self, config: ModelConfiguration) -> TrainedModel:
        """The model `config` runs: from this study, from the cache, or trained now."""
        if config.training not in self.trained:
            model_id = self.grid.trained_model_id(config.training)
            trained = self.cache.trained(model_id)
            if trained is None:
                with self.cache.training_lock(model_id):
                    # Another process sharing the cache may have trained it while we waited.
                    trained = self.cache.trained(model_id)
                    if trained is None:
                        self.say(f"train {model_id} ({config.training.params()})")
                        trained = train_configuration(
                            config, self.data_dir, self.cache.model_dir(model_id), self.budget,
                            self.grid.seed, self.device,
                        )  # fmt: skip
                        self.cache.keep_trained(trained)
            self.trained[config.training] = trained
        return self.trained[config.training]

    def prepared(self, model_dir: Path) -> PreparedSplit:
        """The evaluation images at this model's input size (decoded once per size)."""
        size = self._input_size(model_dir)
        if size not in self._prepared:
            self._prepared[size] = prepare_split(self.evaluation, self.records, size)
        return self._prepared[size]

    def training_summary(self) -> dict[str, Any]:
        """Epochs, best epoch and seconds of every trained model, for study.json."""
        return {
            t.config_id: {
                "epochs": t.epochs,
                "best_epoch": t.best_epoch,
                "seconds": t.usage.seconds,
                "cpu_seconds": t.usage.cpu_seconds,
            }
            for t in self.trained.values()
        }

    def _model_row(self, config: ModelConfiguration, m: ModelMeasurement) -> Row:
        main = self.budget.main_attack
        return {
            "config_id": config.id, "control": config.control, "params": config.params(),
            "threat": "", "training_s": m.training_s, "training_cpu_s": m.training_cpu_s,
            "peak_mem_mb": m.peak_mem_mb,
            "pipeline_s": m.pipeline_s, "clean_map": m.clean_map, **m.robust,
            reporting.adaptive_column(main): m.adaptive_map, **m.pedestrian,
            "group": reporting.plot_group(config),
        }  # fmt: skip

    # ----------------------------------------------------------------------------- controls
    def measure_controls(self, scratch: Path, policy: Policy) -> list[Row]:
        """Exercise every lifecycle control on copies in `scratch`; one row per configuration."""
        budget, seed = self.budget, self.grid.seed
        results: dict[str, controls.ControlMeasurement] = {}
        enabled = {c.control for c in self.grid.controls if c.enabled}
        if "data_verification" in enabled:
            self.say("data verification: sign, verify, tamper")
            results["data_verification"] = controls.measure_data_verification(
                self.data_dir, scratch, budget.tamper_count, budget.repeats, seed
            )
        if "poisoning_screen" in enabled:
            self.say("poisoning screen: BadDet ODA and OGA")
            results["poisoning_screen"] = controls.measure_poisoning_screen(
                self.data_dir, scratch, budget.poison_fraction, budget.poison_trigger_side,
                policy.data.poisoning_score_threshold, seed,
            )  # fmt: skip
        # The release whose loading is timed: the undefended model (all share one architecture).
        base = self.trained.get(TrainingDefence(), next(iter(self.trained.values()))).model_dir
        self.say("signature verification at load: sign, load, tamper")
        plain, verified = controls.measure_model_loading(base, scratch, budget.tamper_count, seed)
        rows = []
        for config in self.grid.controls:
            if config.control == "signature_at_load":
                measurement = verified if config.enabled else plain
            elif config.control == "serving_screening":
                measurement = self._screening(config)
            elif config.enabled:
                measurement = results[config.control]
            else:
                measurement = controls.off(reporting.OFF_THREATS[config.control])
            rows.append(reporting.control_row(config, measurement))
        return rows

    def _screening(self, config: ControlConfiguration) -> controls.ControlMeasurement:
        trained = next(t for t in self.trained.values() if t.config_id == config.model)
        model = models.load(trained.model_dir, device=self.device)
        size = self._input_size(trained.model_dir)
        main = next(a for a in self.budget.attacks if a.name == self.budget.main_attack)
        threat = f"{main.name} (ART PGD-{main.steps}) uploads, uint8-rounded"
        if not config.enabled:
            self._requests[config.id] = (_bare(model, self.device), size)
            return controls.off(threat)
        self.say(f"serving screening {config.id}: calibrate, attack, screen")
        clean = self.prepared(trained.model_dir).images.float().div(255)
        measurement, screener = controls.measure_screening(
            model, self._calibration_images(size), clean, self._uploads(model, trained, main),
            config.escalation_rate or 0.0, main.eps, self.device, threat,
        )  # fmt: skip
        self._requests[config.id] = (lambda image: screener(image.to(self.device)), size)
        return measurement

    def _uploads(self, model: torch.nn.Module, trained: TrainedModel, attack: Any) -> Tensor:
        if trained.config_id not in self._attacked:
            attacked = craft_attack(model, self.prepared(trained.model_dir), attack, self.device)
            # An upload is an 8-bit image: the perturbation must survive the rounding.
            self._attacked[trained.config_id] = attacked.mul(255).round_().clamp_(0, 255).div_(255)
        return self._attacked[trained.config_id]

    def _calibration_images(self, input_size: tuple[int, int]) -> Tensor:
        """Clean images the screener is calibrated on (`calibration_ids`)."""
        if input_size not in self._calibration:
            by_id = {im.id: im for im in self.dataset.images}
            ids = calibration_ids(self.dataset.splits, self.budget.calibration_images)
            chosen = [by_id[i] for i in ids]
            prepared = prepare_split(self.dataset, chosen, input_size)
            self._calibration[input_size] = prepared.images.float().div(255)
        return self._calibration[input_size]


def calibration_ids(splits: dict[str, list[int]], limit: int) -> list[int]:
    """Image ids to calibrate the serving screener on: the val split (at most `limit`), as
    `secmlops model calibrate-screening` does, never the judged images. Training images fill
    up only to the screener's minimum when val is smaller: the model is more confident on
    images it learnt, which would set the thresholds too low for new frames."""
    val = list(splits.get("val", []))
    short = math.ceil(1 / DEFAULT_FALSE_ALARM_RATE) - len(val)
    return (val + list(splits.get("train", []))[: max(short, 0)])[:limit]


def _bare(model: torch.nn.Module, device: torch.device) -> Callable[[Tensor], Any]:
    """Serving without screening: the detector alone."""

    def run(image: Tensor) -> Any:
        with torch.no_grad():
            return model(image.to(device))

    return run


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
