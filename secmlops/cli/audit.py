"""`secmlops audit verify`: the hash-chained audit log."""

from __future__ import annotations

from typing import Annotated

import typer

from secmlops.cli.common import console, current_settings, err_console, exits_on_user_error
from secmlops.cli.options import (
    AuditOption,
    PolicyOption,
    RegistryOption,
    TrustedKeysOption,
    audit_log,
    keyring,
    model_registry,
)

app = typer.Typer(help="The hash-chained audit log.", no_args_is_help=True)


@app.command("verify")
@exits_on_user_error
def audit_verify(
    log: AuditOption = None,
    expected_head: Annotated[
        str | None, typer.Option(help="A hash kept by hand that must still be in the chain.")
    ] = None,
    registry: RegistryOption = None,
    trusted_keys: TrustedKeysOption = None,
    policy: PolicyOption = None,
) -> None:
    """Check the audit log's hash chain (any edit, deletion, reordering or non-canonical line),
    and the newest signed anchor of its head found in the registry (tail truncation, a chain
    rewritten up to a promotion)."""
    from secmlops.audit import verify_audit_log
    from secmlops.audit_anchors import latest_anchor, verify_with_anchor

    path = audit_log(log).path
    count = verify_audit_log(path, expected_head)
    if not trusted_keys and not current_settings().trusted_keys:
        console.print(f"{path}: {count} entries, hash chain intact (no trusted keys: anchors "
                      "not checked)")  # fmt: skip
        return
    anchor, skipped = latest_anchor(model_registry(registry), keyring(trusted_keys, policy=policy))
    for reason in skipped:
        err_console.print(f"warning: anchor passed over: {reason}", highlight=False)
    if anchor is None:
        console.print(f"{path}: {count} entries, hash chain intact (no signed anchor found in "
                      "the registry: tail truncation not checked)")  # fmt: skip
        return
    verify_with_anchor(path, anchor)
    console.print(
        f"{path}: {count} entries, hash chain intact, anchored at seq {anchor.seq} "
        f"({anchor.time}, signed by {anchor.signer})",
        highlight=False,
    )
