"""The data stage as DAG tasks: pull a DVC version, verify, validate, screen."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from secmlops.errors import DataError
from secmlops.lifecycle.settings import LifecycleSettings, audit_log, trusted_keyring


def resolve_data_rev(settings: LifecycleSettings, rev: str | None) -> str:
    """`rev` if given, else the newest published version of the settings' dataset.

    Raises:
        DataError: nothing has been published under that name.
    """
    from secmlops.data.versioning import list_versions

    if rev:
        return rev
    versions = list_versions(settings.data_registry, settings.dataset_name)
    if not versions:
        raise DataError(
            f"{settings.data_registry}: no published version of dataset "
            f"{settings.dataset_name!r}; publish one with `secmlops data publish`"
        )
    return versions[-1]


def pull_data(settings: LifecycleSettings, rev: str | None, run_id: str) -> dict[str, Any]:
    """Pull one dataset version from the DVC registry into this run's folder.

    Returns:
        {"rev", "data_dir"}
    """
    from secmlops.data.versioning import pull_dataset

    rev = resolve_data_rev(settings, rev)
    to = settings.run_dir(run_id) / "data"
    pull_dataset(rev, to, settings.data_registry, overwrite=True)  # a retry starts clean
    return {"rev": rev, "data_dir": str(to)}


def verify_data(settings: LifecycleSettings, data_dir: str) -> dict[str, Any]:
    """Verify the pulled dataset's signed manifest (signer trusted by keyring and policy).

    Returns:
        {"manifest_digest", "signer", "files", "bytes"}
    """
    from secmlops.data.checks import verify_signed_dataset
    from secmlops.policy import load_policy

    policy = load_policy(settings.policy).data
    return verify_signed_dataset(Path(data_dir), trusted_keyring(), policy, audit_log())


def validate_data(settings: LifecycleSettings, data_dir: str) -> dict[str, Any]:
    """Validate annotations and images; the report goes beside the data. Raises on problems."""
    from secmlops.data.checks import validate
    from secmlops.policy import load_policy

    report = Path(data_dir).parent / "validation.json"
    result = validate(Path(data_dir), load_policy(settings.policy).data, audit_log(), report)
    return {"report": str(report), "statistics": result.get("statistics")}


def screen_data(settings: LifecycleSettings, data_dir: str) -> dict[str, Any]:
    """Screen the training split for poisoning. Raises when the policy's share is exceeded."""
    from secmlops.data.checks import screen
    from secmlops.policy import load_policy

    report = Path(data_dir).parent / "screening.json"
    result = screen(Path(data_dir), load_policy(settings.policy).data, audit_log(), report)
    return {"report": str(report), "flagged": len(result.get("flagged", []))}
