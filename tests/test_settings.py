"""The one settings object: every SECMLOPS_* variable, its default, masking, bad values."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest

from secmlops.settings import ENV_PREFIX, Settings, SettingsError, env_name

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_defaults_live_under_the_workdir(tmp_path):
    settings = Settings.from_env({"SECMLOPS_WORKDIR": str(tmp_path)})
    assert settings.workdir == tmp_path
    assert settings.audit_log == tmp_path / "audit" / "audit.jsonl"
    assert settings.registry == (tmp_path / "registry").as_uri()
    assert settings.data_registry == tmp_path / "data-registry"
    assert settings.dvc_remote == str(tmp_path / "dvc-remote")
    assert settings.inference_log == str(tmp_path / "inference-log")
    assert settings.monitoring_state == tmp_path / "monitoring" / "state.json"
    assert settings.tradeoffs_dir == tmp_path / "runs" / "tradeoffs"
    assert settings.data_pull_schedule == "@daily" and settings.monitoring_schedule == "@hourly"
    assert settings.training_epochs is None
    assert (settings.trainer_key, settings.gate_key, settings.approver_key) == (None, None, None)
    assert settings.trust_state == tmp_path / "trust" / "alias-sequences.json"


def test_every_field_is_read_from_its_variable(tmp_path):
    env = {env_name(f.name): str(tmp_path / f.name) for f in fields(Settings)}
    env["SECMLOPS_TRAINING_EPOCHS"], env["SECMLOPS_EVAL_MAX_IMAGES"] = "7", "12"
    env["SECMLOPS_APPROVAL_TIMEOUT_HOURS"] = "0.5"
    env["SECMLOPS_DATA_PULL_SCHEDULE"], env["SECMLOPS_MONITORING_SCHEDULE"] = "none", "@daily"
    settings = Settings.from_env(env)
    for field in fields(Settings):
        value = getattr(settings, field.name)
        if field.name in ("training_epochs", "eval_max_images", "data_pull_schedule",
                          "monitoring_schedule", "approval_timeout_hours"):  # fmt: skip
            continue
        assert str(value) == str(tmp_path / field.name), field.name
    assert (settings.training_epochs, settings.eval_max_images) == (7, 12)
    assert settings.approval_timeout_hours == 0.5
    assert settings.data_pull_schedule is None and settings.monitoring_schedule == "@daily"


def test_empty_values_count_as_unset(tmp_path):
    settings = Settings.from_env({"SECMLOPS_WORKDIR": str(tmp_path), "SECMLOPS_GATE_KEY": " "})
    assert settings.gate_key is None


@pytest.mark.parametrize("value", ["ten", "0", "-3", "1.5"])
def test_a_count_that_is_not_a_positive_integer_is_refused(value):
    with pytest.raises(SettingsError, match=f"SECMLOPS_TRAINING_EPOCHS={value!r}"):
        Settings.from_env({"SECMLOPS_TRAINING_EPOCHS": value})


def test_shown_masks_secrets_but_says_they_are_set(tmp_path):
    env = {"SECMLOPS_WORKDIR": str(tmp_path), "SECMLOPS_KEY_PASSPHRASE": "correct horse",
           "SECMLOPS_SERVING_TOKEN": "t" * 32}  # fmt: skip
    shown = Settings.from_env(env).shown()
    assert shown["SECMLOPS_KEY_PASSPHRASE"] == "***" and shown["SECMLOPS_SERVING_TOKEN"] == "***"
    assert "correct horse" not in json.dumps(shown)
    assert Settings.from_env({}).shown()["SECMLOPS_SERVING_TOKEN"] is None
    assert set(shown) == {ENV_PREFIX + f.name.upper() for f in fields(Settings)}


def test_settings_show_prints_the_effective_settings_masked(tmp_path):
    import os

    env = {**os.environ, "SECMLOPS_WORKDIR": str(tmp_path), "SECMLOPS_KEY_PASSPHRASE": "hunter22"}
    done = subprocess.run(
        [str(Path(sys.executable).with_name("secmlops")), "settings", "show", "--json"],
        capture_output=True, text=True, env=env, check=True,
    )  # fmt: skip
    shown = json.loads(done.stdout)
    assert shown["SECMLOPS_WORKDIR"] == str(tmp_path)
    assert shown["SECMLOPS_KEY_PASSPHRASE"] == "***" and "hunter22" not in done.stdout


def test_only_the_settings_module_reads_secmlops_variables():
    """The acceptance grep: no other module of the library reads a SECMLOPS_* variable."""
    settings_module = REPO_ROOT / "secmlops" / "settings.py"
    offenders = [
        f"{path.relative_to(REPO_ROOT)}:{number}"
        for path in sorted((REPO_ROOT / "secmlops").rglob("*.py"))
        if path != settings_module
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if ("os.environ" in line or "getenv" in line) and "SECMLOPS_" in line
    ]
    assert offenders == []


@pytest.mark.parametrize("value", ["0", "-1", "soon", "inf"])
def test_the_approval_timeout_must_be_a_positive_number_of_hours(value):
    with pytest.raises(SettingsError, match="SECMLOPS_APPROVAL_TIMEOUT_HOURS"):
        Settings.from_env({"SECMLOPS_APPROVAL_TIMEOUT_HOURS": value})
    assert Settings.from_env({}).approval_timeout_hours == 24.0
