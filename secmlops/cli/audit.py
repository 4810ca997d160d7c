"""`secmlops audit verify`: the hash-chained audit log."""

from __future__ import annotations

from typing import Annotated

import typer

from secmlops.cli.common import console, exits_on_user_error
from secmlops.cli.options import AuditOption, audit_log

app = typer.Typer(help="The hash-chained audit log.", no_args_is_help=True)


@app.command("verify")
@exits_on_user_error
def audit_verify(
    log: AuditOption = None,
    expected_head: Annotated[
        str | None, typer.Option(help="Hash the last entry must have (detects truncation).")
    ] = None,
) -> None:
    """Check the audit log's hash chain: any edit, deletion or reordering is reported."""
    from secmlops.audit import verify_audit_log

    path = audit_log(log).path
    count = verify_audit_log(path, expected_head)
    console.print(f"{path}: {count} entries, hash chain intact")
