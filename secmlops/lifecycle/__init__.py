"""The lifecycle's stage functions, as the Airflow DAGs call them: typed payloads in and out.

Each function is one task of `dags/`: it takes the deployment's `Settings` (and, in a training
run, the run's effective policy), calls the stage's library functions, and returns a small
JSON-serialisable payload (`secmlops.lifecycle.contracts`) that the next task receives through
XCom. Every control keeps its own audit entry; a refused control raises a `Refusal`, so the task
fails without retries and nothing downstream of it runs. The same functions run without Airflow
(tests, `make demo`).
"""

from secmlops.lifecycle.approval import ApprovalRefused, decide, release_evidence
from secmlops.lifecycle.contracts import TrainingRequest
from secmlops.lifecycle.data import (
    pull_data,
    resolve_data_rev,
    screen_data,
    validate_data,
    verify_data,
)
from secmlops.lifecycle.release import (
    BASELINE,
    CANDIDATE,
    attack_model,
    evaluate,
    evaluate_like,
    evaluate_production,
    gate,
    plan_training,
    promote,
    push,
    release_version,
    sign,
    train,
)
from secmlops.lifecycle.run_policy import load_run_policy, resolve_run_policy
from secmlops.lifecycle.watch import monitor, tradeoff_study

__all__ = [
    "BASELINE",
    "CANDIDATE",
    "ApprovalRefused",
    "TrainingRequest",
    "attack_model",
    "decide",
    "evaluate",
    "evaluate_like",
    "evaluate_production",
    "gate",
    "load_run_policy",
    "monitor",
    "plan_training",
    "promote",
    "pull_data",
    "push",
    "release_evidence",
    "release_version",
    "resolve_data_rev",
    "resolve_run_policy",
    "screen_data",
    "sign",
    "tradeoff_study",
    "train",
    "validate_data",
    "verify_data",
]
