"""`secmlops registry push | list | show | promote | rollback | pull`: the model registry.

Every push, promote and rollback, passed or refused, is appended to the audit log. A refusal
(unsigned or tampered model, no passed gate record, a lost compare-and-swap race) prints one
`error:` line and exits with status 2; nothing is half-written.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from secmlops.cli.common import console, current_settings, err_console, exits_on_user_error
from secmlops.cli.options import (
    AuditOption,
    RegistryOption,
    TrustedKeysOption,
    audit_log,
    keyring,
    model_registry,
)

if TYPE_CHECKING:
    from secmlops.audit import AuditLog
    from secmlops.registry import Registry
    from secmlops.supplychain.keys import Keyring

app = typer.Typer(
    help="Model registry: immutable signed versions; aliases moved by compare-and-swap.",
    no_args_is_help=True,
)

AnchorKeyOption = Annotated[
    Path | None,
    typer.Option(
        "--key",
        help="Private key signing the audit anchor written after the move "
        "(default: $SECMLOPS_SIGNING_KEY).",
    ),
]
NameArgument = Annotated[str, typer.Argument(help="Model name.")]
AliasOption = Annotated[str, typer.Option(help="Alias to move, e.g. staging or production.")]


def _short(digest: str) -> str:
    return f"{digest[:12]}…" if digest else ""


@app.command("push")
@exits_on_user_error
def registry_push(
    model_dir: Annotated[Path, typer.Argument(help="Signed model release folder.")],
    name: Annotated[str, typer.Option(help="Model name.")],
    version: Annotated[str, typer.Option(help="Version name (immutable once pushed).")],
    registry: RegistryOption = None,
    trusted_keys: TrustedKeysOption = None,
    audit_log_path: AuditOption = None,
) -> None:
    """Verify a signed model's provenance, then store it as a new immutable version."""
    reg = model_registry(registry)
    record = reg.push(model_dir, name, version, keyring(trusted_keys), audit_log(audit_log_path))
    console.print(
        f"pushed {name}@{version} to {reg.uri}: weights {record['weights_sha256']}, "
        f"signed by {record['signer']}"
    )


@app.command("list")
@exits_on_user_error
def registry_list(
    name: Annotated[str | None, typer.Argument(help="Model name (default: list models).")] = None,
    registry: RegistryOption = None,
) -> None:
    """List the models of the registry, or the versions of one model with their aliases."""
    reg = model_registry(registry)
    if name is None:
        table = Table(title=f"models in {reg.uri}")
        for column in ("model", "versions", "aliases"):
            table.add_column(column)
        for model in reg.models():
            aliases = reg.aliases(model)
            table.add_row(
                model,
                str(len(reg.store.list_versions(model))),
                ", ".join(f"{a} -> {r['version']}" for a, r in aliases.items()),
            )
    else:
        table = Table(title=f"{name} in {reg.uri}")
        for column in ("version", "weights", "signer", "gate record", "pushed", "aliases"):
            table.add_column(column, overflow="fold")
        for row in reg.list(name):
            table.add_row(
                row["version"],
                _short(row["weights_sha256"]),
                row["signer"],
                "yes" if row["gate_record"] else "no",
                f"{row['pushed_at']} by {row['pushed_by']}",
                ", ".join(row["aliases"]),
            )
    console.print(table)


@app.command("show")
@exits_on_user_error
def registry_show(
    name: NameArgument,
    ref: Annotated[str, typer.Argument(help="Version or alias.")],
    registry: RegistryOption = None,
    trusted_keys: TrustedKeysOption = None,
    verify: Annotated[
        bool, typer.Option(help="Fetch and verify provenance and gate record (needs keys).")
    ] = True,
) -> None:
    """Show a version: files and digests, signer, gate status, aliases pointing at it."""
    reg = model_registry(registry)
    keyring = _optional_keyring(trusted_keys) if verify else None
    info = reg.show(name, ref, keyring)
    table = Table(
        title=f"{info['name']}@{info['version']} in {info['registry']}", show_header=False
    )
    table.add_column("field", style="bold", no_wrap=True)
    table.add_column("value", overflow="fold")  # digests in full: a cut one cannot be compared
    gate = info["gate"]
    verified = info["verified"]
    rows: list[tuple[str, Any]] = [
        ("weights sha256", info["weights_sha256"]),
        ("signer (at push)", info["signer"]),
        ("pushed", f"{info['pushed_at']} by {info['pushed_by']}"),
        ("aliases", ", ".join(info["aliases"]) or "-"),
        ("gate", gate["status"] + (f": {gate['detail']}" if gate.get("detail") else "")),
        (
            "provenance",
            "unverified (no trusted keys)"
            if verified is None
            else f"verified, signed by {verified}"
            if verified
            else f"REFUSED: {info.get('verify_error')}",
        ),
    ]
    for field, value in rows:
        table.add_row(field, str(value))
    files = Table(title="files")
    files.add_column("file", no_wrap=True)
    files.add_column("bytes", justify="right")
    files.add_column("sha256", overflow="fold")
    for file_name, meta in info["files"].items():
        files.add_row(file_name, str(meta["size"]), meta["sha256"])
    console.print(table)
    console.print(files)


