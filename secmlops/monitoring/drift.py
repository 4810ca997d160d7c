"""Drift and attack-rate signals of an inference-log window.

Drift: every feature column of the window is compared with the model's reference profile by a
two-sample Kolmogorov-Smirnov test (Evidently `ValueDrift(method="ks")`, so the value is a
p-value whatever the reference size); the window drifts when the share of columns whose p-value
falls below `drift_p_value` reaches `max_drifted_share`. The detection columns (count, scores,
box sizes) are the prediction drift, reported on their own as well. When the model's reference
carries a backbone-embedding projection, Evidently's `EmbeddingsDrift` ("ratio" method: a K-S
test per PCA component at the same `drift_p_value`) compares the logged embeddings too, and the
window drifts when the share of drifted components exceeds `max_drifted_share` (a shift the
hand-made features miss still shows). Evidently writes the HTML and JSON reports that operators
read; the decision uses the same values that the reports show.

Attack rate: the share of requests that serving's screener flagged (or, for records served
without a calibrated screener, whose adversarial score exceeds `score_threshold`). An alarm
fires when the share reaches `max_flagged_share`, or when it jumps against the previous window
(one-sided two-proportion z-test): a campaign that starts below the absolute bar still shows as
a sudden rise.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from secmlops.errors import DataError
from secmlops.fsutil import atomic_write_bytes
from secmlops.monitoring.embedding import EMBEDDING_PREFIX, embedding_columns
from secmlops.monitoring.features import DETECTION_FEATURES
from secmlops.monitoring.reference import FEATURE_COLUMNS, SCORE_COLUMN

# Evidently reports usage unless told not to; this must happen before its first import.
os.environ["DO_NOT_TRACK"] = "1"

FLAGGED_COLUMN = "flagged"
EMBEDDING_NAME = "backbone"
# Rows of a window the drift tests use (a seeded sample of larger windows). A two-sample K-S
# test's power is set by its effective size n*m/(n+m), which the reference (a few hundred rows)
# caps: 1,000 window rows against 300 reference rows keep 231 of the 300 a 10,000-row window
# would give, while Evidently's embedding report (a t-SNE of both samples) stays cheap.
MAX_TESTED_ROWS = 1000
HTML_REPORT = "drift-report.html"
JSON_REPORT = "drift-report.json"


@dataclass(frozen=True)
class MonitoringThresholds:
    """Every threshold of the monitoring stage; callers pass explicit values (no defaults).

    Attributes:
        max_drifted_share: drift when at least this share of feature columns drifted (0..1].
        drift_p_value: a column drifts when its K-S p-value is below this (0..1).
        min_window: fewer records than this cannot be judged (the check raises).
        max_flagged_share: attack alarm when at least this share of records is flagged (0..1].
        jump_p_value: attack alarm when the rise of the flagged share against the previous
            window is significant at this level (one-sided two-proportion z-test) (0..1).
        score_threshold: adversarial score above which a record without screening counts
            as flagged; None: such records are an error (they cannot be judged).
    """

    max_drifted_share: float
    drift_p_value: float
    min_window: int
    max_flagged_share: float
    jump_p_value: float
    score_threshold: float | None

    def __post_init__(self) -> None:
        for name in ("max_drifted_share", "max_flagged_share"):
            value = getattr(self, name)
            if not 0.0 < value <= 1.0:
                raise ValueError(f"{name} must be in (0, 1], got {value!r}")
        for name in ("drift_p_value", "jump_p_value"):
            value = getattr(self, name)
            if not 0.0 < value < 1.0:
                raise ValueError(f"{name} must be in (0, 1), got {value!r}")
        if isinstance(self.min_window, bool) or self.min_window < 2:
            raise ValueError(f"min_window must be an integer >= 2, got {self.min_window!r}")
        if self.score_threshold is not None and not math.isfinite(self.score_threshold):
            raise ValueError(f"score_threshold must be finite, got {self.score_threshold!r}")


@dataclass(frozen=True)
class DriftResult:
    """Outcome of one drift check (JSON-serialisable through `to_json`)."""

    detected: bool
    drifted_share: float
    drifted_columns: tuple[str, ...]
    p_values: dict[str, float]
    window_size: int
    reference_size: int
    html_report: str
    json_report: str
    thresholds: dict[str, Any] = field(default_factory=dict)
    # Share of drifted embedding components; None when the model records no embedding.
    embedding_drift_share: float | None = None
    embedding_drifted: bool = False
    prediction_drifted_columns: tuple[str, ...] = ()
    # Rows of the window the tests used (a seeded sample when the window is larger).
    tested_rows: int = 0

    def to_json(self) -> dict[str, Any]:
        """A plain dict for audit details and asset extras."""
        data = asdict(self)
        data["drifted_columns"] = list(self.drifted_columns)
        data["prediction_drifted_columns"] = list(self.prediction_drifted_columns)
        return data


@dataclass(frozen=True)
class AttackResult:
    """Outcome of one attack-rate check (JSON-serialisable through `to_json`)."""

    alarm: bool
    flagged: int
    total: int
    flagged_share: float
    jump: bool
    jump_p_value: float | None
    previous_share: float | None
    reasons: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        """A plain dict for audit details and asset extras."""
        data = asdict(self)
        data["reasons"] = list(self.reasons)
        return data


def records_to_frame(records: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """Flatten inference-log records into one row per request.

    Columns: every feature of `FEATURE_COLUMNS`, `adversarial_score`, `flagged` (1.0 or 0.0
    from serving's screening, NaN when the record was served without a screener), and emb_0..
    when the records carry a projected backbone `embedding`.

    Raises:
        DataError: a record lacks a feature or its score, a value is not a finite number, or
            some records carry an embedding and others do not or with another width (names the
            record's position and request id); a silent gap would hide drift.
    """
    rows: list[dict[str, float]] = []
    width: int | None = None
    for index, record in enumerate(records):
        where = f"inference record {index} ({record.get('request_id', 'no request_id')})"
        features = record.get("features")
        if not isinstance(features, Mapping):
            raise DataError(f"{where}: no 'features' object")
        row: dict[str, float] = {}
        for name in FEATURE_COLUMNS:
            row[name] = _finite(features.get(name), f"{where}: feature {name!r}")
        row[SCORE_COLUMN] = _finite(record.get(SCORE_COLUMN), f"{where}: {SCORE_COLUMN!r}")
        screening = record.get("screening") or {}
        if not isinstance(screening, Mapping):
            raise DataError(f"{where}: 'screening' is not an object")
        flagged = screening.get("flagged")
        if flagged is not None and not isinstance(flagged, bool):
            raise DataError(f"{where}: screening.flagged is not a boolean ({flagged!r})")
        row[FLAGGED_COLUMN] = float(flagged) if flagged is not None else math.nan
        embedding = record.get("embedding")
        size = len(embedding) if isinstance(embedding, list) else 0
        if width is None:
            width = size
        if size != width:
            raise DataError(
                f"{where}: embedding of width {size}, earlier records {width} (one window must "
                "come from one model's projection)"
            )
        for i, value in enumerate(embedding or []):
            row[f"{EMBEDDING_PREFIX}{i}"] = _finite(value, f"{where}: embedding[{i}]")
        rows.append(row)
    columns = [*FEATURE_COLUMNS, SCORE_COLUMN, FLAGGED_COLUMN, *embedding_columns(width or 0)]
    return pd.DataFrame(rows, columns=columns)


def check_drift(
    reference_df: pd.DataFrame,
    window_df: pd.DataFrame,
    out_dir: Path,
    thresholds: MonitoringThresholds,
) -> DriftResult:
    """Compare a window's feature distribution with the reference; write Evidently reports.

    Args:
        reference_df: the model's reference profile (`load_reference`).
        window_df: the window's rows (`records_to_frame`).
        out_dir: folder for `drift-report.html` and `drift-report.json` (written atomically).
        thresholds: the monitoring thresholds.

    Returns:
        The drift outcome with per-column p-values, drifted columns and report paths.

    Raises:
        DataError: a feature column is missing, the reference has embedding columns the window
            lacks, or the window is smaller than `min_window`.
    """
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import EmbeddingsDrift, ValueDrift
    from evidently.metrics.embeddings import RatioDriftMethod

    columns = list(FEATURE_COLUMNS)
    embedded = [c for c in reference_df.columns if c.startswith(EMBEDDING_PREFIX)]
    missing_embedding = [c for c in embedded if c not in window_df.columns]
    if missing_embedding:
        raise DataError(
            f"drift check: the reference has a backbone embedding but the window lacks "
            f"{missing_embedding} (was it served by another model version?)"
        )
    for name, frame in (("reference", reference_df), ("window", window_df)):
        missing = [c for c in columns if c not in frame.columns]
        if missing:
            raise DataError(f"drift check: {name} lacks feature columns {missing}")
    if len(window_df) < thresholds.min_window:
        raise DataError(
            f"drift check: window has {len(window_df)} records, fewer than min_window="
            f"{thresholds.min_window}; it cannot be judged"
        )
    definition = DataDefinition(
        numerical_columns=columns + embedded,
        embeddings={EMBEDDING_NAME: embedded} if embedded else None,
    )
    # method="ks" keeps the value a p-value for references above 1000 rows too.
    metrics: list[Any] = [
        ValueDrift(column=c, method="ks", threshold=thresholds.drift_p_value) for c in columns
    ]
    if embedded:
        metrics.append(
            EmbeddingsDrift(
                embeddings_name=EMBEDDING_NAME,
                drift_method=RatioDriftMethod(
                    component_stattest="ks",
                    component_stattest_threshold=thresholds.drift_p_value,
                    threshold=thresholds.max_drifted_share,
                ),
            )
        )
    used = columns + embedded
    tested = window_df[used].astype(float)
    if len(tested) > MAX_TESTED_ROWS:
        tested = tested.sample(MAX_TESTED_ROWS, random_state=0)
    snapshot = Report(metrics, include_tests=True).run(
        current_data=Dataset.from_pandas(tested, data_definition=definition),
        reference_data=Dataset.from_pandas(
            reference_df[used].astype(float), data_definition=definition
        ),
    )
    report = snapshot.dict()
    p_values = _p_values(report, columns)
    drifted = tuple(c for c in columns if p_values[c] < thresholds.drift_p_value)
    share = len(drifted) / len(columns)
    embedding_share = _embedding_share(report) if embedded else None
    # The same rule as Evidently's ratio method (strictly above the threshold).
    embedding_drifted = embedding_share is not None and (
        embedding_share > thresholds.max_drifted_share
    )
    out_dir = Path(out_dir)
    html_path, json_path = out_dir / HTML_REPORT, out_dir / JSON_REPORT
    atomic_write_bytes(html_path, snapshot.get_html_str(as_iframe=False).encode())
    atomic_write_bytes(json_path, snapshot.json().encode())
    return DriftResult(
        detected=share >= thresholds.max_drifted_share or embedding_drifted,
        drifted_share=share,
        drifted_columns=drifted,
        p_values=p_values,
        window_size=len(window_df),
        reference_size=len(reference_df),
        html_report=str(html_path),
        json_report=str(json_path),
        thresholds={
            "max_drifted_share": thresholds.max_drifted_share,
            "drift_p_value": thresholds.drift_p_value,
        },
        embedding_drift_share=embedding_share,
        embedding_drifted=embedding_drifted,
        prediction_drifted_columns=tuple(c for c in drifted if c in DETECTION_FEATURES),
        tested_rows=len(tested),
    )


def check_attacks(
    window_df: pd.DataFrame,
    thresholds: MonitoringThresholds,
    previous: AttackResult | None = None,
) -> AttackResult:
    """Attack-rate alarm of a window: absolute share, and a jump against the previous window.

    Args:
        window_df: the window's rows (`records_to_frame`).
        thresholds: the monitoring thresholds.
        previous: the previous window's result (None: no jump test).

    Returns:
        The attack outcome; `reasons` names which test fired ("share", "jump").

    Raises:
        DataError: the window is smaller than `min_window`, lacks its columns, or holds
            records without screening while `score_threshold` is None.
    """
    for name in (SCORE_COLUMN, FLAGGED_COLUMN):
        if name not in window_df.columns:
            raise DataError(f"attack check: window lacks column {name!r}")
    total = len(window_df)
    if total < thresholds.min_window:
        raise DataError(
            f"attack check: window has {total} records, fewer than min_window="
            f"{thresholds.min_window}; it cannot be judged"
        )
    screened = window_df[FLAGGED_COLUMN].to_numpy(dtype=float)
    unscreened = np.isnan(screened)
    if unscreened.any() and thresholds.score_threshold is None:
        raise DataError(
            f"attack check: {int(unscreened.sum())} records carry no screening verdict and no "
            "score_threshold is set to judge them"
        )
    scores = window_df[SCORE_COLUMN].to_numpy(dtype=float)
    by_score = scores > (thresholds.score_threshold if unscreened.any() else math.inf)
    flags = np.where(unscreened, by_score, screened > 0.5)
    flagged = int(flags.sum())
    share = flagged / total
    reasons: list[str] = []
    if share >= thresholds.max_flagged_share:
        reasons.append("share")
    jump_p = None
    if previous is not None and previous.total > 0:
        jump_p = _rise_p_value(previous.flagged, previous.total, flagged, total)
        if jump_p < thresholds.jump_p_value:
            reasons.append("jump")
    return AttackResult(
        alarm=bool(reasons),
        flagged=flagged,
        total=total,
        flagged_share=share,
        jump="jump" in reasons,
        jump_p_value=jump_p,
        previous_share=previous.flagged_share if previous is not None else None,
        reasons=tuple(reasons),
    )


def _rise_p_value(before: int, n_before: int, after: int, n_after: int) -> float:
    """One-sided p-value that the flagged rate rose (pooled two-proportion z-test)."""
    pooled = (before + after) / (n_before + n_after)
    if pooled in (0.0, 1.0):
        return 1.0  # nothing or everything flagged in both windows: no rise to see
    se = math.sqrt(pooled * (1 - pooled) * (1 / n_before + 1 / n_after))
    z = (after / n_after - before / n_before) / se
    return 0.5 * math.erfc(z / math.sqrt(2))


def _p_values(report: dict[str, Any], columns: list[str]) -> dict[str, float]:
    found: dict[str, float] = {}
    for metric in report.get("metrics", []):
        config = metric.get("config", {})
        if config.get("type", "").endswith(":ValueDrift") and config.get("column") in columns:
            found[config["column"]] = float(metric["value"])
    missing = [c for c in columns if c not in found or not math.isfinite(found[c])]
    if missing:
        # An unreadable report must not read as "no drift".
        raise DataError(f"drift check: Evidently returned no p-value for {missing}")
    return {c: found[c] for c in columns}


def _embedding_share(report: dict[str, Any]) -> float:
    for metric in report.get("metrics", []):
        if metric.get("config", {}).get("type", "").endswith(":EmbeddingsDrift"):
            value = float(metric["value"])
            if math.isfinite(value):
                return value
    # An unreadable report must not read as "no drift".
    raise DataError("drift check: Evidently returned no embedding drift score")


def _finite(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise DataError(f"{where} is missing or not a finite number ({value!r})")
    return float(value)
