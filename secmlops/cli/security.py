"""Keys, the audit log, and the data-stage controls: sign, verify, validate, screen.

Every verify/validate/screen decision is appended to the audit log, pass or fail.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from secmlops.cli.common import app, console, fail
from secmlops.cli.data import data_app
from secmlops.errors import SecMLOpsError

if TYPE_CHECKING:
    from secmlops.audit import AuditLog
    from secmlops.policy import Policy
    from secmlops.supplychain.keys import Keyring

keys_app = typer.Typer(help="Ed25519 signing keys.", no_args_is_help=True)
audit_app = typer.Typer(help="The hash-chained audit log.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
app.add_typer(audit_app, name="audit")

POLICY_ENV = "SECMLOPS_POLICY"

PolicyOption = Annotated[
    Path | None, typer.Option(help="Policy file (default: $SECMLOPS_POLICY or ./policy.yaml).")
]
AuditOption = Annotated[
    Path | None,
    typer.Option("--audit-log", help="Audit log (default: $SECMLOPS_AUDIT_LOG or runs/audit/)."),
]
ReportOption = Annotated[Path | None, typer.Option(help="Write the full report here (JSON).")]
TrustedKeysOption = Annotated[
    list[Path] | None,
    typer.Option(
        help="Trusted public keys: .pub files or folders (default: $SECMLOPS_TRUSTED_KEYS)."
    ),
]


def _policy(path: Path | None) -> Policy:
    from secmlops.policy import load_policy

    return load_policy(path or Path(os.environ.get(POLICY_ENV, "policy.yaml")))


def _audit(path: Path | None) -> AuditLog:
    from secmlops.audit import AuditLog, default_audit_path

    return AuditLog(path or default_audit_path())


def _keyring(paths: list[Path] | None) -> Keyring:
    from secmlops.supplychain.keys import Keyring

    return Keyring.from_paths(paths) if paths else Keyring.from_env()


@keys_app.command("generate")
def keys_generate(
    name: Annotated[str, typer.Option(help="Key name: writes NAME.key and NAME.pub.")],
    out: Annotated[Path, typer.Option(help="Folder for the key files.")] = Path("keys"),
) -> None:
    """Generate an Ed25519 key pair and print its key id (put it in the policy to trust it)."""
    from secmlops.supplychain.keys import generate_keypair, key_id, load_public_key

    try:
        private, public = generate_keypair(out, name)
    except SecMLOpsError as exc:
        fail(exc)
    console.print(f"private key {private} (keep secret), public key {public}")
    console.print(f"key id: {key_id(load_public_key(public))}")


@keys_app.command("id")
def keys_id(public_key: Annotated[Path, typer.Argument(help="A .pub file.")]) -> None:
    """Print the key id of a public key (the form the policy's trusted key lists use)."""
    from secmlops.supplychain.keys import key_id, load_public_key

    try:
        print(key_id(load_public_key(public_key)))
    except SecMLOpsError as exc:
        fail(exc)


@audit_app.command("verify")
def audit_verify(
    log: AuditOption = None,
    expected_head: Annotated[
        str | None, typer.Option(help="Hash the last entry must have (detects truncation).")
    ] = None,
) -> None:
    """Check the audit log's hash chain: any edit, deletion or reordering is reported."""
    from secmlops.audit import verify_audit_log

    path = _audit(log).path
    try:
        count = verify_audit_log(path, expected_head)
    except SecMLOpsError as exc:
        fail(exc)
    console.print(f"{path}: {count} entries, hash chain intact")


@data_app.command("sign")
def data_sign(
    folder: Annotated[Path, typer.Argument(help="Dataset folder.")],
    key: Annotated[Path, typer.Option(help="The data owner's private key (.key).")],
    audit_log: AuditOption = None,
) -> None:
    """Write manifest.json (size and SHA-256 of every file) and its Ed25519 signature."""
    from secmlops.data.manifest import sign_dataset

    try:
        digest = sign_dataset(folder, key)
    except SecMLOpsError as exc:
        fail(exc)
    _audit(audit_log).append("data", "sign_manifest", "info", str(folder), {"digest": digest})
    console.print(f"signed {folder}: manifest {digest}")


@data_app.command("verify")
def data_verify(
    folder: Annotated[Path, typer.Argument(help="Dataset folder.")],
    trusted_keys: TrustedKeysOption = None,
    policy: PolicyOption = None,
    audit_log: AuditOption = None,
) -> None:
    """Verify the signed manifest before any use: every file, its size and SHA-256, the signer."""
    from secmlops.data.checks import verify_signed_dataset

    try:
        result = verify_signed_dataset(
            folder, _keyring(trusted_keys), _policy(policy).data, _audit(audit_log)
        )
    except SecMLOpsError as exc:
        fail(exc)
    console.print(
        f"verified {folder}: {result['files']} files, manifest {result['manifest_digest']}, "
        f"signed by {result['signer']}"
    )


@data_app.command("validate")
def data_validate(
    folder: Annotated[Path, typer.Argument(help="Dataset folder.")],
    policy: PolicyOption = None,
    report: ReportOption = None,
    audit_log: AuditOption = None,
) -> None:
    """Check annotations, images, box sizes, split leakage and empty-image ratio."""
    from secmlops.data.checks import validate

    try:
        result = validate(folder, _policy(policy).data, _audit(audit_log), report)
    except SecMLOpsError as exc:
        fail(exc)
    stats = result.get("statistics", {})
    console.print(
        f"valid: {folder} ({stats.get('images', '?')} images, {stats.get('boxes', '?')} boxes)"
    )


@data_app.command("screen")
def data_screen(
    folder: Annotated[Path, typer.Argument(help="Dataset folder.")],
    policy: PolicyOption = None,
    report: ReportOption = None,
    audit_log: AuditOption = None,
) -> None:
    """Screen the training split for backdoor poisoning (BadDet/BadNets-style triggers)."""
    from secmlops.data.checks import screen

    try:
        result = screen(folder, _policy(policy).data, _audit(audit_log), report)
    except SecMLOpsError as exc:
        fail(exc)
    summary = result["summary"]
    console.print(
        f"no poisoning suspected in {folder}: {summary['flagged']} of {summary['images']} "
        f"images flagged (max score {summary['max_score']:g}, threshold {result['threshold']:g})"
    )
