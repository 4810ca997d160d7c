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

from secmlops.cli.common import app, console, fail
from secmlops.cli.security import AuditOption, TrustedKeysOption, _audit, _keyring
from secmlops.errors import SecMLOpsError

if TYPE_CHECKING:
    from secmlops.registry import Registry

registry_app = typer.Typer(
    help="Model registry: immutable signed versions; aliases moved by compare-and-swap.",
    no_args_is_help=True,
)
app.add_typer(registry_app, name="registry")

RegistryOption = Annotated[
    str | None,
    typer.Option(
        "--registry",
        help="file:///path or s3://bucket/prefix (default: $SECMLOPS_REGISTRY or "
        "file://<workdir>/registry).",
    ),
]
NameArgument = Annotated[str, typer.Argument(help="Model name.")]
AliasOption = Annotated[str, typer.Option(help="Alias to move, e.g. staging or production.")]


def _open(uri: str | None) -> Registry:
    from secmlops.registry import Registry, default_registry_uri

    return Registry.open(uri or default_registry_uri())


def _short(digest: str) -> str:
    return f"{digest[:12]}…" if digest else ""


@registry_app.command("push")
def registry_push(
    model_dir: Annotated[Path, typer.Argument(help="Signed model release folder.")],
    name: Annotated[str, typer.Option(help="Model name.")],
    version: Annotated[str, typer.Option(help="Version name (immutable once pushed).")],
    registry: RegistryOption = None,
    trusted_keys: TrustedKeysOption = None,
    audit_log: AuditOption = None,
) -> None:
    """Verify a signed model's provenance, then store it as a new immutable version."""
    try:
        reg = _open(registry)
        record = reg.push(model_dir, name, version, _keyring(trusted_keys), _audit(audit_log))
    except SecMLOpsError as exc:
        fail(exc)
    console.print(
        f"pushed {name}@{version} to {reg.uri}: weights {record['weights_sha256']}, "
        f"signed by {record['signer']}"
    )


@registry_app.command("list")
def registry_list(
    name: Annotated[str | None, typer.Argument(help="Model name (default: list models).")] = None,
    registry: RegistryOption = None,
) -> None:
    """List the models of the registry, or the versions of one model with their aliases."""
    try:
        reg = _open(registry)
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
    except SecMLOpsError as exc:
        fail(exc)
    console.print(table)


@registry_app.command("show")
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
    try:
        reg = _open(registry)
        keyring = _optional_keyring(trusted_keys) if verify else None
        info = reg.show(name, ref, keyring)
    except SecMLOpsError as exc:
        fail(exc)
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


def _optional_keyring(paths: list[Path] | None) -> Any:
    """Keys for `show`: given ones, else $SECMLOPS_TRUSTED_KEYS if set, else None (unverified)."""
    import os

    from secmlops.supplychain.keys import TRUSTED_KEYS_ENV

    if not paths and not os.environ.get(TRUSTED_KEYS_ENV, "").strip():
        return None
    return _keyring(paths)


@registry_app.command("promote")
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
    audit_log: AuditOption = None,
) -> None:
    """Move an alias to a version that has a passed, trusted gate record (compare-and-swap)."""
    try:
        reg = _open(registry)
        record = reg.promote(
            name,
            version,
            alias,
            _keyring(trusted_keys),
            _audit(audit_log),
            expected_current=expect_current,
        )
    except SecMLOpsError as exc:
        fail(exc)
    previous = record["previous"][0] if record["previous"] else "(none)"
    console.print(
        f"{name}: {alias} -> {version} (was {previous}; generation {record['generation']})"
    )


@registry_app.command("rollback")
def registry_rollback(
    name: NameArgument,
    alias: AliasOption = "production",
    registry: RegistryOption = None,
    trusted_keys: TrustedKeysOption = None,
    audit_log: AuditOption = None,
) -> None:
    """Move an alias back to its previous version, re-verified as for promote."""
    try:
        reg = _open(registry)
        record = reg.rollback(name, alias, _keyring(trusted_keys), _audit(audit_log))
    except SecMLOpsError as exc:
        fail(exc)
    console.print(
        f"{name}: {alias} rolled back to {record['version']} (generation {record['generation']})"
    )


@registry_app.command("pull")
def registry_pull(
    name: NameArgument,
    ref: Annotated[str, typer.Argument(help="Version or alias.")],
    to: Annotated[Path, typer.Option(help="Folder to create with the verified model.")],
    overwrite: Annotated[bool, typer.Option(help="Replace an existing folder.")] = False,
    registry: RegistryOption = None,
    trusted_keys: TrustedKeysOption = None,
) -> None:
    """Download a version or an alias's version; it appears only once its signature verifies."""
    try:
        reg = _open(registry)
        verified = reg.pull(name, ref, to, _keyring(trusted_keys), overwrite=overwrite)
    except SecMLOpsError as exc:
        fail(exc)
    console.print(
        f"{name}@{ref} -> {verified.model_dir}: weights {verified.weights_sha256}, "
        f"signed by {verified.signer}"
    )
