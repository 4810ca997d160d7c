"""`secmlops model sign | verify`: the signed provenance statement that releases a model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from secmlops.cli.common import console, fail
from secmlops.cli.model_import import model_app
from secmlops.cli.security import AuditOption, TrustedKeysOption, _audit, _keyring
from secmlops.errors import SecMLOpsError


@model_app.command("sign")
def sign_command(
    model: Annotated[Path, typer.Option(help="Model directory.")],
    key: Annotated[Path, typer.Option(help="The model-signing private key (.key).")],
    data: Annotated[
        Path | None,
        typer.Option(help="The dataset it was trained on: verified now, its digest recorded."),
    ] = None,
    trusted_keys: TrustedKeysOption = None,
    dvc_revision: Annotated[
        str | None, typer.Option(help="Data registry revision the data was pulled at.")
    ] = None,
    gate_record: Annotated[
        Path | None, typer.Option(help="The passed gate record (copied in and signed with it).")
    ] = None,
    audit_log: AuditOption = None,
) -> None:
    """Sign an in-toto provenance statement over every file of the model directory."""
    from secmlops.supplychain.keys import Keyring, load_private_key
    from secmlops.supplychain.provenance import sign_model, verify_model

    try:
        private_key = load_private_key(key)  # read once (a passphrase is asked for once)
        manifest_digest = signer = None
        if data is not None:
            from secmlops.data.manifest import verify_dataset

            verified_data = verify_dataset(data, _keyring(trusted_keys))
            manifest_digest, signer = verified_data.digest, verified_data.key_id
        sign_model(
            model,
            private_key,
            data_manifest_digest=manifest_digest,
            data_signer=signer,
            dvc_revision=dvc_revision,
            gate_record=gate_record,
        )
        # Verify what was just written with the signer's own public key: a release that does not
        # verify must not leave this command looking successful.
        public = Keyring([private_key.public_key()])
        verified = verify_model(model, public)
    except SecMLOpsError as exc:
        fail(exc)
    _audit(audit_log).append(
        "supplychain", "sign_model", "info", verified.weights_sha256,
        {"model_dir": str(model), "signer": verified.signer, "files": sorted(verified.subjects)},
    )  # fmt: skip
    console.print(
        f"signed {model}: {len(verified.subjects)} files, weights sha256 "
        f"{verified.weights_sha256[:16]}..., key {verified.signer}"
    )


@model_app.command("verify")
def verify_command(
    model: Annotated[Path, typer.Option(help="Model directory.")],
    trusted_keys: TrustedKeysOption = None,
    connection: Annotated[
        str | None,
        typer.Option(help="Read the trusted keys from this Airflow Connection instead."),
    ] = None,
    audit_log: AuditOption = None,
) -> None:
    """Check a model directory against its signed provenance (every file, signer trusted)."""
    from secmlops.supplychain.provenance import verify_model

    audit = _audit(audit_log)
    try:
        if connection is not None:
            from secmlops.airflow_support import keyring_from_connection

            keyring = keyring_from_connection(connection)
        else:
            keyring = _keyring(trusted_keys)
        verified = verify_model(model, keyring)
    except SecMLOpsError as exc:
        audit.append("supplychain", "verify_model", "fail", str(model), {"error": str(exc)})
        fail(exc)
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


@model_app.command("calibrate-screening")
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

    try:
        calibration = calibrate_model(model, data, split, max_images)
    except SecMLOpsError as exc:
        fail(exc)
    console.print(
        f"{model / SCREENING_FILE}: {calibration.images} clean {split} images, alarm above "
        f"uncertainty {calibration.uncertainty_threshold:.4f}, squeeze check from "
        f"{calibration.escalate_at}"
    )


@model_app.command("profile")
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

    try:
        path = profile_model(model, data, split, max_images)
        frame, projection = load_profile(model)
    except SecMLOpsError as exc:
        fail(exc)
    kept = (
        f", embedding PCA keeps {projection.explained_variance_ratio.sum():.0%}"
        if projection
        else ""
    )
    console.print(f"{path}: {len(frame)} {split} images{kept}")
