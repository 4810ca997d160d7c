"""The overview as one self-contained HTML page (no script, a small inline stylesheet).

Every value that came from a file (versions, actors, reasons, CSV cells) is untrusted input and
passes through `html.escape`; links are built from names that `sources.report_file` will accept.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from html import escape
from typing import Any, TypeVar
from urllib.parse import quote

from secmlops.names import SHA256_HEX, matches
from secmlops.reporting.overview import (
    GateHistory,
    RegistryOverview,
    gate_history,
    registry_overview,
)
from secmlops.reporting.reports import (
    DriftOverview,
    TradeoffTable,
    latest_drift_report,
    tradeoff_table,
)
from secmlops.reporting.sources import Sources, trusted_keyring

log = logging.getLogger(__name__)
Section = TypeVar("Section", RegistryOverview, GateHistory, DriftOverview, TradeoffTable)

STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:1.2rem;color:#1a202c}
h1{font-size:1.4rem;margin:0 0 .3rem}h2{font-size:1.1rem;margin:1.6rem 0 .4rem}
.sources{color:#4a5568;font-size:.85rem}.sources code{background:#edf2f7;padding:0 .2rem}
table{border-collapse:collapse;font-size:.85rem;margin:.3rem 0}
th,td{border:1px solid #e2e8f0;padding:.25rem .5rem;text-align:left;vertical-align:top}
th{background:#f7fafc}.digest{font-family:monospace}.when{white-space:nowrap}
.ok{color:#22543d;background:#c6f6d5}.bad{color:#742a2a;background:#fed7d7}
.muted{color:#4a5568;background:#edf2f7}.badge{padding:0 .35rem;border-radius:.3rem}
.message{color:#744210;background:#fefcbf;padding:.3rem .5rem;display:inline-block}
"""
ISO_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d")
GOOD = {"verified", "passed", "pass"}
BAD = {"refused", "fail", "failed"}


@dataclass(frozen=True)
class Overview:
    """Everything the page shows, gathered once per request."""

    sources: Sources
    keys_message: str | None
    registry: RegistryOverview
    gates: GateHistory
    drift: DriftOverview
    tradeoffs: TradeoffTable


def read_registry(sources: Sources) -> tuple[RegistryOverview, str | None]:
    """The registry section and why signatures cannot be verified (None when they can)."""
    keyring, keys_message = trusted_keyring(sources)
    registry = _guarded(
        lambda: registry_overview(sources.registry_uri, keyring, sources.s3_endpoint_url),
        RegistryOverview(sources.registry_uri, ()),
    )
    return registry, keys_message


def read_gates(sources: Sources, limit: int = 50) -> GateHistory:
    """The gate history section (the last `limit` decisions)."""
    return _guarded(
        lambda: gate_history(sources.audit_log, limit),
        GateHistory(str(sources.audit_log), 0, False, ()),
    )


def read_drift(sources: Sources) -> DriftOverview:
    """The drift section."""
    return _guarded(
        lambda: latest_drift_report(sources.reports_root, sources.s3_endpoint_url),
        DriftOverview(str(sources.reports_root), None, None, None, (), 0, 0, ()),
    )


def read_tradeoffs(sources: Sources) -> TradeoffTable:
    """The trade-off section."""
    return _guarded(
        lambda: tradeoff_table(sources.tradeoffs_root),
        TradeoffTable(str(sources.tradeoffs_root), None, (), (), None, None, ()),
    )


def gather_overview(sources: Sources, gate_limit: int = 50) -> Overview:
    """Read all four sources; a section that fails unexpectedly carries the error as its message.

    Args:
        sources: where to read (`sources_from_settings`).
        gate_limit: how many gate and registry decisions to show.

    Returns:
        The overview (never raises for a bad source).
    """
    registry, keys_message = read_registry(sources)
    return Overview(
        sources=sources,
        keys_message=keys_message,
        registry=registry,
        gates=read_gates(sources, gate_limit),
        drift=read_drift(sources),
        tradeoffs=read_tradeoffs(sources),
    )


def _guarded(read: Callable[[], Section], fallback: Section) -> Section:
    """`read()`, or `fallback` with the error as its message: one bad source spoils no page."""
    try:
        return read()
    except Exception as exc:  # the page must render whatever a source holds
        log.exception("SecMLOps overview: a source could not be read")
        return replace(fallback, message=f"could not be read ({type(exc).__name__}: {exc})")


def render_page(overview: Overview, base_path: str) -> str:
    """The HTML page of `overview`; report links start with `base_path` (the app's mount)."""
    sources = overview.sources
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        "<title>SecMLOps</title><style>",
        STYLE,
        "</style></head><body>",
        "<h1>SecMLOps: registry, gates, drift, trade-offs</h1>",
        "<p class='sources'>registry <code>",
        escape(sources.registry_uri),
        "</code> &middot; audit log <code>",
        escape(str(sources.audit_log)),
        "</code> &middot; drift reports <code>",
        escape(str(sources.reports_root)),
        "</code> &middot; trade-off studies <code>",
        escape(str(sources.tradeoffs_root)),
        "</code></p>",
        _registry(overview.registry, overview.keys_message),
        _gates(overview.gates),
        _drift(overview.drift, base_path),
        _tradeoffs(overview.tradeoffs, base_path),
        "</body></html>",
    ]
    return "".join(parts)


def _badge(status: str) -> str:
    kind = "ok" if status in GOOD else "bad" if status in BAD else "muted"
    return f"<span class='badge {kind}'>{escape(status)}</span>"


def _digest(text: str) -> str:
    """A SHA-256 shown by its first 12 hex digits (the whole one on hover); other text as is."""
    if not matches(SHA256_HEX, text):
        return escape(text)
    return f"<span class='digest' title='{escape(text)}'>{escape(text[:12])}</span>"


