"""Train, attack, gate, sign and release the pedestrian detector.

plan (parameters and the run's effective policy, fixed once) + pull + verify data -> train the
candidate (adversarial augmentation) and its undefended baseline -> robustness suite (and the
production model's, for the regression check) -> gate -> sign -> push -> promote -> `model`
asset. Runs on the `dataset` asset (a new verified data version) or the `retraining-request`
asset (monitoring), or by hand from the UI's trigger form.

Every task is one call into `secmlops.lifecycle`; this file only wires them. Nothing heavy is
imported at parse time (torch is imported inside the task bodies).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import Param, dag, get_current_context

from secmlops.airflow_support import (
    DATASET_ASSET,
    MODEL_ASSET,
    RETRAINING_REQUEST_ASSET,
    ProductionApproval,
    data_rev_param,
    lifecycle_asset,
    lifecycle_default_args,
    lifecycle_settings,
    lifecycle_task,
    pull_and_verify_data,
)
from secmlops.lifecycle.contracts import (
    ARCHITECTURES,
    DEFAULT_EPS,
    DEFENCE_METHODS,
    EPS_PATTERN,
    OBJECTIVE_FORMS,
    Evaluation,
    GateResult,
    ProductionEvaluation,
    Promotion,
    Release,
    SignedModel,
    TrainedModel,
    TrainingPlan,
    TrainingRequest,
    VerifiedData,
)
from secmlops.settings import Settings

DATASET = lifecycle_asset(DATASET_ASSET)
MODEL = lifecycle_asset(MODEL_ASSET)
RETRAINING_REQUEST = lifecycle_asset(RETRAINING_REQUEST_ASSET)
DEFAULTS = TrainingRequest()
# Scheduled (asset-triggered) runs take the params' defaults; a deployment sets its training and
# evaluation budget for them (unset: epochs from the data size, every test image attacked).
DEPLOYMENT = Settings.from_env()

DOC = """
### Train, gate and release the pedestrian detector

1. **plan_run**: the run's parameters, parsed once, and its effective policy: the policy file
   with `policy_overrides` applied (each needs `override_reason`, and is audited), written to
   the run folder with its digest. Every later task reads that one policy.
2. **pull_data** / **verify_data**: the dataset version of the triggering `dataset` event (or
   `data_rev`, or the newest), pulled and verified again: workers may differ from the puller.
3. **train_model** (adversarial augmentation: `adversarial`, `eps`, `mix`) and
   **train_baseline** (the same without the defence, for the gate's defence-cost check), seeded
   and checkpointed; a retried task resumes. Training runs on `$SECMLOPS_TRAINING_QUEUE`.
4. **evaluate_model**: the run policy's attack suite (PGD, FGSM, patch, corruptions; ART as the
   independent reference); **evaluate_production**: the same on the model in production, after
   refusing a dataset version older than the one production was trained on (unless
   `older_data_reason` says why; audited); **evaluate_baseline**: the same on the undefended
   baseline, so the approver sees what the defence bought beside what it cost.
5. **gate_model**: the robustness gate under the run policy. A failed gate fails the run with
   the gate's message, and nothing after it runs.
