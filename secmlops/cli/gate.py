"""`secmlops gate`: the robustness validation gate over a `secmlops evaluate --attacks` report.

Exit status: 0 the model passed; 1 the gate failed (the signed record and the audit entry are
written either way); 2 a user error (bad policy, missing report or key, override without reason).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from secmlops.cli.common import app, console, err_console, fail
from secmlops.cli.security import POLICY_ENV, AuditOption
from secmlops.errors import GateFailed, PolicyError, SecMLOpsError

EXIT_GATE_FAILED = 1


@app.command("gate")
def gate_command(
    report: Annotated[
        Path, typer.Option(help="Robustness report of `secmlops evaluate --attacks` (JSON).")
    ],
    policy: Annotated[
        Path | None, typer.Option(help="Policy file (default: $SECMLOPS_POLICY or ./policy.yaml).")
    ] = None,
    production: Annotated[
        Path | None,
        typer.Option(
            help="Production model directory: attacked with the same suite on the same data and "
            "split as REPORT, for the no-regression check."
        ),
    ] = None,
    production_report: Annotated[
        Path | None,
        typer.Option(help="Instead of --production: its report on the same data, made earlier."),
    ] = None,
    key: Annotated[
        Path | None,
        typer.Option(help="Private key signing the gate record (default: $SECMLOPS_SIGNING_KEY)."),
    ] = None,
    record: Annotated[
        Path | None,
        typer.Option(help="Signed gate record to write (default: gate-record.json beside REPORT)."),
    ] = None,
    audit_log: AuditOption = None,
    override: Annotated[
        list[str] | None,
        typer.Option(
            help="KEY.PATH=VALUE, e.g. gate.min_robust_map50.pgd_linf_4=0.25 (repeatable)."
        ),
    ] = None,
    reason: Annotated[
        str | None, typer.Option(help="Why the overrides (required with --override; audited).")
    ] = None,
) -> None:
    """Pass or fail a model on its robustness evidence; sign the decision and audit it."""
    from secmlops.audit import AuditLog, default_audit_path
    from secmlops.evaluation.gate import RECORD_NAME, SIGNING_KEY_ENV, run_gate
    from secmlops.policy import parse_overrides

    try:
        if reason is not None and not override:
            raise PolicyError("--reason given without any --override")
        overrides = parse_overrides(override or [], reason or "")
        if production is not None and production_report is not None:
            raise PolicyError("give --production or --production-report, not both")
        policy_path = policy or Path(os.environ.get(POLICY_ENV, "policy.yaml"))
        if production is not None:
            production_report = _evaluate_production(production, report, policy_path)
        env_key = os.environ.get(SIGNING_KEY_ENV)
        decision = run_gate(
            report,
            policy_path,
            signing_key=key or (Path(env_key) if env_key else None),
            audit_log=AuditLog(audit_log or default_audit_path()),
            record_path=record,
            production_report=production_report,
            overrides=overrides,
        )
    except GateFailed as exc:
        console.print(_checks_table(exc.checks))
        err_console.print(f"[red]{exc}[/red]", highlight=False, soft_wrap=True)
        if exc.record_path:
            err_console.print(f"signed record: {exc.record_path}", highlight=False)
        raise typer.Exit(EXIT_GATE_FAILED) from None
    except SecMLOpsError as exc:
        fail(exc)
    console.print(_checks_table([check.to_dict() for check in decision.checks]))
    written = record or report.parent / RECORD_NAME
    console.print(f"[green]{decision.message()}[/green]; signed record: {written}", highlight=False)


def _evaluate_production(model_dir: Path, report: Path, policy_path: Path) -> Path:
    """Attack the production model like the candidate was; its report goes beside REPORT."""
    import json

    from secmlops.errors import DataError
    from secmlops.evaluation.robustness import evaluate_robustness, suite_from_policy
    from secmlops.fsutil import atomic_write_json
    from secmlops.policy import load_policy

    try:
        data = json.loads(report.read_text())["data"]
        data_dir, split, images = Path(data["dir"]), data["split"], int(data["images"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(
            f"{report}: cannot read the data and split it was made on ({exc})"
        ) from None
    suite = suite_from_policy(load_policy(policy_path).gate)
    production = evaluate_robustness(model_dir, data_dir, split, suite, max_images=images)
    out = report.with_name(f"{report.stem}.production.json")
    atomic_write_json(out, production)
    return out


def _checks_table(checks: list[dict[str, Any]]) -> Table:
    table = Table(title="robustness gate")
    for column in ("check", "measured", "threshold", "result", "note"):
        table.add_column(column, overflow="fold")
    for check in checks:
        threshold = _shown(check["threshold"])
        if isinstance(check["threshold"], float):
            threshold = f"{check['comparison']} {threshold}"
        result = "[green]pass[/green]" if check["passed"] else "[red]FAIL[/red]"
        table.add_row(check["label"], _shown(check["measured"]), threshold, result, check["note"])
    return table


def _shown(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    return "-" if value is None else str(value)