def _when(iso: str) -> str:
    """An ISO time to the second, "UTC" for +00:00 (the log keeps the full value)."""
    if not ISO_TIME.match(iso):
        return escape(iso)
    shown = iso[:19].replace("T", " ") + (" UTC" if iso.endswith("+00:00") else iso[-6:])
    return f"<span class='when' title='{escape(iso)}'>{escape(shown)}</span>"


def _message(text: str | None) -> str:
    return f"<p class='message'>{escape(text)}</p>" if text else ""


def _table(headers: Sequence[str], rows: Iterable[Sequence[str]], table_id: str) -> str:
    """A table; `rows` cells are HTML already (escape them when building)."""
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table id='{table_id}'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _registry(registry: RegistryOverview, keys_message: str | None) -> str:
    rows = [
        [
            escape(v.model),
            escape(v.version),
            escape(", ".join(v.aliases)) or "&ndash;",
            _digest(v.weights_sha256),
            _when(v.pushed_at),
            escape(v.pushed_by),
            f"{_badge(v.signature)} {escape(v.signature_detail)}",
            f"{_badge(v.gate)} {escape(v.gate_detail)}",
        ]
        for v in registry.versions
    ]
    headers = ["model", "version", "aliases", "weights sha256", "pushed", "by", "signature", "gate"]
    return (
        "<section id='registry'><h2>Registry</h2>"
        + _message(keys_message)
        + _message(registry.message)
        + (_table(headers, rows, "registry-table") if rows else "")
        + "</section>"
    )


def _gates(history: GateHistory) -> str:
    rows = [
        [
            str(e.seq),
            _when(e.time),
            escape(e.stage),
            escape(e.action),
            _badge(e.decision),
            _digest(e.subject),
            escape(e.actor),
            escape(e.summary),
        ]
        for e in history.events
    ]
    chain = (
        f"<p class='sources'>hash chain verified over {history.entries} entries</p>"
        if history.chain_verified
        else ""
    )
    headers = ["seq", "time", "stage", "action", "decision", "subject", "actor", "evidence"]
    return (
        "<section id='gates'><h2>Gate history</h2>"
        + chain
        + _message(history.message)
        + (_table(headers, rows, "gates-table") if rows else "")
        + "</section>"
    )


def _link(base_path: str, kind: str, folder: str, name: str, label: str) -> str:
    href = f"{base_path}/reports/{kind}/{quote(folder)}/{quote(name)}"
    return f"<a href='{escape(href)}' target='_blank' rel='noopener'>{escape(label)}</a>"


def _drift(drift: DriftOverview, base_path: str) -> str:
    parts = ["<section id='drift'><h2>Drift</h2>"]
    if drift.window:
        status = "fail" if drift.checks_failed else "pass"
        links: list[str] = []
        for path, label in ((drift.html_report, "HTML report"), (drift.json_report, "JSON")):
            if path:
                folder, name = path.split("/", 1)  # "<window>/<file>"
                links.append(_link(base_path, "drift", folder, name, label))
        parts.append(
            f"<p>latest window <strong>{escape(drift.window)}</strong>: "
            f"{_badge(status)} {drift.checks_failed} of {drift.checks_total} checks failed "
            f"&middot; {' &middot; '.join(links)}</p>"
        )
    parts.append(_message(drift.message))
    rows = [
        [
            escape(c.column),
            f"{c.p_value:.3g}",
            f"{c.threshold:g}",
            _badge("fail" if c.drifted else "pass"),
        ]
        for c in drift.columns
    ]
    if rows:
        parts.append(_table(["feature", "K-S p-value", "threshold", "drift"], rows, "drift-table"))
    if drift.embedding is not None:
        embedding = drift.embedding
        parts.append(
            f"<p id='embedding-drift'>backbone embedding: {embedding['share']:.0%} of its PCA "
            f"components drifted (drift above {embedding['threshold']:.0%}) "
            f"{_badge('fail' if embedding['drifted'] else 'pass')}</p>"
        )
    others = [
        name for name in drift.failed_checks if not name.startswith(("Value Drift", "Drift in emb"))
    ]
    if others:
        parts.append("<p>other failed checks: " + escape("; ".join(others)) + "</p>")
    parts.append("</section>")
    return "".join(parts)


def _tradeoffs(table: TradeoffTable, base_path: str) -> str:
    parts = ["<section id='tradeoffs'><h2>Trade-offs</h2>"]
    if table.run:
        files: list[tuple[str, str]] = [
            (name, label)
            for name, label in ((table.report_html, "report"), (table.markdown, "markdown"))
            if name
        ]
        files += [(plot, plot) for plot in table.plots]
        links = [_link(base_path, "tradeoffs", table.run, name, label) for name, label in files]
        parts.append(
            f"<p>study <strong>{escape(table.run)}</strong>"
            + (" &middot; " + " &middot; ".join(links) if links else "")
            + "</p>"
        )
    parts.append(_message(table.message))
    if table.rows:
        rows = [[escape(row.get(c, "")) for c in table.columns] for row in table.rows]
        parts.append(_table(table.columns, rows, "tradeoffs-table"))
    parts.append("</section>")
    return "".join(parts)


def page_json(overview: Overview) -> dict[str, Any]:
    """The whole overview as plain JSON (the API's index)."""
    return {
        "sources": overview.sources.to_json(),
        "keys_message": overview.keys_message,
        "registry": overview.registry.to_json(),
        "gates": overview.gates.to_json(),
        "drift": overview.drift.to_json(),
        "tradeoffs": overview.tradeoffs.to_json(),
    }