def _optional_keyring(paths: list[Path] | None) -> Keyring | None:
    """Keys for `show`: given ones, else the settings' if set, else None (unverified)."""
    if not paths and not current_settings().trusted_keys:
        return None
    return keyring(paths)


@app.command("promote")
@exits_on_user_error
def registry_promote(
    name: NameArgument,
    version: Annotated[str, typer.Argument(help="Version to point the alias at.")],
    alias: AliasOption = "staging",
    expect_current: Annotated[
        str | None,
        typer.Option(
            help="Version the alias must point at now ('' = must not exist); refused otherwise."
        ),
    ] = None,
    registry: RegistryOption = None,
    trusted_keys: TrustedKeysOption = None,
    audit_log_path: AuditOption = None,
    key: AnchorKeyOption = None,
) -> None:
    """Move an alias to a version that has a passed, trusted gate record (compare-and-swap);
    then anchor the audit log's head in the registry."""
    reg, audit = model_registry(registry), audit_log(audit_log_path)
    record = reg.promote(
        name, version, alias, keyring(trusted_keys), audit, expected_current=expect_current
    )
    previous = record["previous"][0] if record["previous"] else "(none)"
    console.print(
        f"{name}: {alias} -> {version} (was {previous}; generation {record['generation']})"
    )
    _anchor(reg, audit, key)


@app.command("rollback")
@exits_on_user_error
def registry_rollback(
    name: NameArgument,
    alias: AliasOption = "production",
    registry: RegistryOption = None,
    trusted_keys: TrustedKeysOption = None,
    audit_log_path: AuditOption = None,
    key: AnchorKeyOption = None,
) -> None:
    """Move an alias back to its previous version, re-verified as for promote; then anchor the
    audit log's head in the registry."""
    reg, audit = model_registry(registry), audit_log(audit_log_path)
    record = reg.rollback(name, alias, keyring(trusted_keys), audit)
    console.print(
        f"{name}: {alias} rolled back to {record['version']} (generation {record['generation']})"
    )
    _anchor(reg, audit, key)


def _anchor(reg: Registry, audit: AuditLog, key: Path | None) -> None:
    """Anchor the audit head after an alias move, when a signing key is at hand."""
    from secmlops.audit_anchors import write_anchor

    settings = current_settings()
    if key is None and settings.signing_key is None:
        err_console.print(
            "note: audit head not anchored (no --key and no SECMLOPS_SIGNING_KEY): "
            "`secmlops audit verify` cannot detect entries cut off after this move",
            highlight=False,
        )
        return
    anchor = write_anchor(reg, audit, settings.private_key(key))
    if anchor is not None:
        console.print(f"audit head anchored: seq {anchor.seq} ({anchor.name})", highlight=False)


@app.command("pull")
@exits_on_user_error
def registry_pull(
    name: NameArgument,
    ref: Annotated[str, typer.Argument(help="Version or alias.")],
    to: Annotated[Path, typer.Option(help="Folder to create with the verified model.")],
    overwrite: Annotated[bool, typer.Option(help="Replace an existing folder.")] = False,
    registry: RegistryOption = None,
    trusted_keys: TrustedKeysOption = None,
) -> None:
    """Download a version or an alias's version; it appears only once its signature verifies."""
    reg = model_registry(registry)
    verified = reg.pull(name, ref, to, keyring(trusted_keys), overwrite=overwrite)
    console.print(
        f"{name}@{ref} -> {verified.model_dir}: weights {verified.weights_sha256}, "
        f"signed by {verified.signer}"
    )
