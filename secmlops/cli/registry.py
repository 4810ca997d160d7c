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

from secmlops.cli.common import console, current_settings, exits_on_user_error
from secmlops.cli.options import (
    AuditOption,
    PolicyOption,
    RegistryOption,
    TrustedKeysOption,
    audit_log,
    keyring,
    load_policy_option,
    model_registry,
)

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from secmlops.audit import AuditLog
    from secmlops.registry import Registry
    from secmlops.supplychain.keys import Keyring

app = typer.Typer(
    help="Model registry: immutable signed versions; aliases moved by compare-and-swap.",
    no_args_is_help=True,
)

MoveKeyOption = Annotated[
    Path | None,
    typer.Option(
        "--approver-key",
        "--key",
        help="Private key that signs the alias move and the audit anchor after it: the "
        "approver's for production (default: $SECMLOPS_APPROVER_KEY), the gate's for other "
        "aliases (default: $SECMLOPS_GATE_KEY).",
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
    policy: PolicyOption = None,
    audit_log_path: AuditOption = None,
) -> None:
    """Verify a signed model's provenance (by a trainer key), then store it as a new immutable
    version."""
    reg = model_registry(registry)
    record = reg.push(
        model_dir, name, version, keyring(trusted_keys, policy=policy), audit_log(audit_log_path)
    )
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
    policy: PolicyOption = None,
    verify: Annotated[
        bool, typer.Option(help="Fetch and verify provenance and gate record (needs keys).")
    ] = True,
) -> None:
    """Show a version: files and digests, signer, gate status, aliases pointing at it."""
    reg = model_registry(registry)
    keyring = _optional_keyring(trusted_keys, policy) if verify else None
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


def _optional_keyring(paths: list[Path] | None, policy: Path | None) -> Keyring | None:
    """Keys for `show`: given ones, else the settings' if set, else None (unverified)."""
    if not paths and not current_settings().trusted_keys:
        return None
    return keyring(paths, policy=policy)


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
    policy_exception: Annotated[
        str | None,
        typer.Option(
            help="Why a gate record made under another policy is accepted (signed into the "
            "move, audited); without it such a record is refused."
        ),
    ] = None,
    registry: RegistryOption = None,
    trusted_keys: TrustedKeysOption = None,
    policy: PolicyOption = None,
    audit_log_path: AuditOption = None,
    key: MoveKeyOption = None,
) -> None:
    """Move an alias to a version after walking its whole trust chain (provenance, passed and
    unexpired gate record under the policy in force, dataset signer); the move is signed by the
    alias's role (approver for production) and compare-and-swapped; then the audit log's head
    is anchored in the registry."""
    from secmlops.registry.trust_chain import SequenceState, alias_role

    settings = current_settings()
    reg, audit = model_registry(registry), audit_log(audit_log_path)
    signing_key = settings.private_key(alias_role(alias), key)
    record = reg.promote(
        name, version, alias, keyring(trusted_keys, policy=policy), audit, key=signing_key,
        policy=load_policy_option(policy), state=SequenceState(settings.trust_state),
        expected_current=expect_current, policy_exception=policy_exception,
    )  # fmt: skip
    previous = record["previous"][0] if record["previous"] else "(none)"
    console.print(
        f"{name}: {alias} -> {version} (was {previous}; sequence {record['generation']}, "
        f"signed as {alias_role(alias)})"
    )
    _anchor(reg, audit, signing_key)


@app.command("rollback")
@exits_on_user_error
def registry_rollback(
    name: NameArgument,
    alias: AliasOption = "production",
    registry: RegistryOption = None,
    trusted_keys: TrustedKeysOption = None,
    policy: PolicyOption = None,
    audit_log_path: AuditOption = None,
    key: MoveKeyOption = None,
) -> None:
    """Move an alias back to the previous version of its signed history: a new signed move
    (higher sequence), the target's chain re-verified; then anchor the audit log's head."""
    from secmlops.registry.trust_chain import SequenceState, alias_role

    settings = current_settings()
    reg, audit = model_registry(registry), audit_log(audit_log_path)
    signing_key = settings.private_key(alias_role(alias), key)
    record = reg.rollback(
        name, alias, keyring(trusted_keys, policy=policy), audit, key=signing_key,
        policy=load_policy_option(policy), state=SequenceState(settings.trust_state),
    )  # fmt: skip
    console.print(
        f"{name}: {alias} rolled back to {record['version']} (sequence {record['generation']})"
    )
    _anchor(reg, audit, signing_key)


def _anchor(reg: Registry, audit: AuditLog, key: Ed25519PrivateKey) -> None:
    """Anchor the audit head after an alias move, with the key that signed the move."""
    from secmlops.audit_anchors import write_anchor

    anchor = write_anchor(reg, audit, key)
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
    policy: PolicyOption = None,
    audit_log_path: AuditOption = None,
) -> None:
    """Download a version or an alias's version; it appears only once its whole trust chain
    verifies (through an alias: the signed move and its sequence too)."""
    from secmlops.registry.trust_chain import SequenceState

    settings = current_settings()
    reg = model_registry(registry)
    release = reg.pull(
        name, ref, to, keyring(trusted_keys, policy=policy), load_policy_option(policy),
        audit=audit_log(audit_log_path), state=SequenceState(settings.trust_state),
        overwrite=overwrite,
    )  # fmt: skip
    model, move = release.model, release.move
    moved = f" (sequence {move.sequence}, moved by {move.signer})" if move else ""
    console.print(
        f"{name}@{ref} -> {model.model_dir}: weights {model.weights_sha256}, "
        f"signed by {model.signer}; gate passed{moved}"
    )
