"""The data stage as lifecycle tasks: pull a DVC version, verify, validate, screen."""

from __future__ import annotations

from pathlib import Path

from secmlops.errors import DataError
from secmlops.lifecycle.contracts import CheckReport, PulledData, VerifiedData
from secmlops.settings import Settings


def resolve_data_rev(settings: Settings, rev: str | None) -> str:
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


def pull_data(settings: Settings, rev: str | None, run_id: str) -> PulledData:
    """Pull one dataset version from the DVC registry into this run's folder.

    Args:
        rev: a dataset tag `data/<name>/v<K>`; None: the newest published version.
        run_id: the run whose folder the data goes into (a retry starts clean).
    """
    from secmlops.data.versioning import pull_dataset

    rev = resolve_data_rev(settings, rev)
    to = settings.run_dir(run_id) / "data"
    pull_dataset(rev, to, settings.data_registry, overwrite=True)
    return {"rev": rev, "data_dir": str(to)}


def verify_data(settings: Settings, pulled: PulledData) -> VerifiedData:
    """Verify the pulled dataset's signed manifest (signer a trusted data_owner key, signed as
    the very version the tag names).

    Raises:
        IntegrityError: any changed, missing or extra file, an untrusted signer, or a dataset
            signed as another name or version than its tag (a replayed older version).
    """
    from secmlops.data.checks import verify_signed_dataset
    from secmlops.data.versioning import parse_tag

    verified = verify_signed_dataset(
        Path(pulled["data_dir"]), settings.keyring(), settings.audit(),
        expected=parse_tag(pulled["rev"]),
    )  # fmt: skip
    return {
        "rev": pulled["rev"],
        "data_dir": pulled["data_dir"],
        "manifest_digest": verified["manifest_digest"],
        "signer": verified["signer"],
        "files": verified["files"],
        "bytes": verified["bytes"],
    }


def validate_data(settings: Settings, data: VerifiedData) -> CheckReport:
    """Validate annotations and images; the report goes beside the data.

    Raises:
        ValidationFailed: every problem found, each naming its file.
    """
    from secmlops.data.checks import validate
    from secmlops.policy import load_policy

    report = Path(data["data_dir"]).parent / "validation.json"
    result = validate(
        Path(data["data_dir"]), load_policy(settings.policy).data, settings.audit(), report
    )
    return {"report": str(report), "summary": result.get("statistics", {})}


def screen_data(settings: Settings, data: VerifiedData) -> CheckReport:
    """Screen the training split for poisoning.

    Raises:
        PoisoningSuspected: more images flagged than the policy's share allows.
    """
    from secmlops.data.checks import screen
    from secmlops.policy import load_policy

    report = Path(data["data_dir"]).parent / "screening.json"
    result = screen(
        Path(data["data_dir"]), load_policy(settings.policy).data, settings.audit(), report
    )
    return {"report": str(report), "summary": result.get("summary", {})}
