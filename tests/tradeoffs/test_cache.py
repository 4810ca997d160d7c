"""The study cache: finished units come back exactly; another study's cache is refused;
processes sharing a cache never train a unit twice."""

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from secmlops.errors import DataError
from secmlops.tradeoffs.cache import StudyCache
from secmlops.tradeoffs.measure_models import ModelMeasurement, TrainedModel
from secmlops.tradeoffs.resources import Usage

SETTINGS = {"grid": {"name": "quick"}, "data": "/data", "seed": 0}


def test_finished_units_are_kept_and_reused(tmp_path: Path) -> None:
    cache = StudyCache(tmp_path / "cache", tmp_path / "scratch", SETTINGS)
    model_dir = cache.model_dir("none")
    assert cache.trained("none") is None  # nothing trained yet
    model_dir.mkdir(parents=True)
    (model_dir / "model.json").write_text("{}")
    assert cache.trained("none") is None  # a model without its usage record is unfinished
    trained = TrainedModel("none", model_dir, Usage(12.5, 64.0, 11.0), epochs=20, best_epoch=17)
    cache.keep_trained(trained)
    measured = ModelMeasurement(
        "none", 12.5, 40.0, 64.0, 0.8, {"pgd_linf_4": 0.4}, 0.4, 11.0, {"clean_recall": 0.7}
    )
    cache.keep_measurement(measured)

    again = StudyCache(tmp_path / "cache", tmp_path / "scratch2", SETTINGS)
    assert again.trained("none") == trained
    assert again.measurement("none") == measured
    assert again.measurement("fgsm-rs-eps4") is None
    assert again.reused == ["train none", "evaluate none"]


def test_a_cache_of_other_settings_is_refused(tmp_path: Path) -> None:
    StudyCache(tmp_path / "cache", tmp_path, SETTINGS)
    with pytest.raises(DataError, match="other settings"):
        StudyCache(tmp_path / "cache", tmp_path, {**SETTINGS, "seed": 1})


def test_without_a_cache_models_live_in_scratch_and_nothing_is_kept(tmp_path: Path) -> None:
    cache = StudyCache(None, tmp_path / "scratch", SETTINGS)
    assert cache.model_dir("none") == tmp_path / "scratch" / "models" / "none"
    cache.keep_measurement(ModelMeasurement("none", 1.0, 2.0, 3.0, 0.5, {}, 0.1))
    assert cache.measurement("none") is None and not list(tmp_path.iterdir())


def test_a_unit_being_trained_elsewhere_is_waited_for_not_trained_twice(tmp_path: Path) -> None:
    """Two studies sharing a cache reach the same model: one trains it, the other waits on the
    lock and then finds it finished."""
    first = StudyCache(tmp_path / "cache", tmp_path / "a", SETTINGS)
    second = StudyCache(tmp_path / "cache", tmp_path / "b", SETTINGS)
    holding, order = threading.Event(), []

    def train_slowly() -> None:
        with first.training_lock("none"):
            holding.set()
            time.sleep(0.3)
            model_dir = first.model_dir("none")
            model_dir.mkdir(parents=True)
            (model_dir / "model.json").write_text("{}")
            first.keep_trained(TrainedModel("none", model_dir, Usage(1.0, 2.0, 1.0), 3, 2))
            order.append("trained")

    trainer = threading.Thread(target=train_slowly)
    trainer.start()
    holding.wait(5)
    with second.training_lock("none"):
        order.append("waited")
        found = second.trained("none")
    trainer.join()
    assert order == ["trained", "waited"]
    assert found is not None and found.best_epoch == 2


def test_a_killed_trainer_does_not_leave_its_unit_locked(tmp_path: Path) -> None:
    cache = StudyCache(tmp_path / "cache", tmp_path, SETTINGS)
    cache.models_root.mkdir(parents=True, exist_ok=True)
    lock = cache.models_root / "none.lock"
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import fcntl, sys, time; f = open(sys.argv[1], 'w'); fcntl.flock(f, fcntl.LOCK_EX); "
         "print('locked', flush=True); time.sleep(60)", str(lock)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
    holder.kill()
    holder.wait(10)
    acquired = threading.Event()
    waiter = threading.Thread(target=lambda: _lock_then_set(cache, acquired))
    waiter.start()
    assert acquired.wait(5), "the lock of a killed process was not released"
    waiter.join()


def _lock_then_set(cache: StudyCache, acquired: threading.Event) -> None:
    with cache.training_lock("none"):
        acquired.set()
