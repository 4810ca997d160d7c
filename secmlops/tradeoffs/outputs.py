"""Everything a study writes, and the facts about where it ran.

Output file names are a contract: the Airflow plugin lists `<root>/<run>/tradeoffs.csv` and shows
`report.html`.
"""

from __future__ import annotations

import os
import platform
import re
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from secmlops.data.dataset import DetectionDataset
from secmlops.fsutil import atomic_write_json
from secmlops.reporting.reports import TRADEOFFS_CSV, TRADEOFFS_HTML, TRADEOFFS_MARKDOWN
from secmlops.supplychain.provenance import code_version
from secmlops.tradeoffs.configurations import (
    MODEL_CONTROLS,
    ControlConfiguration,
    ModelConfiguration,
    StudyGrid,
)
from secmlops.tradeoffs.measure_controls import ControlMeasurement
from secmlops.tradeoffs.pareto import pareto_front
from secmlops.tradeoffs.plots import PlotPoint, scatter_png
from secmlops.tradeoffs.report import (
    PARETO,
    Row,
    adaptive_column,
    check_rows,
    write_csv,
    write_html,
    write_markdown,
)

SCHEMA = "secmlops.tradeoffs/v1"
# The files the Airflow view reads are named once, in the view's (torch-free) module.
CSV_FILE, MARKDOWN_FILE, HTML_FILE = TRADEOFFS_CSV, TRADEOFFS_MARKDOWN, TRADEOFFS_HTML
STUDY_FILE = "study.json"
COST_PLOT, PARETO_PLOT = "robust_vs_training_cost.png", "robust_vs_clean_pareto.png"
OUTPUT_FILES = (CSV_FILE, MARKDOWN_FILE, HTML_FILE, COST_PLOT, PARETO_PLOT, STUDY_FILE)
__all__ = ["OUTPUT_FILES", "SCHEMA", "adaptive_column", "mark_pareto", "write_outputs"]


def mark_pareto(rows: list[Row], main_attack: str) -> list[str]:
    """Set each model row's `pareto` flag over (clean mAP, robust mAP under `main_attack`).

    Returns:
        The ids on the front, in table order.
    """
    model_rows = [r for r in rows if r["control"] in MODEL_CONTROLS]
    flags = pareto_front([(r["clean_map"], r[main_attack]) for r in model_rows])
    for row, flag in zip(model_rows, flags, strict=True):
        row[PARETO] = flag
    return [r["config_id"] for r in model_rows if r[PARETO]]


# What an "off" row's detection rate is zero against.
OFF_THREATS = {
    "data_verification": "dataset tampering (nothing checks)",
    "poisoning_screen": "BadDet poisoning (nothing screens)",
}


def control_row(config: ControlConfiguration, m: ControlMeasurement) -> Row:
    """The table row of a lifecycle control configuration."""
    return {
        "config_id": config.id, "control": config.control, "params": config.params(),
        "threat": m.threat, "latency_p50_ms": m.latency_p50_ms,
        "latency_p95_ms": m.latency_p95_ms, "peak_mem_mb": m.peak_mem_mb,
        "pipeline_s": m.pipeline_s, "detection_rate": m.detection_rate,
        "false_alarm_rate": m.false_alarm_rate,
    }  # fmt: skip


def describe_dataset(root: Path, dataset: DetectionDataset, split: str) -> dict[str, Any]:
    """Where a dataset is and how big, for study.json."""
    return {
        "dir": str(root.resolve()),
        "split": split,
        "images": len(dataset.images),
        "splits": {name: len(ids) for name, ids in dataset.splits.items()},
    }


def plot_group(config: ModelConfiguration) -> str:
    """The legend entry of a model configuration on the plots."""
    training = {"none": "", "fgsm-rs": "FGSM-RS training", "pgd": "PGD training"}
    adversarial = training[config.training.method]
    if config.training.objectives != "loss":
        adversarial += f" ({config.training.objectives})"
    if config.training.patch_augmentation:
        kind = "adversarial patches" if config.training.patch_attack_steps else "random patches"
        adversarial = f"{adversarial} + {kind}" if adversarial else kind
    if config.preprocessing is None:
        return adversarial or "no defence"
    kind = "JPEG" if config.preprocessing.kind == "jpeg" else "median smoothing"
    return f"{kind} + {adversarial}" if adversarial else f"{kind} at inference"


