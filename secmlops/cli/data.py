"""`secmlops data ...`: create, import, sign, check and version datasets.

Every verify/validate/screen decision is appended to the audit log, pass or fail.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from secmlops.cli.common import console, current_settings, exits_on_user_error, fail, progress_bar
from secmlops.cli.options import (
    AuditOption,
    PolicyOption,
    ReportOption,
    TrustedKeysOption,
    audit_log,
    keyring,
    load_policy_option,
)
from secmlops.errors import SecMLOpsError

app = typer.Typer(help="Create, import, sign, check and version datasets.", no_args_is_help=True)


@app.command("generate")
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


@app.command("import-mot")
@exits_on_user_error
def data_import_mot(
    video: Annotated[Path, typer.Option(help="The sequence's video file.")],
    gt: Annotated[Path, typer.Option(help="MOTChallenge gt.txt.")],
    out: Annotated[Path, typer.Option(help="Dataset folder to create.")],
    frames: Annotated[str | None, typer.Option(help="Inclusive 1-based frame range A:B.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing dataset.")] = False,
) -> None:
    """Import a MOTChallenge sequence (video + gt.txt); flag 0 boxes become ignore regions."""
    from secmlops.data.import_mot import OPEN_END, import_mot, parse_frame_range

    selected = parse_frame_range(frames)
    total = selected[1] - selected[0] + 1 if selected and selected[1] < OPEN_END else None
    with progress_bar("importing frames", total) as advance:
        import_mot(video, gt, out, frames=frames, overwrite=overwrite, progress=advance)
    _print_dataset_summary(out)


@app.command("import-coco")
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


@app.command("import-yolo")
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


@app.command("import-voc")
def data_import_voc(
    root: Annotated[Path, typer.Argument(help="Folder with Annotations/ and JPEGImages/.")],
    out: Annotated[Path, typer.Option(help="Dataset folder to create.")],
    overwrite: Annotated[bool, typer.Option(help="Replace an existing dataset.")] = False,
) -> None:
    """Import a Pascal VOC dataset (persons; difficult objects become ignore regions)."""
    from secmlops.data.import_voc import import_voc

    _run_import(lambda advance: import_voc(root, out, overwrite=overwrite, progress=advance), out)


@exits_on_user_error
def _run_import(run: Callable[[Callable[[int], None]], object], out: Path) -> None:
    with progress_bar("importing images", None) as advance:
        run(advance)
    _print_dataset_summary(out)


@app.command("info")
@exits_on_user_error
def data_info(root: Annotated[Path, typer.Argument(help="Dataset folder.")]) -> None:
    """Summarise a dataset version: images, boxes and ignore regions per split."""
    _print_dataset_summary(root)


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


@app.command("sign")
@exits_on_user_error
def data_sign(
    folder: Annotated[Path, typer.Argument(help="Dataset folder.")],
    key: Annotated[Path, typer.Option(help="The data owner's private key (.key).")],
    name: Annotated[
        str | None,
        typer.Option(help="Dataset name it is signed as (published as data/NAME/vVERSION)."),
    ] = None,
    version: Annotated[
        int | None,
        typer.Option(
            help="Version it is signed as (default with --name: the next one in the data "
            "registry, $SECMLOPS_DATA_REGISTRY)."
        ),
    ] = None,
    audit_log_path: AuditOption = None,
) -> None:
    """Write manifest.json (size and SHA-256 of every file, and the dataset name and version it
    is signed as) and its Ed25519 signature."""
    from secmlops.data.manifest import DatasetIdentity, sign_dataset
    from secmlops.data.versioning import next_version

    settings = current_settings()
    identity = None
    if name is not None:
        number = version if version is not None else next_version(settings.data_registry, name)
        identity = DatasetIdentity(name, number)
    elif version is not None:
        fail("--version needs --name")
    digest = sign_dataset(folder, key, passphrase=settings.key_passphrase, identity=identity)
    audit_log(audit_log_path).append(
        "data", "sign_manifest", "info", str(folder),
        {"digest": digest, "dataset": identity.tag if identity else None},
    )  # fmt: skip
    signed_as = f" as {identity.tag}" if identity else ""
    console.print(f"signed {folder}{signed_as}: manifest {digest}")


@app.command("verify")
@exits_on_user_error
def data_verify(
    folder: Annotated[Path, typer.Argument(help="Dataset folder.")],
    trusted_keys: TrustedKeysOption = None,
    policy: PolicyOption = None,
    rev: Annotated[
        str | None,
        typer.Option(help="The tag it was pulled as (data/NAME/vK): it must be signed as that."),
    ] = None,
    audit_log_path: AuditOption = None,
) -> None:
    """Verify the signed manifest before any use: every file, its size and SHA-256, the signer,
    and (with --rev) the dataset version it was signed as."""
    from secmlops.data.checks import verify_signed_dataset
    from secmlops.data.versioning import parse_tag

    expected = parse_tag(rev) if rev is not None else None
    result = verify_signed_dataset(
        folder, keyring(trusted_keys, policy=policy), audit_log(audit_log_path), expected,
    )  # fmt: skip
    console.print(
        f"verified {folder}: {result['files']} files, manifest {result['manifest_digest']}, "
        f"signed by {result['signer']}"
    )


@app.command("validate")
@exits_on_user_error
def data_validate(
    folder: Annotated[Path, typer.Argument(help="Dataset folder.")],
    policy: PolicyOption = None,
    report: ReportOption = None,
    audit_log_path: AuditOption = None,
) -> None:
    """Check annotations, images, box sizes, split leakage and empty-image ratio."""
    from secmlops.data.checks import validate

    result = validate(folder, load_policy_option(policy).data, audit_log(audit_log_path), report)
    stats = result.get("statistics", {})
    console.print(
        f"valid: {folder} ({stats.get('images', '?')} images, {stats.get('boxes', '?')} boxes)"
    )


@app.command("screen")
@exits_on_user_error
def data_screen(
    folder: Annotated[Path, typer.Argument(help="Dataset folder.")],
    policy: PolicyOption = None,
    report: ReportOption = None,
    audit_log_path: AuditOption = None,
) -> None:
    """Screen the training split for backdoor poisoning (BadDet/BadNets-style triggers)."""
    from secmlops.data.checks import screen

    result = screen(folder, load_policy_option(policy).data, audit_log(audit_log_path), report)
    summary = result["summary"]
    console.print(
        f"no poisoning suspected in {folder}: {summary['flagged']} of {summary['images']} "
        f"images flagged (max score {summary['max_score']:g}, threshold {result['threshold']:g})"
    )


DataRegistryOption = Annotated[
    Path | None,
    typer.Option(help="Data registry repository (default: $SECMLOPS_DATA_REGISTRY)."),
]


@app.command("publish")
@exits_on_user_error
def data_publish(
    folder: Annotated[Path, typer.Argument(help="Dataset folder to publish.")],
    name: Annotated[str, typer.Option(help="Dataset name; versions are tagged data/NAME/vK.")],
    registry: DataRegistryOption = None,
    remote: Annotated[
        str | None,
        typer.Option(
            help="DVC remote for a new registry: a folder or s3://bucket/prefix "
            "(default: $SECMLOPS_DVC_REMOTE, else a folder beside the registry)."
        ),
    ] = None,
) -> None:
    """Publish a dataset folder as the next version: dvc add, git commit, tag, dvc push."""
    from secmlops.data.versioning import publish_dataset

    settings = current_settings()
    published = publish_dataset(
        folder, name, registry or settings.data_registry, remote or settings.dvc_remote,
        settings.s3_endpoint_url,
    )  # fmt: skip
    console.print(f"published {published.tag} ({published.commit[:12]}) in {published.registry}")


@app.command("pull")
@exits_on_user_error
def data_pull(
    rev: Annotated[str, typer.Option(help="Version tag, e.g. data/street/v1.")],
    to: Annotated[Path, typer.Option(help="Folder to create with exactly that version.")],
    registry: Annotated[
        str | None, typer.Option(help="Registry path or git URL (default as for publish).")
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing folder.")] = False,
) -> None:
    """Materialise one dataset version into a clean folder, from any working directory."""
    from secmlops.data.versioning import pull_dataset

    source = registry or current_settings().data_registry
    console.print(f"{rev} -> {pull_dataset(rev, to, source, overwrite=overwrite)}")


@app.command("versions")
@exits_on_user_error
def data_versions(
    name: Annotated[str | None, typer.Argument(help="Only this dataset.")] = None,
    registry: DataRegistryOption = None,
) -> None:
    """List published dataset versions."""
    from secmlops.data.versioning import list_versions

    for tag in list_versions(registry or current_settings().data_registry, name):
        console.print(tag)
