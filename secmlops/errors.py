"""Errors that the CLI turns into a one-line message and a non-zero exit.

Every failure a user can cause (bad input, missing file, failed check) raises a subclass of
`SecMLOpsError` whose message names the problem and the offending path or value.

`Refusal` marks the errors of a control that says "no" (a failed gate, a tampered artifact, an
invalid policy, a dataset that fails validation or the poisoning screen, a broken audit chain).
A refusal does not get better when retried: the Airflow adapter turns every one into a task
failure without retries (`secmlops.airflow_support.lifecycle_task`); any other error (a network
blip, a full disk) keeps the task's retries. A new control raises a subclass of `Refusal`.
"""

from typing import Any


class SecMLOpsError(Exception):
    """Base class for every error that is the user's input, not a bug."""


class DataError(SecMLOpsError):
    """A dataset, annotation file, video or image is missing, malformed or inconsistent."""


class ModelError(SecMLOpsError):
    """A model directory or model configuration is missing, malformed or inconsistent."""


class Refusal(SecMLOpsError):
    """A control refused its input; retrying the same input gets the same answer."""


class IntegrityError(Refusal):
    """A signature, digest or manifest check failed: the bytes are not the ones that were signed."""


class PolicyError(Refusal):
    """The policy file is missing, malformed, has unknown keys or lacks a required threshold."""


class AuditError(Refusal):
    """The audit log is unreadable, or its hash chain is broken (entry edited, removed, moved)."""


class ValidationFailed(DataError, Refusal):
    """Dataset validation found problems; `problems` lists each one with the file it concerns."""

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or []


class PoisoningSuspected(DataError, Refusal):
    """Poisoning screening flagged images above the policy threshold; `flagged` names them."""

    def __init__(self, message: str, flagged: list[str] | None = None) -> None:
        super().__init__(message)
        self.flagged = flagged or []


class OlderDataRefused(Refusal):
    """A training run would release a model trained on an older dataset version than the one
    production was trained on (a rollback of the data), and no audited reason allows it."""


class InvalidRequest(ModelError, Refusal):
    """A run's parameters (trigger form, command line) are invalid: the same ones fail again."""


class GateFailed(Refusal):
    """The robustness gate refused a model.

    `failures` holds each failed check ({"name", "label", "measured", "threshold", "comparison",
    "passed", "note"}), `checks` every check made (for display), and `record_path` the signed
    record of the decision when one was written.
    """

    def __init__(
        self,
        message: str,
        failures: list[dict[str, Any]] | None = None,
        checks: list[dict[str, Any]] | None = None,
        record_path: str | None = None,
    ) -> None:
        super().__init__(message)
        self.failures = failures or []
        self.checks = checks if checks is not None else list(self.failures)
        self.record_path = record_path


class UploadRefused(Refusal):
    """The detection service refused a request; `status` is the HTTP status it answers with
    (401 no token, 408 too slow, 413 too large, 415 wrong type, 422 not an image, 503 full)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
