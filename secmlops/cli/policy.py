"""`secmlops policy check | override`: the one file that holds every threshold."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
import yaml

from secmlops.cli.common import app, console, fail
from secmlops.errors import SecMLOpsError

policy_app = typer.Typer(
    help="Check the policy file; derive an overridden one.", no_args_is_help=True
)
app.add_typer(policy_app, name="policy")


@policy_app.command("check")
def policy_check(
    path: Annotated[Path, typer.Argument(help="Policy file.")] = Path("policy.yaml"),
) -> None:
    """Validate a policy file and print its digest (decisions record it)."""
    from secmlops.policy import load_policy, policy_digest

    try:
        policy = load_policy(path)
    except SecMLOpsError as exc:
        fail(exc)
    console.print(f"{path}: valid, {policy_digest(policy)}")


@policy_app.command("override")
def policy_override(
    path: Annotated[Path, typer.Argument(help="Policy file to start from.")],
    set_: Annotated[
        list[str], typer.Option("--set", help="KEY.PATH=VALUE, e.g. data.max_empty_image_ratio=0.3")
    ],
    reason: Annotated[str, typer.Option(help="Why (required, recorded in the audit log).")],
    out: Annotated[Path, typer.Option(help="Where to write the overridden policy.")],
    audit_log: Annotated[Path | None, typer.Option("--audit-log", help="Audit log.")] = None,
) -> None:
    """Write a copy of the policy with some thresholds changed; each change is audited."""
    from secmlops.audit import AuditLog, default_audit_path
    from secmlops.fsutil import atomic_write_bytes
    from secmlops.policy import apply_override, load_policy, parse_overrides, policy_digest

    try:
        policy = load_policy(path)
        records = []
        for key, value, why in parse_overrides(set_, reason):
            policy, record = apply_override(policy, key, value, why)
            records.append(record)
    except SecMLOpsError as exc:
        fail(exc)
    text = yaml.safe_dump(policy.model_dump(mode="json"), sort_keys=False)
    header = f"# Derived from {path} by `secmlops policy override`: {reason}\n"
    atomic_write_bytes(out, (header + text).encode())
    audit = AuditLog(audit_log or default_audit_path())
    for record in records:
        audit.append("policy", "override", "override", str(out), {**record, "base": str(path)})
    console.print(f"{out}: {len(records)} override(s), {policy_digest(policy)}")
