"""The table's checks and renderings: CSV, Markdown, HTML and the PNG plots."""

import itertools
import math
from pathlib import Path

import pytest
from PIL import Image

from secmlops.tradeoffs.outputs import mark_pareto
from secmlops.tradeoffs.plots import PlotPoint, _ticks, scatter_png
from secmlops.tradeoffs.report import (
    PEDESTRIAN_COLUMNS,
    applicable,
    check_rows,
    columns,
    markdown_table,
    read_csv,
    write_csv,
    write_html,
)

ATTACKS = ["fgsm_linf_4", "pgd_linf_4"]
MAIN = "pgd_linf_4"


def model_row(name: str, control: str, clean: float, robust: float, training: float) -> dict:
    return {
        "config_id": name, "control": control, "params": f"{name} settings", "threat": "",
        "training_s": training, "training_cpu_s": training * 0.9, "latency_p50_ms": 9.5,
        "latency_p95_ms": 12.25,
        "peak_mem_mb": 66.0, "pipeline_s": training + 30.0, "clean_map": clean,
        "fgsm_linf_4": robust + 0.1, "pgd_linf_4": robust, "pgd_linf_4_adaptive": robust,
        **{name: robust for name in PEDESTRIAN_COLUMNS}, "clean_recall": clean,
        "group": control,
    }  # fmt: skip


def control_row(name: str, control: str, detection: float, latency: bool) -> dict:
    return {
        "config_id": name, "control": control, "params": "on", "threat": "tampering, 6 cases",
        "latency_p50_ms": 12.0 if latency else None, "latency_p95_ms": 20.0 if latency else None,
        "peak_mem_mb": 5.3, "pipeline_s": 0.02, "detection_rate": detection,
        "false_alarm_rate": 0.0,
    }  # fmt: skip


@pytest.fixture
def rows() -> list[dict]:
    table = [
        model_row("none", "none", 0.865, 0.015, 250.0),
        model_row("fgsm-rs-eps4", "adversarial_training", 0.784, 0.425, 330.0),
        model_row("pgd3-eps4", "adversarial_training", 0.753, 0.452, 480.0),
        model_row("jpeg-q50", "input_preprocessing", 0.70, 0.40, 250.0),
        control_row("data-verify-on", "data_verification", 1.0, latency=False),
        control_row("load-verified", "signature_at_load", 1.0, latency=True),
    ]
    assert mark_pareto(table, MAIN) == ["none", "fgsm-rs-eps4", "pgd3-eps4"]
    return table


def test_a_consistent_table_passes_the_checks(rows: list[dict]) -> None:
    check_rows(rows, ATTACKS, MAIN)
    assert [r.get("pareto") for r in rows] == [True, True, True, False, None, None]


@pytest.mark.parametrize("bad", [math.nan, math.inf, None, "0.5"])
def test_an_applicable_metric_must_be_a_finite_number(rows: list[dict], bad: object) -> None:
    rows[1]["pgd_linf_4_adaptive"] = bad
    with pytest.raises(ValueError, match="fgsm-rs-eps4: pgd_linf_4_adaptive must be a finite"):
        check_rows(rows, ATTACKS, MAIN)


def test_a_model_row_without_its_pedestrian_figures_is_refused(rows: list[dict]) -> None:
    del rows[0]["worst_case_recall"]
    with pytest.raises(ValueError, match="none: worst_case_recall must be a finite number"):
        check_rows(rows, ATTACKS, MAIN)


def test_a_metric_that_does_not_apply_must_stay_empty(rows: list[dict]) -> None:
    rows[4]["clean_map"] = 0.5
    with pytest.raises(ValueError, match="data-verify-on: clean_map does not apply"):
        check_rows(rows, ATTACKS, MAIN)


