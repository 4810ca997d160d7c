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
) -> None:
    """Train a pedestrian detector; checkpoints every epoch, keeps the best validation epoch."""
    from secmlops.training.trainer import TrainConfig, train

    try:
        config = TrainConfig(
            architecture=architecture,
            epochs=epochs,
            batch_size=batch_size,
            learning_rate=learning_rate,
            input_size=_parse_size(input_size),
            seed=seed,
            device=device,
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
    console.print(
        f"trained {result.epochs} epochs on {result.device} in {result.seconds:.0f} s; best epoch "
        f"{result.best_epoch}: val mAP@0.5 {val.get('mAP50', float('nan')):.3f}, "
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
    out: Annotated[Path | None, typer.Option(help="Metrics JSON to write.")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
) -> None:
    """COCO mAP@0.5 and mAP@[.5:.95] of a model on a dataset split."""
    from secmlops.data.dataset import load_dataset
    from secmlops.evaluation.inference import evaluate_records, select_split
    from secmlops.fsutil import atomic_write_json
    from secmlops.models import load
    from secmlops.training.trainer import pick_device

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
