"""`secmlops data ...`: create, import and inspect dataset versions."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from secmlops.cli.common import console, fail, progress_bar
from secmlops.errors import SecMLOpsError

data_app = typer.Typer(
    help="Create, import, sign, check and version datasets.", no_args_is_help=True
)


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
        fail(exc)
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
    from secmlops.data.import_mot import OPEN_END, import_mot, parse_frame_range

    try:
        selected = parse_frame_range(frames)
        total = selected[1] - selected[0] + 1 if selected and selected[1] < OPEN_END else None
        with progress_bar("importing frames", total) as advance:
            import_mot(video, gt, out, frames=frames, overwrite=overwrite, progress=advance)
    except SecMLOpsError as exc:
        fail(exc)
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
        fail(exc)
    _print_dataset_summary(out)


@data_app.command("info")
def data_info(root: Annotated[Path, typer.Argument(help="Dataset folder.")]) -> None:
    """Summarise a dataset version: images, boxes and ignore regions per split."""
    try:
        _print_dataset_summary(root)
    except SecMLOpsError as exc:
        fail(exc)


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
