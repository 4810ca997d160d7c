"""What one lifecycle stage hands the next: typed, JSON-serialisable payloads (Airflow XComs).

Each stage function returns one of these `TypedDict`s, and the next stage takes it as it is, so a
DAG passes them through XCom unchanged and a reader sees, in one file, every field that crosses a
task boundary. Paths are strings (XCom is JSON).

What to train is `secmlops.training.request.TrainingRequest` (re-exported here): the one place
a training run's parameters get their defaults and are parsed.
"""

from __future__ import annotations

from typing import Any, TypedDict

from secmlops.training.request import (
    ARCHITECTURES,
    DEFAULT_EPS,
    DEFENCE_METHODS,
    EPS_PATTERN,
    OBJECTIVE_FORMS,
    TrainingRequest,
)

__all__ = [
    "ARCHITECTURES",
    "DEFAULT_EPS",
    "DEFENCE_METHODS",
    "EPS_PATTERN",
    "OBJECTIVE_FORMS",
    "CheckReport",
    "Evaluation",
    "GateResult",
    "ProductionEvaluation",
    "Promotion",
    "PulledData",
    "Release",
    "RunPolicy",
    "SignedModel",
    "StudySummary",
    "TrainedModel",
    "TrainingPlan",
    "TrainingRequest",
    "VerifiedData",
    "WindowVerdict",
]


class PulledData(TypedDict):
    """A dataset version materialised from the DVC registry into the run's folder."""

    rev: str
    data_dir: str


class VerifiedData(PulledData):
    """A pulled dataset whose signed manifest verified (`verify_signed_dataset`)."""

    manifest_digest: str
    signer: str
    files: int
    bytes: int


class CheckReport(TypedDict):
    """A data check that passed, and where its report is."""

    report: str
    summary: dict[str, Any]


class RunPolicy(TypedDict):
    """The run's effective policy: the policy file with the run's overrides applied, written
    once into the run folder; every later stage of the run reads this file."""

    path: str
    digest: str
    source: str
    overrides: list[dict[str, Any]]


class TrainedModel(TypedDict):
    """A trained model directory and how it got there."""

    model_dir: str
    epochs: int
    best_epoch: int
    val: dict[str, float]
    seconds: float
    device: str
    resumed_from_epoch: int


class Evaluation(TypedDict):
    """A robustness report (schema `secmlops.robustness/v1`) and its headline figures."""

    report: str
    clean_mAP50: float
    attacks: dict[str, float]


class ProductionEvaluation(Evaluation):
    """The production model's report on the candidate's data and suite."""

    version: str


class GateResult(TypedDict):
    """A passed gate: the signed record, under which policy."""

    record: str
    passed: bool
    checks: int
    policy_digest: str


class SignedModel(TypedDict):
    """A model directory with its signed provenance."""

    model_dir: str
    weights_sha256: str
    provenance: str


class Release(TypedDict):
    """An immutable registry version."""

    name: str
    version: str
    weights_sha256: str


class Approval(TypedDict):
    """A person's approval of a release for production (Human-in-the-loop, audited)."""

    approved_by: str
    triggered_by: str | None
    responded_at: str


class Promotion(Release):
    """A release the alias now points at, and the audit anchor written after the move."""

    alias: str
    sequence: int  # the signed alias move's sequence
    audit_anchor: str | None


class WindowVerdict(TypedDict):
    """A judged monitoring window: drift, attack rate, and the retraining request (or None)."""

    version: str
    records: int
    drift: dict[str, Any]
    attack: dict[str, Any]
    request: dict[str, Any] | None


class StudySummary(TypedDict):
    """A written trade-off study."""

    out_dir: str
    configurations: int
    pareto_front: list[str]
    seconds: float


class TrainingPlan(TypedDict):
    """A training run's plan, fixed by its first task: what to train (`TrainingRequest` as
    JSON), under which effective policy, and how many test images to attack (None: all)."""

    request: dict[str, Any]
    policy: RunPolicy
    max_eval_images: int | None
    older_data_reason: str  # why training on older data than production's is wanted ("": no)
