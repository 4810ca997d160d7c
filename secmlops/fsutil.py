"""Atomic file and folder writes: a reader sees the old state or the new one, never half of it."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file in the same folder and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    """Write `obj` as indented, key-sorted JSON, atomically."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


@contextlib.contextmanager
def staged_directory(final: Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling folder that replaces `final` only if the block succeeds.

    Args:
        final: the folder to create.
        overwrite: replace an existing non-empty `final` (the old one is removed only after
            the new one is complete).

    Raises:
        FileExistsError: `final` exists, is not empty, and `overwrite` is False.
    """
    final = Path(final)
    if final.exists() and any(final.iterdir()) and not overwrite:
        raise FileExistsError(f"{final} already exists and is not empty")
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent))
    try:
        yield staging
        if final.exists():
            trash = final.with_name(f".{final.name}.old-{os.getpid()}")
            os.replace(final, trash)
            os.replace(staging, final)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Streaming SHA-256 hex digest of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def read_bytes_at_most(path: Path, limit: int) -> bytes:
    """A file's bytes, refused when it holds more than `limit` (checked by size first, then by
    a capped read: a file that grows after the check is not read past the cap).

    Raises:
        OSError: it cannot be read.
        ValueError: it holds more than `limit` bytes.
    """
    with open(path, "rb") as handle:
        if os.fstat(handle.fileno()).st_size > limit:
            raise ValueError(f"larger than the {limit} bytes allowed")
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"larger than the {limit} bytes allowed")
    return data


def safe_name(text: str) -> str:
    """A file-system-safe name for run ids such as `manual__2026-11-25T10:00:00+00:00`: one path
    component of at most 128 characters, never "." or ".." (a run id ".." would otherwise name
    the folder above)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._-")[:128] or "run"
