"""`secmlops evaluate | predict | gate`: measure a model, run it, and judge its robustness.

`gate` exit status: 0 the model passed; 1 the gate failed (the signed record and the audit
entry are written either way); 2 a user error (bad policy, missing report or key, override
without reason).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from secmlops.cli.common import (
    console,
    current_settings,
    err_console,
    exits_on_user_error,
    progress_bar,
)
from secmlops.cli.options import (
    AuditOption,
    DeviceOption,
    PolicyOption,
    audit_log,
    keyring,
    policy_path,
)
from secmlops.errors import GateFailed, PolicyError

EXIT_GATE_FAILED = 1


@exits_on_user_error
def evaluate_command(
    model: Annotated[Path, typer.Option(help="Model directory.")],
    data: Annotated[Path, typer.Option(help="Dataset folder.")],
    split: Annotated[str, typer.Option(help="train, val, test or all.")] = "test",
    out: Annotated[
        Path | None,
        typer.Option(
            help="JSON to write (with --attacks default: <model>/../robustness-<split>.json)."
        ),
    ] = None,
    device: DeviceOption = "auto",
    attacks: Annotated[
        bool,
        typer.Option(
            "--attacks",
            help="Run the robustness suite (FGSM/PGD, vanishing, fabrication, worst case, patch, "
            "corruptions, cross-check, sanity checks).",
        ),
    ] = False,
    policy: Annotated[
        Path | None,
        typer.Option(
            help="Policy whose gate.attacks section is the suite (default: $SECMLOPS_POLICY or "
            "./policy.yaml)."
        ),
    ] = None,
    baseline: Annotated[
        Path | None, typer.Option(help="Baseline model directory; its clean mAP is reported.")
    ] = None,
    max_images: Annotated[
        int | None, typer.Option(help="Only the first N images of the split (quick runs).")
    ] = None,
) -> None:
    """COCO mAP@0.5 and mAP@[.5:.95] of a model on a dataset split; with --attacks, its
    robustness report (the evidence `secmlops gate` judges)."""
    if not attacks:
        if baseline is not None or max_images is not None or policy is not None:
            raise typer.BadParameter("--policy, --baseline and --max-images need --attacks")
        _clean_evaluation(model, data, split, out, device)
        return

    from secmlops.evaluation.robustness import default_report_path
    from secmlops.lifecycle import attack_model
    from secmlops.policy import load_policy

    out = out or default_report_path(model, split)
    suite = load_policy(policy_path(policy)).gate.attacks
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
    ) as bar:
        task = bar.add_task("loading", total=None)

        def on_step(name: str, done: int, total: int) -> None:
            bar.update(task, description=name, completed=done, total=total)

        attack_model(
            suite, model, data, split, out, baseline_dir=baseline, max_images=max_images,
            device=device, progress=on_step,
        )  # fmt: skip
    _print_robustness(json.loads(out.read_text()), split, baseline, out)


def _clean_evaluation(model: Path, data: Path, split: str, out: Path | None, device: str) -> None:
    from secmlops.data.dataset import load_dataset
    from secmlops.evaluation.inference import evaluate_records, select_split
    from secmlops.fsutil import atomic_write_json
    from secmlops.models import load
    from secmlops.training.trainer import pick_device

    detector = load(model, device=pick_device(device))
    dataset = load_dataset(data)
    records = select_split(dataset, split)
    with progress_bar(f"evaluating on {split}", len(records)) as advance:
        metrics = evaluate_records(detector, dataset, records, progress=advance)
    report = {"model": str(model), "data": str(data), "split": split, **metrics}
    if out is not None:
        atomic_write_json(out, report)
    console.print(
        f"{split}: mAP@0.5 {metrics['mAP50']:.3f}  mAP@[.5:.95] {metrics['mAP50_95']:.3f}  "
        f"AR@100 {metrics['AR100']:.3f}  ({int(metrics['images'])} images, "
        f"{int(metrics['ground_truth_boxes'])} boxes)"
    )


def _print_robustness(report: dict[str, Any], split: str, baseline: Path | None, out: Path) -> None:
    point = report.get("operating_point")
    at = f" at score >= {point['score_threshold']:.3f}" if point else " (no operating point)"
    table = Table(title=f"robustness on {split} ({report['data']['images']} images){at}")
    columns = ("attack", "family", "mAP@0.5", "recall", "FPPI", "MR^-2", "seconds")
    for column in columns:
        table.add_column(column, justify="left" if column in ("attack", "family") else "right")

    def row(name: str, family: str, figures: dict[str, Any], seconds: str) -> None:
        shown = [f"{figures[k]:.3f}" if k in figures else "-" for k in ("mAP50", "recall")]
        shown += [f"{figures['fppi']:.2f}" if "fppi" in figures else "-"]
        shown += [f"{figures['mr2']:.3f}" if "mr2" in figures else "-"]
        table.add_row(name, family, *shown, seconds)

    row("clean", "-", report["clean"], "-")
    for name, result in report["attacks"].items():
        row(name, result["family"], result, f"{result['seconds']:.1f}")
    console.print(table)
    if report["baseline"] is not None:
        console.print(f"baseline {baseline}: clean mAP@0.5 {report['baseline']['clean_mAP50']:.3f}")
    cross = report["cross_check"]
    verdict = "[green]passed[/green]" if cross["passed"] else "[red]FAILED[/red]"
    console.print(
        f"cross-check {cross['attack']}: ART {cross['art_mAP50']:.3f}, secmlops "
        f"{cross['ours_mAP50']:.3f} (difference {cross['difference']:+.3f}, tolerance "
        f"{cross['tolerance']}): {verdict}"
    )
    sanity = report.get("sanity")
    if sanity:
        sweep = ", ".join(
            f"{row['eps']}/255 {row['vanishing']:.2f}|{row['worst_case']:.2f}"
            for row in sanity["sweep"]
        )
        effort, transfer = sanity["effort"], sanity["transfer"]
        moved = transfer["transfer_recall"]
        console.print(
            f"sanity on {sanity['images']} images ({sanity['people']} people), recall under "
            f"vanishing|worst case: {sweep}; at {effort['eps']}/255 with 4x steps "
            f"{effort['more_steps']['recall']:.2f}, 4x restarts "
            f"{effort['more_restarts']['recall']:.2f}; transferred from the baseline "
            + (f"{moved:.2f}" if moved is not None else "not measured (no --baseline)")
        )
    console.print(f"report -> {out}  ({report['seconds']:.0f} s)")


@exits_on_user_error
def predict_command(
    model: Annotated[Path, typer.Option(help="Model directory.")],
    images: Annotated[Path, typer.Option(help="Folder of images.")],
    out: Annotated[Path, typer.Option(help="Predictions JSON to write.")],
    device: DeviceOption = "auto",
) -> None:
    """Detect people in a folder of images; writes COCO-style results in original pixels."""
    from secmlops.evaluation.inference import list_images, predict_folder
    from secmlops.models import load
    from secmlops.training.trainer import pick_device

    detector = load(model, device=pick_device(device))
    with progress_bar("detecting", len(list_images(images))) as advance:
        results = predict_folder(detector, images, out, progress=advance)
    console.print(f"{len(results)} detections -> {out}")


@exits_on_user_error
def gate_command(
    report: Annotated[
        Path, typer.Option(help="Robustness report of `secmlops evaluate --attacks` (JSON).")
    ],
    policy: PolicyOption = None,
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
        typer.Option(help="The gate's private key (default: $SECMLOPS_GATE_KEY)."),
    ] = None,
    record: Annotated[
        Path | None,
        typer.Option(help="Signed gate record to write (default: gate-record.json beside REPORT)."),
    ] = None,
    audit_log_path: AuditOption = None,
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
    from secmlops.evaluation.gate import RECORD_NAME, run_gate
    from secmlops.lifecycle import evaluate_like
    from secmlops.policy import load_policy, parse_overrides

    if reason is not None and not override:
        raise PolicyError("--reason given without any --override")
    overrides = parse_overrides(override or [], reason or "")
    if production is not None and production_report is not None:
        raise PolicyError("give --production or --production-report, not both")
    policy_file = policy_path(policy)
    from secmlops.registry.trust_chain import signer_holds

    signing_key = current_settings().private_key("gate", key)  # before any attack runs
    signer_holds(keyring(None, policy=policy_file), signing_key, "gate", "the gate record")
    if production is not None:
        suite = load_policy(policy_file).gate.attacks
        out = report.with_name(f"{report.stem}.production.json")
        production_report = Path(evaluate_like(suite, production, report, out)["report"])
    try:
        decision = run_gate(
            report, policy_file,
            signing_key=signing_key, audit_log=audit_log(audit_log_path),
            record_path=record, production_report=production_report, overrides=overrides,
        )  # fmt: skip
    except GateFailed as exc:
        console.print(_checks_table(exc.checks))
        err_console.print(f"[red]{exc}[/red]", highlight=False, soft_wrap=True)
        if exc.record_path:
            err_console.print(f"signed record: {exc.record_path}", highlight=False)
        raise typer.Exit(EXIT_GATE_FAILED) from None
    console.print(_checks_table([check.to_dict() for check in decision.checks]))
    written = record or report.parent / RECORD_NAME
    console.print(f"[green]{decision.message()}[/green]; signed record: {written}", highlight=False)


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
