"""The quick study end to end on synthetic data (the CI run of issue 9), and its atomic output."""

import json
import math
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from secmlops.cli import app
from secmlops.policy import load_policy
from secmlops.tradeoffs import study as study_module
from secmlops.tradeoffs.configurations import MODEL_CONTROLS, quick_grid
from secmlops.tradeoffs.outputs import OUTPUT_FILES
from secmlops.tradeoffs.pareto import dominates
from secmlops.tradeoffs.report import PEDESTRIAN_COLUMNS, applicable, read_csv

REPO_POLICY = Path(__file__).resolve().parents[2] / "policy.yaml"
GATE = load_policy(REPO_POLICY).gate


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    """100 synthetic 160x128 scenes: 80 train, 10 val, 10 test."""
    from secmlops.data.synthetic import generate_scenes

    out = tmp_path_factory.mktemp("tradeoffs-data") / "scenes"
    return generate_scenes(out, 100, seed=3, width=160, height=128, workers=1)


@pytest.fixture(scope="module")
def quick_study(scenes, one_thread, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tradeoffs-runs") / "quick"
    result = CliRunner().invoke(
        app,
        ["tradeoffs", "--data", str(scenes), "--quick", "--out", str(out),
         "--policy", str(REPO_POLICY)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "Pareto front" in result.output
    return out


@pytest.mark.slow
def test_quick_study_writes_every_output_and_nothing_else(quick_study: Path) -> None:
    assert sorted(p.name for p in quick_study.iterdir()) == sorted(OUTPUT_FILES)
    assert not [p for p in quick_study.parent.iterdir() if p.name.startswith(".")]
    meta = json.loads((quick_study / "study.json").read_text())
    assert meta["seconds"] > 0  # its CI budget is reported, not asserted: machines are shared
    assert meta["command"].startswith("secmlops tradeoffs --data")
    for key in ("hardware", "versions", "grid", "memory_method", "load_average", "policy"):
        assert meta[key], key
    assert meta["versions"]["torch"] and meta["hardware"]["cpus_usable"] >= 1


@pytest.mark.slow
def test_every_configuration_is_present_with_finite_applicable_figures(
    quick_study: Path,
) -> None:
    grid = quick_grid(GATE)
    attacks = [a.name for a in grid.budget.attacks]
    rows = read_csv(quick_study / "tradeoffs.csv")
    assert [r["config_id"] for r in rows] == grid.ids
    metric_columns = [c for c in rows[0] if c not in ("config_id", "control", "params", "threat")]
    for row in rows:
        wanted = set(applicable(row["control"], attacks, grid.budget.main_attack))
        for column in metric_columns:
            if column == "pareto":
                continue
            if column in wanted:
                assert math.isfinite(float(row[column])), (row["config_id"], column, row[column])
            else:
                assert row[column] == "", (row["config_id"], column, row[column])
        if row["control"] not in MODEL_CONTROLS:
            assert 0 <= float(row["detection_rate"]) <= 1
            assert 0 <= float(row["false_alarm_rate"]) <= 1
    by_id = {r["config_id"]: r for r in rows}
    # The controls catch what they exist for (real tampering, real attacks), and the
    # off switches catch nothing.
    assert float(by_id["data-verify-on"]["detection_rate"]) == 1.0
    assert float(by_id["load-verified"]["detection_rate"]) == 1.0
    assert float(by_id["load-plain"]["detection_rate"]) < 1.0
    assert float(by_id["poison-screen-on"]["detection_rate"]) >= 0.5
    assert float(by_id["data-verify-off"]["detection_rate"]) == 0.0
    assert float(by_id["none"]["training_s"]) > 0 and float(by_id["none"]["clean_map"]) > 0.2


@pytest.mark.slow
def test_model_rows_judge_each_configuration_as_a_pedestrian_detector(quick_study: Path) -> None:
    """Recall at the operating point beside mAP, with the PDS attacks and the new defences."""
    rows = {r["config_id"]: r for r in read_csv(quick_study / "tradeoffs.csv")}
    defended = rows["fgsm-rs-eps4-vanishing-advpatch50"]["params"]
    assert "objectives loss+vanishing" in defended
    assert "adversarial (5 steps per epoch) torso patches on 50% of images" in defended
    for row in rows.values():
        if row["control"] not in MODEL_CONTROLS:
            continue
        figures = {k: float(row[k]) for k in PEDESTRIAN_COLUMNS}
        assert all(0 <= v <= 1 for v in figures.values()), (row["config_id"], figures)
        # The worst case picks, per image, at most as many people found as vanishing leaves.
        assert figures["worst_case_recall"] <= figures["vanishing_recall"], row["config_id"]
    undefended = rows["none"]
    # An undefended detector loses most of its people to the worst case at 4/255.
    assert float(undefended["worst_case_recall"]) < float(undefended["clean_recall"]) / 2
    assert float(undefended["worst_case_mr2"]) > float(undefended["clean_mr2"])


@pytest.mark.slow
def test_pareto_column_is_consistent_with_the_table(quick_study: Path) -> None:
    rows = read_csv(quick_study / "tradeoffs.csv")
    main = json.loads((quick_study / "study.json").read_text())["main_attack"]
    models = [r for r in rows if r["control"] in MODEL_CONTROLS]
    points = {r["config_id"]: (float(r["clean_map"]), float(r[main])) for r in models}
    for row in models:
        beaten = [o for o, p in points.items() if dominates(p, points[row["config_id"]])]
        if row["pareto"] == "yes":
            assert not beaten, f"{row['config_id']} is marked but dominated by {beaten}"
        else:
            assert row["pareto"] == "no" and beaten, f"{row['config_id']} is unmarked, undominated"
    assert all(r["pareto"] == "" for r in rows if r["control"] not in MODEL_CONTROLS)
    front = json.loads((quick_study / "study.json").read_text())["pareto_front"]
    assert front == [r["config_id"] for r in models if r["pareto"] == "yes"]


@pytest.mark.slow
def test_report_is_self_contained_and_plots_are_images(quick_study: Path) -> None:
    page = (quick_study / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 2
    assert "<img alt='robust_vs_clean_pareto' src='data:image/png" in page
    assert all(name in page for name in quick_grid(GATE).ids)
    for name in ("robust_vs_training_cost.png", "robust_vs_clean_pareto.png"):
        with Image.open(quick_study / name) as image:
            assert image.format == "PNG" and image.size == (960, 640)
    markdown = (quick_study / "tradeoffs.md").read_text()
    assert "non-adaptive attacker" in markdown and "| none | none |" in markdown


def test_a_failed_study_leaves_no_output_behind(tmp_path: Path, scenes: Path, monkeypatch) -> None:
    """Staged output: a failure after some files were written leaves neither the study folder
    nor its staging folder."""
    from secmlops.tradeoffs import outputs

    def write_then_fail(folder: Path, *args: object) -> None:
        (folder / "tradeoffs.csv").write_text("config_id\n")
        raise RuntimeError("disk full")

    monkeypatch.setattr(study_module._Study, "warm_up", lambda self, scratch: None)
    monkeypatch.setattr(study_module._Study, "measure_models", lambda self: [])
    monkeypatch.setattr(study_module._Study, "measure_controls", lambda self, s, p: [])
    monkeypatch.setattr(outputs, "write_outputs", write_then_fail)
    out = tmp_path / "runs" / "study"
    with pytest.raises(RuntimeError, match="disk full"):
        study_module.run_study(scenes, out, quick=True, policy_path=REPO_POLICY)
    assert not out.exists()
    assert list((tmp_path / "runs").iterdir()) == []


def test_cli_refuses_an_existing_study_folder(tmp_path: Path, scenes: Path) -> None:
    out = tmp_path / "existing"
    out.mkdir()
    (out / "tradeoffs.csv").write_text("keep me\n")
    result = CliRunner().invoke(
        app, ["tradeoffs", "--data", str(scenes), "--quick", "--out", str(out),
              "--policy", str(REPO_POLICY)],
    )  # fmt: skip
    assert result.exit_code == 2
    assert "already exists" in result.output
    assert (out / "tradeoffs.csv").read_text() == "keep me\n"


def test_missing_data_is_a_one_line_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["tradeoffs", "--data", str(tmp_path / "nowhere"), "--quick",
              "--out", str(tmp_path / "out"), "--policy", str(REPO_POLICY)],
    )  # fmt: skip
    assert result.exit_code == 2 and "error:" in result.output
    assert not (tmp_path / "out").exists()


def test_train_only_fills_the_cache_the_study_reuses(
    tmp_path: Path, scenes: Path, one_thread, monkeypatch
) -> None:
    """`--train-only` trains into the cache and stops; a second run (as the study would)
    reuses the model instead of training it again."""
    monkeypatch.setattr(study_module._Study, "warm_up", lambda self, scratch: None)
    cache = tmp_path / "cache"
    args = ["tradeoffs", "--data", str(scenes), "--quick", "--policy", str(REPO_POLICY),
            "--cache", str(cache), "--train-only", "none"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert (cache / "models" / "none" / "training-usage.json").is_file()
    assert not (tmp_path / "runs").exists()  # no study folder: it only trained

    def must_not_train(*args: object, **kwargs: object) -> None:
        raise AssertionError("a cached model was trained again")

    monkeypatch.setattr(study_module, "train_configuration", must_not_train)
    again = study_module.train_into_cache(scenes, cache, ["none"], quick=True,
                                          policy_path=REPO_POLICY)  # fmt: skip
    assert [model.config_id for model in again] == ["none"]


def test_train_only_names_unknown_ids_and_needs_a_cache(tmp_path: Path, scenes: Path) -> None:
    base = ["tradeoffs", "--data", str(scenes), "--quick", "--policy", str(REPO_POLICY)]
    no_cache = CliRunner().invoke(app, [*base, "--train-only", "none"])
    assert no_cache.exit_code == 2 and "needs --cache" in no_cache.output
    unknown = CliRunner().invoke(
        app, [*base, "--cache", str(tmp_path / "cache"), "--train-only", "none,pgd9-eps99"]
    )
    assert unknown.exit_code == 2 and "unknown configuration pgd9-eps99" in unknown.output
    assert "fgsm-rs-eps4" in unknown.output  # says which ids exist


def test_a_budget_that_would_divide_by_zero_is_refused() -> None:
    from dataclasses import replace

    from secmlops.errors import PolicyError

    budget = quick_grid(GATE).budget
    for field in ("tamper_count", "repeats", "latency_images", "restarts", "person_patch_steps"):
        with pytest.raises(PolicyError, match=f"{field} must be at least 1"):
            replace(budget, **{field: 0})


def one_model_grid(gate, seed: int = 0):
    """The quick grid cut to its undefended model (every control screens that one): the
    wiring test below needs a whole study, not every model of it a second time."""
    from dataclasses import replace

    grid = quick_grid(gate, seed)
    controls = tuple(replace(c, model="none") if c.model else c for c in grid.controls)
    return replace(grid, models=grid.models[:1], controls=controls)


@pytest.mark.slow
def test_the_dag_task_writes_the_study_under_the_workdir_and_drops_its_cache(
    tmp_path: Path, scenes: Path, one_thread, monkeypatch
) -> None:
    """`secmlops_tradeoffs`'s task body: the study lands where the Airflow view looks, and the
    per-run cache of trained models is gone once the study is written."""
    from secmlops.lifecycle import tradeoff_study
    from secmlops.settings import Settings

    monkeypatch.setattr(study_module, "quick_grid", one_model_grid)

    settings = Settings.from_env({"SECMLOPS_WORKDIR": str(tmp_path),
                                  "SECMLOPS_POLICY": str(REPO_POLICY)})  # fmt: skip
    data = {"rev": "data/street/v1", "data_dir": str(scenes), "manifest_digest": "sha256:x",
            "signer": "ed25519:x", "files": 0, "bytes": 0}  # fmt: skip
    result = tradeoff_study(settings, data, True, "manual__2026-11-26T06:00:00")
    out = Path(result["out_dir"])
    assert out.parent == tmp_path / "runs" / "tradeoffs"
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUT_FILES)
    assert result["configurations"] == len(one_model_grid(GATE).ids)
    assert result["pareto_front"] == ["none"]
    assert not (tmp_path / "runs" / "tradeoffs-cache").exists() or not any(
        (tmp_path / "runs" / "tradeoffs-cache").iterdir()
    )
