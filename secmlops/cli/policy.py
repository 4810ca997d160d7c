"""`secmlops policy check | override`: the one file that holds every threshold."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
import yaml

from secmlops.cli.common import console, exits_on_user_error
from secmlops.cli.options import AuditOption, audit_log

app = typer.Typer(help="Check the policy file; derive an overridden one.", no_args_is_help=True)


@app.command("check")
@exits_on_user_error
def policy_check(
    path: Annotated[Path, typer.Argument(help="Policy file.")] = Path("policy.yaml"),
) -> None:
    """Validate a policy file and print its digest (decisions record it)."""
    from secmlops.policy import load_policy, policy_digest

    console.print(f"{path}: valid, {policy_digest(load_policy(path))}")


@app.command("override")
@exits_on_user_error
def policy_override(
    path: Annotated[Path, typer.Argument(help="Policy file to start from.")],
    set_: Annotated[
        list[str], typer.Option("--set", help="KEY.PATH=VALUE, e.g. data.max_empty_image_ratio=0.3")
    ],
    reason: Annotated[str, typer.Option(help="Why (required, recorded in the audit log).")],
    out: Annotated[Path, typer.Option(help="Where to write the overridden policy.")],
    audit_log_path: AuditOption = None,
) -> None:
    """Write a copy of the policy with some thresholds changed; each change is audited."""
    from secmlops.fsutil import atomic_write_bytes
    from secmlops.policy import apply_override, load_policy, parse_overrides, policy_digest

    policy = load_policy(path)
    records = []
    for key, value, why in parse_overrides(set_, reason):
        policy, record = apply_override(policy, key, value, why, roles=True)
        records.append(record)
    text = yaml.safe_dump(policy.model_dump(mode="json"), sort_keys=False)
    header = f"# Derived from {path} by `secmlops policy override`: {reason}\n"
    atomic_write_bytes(out, (header + text).encode())
    audit = audit_log(audit_log_path)
    for record in records:
        audit.append("policy", "override", "override", str(out), {**record, "base": str(path)})
    console.print(f"{out}: {len(records)} override(s), {policy_digest(policy)}")
