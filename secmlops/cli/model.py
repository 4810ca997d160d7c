"""`secmlops model import | sign | verify | calibrate-screening | profile`: the model's supply
chain, from external weights to a signed release."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from secmlops.cli.common import console, current_settings, exits_on_user_error
from secmlops.cli.options import (
    AuditOption,
    ConnectionOption,
    PolicyOption,
    TrustedKeysOption,
    audit_log,
    keyring,
    parse_size,
)
from secmlops.errors import SecMLOpsError

app = typer.Typer(
    help="Model supply chain: import external weights safely (no pickle is ever executed), "
    "sign and verify releases, calibrate the serving screener, profile for drift.",
    no_args_is_help=True,
)


@app.command("import")
@exits_on_user_error
def import_command(
    weights: Annotated[
        Path, typer.Option(help="Weights to import: .pt/.pth/.bin/.ckpt/.pkl or .safetensors.")
    ],
    architecture: Annotated[str, typer.Option(help="Architecture the weights were trained for.")],
    out: Annotated[Path, typer.Option(help="Model directory to write.")],
    input_size: Annotated[
        str | None, typer.Option(help="HxW the model sees (default: the architecture's).")
    ] = None,
    score_threshold: Annotated[
        float | None,
        typer.Option(
            min=0.0,
            max=1.0,
            help="The score the release serves at (recorded as a fixed operating point; "
            "without it serving refuses the model).",
        ),
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace a model already in --out.")] = False,
) -> None:
    """Scan a pickle's opcodes against an allowlist, then load it weights-only and save safetensors.

    A file naming anything beyond what a torch state dict needs (os.system, eval, subprocess,
    nested pickles, ...) is refused before any of it is unpickled, and nothing is written.
    """
    from secmlops.models.importing import import_weights

    size = parse_size(input_size)
    card = import_weights(
        weights, architecture, out, input_size=size, score_threshold=score_threshold,
        overwrite=overwrite,
    )  # fmt: skip
    scan = card.training.get("scan", "")
    console.print(
        f"imported {weights.name} as {card.architecture} {card.input_size[0]}x{card.input_size[1]} "
        f"(scan: {scan}; sha256 {card.training['source_sha256'][:12]}) -> {out}"
    )


@app.command("sign")
@exits_on_user_error
def sign_command(
    model: Annotated[Path, typer.Option(help="Model directory.")],
    key: Annotated[
        Path | None,
        typer.Option(help="The trainer's private key (.key; default: $SECMLOPS_TRAINER_KEY)."),
    ] = None,
    data: Annotated[
        Path | None,
        typer.Option(help="The dataset it was trained on: verified now, its digest recorded."),
    ] = None,
    trusted_keys: TrustedKeysOption = None,
    policy: PolicyOption = None,
    dvc_revision: Annotated[
        str | None, typer.Option(help="Data registry revision the data was pulled at.")
    ] = None,
    gate_record: Annotated[
        Path | None, typer.Option(help="The passed gate record (copied in and signed with it).")
    ] = None,
    openssf_key: Annotated[
        Path | None,
        typer.Option(
            help="The trainer's ECDSA P-256 key: also write an OpenSSF model-signing bundle "
            "(model.sig; default: $SECMLOPS_TRAINER_OPENSSF_KEY, none: no bundle)."
        ),
    ] = None,
    audit_log_path: AuditOption = None,
) -> None:
    """Sign an in-toto provenance statement over every file of the model directory, as the
    trainer: refused for a key of another role, a dataset that does not verify, or a gate
    record that is not a passed one for these weights."""
    from secmlops.models import read_card
    from secmlops.registry.trust_chain import check_openssf_bundle, signer_holds
    from secmlops.supplychain.keys import Keyring, key_id
    from secmlops.supplychain.provenance import sign_model, verify_model

    settings = current_settings()
    private_key = settings.private_key("trainer", key)  # read once (one passphrase prompt)
    trusted = keyring(trusted_keys, policy=policy)
    signer_holds(trusted, private_key, "trainer", "the model provenance")
    manifest_digest = signer = None
    if data is not None:
        from secmlops.data.manifest import verify_dataset

        verified_data = verify_dataset(data, trusted)
        manifest_digest, signer = verified_data.digest, verified_data.key_id
    if gate_record is not None:
        from secmlops.evaluation.gate import verify_gate_record

        # A failed (or another model's) record must not travel signed with the release.
        verify_gate_record(gate_record, trusted, read_card(model).weights_sha256)
    sign_model(
        model, private_key,
        data_manifest_digest=manifest_digest, data_signer=signer, dvc_revision=dvc_revision,
        gate_record=gate_record, image_commit=settings.git_commit,
        openssf_key=settings.openssf_key(openssf_key),
    )  # fmt: skip
    # Verify what was just written with the signer's own public key: a release that does not
    # verify must not leave this command looking successful.
    own = Keyring([private_key.public_key()])
    verified = verify_model(model, own.with_roles({"trainer": [key_id(private_key.public_key())]}))
    check_openssf_bundle(model, verified.subjects, verified.predicate)
    audit_log(audit_log_path).append(
        "supplychain", "sign_model", "info", verified.weights_sha256,
        {"model_dir": str(model), "signer": verified.signer, "files": sorted(verified.subjects)},
    )  # fmt: skip
    bundle = " and an OpenSSF bundle (model.sig)" if verified.predicate.get("openssf") else ""
    console.print(
        f"signed {model}: {len(verified.subjects)} files, weights sha256 "
        f"{verified.weights_sha256[:16]}..., key {verified.signer}{bundle}"
    )


@app.command("verify")
@exits_on_user_error
def verify_command(
    model: Annotated[Path, typer.Option(help="Model directory.")],
    trusted_keys: TrustedKeysOption = None,
    connection: ConnectionOption = None,
    policy: PolicyOption = None,
    audit_log_path: AuditOption = None,
) -> None:
    """Check a model directory against its signed provenance (every file, signer trusted)."""
    from secmlops.supplychain.provenance import verify_model

    audit = audit_log(audit_log_path)
    try:
        verified = verify_model(model, keyring(trusted_keys, connection, policy))
    except SecMLOpsError as exc:
        audit.append("supplychain", "verify_model", "fail", str(model), {"error": str(exc)})
        raise
    audit.append(
        "supplychain", "verify_model", "pass", verified.weights_sha256,
        {"model_dir": str(model), "signer": verified.signer},
    )  # fmt: skip
    predicate = verified.predicate
    gate = "present" if predicate.get("gate_record_sha256") else "absent"
    console.print(
        f"{model}: verified, signed by {verified.signer}; "
        f"data {predicate['data']['manifest_digest']}, code {predicate['code']['git_commit']}, "
        f"gate record {gate}"
    )


@app.command("calibrate-screening")
@exits_on_user_error
def calibrate_screening_command(
    model: Annotated[Path, typer.Option(help="Model directory (before `model sign`).")],
    data: Annotated[Path, typer.Option(help="Dataset with clean images from the camera.")],
    split: Annotated[str, typer.Option(help="Split to calibrate on (not the test split).")] = "val",
    max_images: Annotated[int, typer.Option(help="At most this many images.")] = 200,
) -> None:
    """Measure the adversarial-input screener's thresholds; writes screening.json beside the model.

    Sign the model afterwards: the calibration is one of its signed artifact files, and serving
    uses it (the feature-squeezing cascade) only when it verifies.
    """
    from secmlops.serving.calibration import SCREENING_FILE, calibrate_model

    calibration = calibrate_model(model, data, split, max_images)
    console.print(
        f"{model / SCREENING_FILE}: {calibration.images} clean {split} images, alarm above "
        f"uncertainty {calibration.uncertainty_threshold:.4f}, squeeze check from "
        f"{calibration.escalate_at}"
    )


@app.command("profile")
@exits_on_user_error
def profile_command(
    model: Annotated[Path, typer.Option(help="Model directory (before `model sign`).")],
    data: Annotated[Path, typer.Option(help="The dataset the model was validated on.")],
    split: Annotated[str, typer.Option(help="Split to profile (the validation split).")] = "val",
    max_images: Annotated[int, typer.Option(help="At most this many images.")] = 300,
) -> None:
    """Write the drift reference (features + backbone-embedding PCA) beside the model.

    `secmlops train` does this itself when the validation split is large enough; use this for
    imported models. Sign the model afterwards: monitoring trusts only a signed profile.
    """
    from secmlops.monitoring.reference import load_profile, profile_model

    path = profile_model(model, data, split, max_images)
    frame, projection = load_profile(model)
    kept = (
        f", embedding PCA keeps {projection.explained_variance_ratio.sum():.0%}"
        if projection
        else ""
    )
    console.print(f"{path}: {len(frame)} {split} images{kept}")
