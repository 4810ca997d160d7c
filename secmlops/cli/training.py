"""`secmlops train`: train a pedestrian detector, with adversarial augmentation by default."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from secmlops.cli.common import console, err_console, exits_on_user_error
from secmlops.cli.options import DeviceOption, parse_size
from secmlops.training.request import (
    ARCHITECTURES,
    DEFAULT_EPS,
    OBJECTIVE_FORMS,
    TrainingRequest,
)

# The one definition of a training run's defaults, shared with the training DAG's form.
DEFAULTS = TrainingRequest()


@exits_on_user_error
def train_command(
    data: Annotated[Path, typer.Option(help="Dataset folder.")],
    out: Annotated[Path, typer.Option(help="Model directory to write.")],
    architecture: Annotated[
        str, typer.Option(help=f"Detector architecture: {', '.join(ARCHITECTURES)}.")
    ] = DEFAULTS.architecture,
    epochs: Annotated[
        int | None, typer.Option(help="Epochs (default: from the data size).")
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Images per optimizer step.")] = 16,
    learning_rate: Annotated[float, typer.Option(help="Peak AdamW learning rate.")] = 3e-3,
    input_size: Annotated[
        str | None, typer.Option(help="HxW the model sees (default: from the data).")
    ] = None,
    train_crop: Annotated[
        str | None,
        typer.Option(
            help="HxW window of each image a training step sees, at the input size's scale "
            "(default: the input shrunk to 384 on its long side; the input size: whole images)."
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="Random seed.")] = DEFAULTS.seed,
    device: DeviceOption = "auto",
    resume: Annotated[
        bool, typer.Option(help="Continue from the last checkpoint in --out.")
    ] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace a model already in --out.")] = False,
    history: Annotated[
        Path | None, typer.Option(help="Also write per-epoch loss and val mAP here (JSON).")
    ] = None,
    adversarial: Annotated[
        str,
        typer.Option(
            help="Adversarial augmentation: fgsm-rs (the default defence), pgd, or none (an "
            "undefended model)."
        ),
    ] = DEFAULTS.adversarial,
    eps: Annotated[
        str, typer.Option(help="L-inf budget of the training attack, e.g. 4/255 or 0.0157.")
    ] = DEFAULT_EPS,
    steps: Annotated[
        int, typer.Option(help="PGD steps K of the training attack (--adversarial pgd).")
    ] = DEFAULTS.attack_steps,
    mix: Annotated[
        float, typer.Option(help="Share of each batch replaced by adversarial examples.")
    ] = DEFAULTS.mix,
    eps_warmup_epochs: Annotated[
        int, typer.Option(help="Epochs over which eps grows from 0 to --eps.")
    ] = DEFAULTS.eps_warmup_epochs,
    objectives: Annotated[
        str,
        typer.Option(
            help=f"What the training attack maximises: {', '.join(OBJECTIVE_FORMS)} (each of "
            "a '+'-joined list on an equal part of the adversarial share; vanishing pushes "
            "every objectness score down, the attack that hides people)."
        ),
    ] = DEFAULTS.objectives,
    patch_augmentation: Annotated[
        float,
        typer.Option(
            help="Probability that a training image's people wear a random torso patch (the "
            "defence against person-worn patches; 0: none)."
        ),
    ] = DEFAULTS.patch_augmentation,
    patch_attack_steps: Annotated[
        int,
        typer.Option(
            help="With --patch-augmentation: wear each epoch's universal adversarial patch, "
            "optimised this many steps against the model being trained (0: random patches)."
        ),
    ] = DEFAULTS.patch_attack_steps,
    target_fppi: Annotated[
        float,
        typer.Option(
            help="Operating point: the lowest score threshold with at most this many false "
            "positives per validation image (the policy's gate.operating_point.target_fppi)."
        ),
    ] = 0.1,
) -> None:
    """Train a pedestrian detector; checkpoints every epoch, keeps the best validation epoch.

    Unless --adversarial none, a --mix share of every batch is replaced by adversarial examples
    crafted against the model being trained (FGSM with random start, or PGD-K), split between
    the --objectives. With --patch-augmentation p, each training image's people wear a patch on
    the torso with probability p: a random one, or with --patch-attack-steps K the epoch's
    universal adversarial patch, optimised K steps against the model.
    """
    from secmlops.training.trainer import train

    request = TrainingRequest.from_params({
        "architecture": architecture, "epochs": epochs, "seed": seed, "adversarial": adversarial,
        "eps": eps, "mix": mix, "attack_steps": steps, "eps_warmup_epochs": eps_warmup_epochs,
        "objectives": objectives, "patch_augmentation": patch_augmentation,
        "patch_attack_steps": patch_attack_steps,
    })  # fmt: skip
    config = request.train_config(
        batch_size=batch_size, learning_rate=learning_rate, input_size=parse_size(input_size),
        train_crop=parse_size(train_crop, "--train-crop"), device=device, target_fppi=target_fppi,
    )  # fmt: skip
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
            data, out, config, resume=resume, overwrite=overwrite, on_step=on_step,
            on_epoch=on_epoch, on_prepare=lambda n: progress.advance(loading, n),
        )  # fmt: skip
    if history is not None:
        from secmlops.fsutil import atomic_write_json

        atomic_write_json(history, result.history)
    val = result.val_metrics
    defences = []
    if request.adversarial != "none":
        objective = "" if request.objectives == "loss" else f" ({request.objectives})"
        defences.append(f"{request.adversarial} adversarial training{objective}")
    if request.patch_augmentation > 0:
        steps = request.patch_attack_steps
        kind = f"adversarial ({steps} steps)" if steps else "random"
        defences.append(f"{kind} patch augmentation {request.patch_augmentation:g}")
    defence = f" with {' and '.join(defences)}" if defences else " undefended"
    console.print(
        f"trained {result.epochs} epochs{defence} on {result.device} in {result.seconds:.0f} s; "
        f"best epoch {result.best_epoch}: val mAP@0.5 {val.get('mAP50', float('nan')):.3f}, "
        f"mAP@[.5:.95] {val.get('mAP50_95', float('nan')):.3f} -> {out}"
    )
    from secmlops.models import read_card

    point = read_card(out).operating_point
    if point is not None:
        figures = ", ".join(f"{k} {v:.3f}" for k, v in point.metrics.items())
        console.print(
            f"operating point: score >= {point.score_threshold:.3f} ({point.chosen_by}"
            + (f" at {point.target_fppi} FPPI on {point.split}: {figures})" if figures else ")")
        )
