"""Where the overview reads from, and the one way report files leave their folder.

Every location comes from the deployment's `Settings`, the same ones the lifecycle writes with:
the registry, the audit log, the trusted model keys, the monitoring reports (a folder or an
`s3://bucket/prefix`, as monitoring accepts) and the trade-off studies.

Threat (report serving): a web route that turns a URL into a file path is a classic way to read
any file the server can (`../../airflow.cfg`, a symlink planted in a report folder). `report_file`
accepts one folder name and one file name, each a plain name, with a report suffix, and the
resolved path (symlinks followed) must still lie inside the configured root.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from secmlops.errors import DataError, IntegrityError, PolicyError
from secmlops.names import FILE_NAME, matches
from secmlops.settings import Settings, env_name
from secmlops.supplychain.keys import Keyring

# Files a report folder may hand out, and the media type each is served with.
REPORT_MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".json": "application/json",
    ".csv": "text/csv; charset=utf-8",
    ".md": "text/markdown; charset=utf-8",
    ".png": "image/png",
    ".svg": "image/svg+xml",
}
PLAIN_NAME = FILE_NAME  # matched in full: "window\n" names no report folder


@dataclass(frozen=True)
class Sources:
    """The locations one overview is read from."""

    registry_uri: str
    audit_log: Path
    reports_root: Path | str  # a folder, or an s3://bucket/prefix URI
    tradeoffs_root: Path
    trusted_keys: str | None = None  # `Settings.trusted_keys`
    s3_endpoint_url: str | None = None
    policy: Path | None = None  # `Settings.policy`: which role each trusted key holds

    def to_json(self) -> dict[str, str]:
        """Plain strings, for the JSON API."""
        return {
            "registry_uri": self.registry_uri,
            "audit_log": str(self.audit_log),
            "reports_root": str(self.reports_root),
            "tradeoffs_root": str(self.tradeoffs_root),
        }


def sources_from_settings(settings: Settings) -> Sources:
    """The locations the deployment's settings name."""
    reports = settings.monitoring_reports
    return Sources(
        registry_uri=settings.registry,
        audit_log=settings.audit_log,
        reports_root=reports if reports.startswith("s3://") else Path(reports),
        tradeoffs_root=settings.tradeoffs_dir,
        trusted_keys=settings.trusted_keys,
        s3_endpoint_url=settings.s3_endpoint_url,
        policy=settings.policy,
    )


def trusted_keyring(sources: Sources) -> tuple[Keyring | None, str | None]:
    """The trusted keys (`Settings.trusted_keys`), each with the role the policy gives it.

    Returns:
        (keyring, None), or (None, why there is none): unset, a path or key that cannot be
        read, or no valid policy to say the keys' roles. Without a keyring the overview still
        lists versions, marked "unverified".
    """
    from secmlops.policy import load_policy

    if not sources.trusted_keys:
        return None, f"no trusted keys: set {env_name('trusted_keys')} to verify signatures"
    try:
        ring = Keyring.from_setting(sources.trusted_keys)
        if sources.policy is None:
            return None, f"no policy: set {env_name('policy')} to say which key signs what"
        return ring.with_roles(load_policy(sources.policy).roles.model_dump()), None
    except (DataError, IntegrityError, PolicyError) as exc:
        return None, f"trusted keys unusable ({exc})"


def report_file(root: Path, folder: str, name: str) -> Path:
    """The file `root/folder/name`, if it is a report file that really lies under `root`.

    Args:
        root: a configured report root (monitoring reports or trade-off studies).
        folder: one report folder (a window or a study run), a plain name.
        name: a file in it, a plain name with a suffix of `REPORT_MEDIA_TYPES`.

    Returns:
        The resolved path.

    Raises:
        DataError: a name with a separator or `..`, another suffix, a path that resolves outside
            `root` (symlinks included), or no such file. The message does not say which, so
            probing tells nothing about the server's files.
    """
    refused = DataError(f"no report {folder}/{name}")
    if not all(matches(PLAIN_NAME, part) and ".." not in part for part in (folder, name)):
        raise refused
    if Path(name).suffix.lower() not in REPORT_MEDIA_TYPES:
        raise refused
    base = Path(root).resolve()
    path = (base / folder / name).resolve()
    if not path.is_relative_to(base) or not path.is_file():
        raise refused
    return path
