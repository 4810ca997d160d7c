"""`secmlops model import`: turn external `torch.save` weights into a safetensors model directory.

Owns the `model` command group; other `secmlops model ...` commands add themselves to `model_app`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from secmlops.cli.common import app, console, fail
from secmlops.cli.model import _parse_size
from secmlops.errors import SecMLOpsError

model_app = typer.Typer(
    help="Model supply chain: import external weights safely (no pickle is ever executed).",
    no_args_is_help=True,
)
app.add_typer(model_app, name="model")


@model_app.command("import")
def import_command(
    weights: Annotated[
        Path, typer.Option(help="Weights to import: .pt/.pth/.bin/.ckpt/.pkl or .safetensors.")
    ],
    architecture: Annotated[str, typer.Option(help="Architecture the weights were trained for.")],
    out: Annotated[Path, typer.Option(help="Model directory to write.")],
    input_size: Annotated[
        str | None, typer.Option(help="HxW the model sees (default: the architecture's).")
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace a model already in --out.")] = False,
) -> None:
    """Scan a pickle's opcodes against an allowlist, then load it weights-only and save safetensors.

    A file naming anything beyond what a torch state dict needs (os.system, eval, subprocess,
    nested pickles, ...) is refused before any of it is unpickled, and nothing is written.
    """
    from secmlops.models.importing import import_weights

    size = _parse_size(input_size)
    try:
        card = import_weights(weights, architecture, out, input_size=size, overwrite=overwrite)
    except SecMLOpsError as exc:
        fail(exc)
    scan = card.training.get("scan", "")
    console.print(
        f"imported {weights.name} as {card.architecture} {card.input_size[0]}x{card.input_size[1]} "
        f"(scan: {scan}; sha256 {card.training['source_sha256'][:12]}) -> {out}"
    )
