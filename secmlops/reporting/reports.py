"""The newest drift report and the newest trade-off study, read from their report folders.

As in `overview`, nothing raises for a missing or malformed source: the result's `message` says
why it is empty or partial ("no study yet", "drift-report.json unreadable").
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from secmlops.errors import DataError
from secmlops.names import full_pattern, matches
from secmlops.reporting import report_store

WINDOW_PATTERN = full_pattern(r"\d{8}T\d{6}Z")  # monitoring's per-window folder names
# secmlops.monitoring.drift's file names (not imported: that module loads torch and pandas, which
# a page view should not pay for; tests/plugins checks they agree).
DRIFT_HTML = "drift-report.html"
DRIFT_JSON = "drift-report.json"
TRADEOFFS_CSV = "tradeoffs.csv"
TRADEOFFS_MARKDOWN = "tradeoffs.md"
TRADEOFFS_HTML = "report.html"
MAX_TRADEOFF_ROWS = 500


@dataclass(frozen=True)
class DriftColumn:
    """One feature's two-sample K-S test in a drift report."""

    column: str
    p_value: float
    threshold: float
    drifted: bool


@dataclass(frozen=True)
class DriftOverview:
    """The newest monitoring window's drift report.

    `html_report`/`json_report` are paths relative to the reports root ("<window>/<file>"), for
    `sources.report_file`; `checks_failed` counts the report's failed Evidently tests (feature
    drift and, when the model logs embeddings, embedding drift).
    """

    reports_root: str
    window: str | None
    html_report: str | None
    json_report: str | None
    columns: tuple[DriftColumn, ...]
    checks_failed: int
    checks_total: int
    failed_checks: tuple[str, ...]
    message: str | None = None
    # Evidently's EmbeddingsDrift on the backbone embedding: {"share", "threshold", "drifted"}
    # (share of PCA components whose K-S test drifted); None when the model logs no embedding.
    embedding: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        """A plain dict for the JSON API."""
        return asdict(self)


@dataclass(frozen=True)
class TradeoffTable:
    """The newest trade-off study's table (`tradeoffs.csv`), cells as written."""

    tradeoffs_root: str
    run: str | None
    columns: tuple[str, ...]
    rows: tuple[dict[str, str], ...]
    report_html: str | None
    markdown: str | None
    plots: tuple[str, ...]
    message: str | None = None

    def to_json(self) -> dict[str, Any]:
        """A plain dict for the JSON API."""
        return asdict(self)


def latest_drift_report(
    reports_root: Path | str, s3_endpoint_url: str | None = None
) -> DriftOverview:
    """The newest window's drift report under `reports_root` (`<YYYYmmddTHHMMSSZ>/drift-report.*`).

    Args:
        reports_root: where monitoring writes one folder per judged window: a folder, or an
            `s3://bucket/prefix` (read on `s3_endpoint_url` with AWS credentials).

    Returns:
        The report's per-feature p-values and failed checks; `message` says why they are
        missing (no window yet, a JSON report that cannot be read).
    """
    root = str(reports_root)
    empty = DriftOverview(root, None, None, None, (), 0, 0, ())
    try:
        names = report_store.list_folders(reports_root, s3_endpoint_url)
    except DataError as exc:
        return replace(empty, message=f"no drift report yet: {exc}")
    # Newest first, stopping at the first window with a report: hourly windows pile up.
    window = next(
        (
            name
            for name in reversed(names)
            if matches(WINDOW_PATTERN, name)
            and any(
                report_store.has_file(reports_root, name, f, s3_endpoint_url)
                for f in (DRIFT_JSON, DRIFT_HTML)
            )
        ),
        None,
    )
    if window is None:
        return replace(empty, message=f"no drift report yet under {root}")
    has_html = report_store.has_file(reports_root, window, DRIFT_HTML, s3_endpoint_url)
    found = replace(
        empty, window=window, html_report=f"{window}/{DRIFT_HTML}" if has_html else None
    )
    try:
        report = json.loads(
            report_store.read_report(reports_root, window, DRIFT_JSON, s3_endpoint_url)
        )
        columns = _drift_columns(report)
        embedding = _embedding_drift(report)
        tests = [t for t in report.get("tests", []) if isinstance(t, dict)]
    except DataError:
        return replace(found, message=f"{window}: no {DRIFT_JSON} beside the HTML report")
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        return replace(found, message=f"{window}/{DRIFT_JSON} unreadable ({exc})")
    failed = tuple(str(t.get("name")) for t in tests if t.get("status") == "FAIL")
    return replace(
        found,
        json_report=f"{window}/{DRIFT_JSON}",
        columns=columns,
        checks_failed=len(failed),
        checks_total=len(tests),
        failed_checks=failed,
        embedding=embedding,
    )


