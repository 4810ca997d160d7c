"""The study's table and its renderings: CSV, Markdown, a self-contained HTML report.

One row per configuration. A metric that does not apply to a control (training time of a
manifest check, detection rate of a detector configuration) is an empty cell; a metric that
applies must be a finite number, and `check_rows` refuses the table otherwise, so a broken
measurement can never hide in a NaN.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from secmlops.tradeoffs.configurations import CONTROLS, LIFECYCLE_CONTROLS, MODEL_CONTROLS
from secmlops.tradeoffs.pareto import dominates

Row = dict[str, Any]

LEADING = ["config_id", "control", "params", "threat"]
COSTS = [
    "training_s",
    "training_cpu_s",
    "latency_p50_ms",
    "latency_p95_ms",
    "peak_mem_mb",
    "pipeline_s",
]
DETECTION = ["detection_rate", "false_alarm_rate"]
# A model row's figures as a pedestrian detection system, at its signed operating point.
PEDESTRIAN_COLUMNS = (
    "clean_recall", "clean_mr2", "vanishing_recall", "worst_case_recall", "worst_case_mr2",
    "person_patch_recall",
)  # fmt: skip
PARETO = "pareto"
# What each column holds, for the Markdown and HTML notes.
DEFINITIONS = {
    "training_s": "training wall time (a preprocessing defence reports its model's)",
    "training_cpu_s": "CPU time of the process during training: the work done, which other "
    "jobs on a shared machine barely change (wall time grows with their load)",
    "latency_p50_ms / latency_p95_ms": "one image at the model's input size, batch 1, "
    "tensor to detections with the configuration's defence or screen; for loading, one "
    "model load",
    "peak_mem_mb": "peak memory the step adds on top of the warm process (study.json says "
    "how it was measured)",
    "pipeline_s": "wall time the control adds to the lifecycle: training + attack evaluation "
    "of a model configuration; verification, screening, calibration or one load otherwise",
    "clean_map, <attack>": "COCO mAP@0.5 on the evaluation images, clean and under each "
    "white-box ART attack (L-inf eps k/255)",
    "<main>_adaptive": "mAP@0.5 under the main attack computed through the preprocessing "
    "defence (BPDA); equal to the main attack's figure where there is no defence to adapt to",
    "clean_recall, clean_mr2": "share of the evaluation images' people found at the model's "
    "signed operating point (its score threshold at the policy's FPPI on val), and the "
    "log-average miss rate MR^-2 (Dollar et al. 2012)",
    "vanishing_recall": "recall at the operating point under TOG-vanishing (APGD on the "
    "objectness map, the policy's restarts) at the main attack's eps",
    "worst_case_recall, worst_case_mr2": "per image the worst of FGSM, PGD, vanishing and "
    "fabrication at the main attack's eps (fewest people found): recall and MR^-2",
    "person_patch_recall": "recall with a universal patch worn on every person's torso "
    "(Thys et al. 2019, EOT; side the policy's share of the person's height), trained on the "
    "model's own training split",
    "detection_rate": "share of the threat's cases caught (tampering refused, poisoned images "
    "flagged, attacked uploads flagged)",
    "false_alarm_rate": "share of clean cases refused or flagged",
    "pareto": "on the Pareto front of (clean mAP, robust mAP under the main attack) among "
    "model configurations",
}


def columns(attacks: Sequence[str], main_attack: str) -> list[str]:
    """Every column of the table, in order."""
    return [
        *LEADING, *COSTS, "clean_map", *attacks, adaptive_column(main_attack),
        *PEDESTRIAN_COLUMNS, *DETECTION, PARETO,
    ]  # fmt: skip


def adaptive_column(main_attack: str) -> str:
    """The column of the main attack computed through the preprocessing defence."""
    return f"{main_attack}_adaptive"


def applicable(control: str, attacks: Sequence[str], main_attack: str) -> list[str]:
    """The metric columns that must hold a finite number for a row of `control`.

    Raises:
        ValueError: unknown control.
    """
    if control in MODEL_CONTROLS:
        return [*COSTS, "clean_map", *attacks, adaptive_column(main_attack), *PEDESTRIAN_COLUMNS]
    if control in ("data_verification", "poisoning_screen"):
        return ["peak_mem_mb", "pipeline_s", *DETECTION]
    if control in LIFECYCLE_CONTROLS:
        return ["latency_p50_ms", "latency_p95_ms", "peak_mem_mb", "pipeline_s", *DETECTION]
    raise ValueError(f"unknown control {control!r}; known: {', '.join(CONTROLS)}")


def check_rows(rows: Sequence[Row], attacks: Sequence[str], main_attack: str) -> None:
    """Refuse a table with a missing or non-finite applicable metric, a metric where none
    applies, or a Pareto column inconsistent with the figures.

    Raises:
        ValueError: listing every problem.
    """
    problems = []
    metrics = [c for c in columns(attacks, main_attack) if c not in LEADING and c != PARETO]
    for row in rows:
        wanted = set(applicable(row["control"], attacks, main_attack))
        for name in metrics:
            value = row.get(name)
            if name in wanted and not (isinstance(value, int | float) and math.isfinite(value)):
                problems.append(f"{row['config_id']}: {name} must be a finite number, got {value}")
            elif name not in wanted and value is not None:
                problems.append(f"{row['config_id']}: {name} does not apply, got {value}")
    problems += pareto_problems(rows, main_attack)
    if problems:
        raise ValueError("inconsistent trade-off table: " + "; ".join(problems))


def pareto_problems(rows: Sequence[Row], main_attack: str) -> list[str]:
    """Where the `pareto` column disagrees with the figures (empty list: consistent)."""
    points = {
        r["config_id"]: (r["clean_map"], r[main_attack])
        for r in rows
        if r["control"] in MODEL_CONTROLS
    }
    problems = []
    for row in rows:
        name, marked = row["config_id"], row.get(PARETO)
        if name not in points:
            if marked is not None:
                problems.append(f"{name}: only model configurations are on the Pareto front")
            continue
        dominated_by = [o for o, p in points.items() if o != name and dominates(p, points[name])]
        if marked and dominated_by:
            problems.append(f"{name}: marked on the front but dominated by {dominated_by[0]}")
        if not marked and not dominated_by:
            problems.append(f"{name}: not marked but no configuration dominates it")
    return problems


def write_csv(rows: Sequence[Row], path: Path, attacks: Sequence[str], main_attack: str) -> None:
    """The table as CSV: full-precision numbers, empty cells where a metric does not apply."""
    names = columns(attacks, main_attack)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(names)
    for row in rows:
        writer.writerow([_csv_cell(row.get(name)) for name in names])
    path.write_text(buffer.getvalue())


def read_csv(path: Path) -> list[dict[str, str]]:
    """The CSV back as a list of {column: text} (empty text where a metric does not apply)."""
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def markdown_table(rows: Sequence[Row], attacks: Sequence[str], main_attack: str) -> str:
    """The table in GitHub Markdown, numbers rounded for reading."""
    names = [c for c in columns(attacks, main_attack) if c != "threat"]
    lines = ["| " + " | ".join(names) + " |", "|" + " --- |" * len(names)]
    for row in rows:
        cells = [_shown(name, row.get(name)) for name in names]
        lines.append("| " + " | ".join(cell.replace("|", "/") for cell in cells) + " |")
    return "\n".join(lines) + "\n"


def write_markdown(
    rows: Sequence[Row], path: Path, attacks: Sequence[str], main_attack: str, header: str
) -> None:
    """tradeoffs.md: a header (what was run, where), the table, what each detection rate is
    measured against, and what each column means."""
    threats = [f"- `{r['config_id']}`: {r['threat']}" for r in rows if r.get("threat")]
    notes = [f"- `{name}`: {text}" for name, text in DEFINITIONS.items()]
    path.write_text(
        f"{header}\n\n{markdown_table(rows, attacks, main_attack)}\n"
        "Detection rates are measured against:\n\n" + "\n".join(threats) + "\n\n"
        "Columns:\n\n" + "\n".join(notes) + "\n"
    )


def write_html(
    rows: Sequence[Row],
    path: Path,
    attacks: Sequence[str],
    main_attack: str,
    *,
    title: str,
    summary: dict[str, str],
    figures: Sequence[Path],
    notes: Sequence[str],
) -> None:
    """report.html: one self-contained page (figures embedded as data URIs, inline CSS)."""
    names = columns(attacks, main_attack)
    head = "".join(f"<th>{html.escape(n)}</th>" for n in names)
    body = []
    for row in rows:
        front = " class='front'" if row.get(PARETO) else ""
        cells = "".join(f"<td>{html.escape(_shown(n, row.get(n)))}</td>" for n in names)
        body.append(f"<tr{front}>{cells}</tr>")
    facts = "".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in summary.items()
    )
    images = "".join(
        f"<figure><img alt='{html.escape(f.stem)}' src='data:image/png;base64,"
        f"{base64.b64encode(f.read_bytes()).decode()}'><figcaption>{html.escape(f.name)}"
        "</figcaption></figure>"
        for f in figures
    )
    definitions = "".join(
        f"<li><code>{html.escape(k)}</code>: {html.escape(v)}</li>" for k, v in DEFINITIONS.items()
    )
    caveats = "".join(f"<li>{html.escape(n)}</li>" for n in notes)
    path.write_text(
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><table class='facts'>{facts}</table>"
        f"<h2>Figures</h2>{images}<h2>Configurations</h2>"
        f"<div class='scroll'><table class='grid'><thead><tr>{head}</tr></thead>"
        f"<tbody>{''.join(body)}</tbody></table></div>"
        f"<h2>Read with care</h2><ul>{caveats}</ul><h2>Columns</h2><ul>{definitions}</ul>"
        "</body></html>\n"
    )


_CSS = (
    "body{font-family:system-ui,sans-serif;margin:2em;color:#222}"
    "table{border-collapse:collapse;font-size:13px}th,td{border:1px solid #ccc;padding:3px 6px}"
    ".grid td{text-align:right}.grid td:nth-child(-n+4){text-align:left}"
    "tr.front{background:#fff1e0;font-weight:600}.facts th{text-align:left;background:#f4f4f4}"
    ".scroll{overflow-x:auto}figure{display:inline-block;margin:0 1em 1em 0}"
    "img{max-width:100%;border:1px solid #ddd}"
)


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return repr(round(value, 6))
    return str(value)


def _shown(name: str, value: Any) -> str:
    """A cell rounded for reading: mAP and rates to 3 decimals, times and memory to 1-2."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if not isinstance(value, int | float):
        return str(value)
    if name.endswith(("_ms", "_mb")) or name.endswith("_s"):
        return f"{value:.2f}" if abs(value) < 10 else f"{value:.1f}"
    return f"{value:.3f}"
