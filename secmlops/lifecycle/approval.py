"""Human approval before production: the evidence shown, every decision audited, and the person
who started a run never the one who approves it.

Threat: a model that passed every automated control still reaches production because one person
wanted it there: they trigger a run with lowered thresholds (`policy_overrides`) and promote the
result themselves, or an automated pipeline promotes whatever passed while nobody looks at what
the defence cost. Separation of duties (NIST SP 800-53 AC-5; the two-person rule of change
management) puts a second person between the gate and production: the training DAG waits on
Airflow's Human-in-the-loop `ApprovalOperator` with the gate's evidence in front of the approver
(`release_evidence`); the approver's Airflow identity and decision are audited (`decide`); an
approval by the user who triggered the run is refused (and audited); a rejection or a timeout
fails the run with production unchanged. The approved move is then signed with the approver
role's key, naming the approver (`lifecycle.release.promote`).

Not covered: two colluding users, or one person holding two Airflow accounts; an attacker with
the approver key itself (the key's custody is the control: docs/operations.md).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from secmlops.errors import Refusal
from secmlops.lifecycle.contracts import (
    Approval,
    Evaluation,
    GateResult,
    ProductionEvaluation,
    Release,
    RunPolicy,
)
from secmlops.settings import PRODUCTION_ALIAS, Settings

STAGE = "approval"
ACTION = "approve_production"
APPROVE, REJECT = "Approve", "Reject"


class ApprovalRefused(Refusal):
    """Production was not approved: rejected, timed out, or approved by the run's own trigger."""


def release_evidence(
    release: Release, gated: GateResult, evaluated: Evaluation,
    production: ProductionEvaluation | None, run_policy: RunPolicy,
    *, undefended: Evaluation | None = None,
) -> str:  # fmt: skip
    """What the approver reads (Markdown): the release, the gate's checks with their thresholds,
    the figures beside the undefended baseline's (what the defence bought and cost) and
    production's, and the run's policy overrides."""
    lines = [
        f"**Release** `{release['name']}@{release['version']}` "
        f"(weights `{release['weights_sha256'][:16]}…`) asks to become `{PRODUCTION_ALIAS}`.",
        "",
        f"**Gate**: passed {gated['checks']} checks under policy `{gated['policy_digest'][:19]}…`.",
        "",
        "| metric | candidate | undefended | production | change |",
        "|---|---|---|---|---|",
    ]
    rows = _map_rows(evaluated)
    baseline, reference = _map_rows(undefended), _map_rows(production)
    for name, value in rows.items():
        before = reference.get(name)
        change = f"{value - before:+.3f}" if before is not None else "-"
        lines.append(
            f"| {name} | {value:.3f} | {_shown(baseline.get(name))} | {_shown(before)} | {change} |"
        )
    lines += ["", *_gate_checks(Path(gated["record"]))]
    overrides = run_policy["overrides"]
    if overrides:
        lines += ["", "**Policy overrides of this run** (each audited):"]
        lines += [f"- `{o['path']}`: {o['old']} -> {o['new']} ({o['reason']})" for o in overrides]
    else:
        lines += ["", "No policy overrides in this run."]
    if production is None:
        lines += ["", "Nothing is in production yet."]
    else:
        lines += ["", f"In production now: `{production['version']}`."]
    return "\n".join(lines)


def _map_rows(evaluation: Evaluation | None) -> dict[str, float]:
    if evaluation is None:
        return {}
    return {"clean mAP@0.5": evaluation["clean_mAP50"], **evaluation["attacks"]}


def _shown(value: float | None) -> str:
    return f"{value:.3f}" if value is not None else "-"


def gate_record_checks(record: Path) -> list[dict[str, Any]]:
    """The checks of a signed gate record, read from its DSSE payload for display only (not
    verified here: the release's consumers verify it).

    Raises:
        OSError, ValueError, KeyError, TypeError: the record is missing or malformed.
    """
    import base64

    envelope = json.loads(Path(record).read_bytes())
    return list(json.loads(base64.b64decode(envelope["payload"]))["predicate"]["checks"])


def _gate_checks(record: Path) -> list[str]:
    """The gate record's checks as a list (the signed record's payload; display only)."""
    try:
        checks = gate_record_checks(record)
    except (OSError, ValueError, KeyError, TypeError):
        return [f"(gate record {record} unreadable)"]
    shown = ["**Gate checks**:"]
    for check in checks:
        measured, threshold = check.get("measured"), check.get("threshold")
        value = f"{measured:.3f}" if isinstance(measured, float) else str(measured or "-")
        bar = f"{check.get('comparison', '')} {threshold}" if threshold is not None else ""
        shown.append(f"- {check.get('label')}: {value} {bar} ({check.get('note') or 'ok'})")
    return shown


def decide(
    settings: Settings,
    release: Release,
    response: Mapping[str, Any],
    triggered_by: str | None,
) -> Approval:
    """Judge the approver's response and audit it, with who triggered the run and who answered.

    Args:
        response: the Human-in-the-loop event: `chosen_options` and `responded_by_user`
            ({"id", "name"}), or `error` / `error_type` ("timeout") when nobody answered.
        triggered_by: the Airflow user who triggered the run (None for a scheduled run).

    Returns:
        The approval: who approved, and when.

    Raises:
        ApprovalRefused: rejected, timed out, or answered by the user who triggered the run.
    """
    subject = f"{release['name']}@{release['version']}"
    audit = settings.audit(actor="airflow")
    details: dict[str, Any] = {"alias": PRODUCTION_ALIAS, "triggered_by": triggered_by}
    if "error" in response:
        kind = str(response.get("error_type") or "error")
        audit.append(STAGE, ACTION, "fail", subject, {**details, "decision": kind})
        raise ApprovalRefused(
            f"{subject}: no approval ({kind}: {response.get('error')}); production unchanged"
        )
    user = response.get("responded_by_user") or {}
    approver = str(user.get("name") or user.get("id") or "")
    chosen = list(response.get("chosen_options") or [])
    details.update(responded_by=approver, decision=chosen[0] if chosen else None)
    if not approver:
        audit.append(STAGE, ACTION, "fail", subject, {**details, "refused": "no responder"})
        raise ApprovalRefused(f"{subject}: the response names no user; production unchanged")
    if triggered_by and triggered_by in (approver, str(user.get("id") or "")):
        audit.append(STAGE, ACTION, "fail", subject, {**details, "refused": "self-approval"})
        raise ApprovalRefused(
            f"{subject}: {approver} triggered this run and cannot also approve it (separation "
            "of duties); production unchanged"
        )
    if chosen != [APPROVE]:
        audit.append(STAGE, ACTION, "fail", subject, details)
        raise ApprovalRefused(f"{subject}: rejected by {approver}; production unchanged")
    audit.append(STAGE, ACTION, "pass", subject, details)
    return {"approved_by": approver, "triggered_by": triggered_by,
            "responded_at": str(response.get("responded_at") or "")}  # fmt: skip
