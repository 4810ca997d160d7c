"""Finished units of a study kept on disk, so an interrupted study continues where it stopped.

A full study trains seven models and attacks twelve configurations: hours on two shared CPU
cores. With a cache folder, each trained model (with what its training cost) and each finished
model measurement is kept as soon as it is complete; a rerun with the same settings reuses them
and measures only what is missing. An unfinished training is started again, never resumed, so
every training time in the table is one uninterrupted run. The lifecycle controls and the
latency phase always run again (minutes), so their figures come from one process.

Several processes may share a cache (`secmlops tradeoffs --train-only` trains some models while
the study runs, one core or GPU each): a training holds its unit's lock, and a process that
reaches a unit being trained elsewhere waits for it and reuses the result instead of training
it twice.

The cache is bound to the study's settings (grid, data, evaluation split, seed, device, policy):
a cache made under other settings is refused rather than mixed in.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

from secmlops.errors import DataError
from secmlops.fsutil import atomic_write_json
from secmlops.models import CARD_FILE
from secmlops.tradeoffs.measure_models import ModelMeasurement, TrainedModel
from secmlops.tradeoffs.resources import Usage

KEY_FILE = "study-key.json"
USAGE_FILE = "training-usage.json"


class StudyCache:
    """Trained models and model measurements of one study's settings.

    Args:
        root: the cache folder (created), or None for a throw-away study whose models live in
            `scratch` only.
        scratch: the study's temporary folder.
        settings: everything the figures depend on; its digest must match the cache's.

    Raises:
        DataError: `root` holds a cache made under other settings.
    """

    def __init__(self, root: Path | None, scratch: Path, settings: dict[str, Any]) -> None:
        self.root = root
        self.models_root = (root or scratch) / "models"
        self.reused: list[str] = []
        if root is None:
            return
        digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()
        key_path = root / KEY_FILE
        if key_path.is_file():
            existing = json.loads(key_path.read_text()).get("digest")
            if existing != digest:
                raise DataError(
                    f"{root}: this cache belongs to a study with other settings (grid, data, "
                    "split, seed, device or policy); use another --cache folder"
                )
        else:
            atomic_write_json(key_path, {"digest": digest, "settings": settings})

    def model_dir(self, config_id: str) -> Path:
        """Where the model of `config_id` is trained."""
        return self.models_root / config_id

    def trained(self, config_id: str) -> TrainedModel | None:
        """The finished training of `config_id`, if the cache holds one."""
        usage = self.model_dir(config_id) / USAGE_FILE
        if self.root is None or not usage.is_file():
            return None
        if not (self.model_dir(config_id) / CARD_FILE).is_file():
            return None
        data = json.loads(usage.read_text())
        self.reused.append(f"train {config_id}")
        return TrainedModel(
            config_id, self.model_dir(config_id), Usage(**data["usage"]),
            data["epochs"], data["best_epoch"],
        )  # fmt: skip

    @contextmanager
    def training_lock(self, config_id: str) -> Iterator[None]:
        """Hold the exclusive right to train `config_id`, waiting while another process does."""
        if self.root is None:
            yield
            return
        self.models_root.mkdir(parents=True, exist_ok=True)
        # flock, not a marker file: the kernel drops it when its holder dies, so a killed
        # training never leaves a unit locked.
        with (self.models_root / f"{config_id}.lock").open("w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def keep_trained(self, trained: TrainedModel) -> None:
        """Record a finished training (written last: its presence means the model is complete)."""
        if self.root is not None:
            atomic_write_json(
                trained.model_dir / USAGE_FILE,
                {"usage": asdict(trained.usage), "epochs": trained.epochs,
                 "best_epoch": trained.best_epoch},
            )  # fmt: skip

    def measurement(self, config_id: str) -> ModelMeasurement | None:
        """The finished measurement of `config_id`, if the cache holds one."""
        path = self._measurement_path(config_id)
        if path is None or not path.is_file():
            return None
        self.reused.append(f"evaluate {config_id}")
        return ModelMeasurement(**json.loads(path.read_text()))

    def keep_measurement(self, measurement: ModelMeasurement) -> None:
        """Record a finished model measurement."""
        path = self._measurement_path(measurement.config_id)
        if path is not None:
            atomic_write_json(path, asdict(measurement))

    def _measurement_path(self, config_id: str) -> Path | None:
        return None if self.root is None else self.root / "measurements" / f"{config_id}.json"
