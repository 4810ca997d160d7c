"""Monitoring and the trade-off study as lifecycle tasks."""

from __future__ import annotations

import datetime as dt
import json
import logging
import shutil
from pathlib import Path

from secmlops.lifecycle.contracts import StudySummary, VerifiedData, WindowVerdict
from secmlops.settings import PRODUCTION_ALIAS, Settings

log = logging.getLogger(__name__)


def monitor(settings: Settings, window_minutes: float) -> WindowVerdict:
    """Judge the last window of the production model's served requests.

    The production model is pulled and verified first: its signed reference profile is what
    the window is compared with. The cooldown state is `Settings.monitoring_state`, the one
    `secmlops monitor` uses too.

    Raises:
        DataError: too few requests in the window to judge it, or a malformed record.
    """
    from secmlops.lifecycle.release import pull_production
    from secmlops.monitoring.window import monitor_window
    from secmlops.policy import load_policy

    folder = settings.workdir / "monitoring" / "models" / PRODUCTION_ALIAS
    verified = pull_production(settings, folder)
    version = verified.move.version if verified.move else ""
    result = monitor_window(
        settings.inference_log, folder, load_policy(settings.policy).monitoring,
        settings.monitoring_reports, settings.monitoring_state, settings.audit(),
        window=dt.timedelta(minutes=window_minutes), s3_endpoint_url=settings.s3_endpoint_url,
    )  # fmt: skip
    plain = json.loads(json.dumps(result))  # numpy scalars and paths as JSON
    return {"version": version, "records": plain["records"], "drift": plain["drift"],
            "attack": plain["attack"], "request": plain["request"]}  # fmt: skip


def tradeoff_study(
    settings: Settings, data: VerifiedData, quick: bool, run_id: str
) -> StudySummary:
    """The security/performance trade-off study on a verified dataset version.

    Finished trainings and evaluations are cached per run, so a retried task continues instead
    of starting the study over; the cache (every trained model) is removed once the study is
    written.
    """
    from secmlops.fsutil import safe_name
    from secmlops.tradeoffs.study import default_out_dir, run_study

    out = default_out_dir(settings.tradeoffs_dir)
    cache = settings.workdir / "runs" / "tradeoffs-cache" / safe_name(run_id)
    result = run_study(
        Path(data["data_dir"]), out, quick, policy_path=settings.policy, cache_dir=cache,
        progress=log.info,
    )  # fmt: skip
    shutil.rmtree(cache, ignore_errors=True)
    return {
        "out_dir": str(result.out_dir),
        "configurations": len(result.rows),
        "pareto_front": list(result.pareto_front),
        "seconds": round(result.seconds, 1),
    }
