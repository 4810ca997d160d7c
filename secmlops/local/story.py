"""What `make demo` tells the person who runs it: progress while Airflow works, and at the end
what every control decided.

`RunProgress` is polled while the demo waits on a DAG run: it prints each task as it starts and
ends (with its time, from Airflow's REST API) and each training epoch as its checkpoint lands
(the trainer's `checkpoints/state.json` in the run's folder), so a ten-minute run is never
silent. `demo_summary` gathers the outcome from the runs' XComs (REST API) and the evidence files
they name (the robustness report, the signed gate record, the audit log); `render_summary`
turns it into the few lines a person reads. The same summary is written as JSON for scripts.
"""

from __future__ import annotations

import json
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from secmlops.lifecycle.approval import gate_record_checks
from secmlops.local.airflow_runner import task_instances

FINISHED = ("success", "failed", "skipped", "upstream_failed")
# The per-image recall figures the summary shows, in this order (None when the report has none).
ROBUST_FIGURES = ("worst_case_linf_2", "worst_case_linf_4", "person_patch")


@dataclass
class RunProgress:
    """Prints a DAG run's task starts and ends, and its trainings' epochs, as they happen.

    Call it while waiting (it is cheap: one REST call and a few small file reads).

    Args:
        checkpoints: model name -> its trainer checkpoint `state.json` (may not exist yet).
        started: `time.monotonic()` the printed clock counts from (default: now).
    """

    api: httpx.Client
    dag_id: str
    run_id: str
    say: Callable[[str], None]
    checkpoints: Mapping[str, Path] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)
    _states: dict[str, str] = field(default_factory=dict)
    _epochs: dict[str, int] = field(default_factory=dict)

    def __call__(self) -> None:
        """Print what changed since the last call."""
        tasks = task_instances(self.api, self.dag_id, self.run_id)
        for task_id, task in sorted(tasks.items(), key=lambda kv: kv[1].get("start_date") or "~"):
            state = task.get("state") or "none"
            if self._states.get(task_id) == state:
                continue
            self._states[task_id] = state
            line = _task_line(task_id, state, task.get("duration"))
            if line:
                self.say(f"  [{self._clock()}] {self.dag_id} > {line}")
        for name, path in self.checkpoints.items():
            for epoch_line in self._new_epochs(name, path):
                self.say(f"  [{self._clock()}]     {epoch_line}")

    def _new_epochs(self, name: str, path: Path) -> list[str]:
        try:
            state = json.loads(path.read_text())
        except (OSError, ValueError):
            return []  # not written yet, or being replaced (it is written by rename)
        history = state.get("history") or []
        total = (state.get("config") or {}).get("epochs") or "?"
        shown = self._epochs.get(name, 0)
        self._epochs[name] = len(history)
        return [
            f"{name} epoch {int(e['epoch'])}/{total}: loss {e['loss']:.3f}, "
            f"val mAP@0.5 {e['val_mAP50']:.3f} ({e['seconds']:.0f} s)"
            for e in history[shown:]
        ]

    def _clock(self) -> str:
        elapsed = int(time.monotonic() - self.started)
        return f"{elapsed // 60:02d}:{elapsed % 60:02d}"


def _task_line(task_id: str, state: str, duration: float | None) -> str | None:
    if state == "running":
        return f"{task_id} started"
    if state == "awaiting_input":
        return f"{task_id} waits for a person's answer"
    if state in FINISHED:
        took = f" in {duration:.0f} s" if isinstance(duration, int | float) else ""
        return f"{task_id} {state}{took}"
    return None  # scheduled, queued, up_for_retry...: the next change says more


# ------------------------------------------------------------------------------- the summary
def xcom(api: httpx.Client, dag_id: str, run_id: str, task_id: str) -> Any:
    """The return value of one task of a run (REST API v2), as JSON data; None when absent."""
    run = urllib.parse.quote(run_id, safe="")
    response = api.get(
        f"/api/v2/dags/{dag_id}/dagRuns/{run}/taskInstances/{task_id}/xcomEntries/return_value"
    )
    if response.status_code == 404:
        return None
    response.raise_for_status()
    value = response.json()["value"]
    return json.loads(value) if isinstance(value, str) else value


def model_figures(report: Mapping[str, Any]) -> dict[str, float | None]:
    """Headline clean and robust figures of one robustness report, at its operating point."""
    clean, attacks = report["clean"], report["attacks"]
    figures: dict[str, float | None] = {
        "clean_mAP50": clean.get("mAP50"),
        "clean_recall": clean.get("recall"),
        "clean_mr2": clean.get("mr2"),
    }
    for name in ROBUST_FIGURES:
        figures[f"{name}_recall"] = (attacks.get(name) or {}).get("recall")
    return figures