def write_outputs(folder: Path, rows: list[Row], grid: StudyGrid, meta: dict[str, Any]) -> None:
    """Check the table, then write every file of `OUTPUT_FILES` into `folder`.

    Raises:
        ValueError: the table is inconsistent (see `report.check_rows`); nothing is written.
    """
    budget = grid.budget
    attacks, main = [a.name for a in budget.attacks], budget.main_attack
    check_rows(rows, attacks, main)
    write_csv(rows, folder / CSV_FILE, attacks, main)
    models = [r for r in rows if r["control"] in MODEL_CONTROLS]
    robust_label = f"robust mAP@0.5 under {main}"
    scatter_png(
        [PlotPoint(r["training_cpu_s"], r[main], r["config_id"], r["group"]) for r in models],
        folder / COST_PLOT,
        title=f"Robustness vs training cost ({grid.name} study)",
        # CPU time, not wall time: on a shared machine the wall time of each training depends
        # on what else ran meanwhile, which would reorder the configurations by chance.
        x_label="training CPU time (s)",
        y_label=robust_label,
    )
    scatter_png(
        [PlotPoint(r["clean_map"], r[main], r["config_id"], r["group"], r[PARETO]) for r in models],
        folder / PARETO_PLOT,
        title=f"Robust vs clean accuracy, Pareto front marked ({grid.name} study)",
        x_label="clean mAP@0.5",
        y_label=robust_label,
        front=True,
    )
    header = _header(grid, meta)
    write_markdown(rows, folder / MARKDOWN_FILE, attacks, main, header)
    summary = {
        "command": meta["command"],
        "data": f"{meta['data']['dir']} (train)",
        "evaluation": f"{meta['evaluation']['dir']} ({meta['evaluation']['split']}, "
        f"{meta['evaluation']['images']} images)",
        "device": f"{meta['device']}; {meta['hardware']['cpu']}, "
        f"{meta['hardware']['cpus_usable']} usable CPUs, torch threads "
        f"{meta['hardware']['torch_threads']}",
        "load average (start, end)": f"{meta['load_average']['start'][0]:.2f}, "
        f"{meta['load_average']['end'][0]:.2f}",
        "wall time": f"{meta['seconds']:.0f} s",
        "main attack": main,
        "Pareto front": ", ".join(meta["pareto_front"]),
        "versions": ", ".join(f"{k} {v}" for k, v in meta["versions"].items()),
    }
    write_html(
        rows, folder / HTML_FILE, attacks, main,
        title=f"Security/performance trade-offs ({grid.name} study, {meta['started_at']})",
        summary=summary, figures=[folder / PARETO_PLOT, folder / COST_PLOT], notes=caveats(main),
    )  # fmt: skip
    atomic_write_json(folder / STUDY_FILE, {**meta, "files": list(OUTPUT_FILES)})


def caveats(main_attack: str) -> list[str]:
    """What the figures do not say; repeated in the HTML report."""
    return [
        "Preprocessing defences (JPEG, median smoothing) are scored against a non-adaptive "
        "attacker: the attacks are computed on the undefended forward pass, which overstates "
        f"them. {adaptive_column(main_attack)} is the same attack computed through the defence "
        "(BPDA: the defence's gradient taken as the identity); trust that one.",
        "Serving screening is scored against attacks that ignore the screen; an attacker who "
        "also optimises against it can evade it (Carlini & Wagner 2017).",
        "A control that is off costs nothing and catches nothing by construction; a plain model "
        "load still compares the weights with the card's digest, so it catches careless edits.",
        "One run, one seed. Timings come from one machine, possibly shared (see the load "
        "average); compare rows of one study, not studies of different machines.",
    ]


def hardware(device: torch.device) -> dict[str, Any]:
    """The machine the study ran on (for study.json)."""
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        match = re.search(r"^model name\s*:\s*(.+)$", cpuinfo.read_text(), re.MULTILINE)
        cpu = match[1].strip() if match else cpu
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        usable = os.cpu_count() or 1
    facts: dict[str, Any] = {
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "cpus_usable": usable,
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "platform": platform.platform(),
        "memory_gb": _memory_gb(),
    }
    if device.type == "cuda":
        facts["gpu"] = torch.cuda.get_device_name(device)
    return facts


def versions() -> dict[str, str]:
    """Versions of what produced the figures (for study.json and the report)."""
    found = {"python": platform.python_version()}
    for package in ("secmlops", "torch", "torchvision", "adversarial-robustness-toolbox", "numpy"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = "not installed"
    found["git_commit"] = _code_label()
    return found


def _header(grid: StudyGrid, meta: dict[str, Any]) -> str:
    evaluation = meta["evaluation"]
    hw = meta["hardware"]
    return "\n".join(
        [
            f"# Security/performance trade-offs ({grid.name} study)",
            "",
            f"- command: `{meta['command']}`",
            f"- data: `{meta['data']['dir']}` (train); evaluation: `{evaluation['dir']}` "
            f"({evaluation['split']}, {evaluation['images']} images)",
            f"- device: {meta['device']} ({hw['cpu']}, {hw['cpus_usable']} usable CPUs, torch "
            f"threads {hw['torch_threads']}); load average {meta['load_average']['start'][0]:.2f}"
            f" at the start, {meta['load_average']['end'][0]:.2f} at the end",
            f"- started {meta['started_at']}, wall time {meta['seconds']:.0f} s{_reused(meta)}; "
            f"git {meta['versions']['git_commit']}",
            f"- main attack: {meta['main_attack']}; Pareto front: "
            f"{', '.join(meta['pareto_front'])}",
            f"- {caveats(meta['main_attack'])[0]}",
        ]
    )


def _reused(meta: dict[str, Any]) -> str:
    units = meta.get("reused_from_cache", {}).get("units") or []
    return f" (this run; {len(units)} units reused from the cache)" if units else ""


def _memory_gb() -> float | None:
    meminfo = Path("/proc/meminfo")
    if not meminfo.is_file():
        return None
    match = re.search(r"^MemTotal:\s+(\d+) kB", meminfo.read_text(), re.MULTILINE)
    return round(int(match[1]) / 2**20, 1) if match else None


def _code_label() -> str:
    """The code version, short: `<commit>[ (with local edits)]`, or unknown."""
    code = code_version()
    if not code["git_commit"]:
        return "unknown"
    return f"{code['git_commit'][:7]}{' (with local edits)' if code['dirty'] else ''}"
