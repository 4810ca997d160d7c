"""Where the overview reads from, and the one way report files leave their folder.

Every location comes from the environment variable the rest of the library already honours, with
the same default: the registry `SECMLOPS_REGISTRY`, the audit log `SECMLOPS_AUDIT_LOG`, the trusted
model keys `SECMLOPS_TRUSTED_KEYS`, and the work dir `SECMLOPS_WORKDIR`, under which monitoring
reports (`runs/monitoring/reports`) and trade-off studies (`runs/tradeoffs`) live unless
`SECMLOPS_MONITORING_REPORTS` (a folder or an `s3://bucket/prefix`, as monitoring accepts) /
`SECMLOPS_TRADEOFFS_DIR` say otherwise.

Threat (report serving): a web route that turns a URL into a file path is a classic way to read
any file the server can (`../../airflow.cfg`, a symlink planted in a report folder). `report_file`
accepts one folder name and one file name, each a plain name, with a report suffix, and the
resolved path (symlinks followed) must still lie inside the configured root.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from secmlops.audit import default_audit_path
from secmlops.errors import DataError, IntegrityError
from secmlops.pipeline import default_workdir
from secmlops.registry import default_registry_uri
from secmlops.supplychain.keys import TRUSTED_KEYS_ENV, Keyring

REPORTS_ENV = "SECMLOPS_MONITORING_REPORTS"
TRADEOFFS_ENV = "SECMLOPS_TRADEOFFS_DIR"
# Files a report folder may hand out, and the media type each is served with.
REPORT_MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".json": "application/json",
    ".csv": "text/csv; charset=utf-8",
    ".md": "text/markdown; charset=utf-8",
    ".png": "image/png",
    ".svg": "image/svg+xml",
}
PLAIN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclass(frozen=True)
class Sources:
    """The locations one overview is read from."""

    registry_uri: str
    audit_log: Path
    reports_root: Path | str  # a folder, or an s3://bucket/prefix URI
    tradeoffs_root: Path

    def to_json(self) -> dict[str, str]:
        """Plain strings, for the JSON API."""
        return {
            "registry_uri": self.registry_uri,
            "audit_log": str(self.audit_log),
            "reports_root": str(self.reports_root),
            "tradeoffs_root": str(self.tradeoffs_root),
        }


def sources_from_env() -> Sources:
    """The locations named by the environment, else the library's defaults (see module doc)."""
    workdir = default_workdir()
    reports = os.environ.get(REPORTS_ENV) or workdir / "runs" / "monitoring" / "reports"
    tradeoffs = os.environ.get(TRADEOFFS_ENV) or workdir / "runs" / "tradeoffs"
    return Sources(
        registry_uri=default_registry_uri(),
        audit_log=default_audit_path(),
        reports_root=reports if str(reports).startswith("s3://") else Path(reports),
        tradeoffs_root=Path(tradeoffs),
    )


def trusted_keyring() -> tuple[Keyring | None, str | None]:
    """The keys trusted to sign models, from `$SECMLOPS_TRUSTED_KEYS`.

    Returns:
        (keyring, None), or (None, why there is none): unset, or a path or key that cannot be
        read. Without a keyring the overview still lists versions, marked "unverified".
    """
    if not os.environ.get(TRUSTED_KEYS_ENV, "").strip():
        return None, f"no trusted keys: set {TRUSTED_KEYS_ENV} to verify signatures"
    try:
        return Keyring.from_env(), None
    except (DataError, IntegrityError) as exc:
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
    if not all(PLAIN_NAME.match(part) and ".." not in part for part in (folder, name)):
        raise refused
    if Path(name).suffix.lower() not in REPORT_MEDIA_TYPES:
        raise refused
    base = Path(root).resolve()
    path = (base / folder / name).resolve()
    if not path.is_relative_to(base) or not path.is_file():
        raise refused
    return path
