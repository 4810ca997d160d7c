"""The `secmlops` command line: every lifecycle stage, runnable without a scheduler.

Each command is a thin shell over one library function; errors a user can cause print one line
(`error: ...`) and exit with status 2, with nothing half-written.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from secmlops.errors import SecMLOpsError

app = typer.Typer(
    help="SecMLOps: a secure ML lifecycle for pedestrian detection.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Create, import and inspect dataset versions.", no_args_is_help=True)
app.add_typer(data_app, name="data")
console = Console()
err_console = Console(stderr=True)

EXIT_USER_ERROR = 2


@contextmanager
def progress_bar(description: str, total: int | None) -> Iterator[Callable[[int], None]]:
    """A rich progress bar; yields `advance(n)`."""
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=err_console, transient=False) as progress:
        task = progress.add_task(description, total=total)
        yield lambda n=1: progress.advance(task, n)


def _fail(exc: Exception) -> None:
    err_console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
    raise typer.Exit(EXIT_USER_ERROR)


# ---------------------------------------------------------------------------------------- data
@data_app.command("generate")
def data_generate(
    out: Annotated[Path, typer.Option(help="Dataset folder to create.")],
    images: Annotated[int, typer.Option(help="Number of scenes.")] = 1000,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same bytes).")] = 0,
    width: Annotated[int, typer.Option(help="Image width in pixels.")] = 320,
    height: Annotated[int, typer.Option(help="Image height in pixels.")] = 240,
    workers: Annotated[
        int | None, typer.Option(help="Worker processes (default: all cores).")
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing dataset.")] = False,
) -> None:
    """Generate synthetic street scenes with articulated pedestrians and exact boxes."""
    from secmlops.data.synthetic import generate_scenes

    try:
        with progress_bar("generating scenes", images) as advance:
            generate_scenes(
                out,
                images,
                seed,
                width=width,
                height=height,
                workers=workers,
                overwrite=overwrite,
                progress=advance,
            )
    except (SecMLOpsError, ValueError) as exc:
        _fail(exc)
    _print_dataset_summary(out)


@data_app.command("import-mot")
def data_import_mot(
    video: Annotated[Path, typer.Option(help="The sequence's video file.")],
    gt: Annotated[Path, typer.Option(help="MOTChallenge gt.txt.")],
    out: Annotated[Path, typer.Option(help="Dataset folder to create.")],
    frames: Annotated[str | None, typer.Option(help="Inclusive 1-based frame range A:B.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing dataset.")] = False,
) -> None:
    """Import a MOTChallenge sequence (video + gt.txt); flag 0 boxes become ignore regions."""
    from secmlops.data.import_mot import import_mot, parse_frame_range

    try:
        selected = parse_frame_range(frames)
        total = selected[1] - selected[0] + 1 if selected and selected[1] < 10**9 else None
        with progress_bar("importing frames", total) as advance:
            import_mot(video, gt, out, frames=frames, overwrite=overwrite, progress=advance)
    except SecMLOpsError as exc:
        _fail(exc)
    _print_dataset_summary(out)


@data_app.command("import-coco")
def data_import_coco(
    annotations: Annotated[Path, typer.Option(help="COCO annotations JSON.")],
    images: Annotated[Path, typer.Option(help="Folder of the images it names.")],
    out: Annotated[Path, typer.Option(help="Dataset folder to create.")],
    category: Annotated[str, typer.Option(help="Category name to keep.")] = "person",
    overwrite: Annotated[bool, typer.Option(help="Replace an existing dataset.")] = False,
) -> None:
    """Import a COCO detection dataset (persons only; iscrowd becomes an ignore region)."""
    from secmlops.data.import_coco import import_coco

    _run_import(
        lambda advance: import_coco(
            annotations, images, out, category=category, overwrite=overwrite, progress=advance
        ),
        out,
    )


@data_app.command("import-yolo")
def data_import_yolo(
    root: Annotated[Path, typer.Argument(help="Folder with images/ and labels/.")],
    out: Annotated[Path, typer.Option(help="Dataset folder to create.")],
    person_class: Annotated[int | None, typer.Option(help="Class index of 'person'.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing dataset.")] = False,
) -> None:
    """Import a YOLO-txt dataset (normalised cx cy w h labels)."""
    from secmlops.data.import_yolo import import_yolo

    _run_import(
        lambda advance: import_yolo(
            root, out, person_class=person_class, overwrite=overwrite, progress=advance
        ),
        out,
    )


@data_app.command("import-voc")
def data_import_voc(
    root: Annotated[Path, typer.Argument(help="Folder with Annotations/ and JPEGImages/.")],
    out: Annotated[Path, typer.Option(help="Dataset folder to create.")],
    overwrite: Annotated[bool, typer.Option(help="Replace an existing dataset.")] = False,
) -> None:
    """Import a Pascal VOC dataset (persons; difficult objects become ignore regions)."""
    from secmlops.data.import_voc import import_voc

    _run_import(lambda advance: import_voc(root, out, overwrite=overwrite, progress=advance), out)


def _run_import(run: Callable[[Callable[[int], None]], object], out: Path) -> None:
    try:
        with progress_bar("importing images", None) as advance:
            run(advance)
    except SecMLOpsError as exc:
        _fail(exc)
    _print_dataset_summary(out)


@data_app.command("info")
def data_info(root: Annotated[Path, typer.Argument(help="Dataset folder.")]) -> None:
    """Summarise a dataset version: images, boxes and ignore regions per split."""
    try:
        _print_dataset_summary(root)
    except SecMLOpsError as exc:
        _fail(exc)


def _print_dataset_summary(root: Path) -> None:
    from secmlops.data.dataset import SPLITS, load_dataset

    dataset = load_dataset(root)
    table = Table(title=f"dataset {root}")
    for column in ("split", "images", "person boxes", "ignore regions"):
        table.add_column(column, justify="right" if column != "split" else "left")
    ordered = sorted(dataset.splits, key=lambda n: (SPLITS.index(n) if n in SPLITS else 9, n))
    for name in ordered:
        ids = set(dataset.splits[name])
        members = [im for im in dataset.images if im.id in ids]
        table.add_row(
            name,
            str(len(members)),
            str(sum(len(im.boxes) for im in members)),
            str(sum(len(im.ignore) for im in members)),
        )
    console.print(table)


# ------------------------------------------------------------------------------ train / eval
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
        _fail(exc)
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
        _fail(exc)
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
        _fail(exc)
    console.print(f"{len(results)} detections -> {out}")


def main() -> None:
    """Entry point that never shows a traceback for a user error."""
    try:
        app()
    except SecMLOpsError as exc:  # pragma: no cover - commands catch their own
        err_console.print(f"[red]error:[/red] {exc}")
        sys.exit(EXIT_USER_ERROR)


if __name__ == "__main__":
    main()