def test_a_pareto_column_that_disagrees_with_the_figures_is_refused(rows: list[dict]) -> None:
    rows[3]["pareto"] = True  # jpeg-q50 is dominated by fgsm-rs-eps4
    with pytest.raises(ValueError, match="jpeg-q50: marked on the front but dominated"):
        check_rows(rows, ATTACKS, MAIN)
    rows[3]["pareto"], rows[0]["pareto"] = False, False
    with pytest.raises(ValueError, match="none: not marked but no configuration dominates it"):
        check_rows(rows, ATTACKS, MAIN)


def test_every_control_has_its_applicable_metrics() -> None:
    assert "detection_rate" not in applicable("adversarial_training", ATTACKS, MAIN)
    assert "training_s" not in applicable("serving_screening", ATTACKS, MAIN)
    assert "latency_p50_ms" not in applicable("poisoning_screen", ATTACKS, MAIN)
    with pytest.raises(ValueError, match="unknown control"):
        applicable("firewall", ATTACKS, MAIN)


def test_csv_keeps_full_precision_and_leaves_inapplicable_cells_empty(
    rows: list[dict], tmp_path: Path
) -> None:
    write_csv(rows, tmp_path / "t.csv", ATTACKS, MAIN)
    back = read_csv(tmp_path / "t.csv")
    assert list(back[0]) == columns(ATTACKS, MAIN)
    assert [r["config_id"] for r in back] == [r["config_id"] for r in rows]
    assert float(back[2]["pgd_linf_4"]) == 0.452 and back[2]["pareto"] == "yes"
    assert back[3]["pareto"] == "no" and back[4]["pareto"] == ""
    assert back[4]["training_s"] == "" and back[4]["latency_p50_ms"] == ""
    assert float(back[5]["latency_p50_ms"]) == 12.0 and back[5]["clean_map"] == ""


def test_markdown_and_html_show_every_configuration(rows: list[dict], tmp_path: Path) -> None:
    table = markdown_table(rows, ATTACKS, MAIN)
    assert len(table.splitlines()) == 2 + len(rows)
    assert "| pgd3-eps4 | adversarial_training |" in table and "| 0.452 |" in table
    figure = tmp_path / "plot.png"
    scatter_png([PlotPoint(0.5, 0.2, "a", "g")], figure, title="t", x_label="x", y_label="y")
    write_html(
        rows, tmp_path / "report.html", ATTACKS, MAIN, title="<study>",
        summary={"command": "secmlops tradeoffs --quick"}, figures=[figure], notes=["n & m"],
    )  # fmt: skip
    page = (tmp_path / "report.html").read_text()
    assert "&lt;study&gt;" in page and "n &amp; m" in page  # escaped, not injected
    assert page.count("data:image/png;base64,") == 1 and "src='http" not in page
    assert all(r["config_id"] in page for r in rows)


def test_plots_are_pngs_with_the_front_drawn(rows: list[dict], tmp_path: Path) -> None:
    models = [r for r in rows if "clean_map" in r]
    points = [PlotPoint(r["clean_map"], r[MAIN], r["config_id"], r["group"], r["pareto"])
              for r in models]  # fmt: skip
    scatter_png(points, tmp_path / "front.png", title="t", x_label="x", y_label="y", front=True)
    image = Image.open(tmp_path / "front.png")
    assert image.format == "PNG" and image.size == (960, 640)
    # The staircase is drawn in the front colour (#D55E00).
    assert (0xD5, 0x5E, 0x00) in {c for _, c in image.convert("RGB").getcolors(1 << 16)}
    with pytest.raises(ValueError, match="finite"):
        scatter_png([PlotPoint(math.nan, 0.1, "a", "g")], tmp_path / "x.png",
                    title="t", x_label="x", y_label="y")  # fmt: skip


def test_axis_ticks_are_round_cover_the_data_and_stay_non_negative() -> None:
    ticks = _ticks([0.015, 0.452])
    assert ticks[0] == 0.0 and ticks[-1] >= 0.452
    steps = {round(b - a, 9) for a, b in itertools.pairwise(ticks)}
    assert len(steps) == 1
    assert _ticks([250.0, 480.0])[0] <= 250.0 and _ticks([5.0, 5.0])[-1] > 5.0
