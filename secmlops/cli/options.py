"""Option types several commands share, and how an unset one falls back to the settings."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from secmlops.cli.common import current_settings

if TYPE_CHECKING:
    from secmlops.audit import AuditLog
    from secmlops.policy import Policy
    from secmlops.registry import Registry
    from secmlops.supplychain.keys import Keyring

PolicyOption = Annotated[
    Path | None, typer.Option(help="Policy file (default: $SECMLOPS_POLICY or ./policy.yaml).")
]
AuditOption = Annotated[
    Path | None,
    typer.Option(
        "--audit-log", help="Audit log (default: $SECMLOPS_AUDIT_LOG or <workdir>/audit/)."
    ),
]
ReportOption = Annotated[Path | None, typer.Option(help="Write the full report here (JSON).")]
TrustedKeysOption = Annotated[
    list[Path] | None,
    typer.Option(
        help="Trusted public keys: .pub files or folders (default: $SECMLOPS_TRUSTED_KEYS)."
    ),
]
RegistryOption = Annotated[
    str | None,
    typer.Option(
        "--registry",
        help="file:///path or s3://bucket/prefix (default: $SECMLOPS_REGISTRY or "
        "file://<workdir>/registry).",
    ),
]
DeviceOption = Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")]
ConnectionOption = Annotated[
    str | None, typer.Option(help="Read the trusted keys from this Airflow Connection instead.")
]


def policy_path(path: Path | None) -> Path:
    """The given policy file, else the settings' (`$SECMLOPS_POLICY`, else ./policy.yaml)."""
    return path or current_settings().policy


def load_policy_option(path: Path | None) -> Policy:
    """The policy of `--policy` (see `policy_path`), validated."""
    from secmlops.policy import load_policy

    return load_policy(policy_path(path))


def audit_log(path: Path | None) -> AuditLog:
    """The audit log of `--audit-log`, else the settings'."""
    from secmlops.audit import AuditLog

    settings = current_settings()
    return AuditLog(path, actor=settings.actor) if path else settings.audit()


def keyring(
    paths: list[Path] | None, connection: str | None = None, policy: Path | None = None
) -> Keyring:
    """The trusted keys (an Airflow Connection's, the given files, else the settings'), each
    with the role the policy (`--policy`, else the settings') gives it."""
    from secmlops.supplychain.keys import Keyring

    roles = load_policy_option(policy).roles.model_dump()
    if connection is not None:
        from secmlops.airflow_support import keyring_from_connection

        return keyring_from_connection(connection).with_roles(roles)
    if paths:
        return Keyring.from_paths(paths).with_roles(roles)
    return current_settings().keyring(load_policy_option(policy))


def model_registry(uri: str | None) -> Registry:
    """The registry of `--registry`, else the settings' (on the settings' S3 endpoint)."""
    from secmlops.registry import Registry

    settings = current_settings()
    return Registry.open(uri or settings.registry, settings.s3_endpoint_url)


def parse_size(text: str | None, option: str = "--input-size") -> tuple[int, int] | None:
    """`--input-size HxW` (or another `option` of that form) as (height, width)."""
    if text is None:
        return None
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise typer.BadParameter(f"{option} must look like 240x320, got {text!r}") from None
    return height, width
