"""The study cache: finished units come back exactly; another study's cache is refused."""

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
    measured = ModelMeasurement("none", 12.5, 40.0, 64.0, 0.8, {"pgd_linf_4": 0.4}, 0.4, 11.0)
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