6. **sign_model** (screener calibration, provenance naming the run policy's digest, signed with
   the trainer's key) -> **push_model** -> **summarize_release** (the gate's evidence, the
   figures beside the undefended baseline's and production's, the run's overrides).
7. **approve_release** waits (Human-in-the-loop, "Required Actions" in the UI) for a person to
   approve the release for production. The user who triggered the run cannot approve it; a
   rejection, or no answer within `$SECMLOPS_APPROVAL_TIMEOUT_HOURS`, fails the run with
   production unchanged; every decision is audited with the user.
8. **promote_model**: the whole trust chain verified again, the `production` move signed with
   the approver's key (naming the approver) and compare-and-swapped -> `model`.

A refused control fails its task once, without retries; every decision is in the audit log.
"""


@dag(
    dag_id="secmlops_training",
    schedule=DATASET | RETRAINING_REQUEST,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["secmlops", "training"],
    doc_md=DOC,
    default_args=lifecycle_default_args(retries=1, retry_delay=timedelta(seconds=30)),
    params={
        "data_rev": data_rev_param("Dataset tag; empty = the triggering event's, else the newest."),
        "architecture": Param(DEFAULTS.architecture, type="string", enum=list(ARCHITECTURES)),
        "epochs": Param(
            DEPLOYMENT.training_epochs,
            type=["null", "integer"],
            minimum=1,
            description="Empty = from the data size.",
        ),
        "seed": Param(DEFAULTS.seed, type="integer", minimum=0),
        "adversarial": Param(
            DEFAULTS.adversarial,
            type="string",
            enum=list(DEFENCE_METHODS),
            description="Adversarial augmentation (none: no defence, no baseline).",
        ),
        "eps": Param(
            DEFAULT_EPS,
            type="string",
            pattern=EPS_PATTERN,
            description="L-inf budget of the training attack: a positive number or fraction.",
        ),
        "mix": Param(
            DEFAULTS.mix,
            type="number",
            exclusiveMinimum=0,
            maximum=1,
            description="Share of every batch replaced by adversarial examples.",
        ),
        "objectives": Param(
            DEFAULTS.objectives,
            type="string",
            enum=list(OBJECTIVE_FORMS),
            description="What the training attack maximises; loss+vanishing: half the "
            "adversarial share against the true boxes, half with every person score pushed "
            "down (adversarial none: loss only).",
        ),
        "patch_augmentation": Param(
            DEFAULTS.patch_augmentation,
            type="number",
            minimum=0,
            maximum=1,
            description="Probability that a training image's people wear a random torso patch "
            "(the defence against person-worn patches; 0: none).",
        ),
        "patch_attack_steps": Param(
            DEFAULTS.patch_attack_steps,
            type="integer",
            minimum=0,
            description="With patch augmentation: wear each epoch's universal adversarial "
            "patch, optimised this many steps against the model being trained (0: random "
            "patches).",
        ),
        "max_eval_images": Param(
            DEPLOYMENT.eval_max_images,
            type=["null", "integer"],
            minimum=1,
            description="Cap on attacked test images; empty = all.",
        ),
        "policy_overrides": Param(
            [],
            type="array",
            items={"type": "string", "pattern": r"^[a-z_]+(\.[A-Za-z0-9_]+)+=.+$"},
            description="Policy thresholds changed for this run, e.g. gate.min_clean_map50=0.7 "
            "or gate.attacks.pgd_steps=3 (the run's whole evaluation and gate use them).",
        ),
        "override_reason": Param(
            "", type="string", description="Why (required with overrides; audited)."
        ),
        "older_data_reason": Param(
            "",
            type="string",
            description="Why train on an older dataset version than production's (audited); "
            "empty: such a run is refused.",
        ),
    },
)
def secmlops_training():
    @lifecycle_task(execution_timeout=timedelta(minutes=5))
    def plan_run() -> TrainingPlan:
        from secmlops.lifecycle import plan_training

        context = get_current_context()
        params = context["params"]
        return plan_training(
            lifecycle_settings(), context["run_id"], params, params["policy_overrides"],
            params["override_reason"], params["max_eval_images"], params["older_data_reason"],
        )  # fmt: skip

    @lifecycle_task(execution_timeout=timedelta(hours=6), queue=DEPLOYMENT.training_queue)
    def train_model(plan: TrainingPlan, data: VerifiedData) -> TrainedModel:
        from secmlops.lifecycle import CANDIDATE, TrainingRequest, train

        request = TrainingRequest(**plan["request"])
        run_id = get_current_context()["run_id"]
        return train(lifecycle_settings(), data, run_id, request, plan["policy"], name=CANDIDATE)

    @lifecycle_task(execution_timeout=timedelta(hours=6), queue=DEPLOYMENT.training_queue)
    def train_baseline(plan: TrainingPlan, data: VerifiedData) -> TrainedModel | None:
        from secmlops.lifecycle import BASELINE, TrainingRequest, train

        request = TrainingRequest(**plan["request"])
        if not request.defended:
            return None  # the candidate is undefended itself: nothing to compare
        run_id = get_current_context()["run_id"]
        return train(
            lifecycle_settings(), data, run_id, request.undefended(), plan["policy"], name=BASELINE
        )

    @lifecycle_task(execution_timeout=timedelta(hours=2))
    def evaluate_model(
        plan: TrainingPlan, data: VerifiedData, trained: TrainedModel, baseline: TrainedModel | None
    ) -> Evaluation:
        from secmlops.lifecycle import evaluate

        out = lifecycle_settings().run_dir(get_current_context()["run_id"]) / "robustness.json"
        return evaluate(
            plan["policy"], trained["model_dir"], data, out, baseline=baseline,
            max_images=plan["max_eval_images"],
        )  # fmt: skip

    @lifecycle_task(execution_timeout=timedelta(hours=2))
    def evaluate_baseline(
        plan: TrainingPlan, data: VerifiedData, baseline: TrainedModel | None
    ) -> Evaluation | None:
        from secmlops.lifecycle import evaluate

        if baseline is None:
            return None  # the candidate is the undefended model itself
        run_dir = lifecycle_settings().run_dir(get_current_context()["run_id"])
        # Figures to show beside the candidate's, not gated: no cross-check or sanity checks.
        return evaluate(
            plan["policy"], baseline["model_dir"], data, run_dir / "robustness-baseline.json",
            max_images=plan["max_eval_images"], gate_evidence=False,
        )  # fmt: skip

    @lifecycle_task(execution_timeout=timedelta(hours=2))
    def evaluate_production(plan: TrainingPlan, data: VerifiedData) -> ProductionEvaluation | None:
        from secmlops.lifecycle import evaluate_production

        return evaluate_production(
            lifecycle_settings(), plan["policy"], data, get_current_context()["run_id"],
            plan["max_eval_images"], plan["older_data_reason"],
        )  # fmt: skip

    @lifecycle_task(execution_timeout=timedelta(minutes=10))
    def gate_model(
        plan: TrainingPlan, evaluated: Evaluation, production: ProductionEvaluation | None
    ) -> GateResult:
        from secmlops.lifecycle import gate

        return gate(lifecycle_settings(), plan["policy"], evaluated, production)

    @lifecycle_task(execution_timeout=timedelta(minutes=20))
    def sign_model(
        plan: TrainingPlan, data: VerifiedData, trained: TrainedModel, gated: GateResult
    ) -> SignedModel:
        from secmlops.lifecycle import sign

        return sign(lifecycle_settings(), plan["policy"], trained, data, gated)

    @lifecycle_task(execution_timeout=timedelta(minutes=20))
    def push_model(signed: SignedModel) -> Release:
        from secmlops.lifecycle import push

        return push(lifecycle_settings(), signed, get_current_context()["run_id"])

    @lifecycle_task(execution_timeout=timedelta(minutes=5))
    def summarize_release(
        plan: TrainingPlan, release: Release, gated: GateResult, evaluated: Evaluation,
        production: ProductionEvaluation | None, undefended: Evaluation | None,
    ) -> str:  # fmt: skip
        from secmlops.lifecycle import release_evidence

        return release_evidence(
            release, gated, evaluated, production, plan["policy"], undefended=undefended
        )

    @lifecycle_task(
        execution_timeout=timedelta(minutes=10), outlets=[MODEL], queue=DEPLOYMENT.release_queue
    )
    def promote_model(release: Release, approved: dict[str, Any]) -> Promotion:
        from secmlops.lifecycle import promote

        promoted = promote(lifecycle_settings(), release, approved["approval"])
        extra: dict[str, Any] = {k: promoted[k] for k in ("name", "version", "weights_sha256")}
        get_current_context()["outlet_events"][MODEL].extra = extra
        return promoted

    plan = plan_run()
    data = pull_and_verify_data(DATASET)
    trained = train_model(plan, data)
    baseline = train_baseline(plan, data)
    evaluated = evaluate_model(plan, data, trained, baseline)
    undefended = evaluate_baseline(plan, data, baseline)
    production = evaluate_production(plan, data)
    gated = gate_model(plan, evaluated, production)
    release = push_model(sign_model(plan, data, trained, gated))
    approval = ProductionApproval(
        task_id="approve_release",
        release_task_id="push_model",
        subject="Promote {{ ti.xcom_pull(task_ids='push_model')['version'] }} to production?",
        body="{{ ti.xcom_pull(task_ids='summarize_release') }}",
        response_timeout=timedelta(hours=DEPLOYMENT.approval_timeout_hours),
    )
    summarize_release(plan, release, gated, evaluated, production, undefended) >> approval
    promote_model(release, approval.output)


secmlops_training()
