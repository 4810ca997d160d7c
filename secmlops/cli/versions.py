"""`secmlops data publish | pull | versions`: dataset versions in the DVC data registry."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from secmlops.cli.common import console, fail
from secmlops.cli.data import data_app
from secmlops.errors import SecMLOpsError

RegistryOption = Annotated[
    Path | None,
    typer.Option(help="Data registry repository (default: $SECMLOPS_DATA_REGISTRY or runs/)."),
]


@data_app.command("publish")
def data_publish(
    folder: Annotated[Path, typer.Argument(help="Dataset folder to publish.")],
    name: Annotated[str, typer.Option(help="Dataset name; versions are tagged data/NAME/vK.")],
    registry: RegistryOption = None,
    remote: Annotated[
        str | None,
        typer.Option(help="DVC remote for a new registry: a folder or s3://bucket/prefix."),
    ] = None,
) -> None:
    """Publish a dataset folder as the next version: dvc add, git commit, tag, dvc push."""
    from secmlops.data.versioning import default_registry, publish_dataset

    try:
        published = publish_dataset(folder, name, registry or default_registry(), remote)
    except SecMLOpsError as exc:
        fail(exc)
    console.print(f"published {published.tag} ({published.commit[:12]}) in {published.registry}")


@data_app.command("pull")
def data_pull(
    rev: Annotated[str, typer.Option(help="Version tag, e.g. data/street/v1.")],
    to: Annotated[Path, typer.Option(help="Folder to create with exactly that version.")],
    registry: Annotated[
        str | None, typer.Option(help="Registry path or git URL (default as for publish).")
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing folder.")] = False,
) -> None:
    """Materialise one dataset version into a clean folder, from any working directory."""
    from secmlops.data.versioning import default_registry, pull_dataset

    try:
        out = pull_dataset(rev, to, registry or default_registry(), overwrite=overwrite)
    except SecMLOpsError as exc:
        fail(exc)
    console.print(f"{rev} -> {out}")


@data_app.command("versions")
def data_versions(
    name: Annotated[str | None, typer.Argument(help="Only this dataset.")] = None,
    registry: RegistryOption = None,
) -> None:
    """List published dataset versions."""
    from secmlops.data.versioning import default_registry, list_versions

    try:
        for tag in list_versions(registry or default_registry(), name):
            console.print(tag)
    except SecMLOpsError as exc:
        fail(exc)
