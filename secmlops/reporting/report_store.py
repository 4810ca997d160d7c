"""Report folders on a local disk or under an `s3://bucket/prefix`: list, look up, read.

Monitoring writes one folder per window either locally or to S3 (`monitor_window` uploads when
its reports location is an `s3://` URI); the overview reads both the same way. Names are checked
before they become paths or keys (`sources.report_file` locally, the same plain-name rule on
S3), so a URL can name nothing but a report file under the configured root.
"""

from __future__ import annotations

from pathlib import Path

from secmlops.errors import DataError
from secmlops.names import matches
from secmlops.reporting.sources import PLAIN_NAME, REPORT_MEDIA_TYPES, report_file
from secmlops.s3 import s3_client


def is_s3(root: Path | str) -> bool:
    """Whether `root` is an `s3://` URI."""
    return str(root).startswith("s3://")


def _split(root: str) -> tuple[str, str]:
    bucket, _, prefix = root.removeprefix("s3://").partition("/")
    if not bucket:
        raise DataError(f"{root}: expected s3://bucket/prefix")
    prefix = prefix.strip("/")
    return bucket, f"{prefix}/" if prefix else ""


def list_folders(root: Path | str, endpoint_url: str | None = None) -> list[str]:
    """Names of the folders directly under `root`, sorted.

    Raises:
        DataError: the root cannot be listed (no such folder, bucket or permission).
    """
    if not is_s3(root):
        try:
            return sorted(p.name for p in Path(root).iterdir() if p.is_dir())
        except OSError as exc:
            raise DataError(f"no folder {root} ({exc.strerror})") from None
    bucket, prefix = _split(str(root))
    names: list[str] = []
    try:
        pages = s3_client(endpoint_url).get_paginator("list_objects_v2")
        for page in pages.paginate(Bucket=bucket, Prefix=prefix, Delimiter="/"):
            for common in page.get("CommonPrefixes", []):
                names.append(common["Prefix"][len(prefix) :].rstrip("/"))
    except Exception as exc:  # botocore's many error types: all mean "cannot list"
        raise DataError(f"cannot list {root} ({exc})") from None
    return sorted(names)


def has_file(root: Path | str, folder: str, name: str, endpoint_url: str | None = None) -> bool:
    """Whether `root/folder/name` is a report file (see `read_report` for the rules)."""
    try:
        _locate(root, folder, name, endpoint_url)
    except DataError:
        return False
    return True


def read_report(root: Path | str, folder: str, name: str, endpoint_url: str | None = None) -> bytes:
    """The bytes of the report file `root/folder/name` (an `s3://` root on `endpoint_url`).

    Raises:
        DataError: not a plain folder and file name with a report suffix, outside the root, or
            missing (one message for all, as `report_file`).
    """
    where = _locate(root, folder, name, endpoint_url)
    if isinstance(where, Path):
        try:
            return where.read_bytes()
        except OSError:
            raise DataError(f"no report {folder}/{name}") from None
    bucket, key = where
    try:
        return s3_client(endpoint_url).get_object(Bucket=bucket, Key=key)["Body"].read()
    except Exception:  # NoSuchKey, access denied, network: the report cannot be had
        raise DataError(f"no report {folder}/{name}") from None


def _locate(
    root: Path | str, folder: str, name: str, endpoint_url: str | None
) -> Path | tuple[str, str]:
    """The checked local path, or the (bucket, key) that exists on S3."""
    if not is_s3(root):
        return report_file(Path(root), folder, name)
    refused = DataError(f"no report {folder}/{name}")
    plain = all(matches(PLAIN_NAME, part) and ".." not in part for part in (folder, name))
    if not plain or Path(name).suffix.lower() not in REPORT_MEDIA_TYPES:
        raise refused
    bucket, prefix = _split(str(root))
    key = f"{prefix}{folder}/{name}"
    try:
        s3_client(endpoint_url).head_object(Bucket=bucket, Key=key)
    except Exception:
        raise refused from None
    return bucket, key
