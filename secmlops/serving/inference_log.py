"""The inference log: one JSON record per served request, the monitoring stage's evidence.

Records go to a local folder (`/path` or `file:///path`) or to S3 (`s3://bucket/prefix`), in
hourly partitions (`YYYY/MM/DD/HH/`), as JSON lines. Local files are appended to and flushed per
record. S3 objects cannot be appended to, so records are buffered and written as one new object
per flush (every `flush_every` records, and on close): an object is never rewritten, so readers
never see a half-written one. Credentials come from the environment only; the endpoint is the
caller's `endpoint_url` (`Settings.s3_endpoint_url`: MinIO, a loopback test server).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from secmlops.errors import DataError
from secmlops.s3 import s3_client

logger = logging.getLogger(__name__)


class InferenceLog:
    """Append-only writer of inference records (thread-safe).

    Args:
        uri: a folder path, `file://` URI, or `s3://bucket/prefix`.
        flush_every: S3 only: records per object.
        endpoint_url: S3 only: an S3-compatible endpoint (None: AWS).
    """

    def __init__(
        self, uri: str | Path, flush_every: int = 100, endpoint_url: str | None = None
    ) -> None:
        text = str(uri)
        self.uri = text
        self._lock = threading.Lock()
        self._buffer: list[str] = []
        self._buffered = 0  # records in the buffer
        self._max_buffered = 10 * flush_every  # while S3 refuses writes
        self._flush_every = flush_every
        if text.startswith("s3://"):
            bucket, _, prefix = text[5:].partition("/")
            if not bucket:
                raise DataError(f"inference log {text!r}: no bucket")
            self._s3 = s3_client(endpoint_url)
            self._bucket, self._prefix = bucket, prefix.strip("/")
            self._folder: Path | None = None
        else:
            self._s3 = None
            self._folder = Path(text.removeprefix("file://"))
            self._folder.mkdir(parents=True, exist_ok=True)

    def append(self, record: dict[str, Any]) -> None:
        """Write one record (a `time` field in UTC ISO format is added if absent)."""
        self.extend([record])

    def extend(self, records: list[dict[str, Any]]) -> None:
        """Write several records at once (one file append, or one S3 buffer update)."""
        now = dt.datetime.now(dt.UTC)
        stamp = now.isoformat(timespec="milliseconds")
        text = "".join(_line({"time": stamp, **record}) for record in records)
        with self._lock:
            if self._folder is not None:
                path = self._folder / _partition(now) / "records.jsonl"
                path.parent.mkdir(parents=True, exist_ok=True)
                with open(path, "a", encoding="utf-8") as handle:
                    handle.write(text)
                    handle.flush()
                return
            self._buffer.append(text)
            self._buffered += len(records)
            if self._buffered >= self._flush_every:
                self._flush_locked(now)

    def flush(self) -> None:
        """Write buffered records now (S3); a no-op for folders."""
        with self._lock:
            self._flush_locked(dt.datetime.now(dt.UTC))

    close = flush

    def _flush_locked(self, now: dt.datetime) -> None:
        if self._s3 is None or not self._buffer:
            return
        key = "/".join(
            part for part in (self._prefix, _partition(now), f"{uuid.uuid4().hex}.jsonl") if part
        )
        try:
            self._s3.put_object(Bucket=self._bucket, Key=key, Body="".join(self._buffer).encode())
        except Exception:
            # S3 is down: keep what fits in a bounded buffer for the next flush, drop the oldest
            # beyond it (said in the service's log), so memory stays bounded.
            while self._buffered > self._max_buffered and len(self._buffer) > 1:
                dropped = self._buffer.pop(0)
                self._buffered -= dropped.count("\n")
                logger.error("inference log: S3 unreachable; dropped %d records",
                             dropped.count("\n"))  # fmt: skip
            raise
        self._buffer.clear()
        self._buffered = 0


def read_inference_log(
    uri: str | Path, endpoint_url: str | None = None
) -> Iterator[dict[str, Any]]:
    """Every record of an inference log, oldest partition first.

    Raises:
        DataError: a line is not valid JSON (names the file and line).
    """
    text = str(uri)
    if text.startswith("s3://"):
        bucket, _, prefix = text[5:].partition("/")
        client = s3_client(endpoint_url)
        keys: list[str] = []
        for page in client.get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix=prefix.strip("/")
        ):
            keys.extend(item["Key"] for item in page.get("Contents", []))
        for key in sorted(keys):
            body = client.get_object(Bucket=bucket, Key=key)["Body"].read().decode()
            yield from _parse_lines(body, f"s3://{bucket}/{key}")
        return
    folder = Path(text.removeprefix("file://"))
    for path in sorted(folder.rglob("*.jsonl")):
        yield from _parse_lines(path.read_text(encoding="utf-8"), str(path))


def _parse_lines(text: str, source: str) -> Iterator[dict[str, Any]]:
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            yield json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{source}:{number}: not a JSON record ({exc.msg})") from None


def _line(record: dict[str, Any]) -> str:
    """One JSON line; a record that cannot be written as JSON (a NaN from a broken model) keeps
    its request id and says so, instead of taking its neighbours down with it."""
    try:
        return json.dumps(record, separators=(",", ":"), allow_nan=False) + "\n"
    except (TypeError, ValueError) as exc:
        logger.error("inference log: record %s is not JSON (%s)", record.get("request_id"), exc)
        kept = {k: record[k] for k in ("time", "request_id", "model_version") if k in record}
        return json.dumps({**kept, "unserialisable": str(exc)}, default=str) + "\n"


def _partition(now: dt.datetime) -> str:
    return now.strftime("%Y/%m/%d/%H")
