"""Train, attack, gate, sign and release the pedestrian detector.

pull + verify data -> train the candidate (adversarial augmentation) and its undefended baseline
-> robustness suite (and the production model's, for the regression check) -> gate -> sign ->
push -> promote -> `model` asset. Runs on the `dataset` asset (a new verified data version) or
the `retraining-request` asset (monitoring), or by hand from the UI's trigger form.

Every task is one call into `secmlops.lifecycle`; this file only wires them (DESIGN.md). Nothing
heavy is imported at parse time (torch is imported inside the task bodies).
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta

from airflow.sdk import Param, dag, get_current_context, task

from secmlops.airflow_support import (
    DATASET_ASSET,
    MODEL_ASSET,
    RETRAINING_REQUEST_ASSET,
    TRAINING_QUEUE,
    data_rev_param,
    lifecycle_asset,
    lifecycle_default_args,
    lifecycle_settings,
    pull_and_verify_data,
    refusals_fail_the_task,
)

DATASET = lifecycle_asset(DATASET_ASSET)
MODEL = lifecycle_asset(MODEL_ASSET)
RETRAINING_REQUEST = lifecycle_asset(RETRAINING_REQUEST_ASSET)
# Scheduled (asset-triggered) runs take the params' defaults; a deployment sets its training and
# evaluation budget for them here (unset: epochs from the data size, every test image attacked).
DEFAULT_EPOCHS = int(os.environ["SECMLOPS_TRAINING_EPOCHS"]) if os.environ.get(
    "SECMLOPS_TRAINING_EPOCHS") else None  # fmt: skip
DEFAULT_EVAL_IMAGES = int(os.environ["SECMLOPS_EVAL_MAX_IMAGES"]) if os.environ.get(
    "SECMLOPS_EVAL_MAX_IMAGES") else None  # fmt: skip

DOC = """
### Train, gate and release the pedestrian detector

1. **pull_data** / **verify_data**: the dataset version of the triggering `dataset` event (or
   `data_rev`, or the newest), pulled and verified again: workers may differ from the puller.
2. **train_model** (adversarial augmentation: `adversarial`, `eps`, `mix`) and
   **train_baseline** (the same without the defence, for the gate's defence-cost check), seeded
   and checkpointed; a retried task resumes. `train_model` runs on `$SECMLOPS_TRAINING_QUEUE`.
3. **evaluate_model**: the policy's attack suite (PGD, FGSM, patch, corruptions; ART as the
   independent reference); **evaluate_production**: the same on the model in production.
4. **gate_model**: the robustness gate. A failed gate fails the run with the gate's message,
   and nothing after it runs. `policy_overrides` need an `override_reason` (audited).
5. **sign_model** (screener calibration, provenance, signature) -> **push_model** ->
   **promote_model** (the `production` alias, compare-and-swap) -> `model` asset.
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
        "architecture": Param(
            "compact_centernet",
            type="string",
            enum=["compact_centernet", "fasterrcnn_mobilenet_v3", "fcos_resnet50", "ssdlite320"],
        ),
        "epochs": Param(
            DEFAULT_EPOCHS, type=["null", "integer"], minimum=1, description="Empty = auto."
        ),
        "seed": Param(0, type="integer", minimum=0),
        "adversarial": Param(
            "fgsm-rs",
            type="string",
            enum=["fgsm-rs", "pgd", "none"],
            description="Adversarial augmentation (none: no defence, no baseline).",
        ),
        "eps": Param(
            "4/255", type="string", pattern=r"^[0-9.]+(/[0-9.]+)?$", description="L-inf budget."
        ),
        "mix": Param(0.5, type="number", minimum=0, maximum=1, description="Adversarial share."),
        "max_eval_images": Param(
            DEFAULT_EVAL_IMAGES,
            type=["null", "integer"],
            minimum=1,
            description="Cap on attacked test images; empty = all.",
        ),
        "policy_overrides": Param(
            [],
            type="array",
            items={"type": "string", "pattern": r"^[a-z_]+(\.[A-Za-z0-9_]+)+=.+$"},
            description="Gate thresholds changed for this run, e.g. gate.min_clean_mAP50=0.7.",
        ),
        "override_reason": Param(
            "", type="string", description="Why (required with overrides; audited)."
        ),
    },
)
def secmlops_training():
    @task(execution_timeout=timedelta(hours=6), queue=TRAINING_QUEUE)
    def train_model(data: dict) -> dict:
        from secmlops.lifecycle import train

        context = get_current_context()
        settings = lifecycle_settings()
        return train(
            settings, data["data_dir"], context["run_id"], context["params"], defended=True
        )

    @task(execution_timeout=timedelta(hours=6), queue=TRAINING_QUEUE)
    def train_baseline(data: dict) -> dict | None:
        from secmlops.lifecycle import train

        context = get_current_context()
        settings = lifecycle_settings()
        params = context["params"]
        return train(settings, data["data_dir"], context["run_id"], params, defended=False)

    @task(execution_timeout=timedelta(hours=2))
    def evaluate_model(data: dict, trained: dict, baseline: dict | None) -> dict:
        from secmlops.lifecycle import evaluate

        context = get_current_context()
        settings = lifecycle_settings()
        return evaluate(
            settings, trained["model_dir"], data["data_dir"],
            str(settings.run_dir(context["run_id"]) / "robustness.json"),
            baseline_dir=baseline["model_dir"] if baseline else None,
            max_images=context["params"]["max_eval_images"],
        )  # fmt: skip

    @task(execution_timeout=timedelta(hours=2))
    def evaluate_production(data: dict) -> dict | None:
        from secmlops.lifecycle import evaluate_production

        context = get_current_context()
        with refusals_fail_the_task():
            return evaluate_production(
                lifecycle_settings(), data["data_dir"], context["run_id"],
                context["params"]["max_eval_images"],
            )  # fmt: skip

    @task(execution_timeout=timedelta(minutes=10))
    def gate_model(evaluated: dict, production: dict | None) -> dict:
        from secmlops.lifecycle import gate

        params = get_current_context()["params"]
        with refusals_fail_the_task():
            return gate(
                lifecycle_settings(), evaluated["report"], production,
                params["policy_overrides"], params["override_reason"],
            )  # fmt: skip

    @task(execution_timeout=timedelta(minutes=20))
    def sign_model(data: dict, trained: dict, gated: dict) -> dict:
        from secmlops.lifecycle import sign

        with refusals_fail_the_task():
            return sign(lifecycle_settings(), trained["model_dir"], data, gated["record"])

    @task(execution_timeout=timedelta(minutes=20))
    def push_model(signed: dict) -> dict:
        from secmlops.lifecycle import push

        with refusals_fail_the_task():
            return push(lifecycle_settings(), signed, get_current_context()["run_id"])

    @task(execution_timeout=timedelta(minutes=10), outlets=[MODEL])
    def promote_model(release: dict) -> dict:
        from secmlops.lifecycle import promote

        with refusals_fail_the_task():
            promoted = promote(lifecycle_settings(), release)
        extra = {key: promoted[key] for key in ("name", "version", "weights_sha256")}
        get_current_context()["outlet_events"][MODEL].extra = extra
        return promoted

    data = pull_and_verify_data(DATASET)
    trained = train_model(data)
    evaluated = evaluate_model(data, trained, train_baseline(data))
    gated = gate_model(evaluated, evaluate_production(data))
    promote_model(push_model(sign_model(data, trained, gated)))


secmlops_training()
