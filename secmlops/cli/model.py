"""`secmlops train | evaluate | predict`: the model commands."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from secmlops.cli.common import app, console, err_console, fail, progress_bar
from secmlops.errors import SecMLOpsError


@app.command("train")
def train_command(
    data: Annotated[Path, typer.Option(help="Dataset folder.")],
    out: Annotated[Path, typer.Option(help="Model directory to write.")],
    architecture: Annotated[str, typer.Option(help="Detector architecture.")] = "compact_centernet",
    epochs: Annotated[
        int | None, typer.Option(help="Epochs (default: from the data size).")
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Images per optimizer step.")] = 16,
    learning_rate: Annotated[float, typer.Option(help="Peak AdamW learning rate.")] = 3e-3,
    input_size: Annotated[
        str | None, typer.Option(help="HxW the model sees (default: from the data).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    resume: Annotated[
        bool, typer.Option(help="Continue from the last checkpoint in --out.")
    ] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace a model already in --out.")] = False,
    history: Annotated[
        Path | None, typer.Option(help="Also write per-epoch loss and val mAP here (JSON).")
    ] = None,
    adversarial: Annotated[
        str, typer.Option(help="Adversarial augmentation: none, pgd or fgsm-rs.")
    ] = "none",
    eps: Annotated[
        str, typer.Option(help="L-inf budget of the training attack, e.g. 4/255 or 0.0157.")
    ] = "4/255",
    steps: Annotated[int, typer.Option(help="PGD steps K of the training attack.")] = 3,
    mix: Annotated[
        float, typer.Option(help="Share of each batch replaced by adversarial examples.")
    ] = 0.5,
    eps_warmup_epochs: Annotated[
        int, typer.Option(help="Epochs over which eps grows from 0 to --eps.")
    ] = 2,
) -> None:
    """Train a pedestrian detector; checkpoints every epoch, keeps the best validation epoch.

    With --adversarial, a --mix share of every batch is replaced by adversarial examples
    crafted against the model being trained (PGD-K or FGSM with random start).
    """
    from secmlops.training.trainer import TrainConfig, adversarial_config, train

    try:
        config = TrainConfig(
            architecture=architecture,
            epochs=epochs,
            batch_size=batch_size,
            learning_rate=learning_rate,
            input_size=_parse_size(input_size),
            seed=seed,
            device=device,
            adversarial=adversarial_config(adversarial, eps, steps, mix, eps_warmup_epochs),
        )
        with Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[info]}"),
            console=err_console,
        ) as progress:
            loading = progress.add_task("loading images", total=None, info="")
            epoch_task = progress.add_task("epoch 1", total=None, info="", visible=False)

            def on_step(step: int, steps: int) -> None:
                progress.update(epoch_task, completed=step, total=steps, visible=True)

            def on_epoch(summary: dict[str, float]) -> None:
                epoch = int(summary["epoch"])
                progress.console.print(
                    f"epoch {epoch:3d}  loss {summary['loss']:.3f}  "
                    f"val mAP@0.5 {summary['val_mAP50']:.3f}  ({summary['seconds']:.1f} s)"
                )
                progress.update(epoch_task, description=f"epoch {epoch + 1}", completed=0)

            result = train(
                data,
                out,
                config,
                resume=resume,
                overwrite=overwrite,
                on_step=on_step,
                on_epoch=on_epoch,
                on_prepare=lambda n: progress.advance(loading, n),
            )
    except SecMLOpsError as exc:
        fail(exc)
    if history is not None:
        from secmlops.fsutil import atomic_write_json

        atomic_write_json(history, result.history)
    val = result.val_metrics
    defence = "" if config.adversarial is None else f" with {adversarial} adversarial training"
    console.print(
        f"trained {result.epochs} epochs{defence} on {result.device} in {result.seconds:.0f} s; "
        f"best epoch {result.best_epoch}: val mAP@0.5 {val.get('mAP50', float('nan')):.3f}, "
        f"mAP@[.5:.95] {val.get('mAP50_95', float('nan')):.3f} -> {out}"
    )


def _parse_size(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise typer.BadParameter(f"--input-size must look like 240x320, got {text!r}") from None
    return height, width


@app.command("evaluate")
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
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    attacks: Annotated[
        bool,
        typer.Option(
            "--attacks",
            help="Run the robustness suite (ART FGSM/PGD, patch, corruptions, cross-check).",
        ),
    ] = False,
    policy: Annotated[
        Path | None,
        typer.Option(help="Policy whose gate.attacks section is the suite (default: policy.yaml)."),
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
    from secmlops.fsutil import atomic_write_json
    from secmlops.training.trainer import pick_device

    if not attacks:
        if baseline is not None or max_images is not None or policy is not None:
            raise typer.BadParameter("--policy, --baseline and --max-images need --attacks")
        from secmlops.data.dataset import load_dataset
        from secmlops.evaluation.inference import evaluate_records, select_split
        from secmlops.models import load

        try:
            detector = load(model, device=pick_device(device))
            dataset = load_dataset(data)
            records = select_split(dataset, split)
            with progress_bar(f"evaluating on {split}", len(records)) as advance:
                metrics = evaluate_records(detector, dataset, records, progress=advance)
        except SecMLOpsError as exc:
            fail(exc)
        report = {"model": str(model), "data": str(data), "split": split, **metrics}
        if out is not None:
            atomic_write_json(out, report)
        console.print(
            f"{split}: mAP@0.5 {metrics['mAP50']:.3f}  mAP@[.5:.95] {metrics['mAP50_95']:.3f}  "
            f"AR@100 {metrics['AR100']:.3f}  ({int(metrics['images'])} images, "
            f"{int(metrics['ground_truth_boxes'])} boxes)"
        )
        return

    from rich.table import Table

    from secmlops.evaluation.robustness import (
        default_report_path,
        evaluate_robustness,
        suite_from_policy,
    )
    from secmlops.policy import load_policy

    out = out or default_report_path(model, split)
    try:
        suite = suite_from_policy(load_policy(policy or Path("policy.yaml")).gate)
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

            report = evaluate_robustness(
                model,
                data,
                split,
                suite,
                baseline_dir=baseline,
                device=device,
                max_images=max_images,
                progress=on_step,
            )
    except SecMLOpsError as exc:
        fail(exc)
    atomic_write_json(out, report)

    table = Table(title=f"robustness on {split} ({report['data']['images']} images)")
    for column in ("attack", "family", "robust mAP@0.5", "seconds"):
        table.add_column(column, justify="left" if column in ("attack", "family") else "right")
    table.add_row("clean", "-", f"{report['clean']['mAP50']:.3f}", "-")
    for name, result in report["attacks"].items():
        table.add_row(name, result["family"], f"{result['mAP50']:.3f}", f"{result['seconds']:.1f}")
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
    console.print(f"report -> {out}  ({report['seconds']:.0f} s)")


@app.command("predict")
def predict_command(
    model: Annotated[Path, typer.Option(help="Model directory.")],
    images: Annotated[Path, typer.Option(help="Folder of images.")],
    out: Annotated[Path, typer.Option(help="Predictions JSON to write.")],
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
) -> None:
    """Detect people in a folder of images; writes COCO-style results in original pixels."""
    from secmlops.evaluation.inference import list_images, predict_folder
    from secmlops.models import load
    from secmlops.training.trainer import pick_device

    try:
        detector = load(model, device=pick_device(device))
        with progress_bar("detecting", len(list_images(images))) as advance:
            results = predict_folder(detector, images, out, progress=advance)
    except SecMLOpsError as exc:
        fail(exc)
    console.print(f"{len(results)} detections -> {out}")