def demo_summary(
    api: httpx.Client,
    runs: Mapping[str, str],
    audit_entries: int,
    stage_seconds: Mapping[str, float],
) -> dict[str, Any]:
    """What the demo's runs decided, from their XComs and the evidence files they name.

    Args:
        runs: DAG id -> the run id the demo waited on (data pull, training, monitoring).
        audit_entries: entries of the audit log, verified by the caller.
        stage_seconds: wall time of each stage of the demo.
    """
    pull, train = runs["secmlops_data_pull"], runs["secmlops_training"]
    watch = runs["secmlops_monitoring"]
    verified = xcom(api, "secmlops_data_pull", pull, "verify_data")
    validated = xcom(api, "secmlops_data_pull", pull, "validate_data")
    screened = xcom(api, "secmlops_data_pull", pull, "screen_data")
    candidate = xcom(api, "secmlops_training", train, "train_model")
    baseline = xcom(api, "secmlops_training", train, "train_baseline")
    evaluated = xcom(api, "secmlops_training", train, "evaluate_model")
    baseline_evaluated = xcom(api, "secmlops_training", train, "evaluate_baseline")
    gated = xcom(api, "secmlops_training", train, "gate_model")
    promoted = xcom(api, "secmlops_training", train, "promote_model")
    verdict = xcom(api, "secmlops_monitoring", watch, "check_window")

    report = json.loads(Path(evaluated["report"]).read_text())
    checks = gate_record_checks(Path(gated["record"]))
    undefended = (
        model_figures(json.loads(Path(baseline_evaluated["report"]).read_text()))
        if baseline_evaluated
        else None
    )
    request = verdict["request"]
    return {
        "data": {
            "rev": verified["rev"],
            "signed_by": verified["signer"],
            "manifest_digest": verified["manifest_digest"],
            "files": verified["files"],
            "validation": validated["summary"],
            "screening": screened["summary"],
        },
        "training": {
            "defended": _training(candidate, report["model"].get("defence")),
            "undefended": _training(baseline, None) if baseline else None,
        },
        "figures": {"defended": model_figures(report), "undefended": undefended},
        "operating_point": report.get("operating_point"),
        "gate": {
            "passed": gated["passed"],
            "checks": len(checks),
            "failed": [c for c in checks if not c["passed"]],
            "thresholds": {c["name"]: c["threshold"] for c in checks if _is_number(c["threshold"])},
            "policy_digest": gated["policy_digest"],
        },
        "release": promoted,
        "monitoring": {
            "records": verdict["records"],
            "drift_detected": verdict["drift"]["detected"],
            "drifted_share": verdict["drift"]["drifted_share"],
            "drifted_columns": verdict["drift"]["drifted_columns"],
            "attack_alarm": verdict["attack"]["alarm"],
            "attack_flagged_share": verdict["attack"]["flagged_share"],
            "retraining_requested": request is not None,
            "retraining_reason": request["reason"] if request else None,
        },
        "audit": {"entries": audit_entries, "chain": "verified"},
        "stage_seconds": dict(stage_seconds),
    }


def _training(trained: Mapping[str, Any], defence: Any) -> dict[str, Any]:
    return {
        "defence": defence,
        "epochs": trained["epochs"],
        "best_epoch": trained["best_epoch"],
        "seconds": trained["seconds"],
        "device": trained["device"],
    }


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def render_summary(summary: Mapping[str, Any]) -> list[str]:
    """The summary as the lines a person reads at the end of the demo."""
    data, gate, watch = summary["data"], summary["gate"], summary["monitoring"]
    screening = data["screening"]
    lines = [
        "What the secure lifecycle decided",
        f"  data      {data['rev']}: {data['files']} files, manifest signed by {data['signed_by']} "
        f"and verified; annotations valid; poisoning screen flagged "
        f"{screening.get('flagged', 0)} of {screening.get('images', '?')} images",
    ]
    defended, undefended = summary["figures"]["defended"], summary["figures"]["undefended"]
    thresholds = gate["thresholds"]
    lines.append(f"  {'figure':27} {'undefended':>10} {'defended':>9}  gate bar")
    for key, label, check in (
        ("clean_mAP50", "clean mAP@0.5", "clean_map50"),
        ("clean_recall", "clean recall at op. point", "clean_recall"),
        ("clean_mr2", "clean miss rate MR^-2", "clean_mr2"),
        ("worst_case_linf_2_recall", "recall, worst attack 2/255",
         "robust_recall.worst_case_linf_2"),
        ("worst_case_linf_4_recall", "recall, worst attack 4/255",
         "robust_recall.worst_case_linf_4"),
        ("person_patch_recall", "recall, person-worn patch", "robust_recall.person_patch"),
    ):  # fmt: skip
        before = undefended.get(key) if undefended else None
        threshold = thresholds.get(check)
        lines.append(
            f"  {label:27} {_figure(before):>10} {_figure(defended.get(key)):>9}  "
            f"{_figure(threshold)}"
        )
    verdict = "PASSED" if gate["passed"] else "FAILED"
    policy = gate["policy_digest"][:19]
    lines.append(f"  gate      {verdict} {gate['checks']} checks (policy {policy})")
    lines += [f"            failed: {c['label']}" for c in gate["failed"]]
    training = summary["training"]["defended"]
    release = summary["release"]
    lines.append(
        f"  release   {release['name']}@{release['version']} is `{release['alias']}` "
        f"(alias move #{release['sequence']}, approved by a second person); defended model "
        f"trained {training['epochs']} epochs in {training['seconds']:.0f} s "
        f"on {training['device']}"
    )
    findings = []
    if watch["drift_detected"]:
        findings.append(
            f"drift in {watch['drifted_share']:.0%} of features "
            f"({', '.join(watch['drifted_columns'][:4])})"
        )
    if watch["attack_alarm"]:
        findings.append(f"attack alarm ({watch['attack_flagged_share']:.0%} of requests flagged)")
    request = (
        f"requested retraining ({watch['retraining_reason']})"
        if watch["retraining_requested"]
        else "requested nothing"
    )
    lines.append(
        f"  monitor   {watch['records']} served requests: {'; '.join(findings) or 'no drift'}; "
        f"{request}"
    )
    lines.append(f"  audit     {summary['audit']['entries']} entries, hash chain verified")
    stages = ", ".join(f"{name} {s:.0f} s" for name, s in summary["stage_seconds"].items())
    lines.append(f"  time      {stages}")
    return lines


def _figure(value: Any) -> str:
    return f"{value:.3f}" if _is_number(value) else "-"
