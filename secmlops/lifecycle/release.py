"""Training to release as lifecycle tasks: train, attack, gate, sign, push, promote.

Every stage after `resolve_run_policy` reads the run's effective policy (`RunPolicy`), never the
policy file itself, so the attack suite that made the evidence and the gate that judges it are
the same one.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from secmlops.lifecycle.contracts import (
    Approval,
    Evaluation,
    GateResult,
    ProductionEvaluation,
    Promotion,
    Release,
    RunPolicy,
    SignedModel,
    TrainedModel,
    TrainingPlan,
    TrainingRequest,
    VerifiedData,
)
from secmlops.lifecycle.run_policy import load_run_policy, resolve_run_policy
from secmlops.policy import AttackSuitePolicy
from secmlops.settings import PRODUCTION_ALIAS, Settings

if TYPE_CHECKING:
    from secmlops.registry.trust_chain import VerifiedRelease

log = logging.getLogger(__name__)

CANDIDATE = "model"
BASELINE = "baseline"
REQUEST_FILE = "training-request.json"


def plan_training(
    settings: Settings, run_id: str, params: Mapping[str, Any], overrides: Sequence[str] = (),
    reason: str = "", max_eval_images: int | None = None, older_data_reason: str = "",
) -> TrainingPlan:  # fmt: skip
    """Fix what a training run trains and under which policy, before anything is trained.

    The parameters are parsed once (eps into a float), the policy's overrides applied once
    (`resolve_run_policy`); both are written into the run folder, and every later stage reads
    them from the plan.

    Args:
        params: the run's training parameters (`TrainingRequest` field names; None = default).
        overrides: `KEY.PATH=VALUE` policy overrides for this run; `reason` says why.
        max_eval_images: cap on attacked test images (None: all).
        older_data_reason: why this run may train on an older dataset version than the
            production model's (audited when used; empty: such a run is refused).

    Raises:
        InvalidRequest: a parameter is invalid.
        PolicyError: the policy or an override is invalid, or an override has no reason.
    """
    from secmlops.errors import InvalidRequest
    from secmlops.fsutil import atomic_write_json

    if max_eval_images is not None and max_eval_images < 1:
        raise InvalidRequest(f"max_eval_images must be at least 1, got {max_eval_images}")
    request = TrainingRequest.from_params(dict(params))
    run_policy = resolve_run_policy(settings, run_id, overrides, reason)
    atomic_write_json(settings.run_dir(run_id) / REQUEST_FILE, request.to_json())
    return {"request": request.to_json(), "policy": run_policy,
            "max_eval_images": max_eval_images,
            "older_data_reason": older_data_reason.strip()}  # fmt: skip


def train(
    settings: Settings, data: VerifiedData, run_id: str, request: TrainingRequest,
    run_policy: RunPolicy, *, name: str = CANDIDATE,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
) -> TrainedModel:  # fmt: skip
    """Train `request` on the verified data into the run's folder `<run>/<name>`, resuming from
    a checkpoint there (a retried task continues where the failed attempt stopped). The
    operating point is chosen at the run policy's `gate.operating_point.target_fppi`.

    Args:
        name: the model's folder in the run: `model` (the candidate) or `baseline` (the
            undefended model the gate's defence-cost check compares with).
        on_epoch: receives each epoch's summary (default: a line in the task log).
    """
    from secmlops.training.trainer import CHECKPOINT_DIR
    from secmlops.training.trainer import train as train_detector

    def report(summary: dict[str, float]) -> None:
        # Task logs show the progress in the Airflow UI (and why a run is slow).
        log.info(
            "%s epoch %d: loss %.3f, val mAP@0.5 %.3f (%.1f s)", name, summary["epoch"],
            summary["loss"], summary["val_mAP50"], summary["seconds"],
        )  # fmt: skip

    model_dir = settings.run_dir(run_id) / name
    resume = (model_dir / CHECKPOINT_DIR / "state.json").exists()
    target_fppi = load_run_policy(run_policy).gate.operating_point.target_fppi
    result = train_detector(
        Path(data["data_dir"]), model_dir, request.train_config(target_fppi=target_fppi),
        resume=resume, overwrite=True,
        on_epoch=on_epoch or report,
    )  # fmt: skip
    return {
        "model_dir": str(result.model_dir),
        "epochs": result.epochs,
        "best_epoch": result.best_epoch,
        "val": result.val_metrics,
        "seconds": round(result.seconds, 1),
        "device": result.device,
        "resumed_from_epoch": result.resumed_from_epoch,
    }


def attack_model(
    suite: AttackSuitePolicy, model_dir: Path, data_dir: Path, split: str, out: Path, *,
    baseline_dir: Path | None = None, max_images: int | None = None, device: str = "auto",
    progress: Callable[[str, int, int], None] | None = None, gate_evidence: bool = True,
) -> Evaluation:  # fmt: skip
    """Attack a model with `suite` on one split; the report (schema `secmlops.robustness/v1`)
    goes to `out`. The candidate, its baseline and the production model all go through here.

    Args:
        baseline_dir: the undefended model, for the gate's defence-cost check.
        max_images: only the first N images of the split (None: all).
        gate_evidence: also run the cross-check and sanity checks (False: figures to compare
            with, which no gate accepts; see `evaluate_robustness`).
    """
    from secmlops.evaluation.robustness import evaluate_robustness
    from secmlops.fsutil import atomic_write_json

    report = evaluate_robustness(
        Path(model_dir), Path(data_dir), split, suite, baseline_dir=baseline_dir, device=device,
        max_images=max_images, progress=progress, gate_evidence=gate_evidence,
    )  # fmt: skip
    atomic_write_json(out, report)
    return {
        "report": str(out),
        "clean_mAP50": report["clean"]["mAP50"],
        "attacks": {name: entry["mAP50"] for name, entry in report["attacks"].items()},
    }


def evaluate(
    run_policy: RunPolicy, model_dir: str, data: VerifiedData, out: Path, *,
    baseline: TrainedModel | None = None, max_images: int | None = None,
    gate_evidence: bool = True,
) -> Evaluation:  # fmt: skip
    """Attack the model with the run policy's suite on the test split; the report goes to `out`.

    Args:
        baseline: the undefended model, whose clean mAP the gate's defence-cost check compares
            with, and from which the transfer check attacks.
        max_images: cap on attacked test images (None: all).
        gate_evidence: False for a report only shown beside a candidate's (the undefended
            baseline's): the same attacks, without the cross-check and sanity checks.

    Raises:
        PolicyError: the run's effective policy changed since it was resolved.
    """
    suite = load_run_policy(run_policy).gate.attacks
    baseline_dir = Path(baseline["model_dir"]) if baseline else None
    return attack_model(
        suite, Path(model_dir), Path(data["data_dir"]), "test", out, baseline_dir=baseline_dir,
        max_images=max_images, gate_evidence=gate_evidence,
    )  # fmt: skip


def check_not_older(
    settings: Settings, rev: str, production_rev: str | None, reason: str, run_id: str
) -> None:
    """Refuse training on an older version of the dataset production was trained on (an
    attacker, or a mistake, rolling the data back), unless `reason` says why (audited).

    Raises:
        OlderDataRefused: older, and no reason given.
    """
    from secmlops.data.versioning import TAG_PATTERN, parse_tag
    from secmlops.errors import OlderDataRefused
    from secmlops.names import matches

    if not production_rev or not matches(TAG_PATTERN, production_rev):
        return  # production was not trained on a published dataset version: nothing to compare
    new, old = parse_tag(rev), parse_tag(production_rev)
    if new.name != old.name or new.version >= old.version:
        return
    if not reason:
        raise OlderDataRefused(
            f"{rev} is older than {production_rev}, the data production was trained on; give "
            "older_data_reason (audited) to train on it anyway"
        )
    settings.audit().append(
        "training", "older_data", "override", run_id,
        {"rev": rev, "production_rev": production_rev, "reason": reason},
    )  # fmt: skip


def evaluate_like(
    suite: AttackSuitePolicy, model_dir: Path, candidate_report: Path, out: Path
) -> Evaluation:
    """Attack another model (the production one) on the data, split and image count a
    candidate's report was made on, for the gate's regression check.

    Raises:
        DataError: the candidate's report does not say what data it was made on.
    """
    import json

    from secmlops.errors import DataError

    try:
        data = json.loads(Path(candidate_report).read_text())["data"]
        data_dir, split, images = Path(data["dir"]), str(data["split"]), int(data["images"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(
            f"{candidate_report}: cannot read the data and split it was made on ({exc})"
        ) from None
    return attack_model(suite, model_dir, data_dir, split, out, max_images=images)


def evaluate_production(
    settings: Settings, run_policy: RunPolicy, data: VerifiedData, run_id: str,
    max_images: int | None = None, older_data_reason: str = "",
) -> ProductionEvaluation | None:  # fmt: skip
    """Attack the model now in production the same way, for the gate's regression check; first
    refuse a run on an older dataset version than production was trained on.

    Args:
        older_data_reason: why training on older data is wanted (audited); empty: refused.

    Returns:
        The evaluation plus "version", or None when nothing is in production yet (the gate
        records "no production report: not checked").

    Raises:
        OlderDataRefused: `data` is an older version of production's dataset, without a reason.
    """
    from secmlops.registry import RegistryError
    from secmlops.registry.trust_chain import ChainBroken, SequenceState

    registry = settings.model_registry()
    try:
        registry.resolve(settings.model_name, PRODUCTION_ALIAS)
    except RegistryError:
        # No production yet, unless this installation already accepted a production move: then
        # the alias was deleted from the store (which would skip the regression check).
        seen = SequenceState(settings.trust_state).highest(
            registry.uri, settings.model_name, PRODUCTION_ALIAS
        )
        if seen:
            raise ChainBroken(
                "alias record",
                f"{settings.model_name}@{PRODUCTION_ALIAS} is gone from {registry.uri}, but "
                f"sequence {seen} was accepted here: the alias was deleted from the store",
            ) from None
        return None
    folder = settings.run_dir(run_id) / "production"
    # Through the alias, whole chain: an alias an intruder pointed elsewhere is refused here too.
    verified = pull_production(settings, folder)
    check_not_older(settings, data["rev"], verified.model.predicate.get("dvc_revision"),
                    older_data_reason, run_id)  # fmt: skip
    out = settings.run_dir(run_id) / "robustness-production.json"
    evaluation = evaluate(run_policy, str(folder), data, out, max_images=max_images)
    version = verified.move.version if verified.move else ""
    return {**evaluation, "version": version}


def pull_production(settings: Settings, folder: Path) -> VerifiedRelease:
    """Pull what the production alias names into `folder`, its signed move and whole chain
    verified under the deployment's policy (`Registry.pull`).

    Raises:
        ChainBroken: a link does not hold (the refusal is audited, naming it).
        RegistryError: no production alias.
    """
    from secmlops.policy import load_policy
    from secmlops.registry.trust_chain import SequenceState

    policy = load_policy(settings.policy)
    return settings.model_registry().pull(
        settings.model_name, PRODUCTION_ALIAS, folder, settings.keyring(policy), policy,
        audit=settings.audit(), state=SequenceState(settings.trust_state), overwrite=True,
    )  # fmt: skip


def gate(
    settings: Settings, run_policy: RunPolicy, evaluation: Evaluation,
    production: ProductionEvaluation | None,
) -> GateResult:  # fmt: skip
    """The robustness gate on the candidate's report under the run's effective policy.

    Raises:
        GateFailed: every failed threshold (the signed record and audit entry are written
            either way).
        PolicyError: the effective policy changed since the run resolved it.
    """
    from secmlops.evaluation.gate import run_gate
    from secmlops.registry.trust_chain import signer_holds

    record = Path(evaluation["report"]).with_name("gate-record.json")
    key = settings.private_key("gate")
    signer_holds(settings.keyring(), key, "gate", "the gate record")
    decision = run_gate(
        evaluation["report"], run_policy["path"],
        signing_key=key, audit_log=settings.audit(), record_path=record,
        production_report=production["report"] if production else None,
        applied_overrides=run_policy["overrides"], expected_policy_digest=run_policy["digest"],
    )  # fmt: skip
    return {"record": str(record), "passed": decision.passed, "checks": len(decision.checks),
            "policy_digest": run_policy["digest"]}  # fmt: skip


def sign(
    settings: Settings, run_policy: RunPolicy, trained: TrainedModel, data: VerifiedData,
    gated: GateResult,
) -> SignedModel:  # fmt: skip
    """Calibrate the serving screener, then sign the model with its provenance (data version,
    gate record, the effective policy's digest, code version).

    Raises:
        PolicyError: the gate judged under another policy than the run's.
    """
    from secmlops.errors import PolicyError
    from secmlops.models import read_card
    from secmlops.registry.trust_chain import signer_holds
    from secmlops.serving.calibration import calibrate_model
    from secmlops.supplychain.provenance import sign_model

    if gated["policy_digest"] != run_policy["digest"]:
        raise PolicyError(
            f"gate record {gated['record']} was made under {gated['policy_digest']}, "
            f"the run's policy is {run_policy['digest']}"
        )
    model_dir = Path(trained["model_dir"])
    key = settings.private_key("trainer")
    signer_holds(settings.keyring(), key, "trainer", "the model provenance")
    calibrate_model(model_dir, Path(data["data_dir"]), "val")
    provenance = sign_model(
        model_dir, key,
        data_manifest_digest=data["manifest_digest"], data_signer=data["signer"],
        dvc_revision=data["rev"], gate_record=Path(gated["record"]),
        policy_digest=run_policy["digest"], image_commit=settings.git_commit,
        openssf_key=settings.openssf_key(),
    )  # fmt: skip
    return {
        "model_dir": str(model_dir),
        "weights_sha256": read_card(model_dir).weights_sha256,
        "provenance": str(provenance),
    }


def release_version(run_id: str, weights_sha256: str) -> str:
    """A registry version for a run's model: stable across retries of the same run."""
    stamp = re.sub(r"[^0-9]", "", run_id)[:14] or "0"
    return f"{stamp}-{weights_sha256[:12]}"


def push(settings: Settings, signed: SignedModel, run_id: str) -> Release:
    """Store the signed model as an immutable registry version (idempotent for a retry)."""
    from secmlops.registry import RegistryError

    registry = settings.model_registry()
    version = release_version(run_id, signed["weights_sha256"])
    try:
        existing = {row["version"]: row for row in registry.list(settings.model_name)}
    except RegistryError:  # no version of this model yet
        existing = {}
    if version in existing:
        # A retried task whose first attempt pushed: the same digest is the same release.
        if existing[version].get("weights_sha256") != signed["weights_sha256"]:
            raise RegistryError(f"{settings.model_name}@{version} exists with other weights")
    else:
        registry.push(
            Path(signed["model_dir"]), settings.model_name, version, settings.keyring(),
            settings.audit(),
        )  # fmt: skip
    return {"name": settings.model_name, "version": version,
            "weights_sha256": signed["weights_sha256"]}  # fmt: skip


def promote(
    settings: Settings, release: Release, approval: Approval | None = None,
    alias: str = PRODUCTION_ALIAS,
) -> Promotion:  # fmt: skip
    """Move `alias` to the release with a signed move (the approver's key for production, the
    gate's otherwise) after walking its whole chain under the deployment's policy, then anchor
    the audit log's head in the registry (`secmlops.audit_anchors`), the move's entry included.

    Args:
        approval: the person's approval (`lifecycle.approval.decide`); production needs one.

    Raises:
        ApprovalRefused: production without an approval, or approved by the run's trigger.
        ChainBroken: a link of the release's chain does not hold (named; audited).
        IntegrityError: the role's key is not a trusted key of that role.
    """
    from secmlops.lifecycle.approval import ApprovalRefused

    if alias == PRODUCTION_ALIAS and (
        approval is None or approval["approved_by"] == approval["triggered_by"]
    ):
        raise ApprovalRefused(
            f"{release['name']}@{release['version']}: production needs the approval of a person "
            "other than the one who triggered the run"
        )
    from secmlops.audit_anchors import write_anchor
    from secmlops.policy import load_policy
    from secmlops.registry.trust_chain import SequenceState, alias_role

    registry, audit = settings.model_registry(), settings.audit()
    policy = load_policy(settings.policy)
    key = settings.private_key(alias_role(alias))
    record = registry.promote(
        release["name"], release["version"], alias, settings.keyring(policy), audit,
        key=key, policy=policy, state=SequenceState(settings.trust_state),
        approved_by=approval["approved_by"] if approval else None,
    )  # fmt: skip
    anchor = write_anchor(registry, audit, key)
    return {**release, "alias": alias, "sequence": record["generation"],
            "audit_anchor": anchor.name if anchor else None}  # fmt: skip
