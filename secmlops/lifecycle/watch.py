"""Monitoring and the trade-off study as DAG tasks."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

from secmlops.lifecycle.settings import (
    PRODUCTION_ALIAS,
    LifecycleSettings,
    audit_log,
    trusted_keyring,
)

log = logging.getLogger(__name__)


def monitor(settings: LifecycleSettings, window_minutes: float, run_id: str) -> dict[str, Any]:
    """Judge the last window of the production model's served requests.

    The production model is pulled and verified first: its signed reference profile is what
    the window is compared with.

    Returns:
        `monitor_window`'s result plus "version".
    """
    import datetime as dt

    from secmlops.monitoring.window import monitor_window
    from secmlops.policy import load_policy
    from secmlops.registry import Registry

    registry = Registry.open(settings.model_registry)
    version, _ = registry.resolve(settings.model_name, PRODUCTION_ALIAS)
    folder = settings.workdir / "monitoring" / "models" / version
    registry.pull(settings.model_name, version, folder, trusted_keyring(), overwrite=True)
    result = monitor_window(
        settings.inference_log, folder, load_policy(settings.policy).monitoring,
        settings.monitoring_reports, settings.workdir / "monitoring" / "state.json", audit_log(),
        window=dt.timedelta(minutes=window_minutes),
    )  # fmt: skip
    return {"version": version, **json.loads(json.dumps(result))}


def tradeoff_study(
    settings: LifecycleSettings, data_dir: str, quick: bool, run_id: str
) -> dict[str, Any]:
    """The security/performance trade-off study on a verified dataset version.

    Finished trainings and evaluations are cached per run, so a retried task continues instead
    of starting the study over; the cache (every trained model) is removed once the study is
    written.

    Returns:
        {"out_dir", "configurations", "pareto_front", "seconds"}
    """
    from secmlops.pipeline import safe_name
    from secmlops.tradeoffs.study import default_out_dir, run_study

    out = default_out_dir(settings.workdir)
    cache = settings.workdir / "runs" / "tradeoffs-cache" / safe_name(run_id)
    result = run_study(
        Path(data_dir), out, quick, policy_path=settings.policy, cache_dir=cache, progress=log.info
    )
    shutil.rmtree(cache, ignore_errors=True)
    return {
        "out_dir": str(result.out_dir),
        "configurations": len(result.rows),
        "pareto_front": list(result.pareto_front),
        "seconds": round(result.seconds, 1),
    }