def _embedding_drift(report: dict[str, Any]) -> dict[str, Any] | None:
    """The `EmbeddingsDrift` metric's share of drifted components and its threshold."""
    for metric in report.get("metrics", []):
        config = metric.get("config", {})
        if str(config.get("type", "")).endswith(":EmbeddingsDrift"):
            share = float(metric["value"])
            threshold = float((config.get("drift_method") or {}).get("threshold", math.nan))
            # Evidently's ratio method: drift when the share is strictly above the threshold.
            return {"share": share, "threshold": threshold, "drifted": share > threshold}
    return None


def _drift_columns(report: dict[str, Any]) -> tuple[DriftColumn, ...]:
    """Per-feature K-S p-values of the report's `ValueDrift` metrics."""
    columns = []
    for metric in report.get("metrics", []):
        config = metric.get("config", {})
        if not str(config.get("type", "")).endswith(":ValueDrift"):
            continue
        p_value, threshold = float(metric["value"]), float(config.get("threshold", math.nan))
        columns.append(
            DriftColumn(
                column=str(config.get("column")),
                p_value=p_value,
                threshold=threshold,
                drifted=p_value < threshold,
            )
        )
    return tuple(columns)


def tradeoff_table(tradeoffs_root: Path) -> TradeoffTable:
    """The newest study's `tradeoffs.csv` (by modification time) under `tradeoffs_root`.

    Args:
        tradeoffs_root: where the trade-off study writes one folder per run
            (`tradeoffs.csv`, `tradeoffs.md`, `report.html`, PNG plots).

    Returns:
        Its header and rows (at most `MAX_TRADEOFF_ROWS`), and the names of its report files;
        `message` says why it is empty ("no study yet", an unreadable CSV).
    """
    root = Path(tradeoffs_root)
    empty = TradeoffTable(str(root), None, (), (), None, None, ())
    try:
        tables = [p for p in root.glob(f"*/{TRADEOFFS_CSV}") if p.is_file()]
    except OSError as exc:
        return replace(empty, message=f"{root} unreadable ({exc})")
    if not tables:
        return replace(empty, message=f"no study yet under {root}")
    newest = max(tables, key=lambda p: (p.stat().st_mtime, p.parent.name))
    run = newest.parent
    found = replace(
        empty,
        run=run.name,
        report_html=TRADEOFFS_HTML if (run / TRADEOFFS_HTML).is_file() else None,
        markdown=TRADEOFFS_MARKDOWN if (run / TRADEOFFS_MARKDOWN).is_file() else None,
        plots=tuple(sorted(p.name for p in run.glob("*.png") if p.is_file())),
    )
    try:
        with newest.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            columns = tuple(reader.fieldnames or ())
            rows: list[dict[str, str]] = []
            for row in reader:
                if len(rows) == MAX_TRADEOFF_ROWS:
                    break
                rows.append({c: row.get(c) or "" for c in columns})
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        return replace(found, message=f"{run.name}/{TRADEOFFS_CSV} unreadable ({exc})")
    message = None if rows else f"{run.name}/{TRADEOFFS_CSV} has no rows"
    return replace(found, columns=columns, rows=tuple(rows), message=message)
