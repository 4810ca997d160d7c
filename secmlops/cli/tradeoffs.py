"""`secmlops tradeoffs`: the security/performance trade-off study of every control.

Exit status: 0 the study was written; 2 a user error (missing data, bad policy, an existing
output folder), with nothing written.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Annotated

import typer

from secmlops.cli.common import console, current_settings, err_console, exits_on_user_error, fail
from secmlops.cli.options import DeviceOption, PolicyOption, policy_path


@exits_on_user_error
def tradeoffs_command(
    data: Annotated[Path, typer.Option(help="Dataset the models are trained on (train, val).")],
    quick: Annotated[
        bool, typer.Option(help="The CI grid: one eps per attack, short training, few images.")
    ] = False,
    out: Annotated[
        Path | None,
        typer.Option(
            help="Study folder to create (default: $SECMLOPS_TRADEOFFS_DIR/<UTC time>, else "
            "<workdir>/runs/tradeoffs/<UTC time>, where the DAG writes and the Airflow view looks)."
        ),
    ] = None,
    eval_data: Annotated[
        Path | None, typer.Option(help="Dataset the models are evaluated on (default: --data).")
    ] = None,
    eval_split: Annotated[str, typer.Option(help="Its split: train, val, test or all.")] = "test",
    policy: PolicyOption = None,
    seed: Annotated[int, typer.Option(help="Seed of training, tampering and poisoning.")] = 0,
    device: DeviceOption = "auto",
    overwrite: Annotated[bool, typer.Option(help="Replace an existing study folder.")] = False,
    cache: Annotated[
        Path | None,
        typer.Option(
            help="Keep trained models and finished measurements here; rerunning with the same "
            "settings continues an interrupted study instead of starting over."
        ),
    ] = None,
    train_only: Annotated[
        str | None,
        typer.Option(
            help="Only train these model configurations (comma-separated ids, e.g. "
            "pgd3-eps2,pgd3-eps4) into --cache and stop. Run it beside the study with the same "
            "options so two cores or GPUs train at once; the study waits for a model being "
            "trained and reuses it."
        ),
    ] = None,
) -> None:
    """Measure each control's cost and benefit; write a CSV, a Markdown table, plots and an
    HTML report.

    Model configurations (no defence, FGSM-RS and PGD adversarial training over an eps grid,
    JPEG and median-smoothing preprocessing) get training time, latency, memory, clean and
    robust mAP and a Pareto front; lifecycle controls (data verification, poisoning screen,
    signature verification at load, serving screening) get their cost and detection rates.
    """
    from secmlops.tradeoffs.outputs import CSV_FILE, HTML_FILE
    from secmlops.tradeoffs.study import default_out_dir, run_study, train_into_cache

    say = lambda line: err_console.print(f"[dim]tradeoffs:[/dim] {line}")  # noqa: E731
    if train_only is not None:
        ids = [part.strip() for part in train_only.split(",") if part.strip()]
        if cache is None or not ids:
            fail("--train-only needs --cache (where the study looks) and ids")
        trained = train_into_cache(
            data, cache, ids, quick,
            eval_data=eval_data, eval_split=eval_split, policy_path=policy_path(policy),
            seed=seed, device=device, progress=say,
        )  # fmt: skip
        for model in trained:
            console.print(f"{model.config_id}: {model.usage.seconds:.0f} s, in {model.model_dir}")
        return
    target = out or default_out_dir(current_settings().tradeoffs_dir)
    # The command as it would be retyped: what was given, plus the folder actually written.
    command = ["secmlops", "tradeoffs", "--data", str(data), *(["--quick"] if quick else [])]
    command += ["--out", str(target)]
    given = (
        ("--eval-data", eval_data, None), ("--eval-split", eval_split, "test"),
        ("--policy", policy, None), ("--seed", seed, 0), ("--device", device, "auto"),
        ("--cache", cache, None),
    )  # fmt: skip
    for flag, value, default in given:
        if value != default:
            command += [flag, str(value)]
    try:
        result = run_study(
            data, target, quick,
            eval_data=eval_data, eval_split=eval_split, policy_path=policy_path(policy),
            seed=seed, device=device, command=shlex.join(command), overwrite=overwrite,
            cache_dir=cache, progress=say,
        )  # fmt: skip
    except FileExistsError as exc:
        fail(exc)
    console.print(
        f"{len(result.rows)} configurations in {result.seconds:.0f} s; Pareto front "
        f"(clean mAP vs {result.main_attack}): {', '.join(result.pareto_front)}"
    )
    console.print(f"table: {result.out_dir / CSV_FILE}  report: {result.out_dir / HTML_FILE}")
