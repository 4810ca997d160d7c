"""The registry in a local (or mounted) folder: `file:///abs/path`.

Immutability: a version is assembled in a hidden sibling folder and renamed into place in one
`rename(2)`, which refuses to replace a non-empty folder, so two concurrent pushes of one version
cannot both land and a committed version is never overwritten.

Compare-and-swap on aliases: read-check-write runs under an exclusive `fcntl.flock` on a lock
file beside the alias; the new alias is written to a temporary file and `os.replace`d, so a reader
never sees half of one. flock (not an O_EXCL lock file) because the kernel drops it when its
holder dies: a crashed promote cannot leave the alias locked forever. flock is advisory and not
reliable over NFS: keep a file registry on a local disk, or use S3.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from secmlops.fsutil import atomic_write_bytes
from secmlops.names import matches
from secmlops.registry.store import (
    ALIAS_PATTERN,
    ANCHOR_PATTERN,
    NAME_PATTERN,
    VERSION_PATTERN,
    VERSION_RECORD,
    AliasChanged,
    RegistryConflict,
    RegistryError,
    Store,
    check_name,
    encode_json,
    parse_alias_record,
    parse_version_record,
)

LOCK_TIMEOUT_S = 30.0


class FileStore(Store):
    """A registry rooted at a folder (created on first write)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.uri = self.root.as_uri()

    def _model(self, name: str) -> Path:
        return self.root / "models" / name

    def _version_dir(self, name: str, version: str) -> Path:
        return self._model(name) / "versions" / version

    def _alias_file(self, name: str, alias: str) -> Path:
        return self._model(name) / "aliases" / f"{alias}.json"

    def list_models(self) -> list[str]:
        """See `Store.list_models`."""
        folder = self.root / "models"
        if not folder.is_dir():
            return []
        return sorted(
            p.name for p in folder.iterdir() if p.is_dir() and matches(NAME_PATTERN, p.name)
        )

    def list_versions(self, name: str) -> list[str]:
        """See `Store.list_versions`; hidden staging folders of unfinished pushes are skipped."""
        folder = self._model(name) / "versions"
        if not folder.is_dir():
            return []
        return sorted(
            p.name
            for p in folder.iterdir()
            if matches(VERSION_PATTERN, p.name) and (p / VERSION_RECORD).is_file()
        )

    def read_version_record(self, name: str, version: str) -> dict[str, Any] | None:
        """See `Store.read_version_record`."""
        path = self._version_dir(name, version) / VERSION_RECORD
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise RegistryError(
                f"{path}: cannot read the version record ({exc.strerror})"
            ) from None
        return parse_version_record(data, str(path))

    def commit_version(self, name: str, version: str, staged: Path, record: dict[str, Any]) -> None:
        """See `Store.commit_version`: copy into a hidden folder, fsync, one atomic rename."""
        final = self._version_dir(name, version)
        if final.exists():
            raise RegistryConflict(
                f"{name}@{version} already exists in {self.uri}; versions are immutable"
            )
        final.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{version}.", suffix=".partial", dir=final.parent))
        try:
            for file_name in record["files"]:
                shutil.copyfile(Path(staged) / file_name, staging / file_name)
                _fsync_file(staging / file_name)
            (staging / VERSION_RECORD).write_bytes(encode_json(record))
            _fsync_file(staging / VERSION_RECORD)
            try:
                os.rename(staging, final)
            except OSError as exc:
                if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
                    raise RegistryConflict(
                        f"{name}@{version} already exists in {self.uri} (a concurrent push won); "
                        "versions are immutable"
                    ) from None
                raise
            _fsync_dir(final.parent)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise

    def fetch_file(self, name: str, version: str, file_name: str, dest: Path) -> None:
        """See `Store.fetch_file`."""
        source = self._version_dir(name, version) / file_name
        if source.is_symlink() or not source.is_file():
            raise RegistryError(f"{source}: missing from the registry (or not a regular file)")
        shutil.copyfile(source, dest)

    def list_aliases(self, name: str) -> list[str]:
        """See `Store.list_aliases`."""
        folder = self._model(name) / "aliases"
        if not folder.is_dir():
            return []
        return sorted(
            p.stem for p in folder.glob("*.json") if matches(ALIAS_PATTERN, p.stem) and p.is_file()
        )

    def create_anchor(self, file_name: str, data: bytes) -> None:
        """See `Store.create_anchor`: a hard link of a complete file, so never half-written."""
        path = self.root / "audit-anchors" / check_name("anchor", file_name, ANCHOR_PATTERN)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{file_name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            try:
                os.link(tmp, path)
            except FileExistsError:
                if _read_or_none(path) != data:
                    raise RegistryConflict(f"{path}: another anchor holds that name") from None
            _fsync_dir(path.parent)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def list_anchors(self) -> list[str]:
        """See `Store.list_anchors`."""
        folder = self.root / "audit-anchors"
        if not folder.is_dir():
            return []
        return sorted(p.name for p in folder.iterdir() if matches(ANCHOR_PATTERN, p.name))

    def read_anchor(self, file_name: str) -> bytes | None:
        """See `Store.read_anchor`."""
        check_name("anchor", file_name, ANCHOR_PATTERN)
        return _read_or_none(self.root / "audit-anchors" / file_name)

    def read_alias(self, name: str, alias: str) -> tuple[dict[str, Any] | None, str | None]:
        """See `Store.read_alias`; the token is the SHA-256 of the alias file's bytes."""
        path = self._alias_file(name, alias)
        data = _read_or_none(path)
        if data is None:
            return None, None
        return parse_alias_record(data, str(path)), hashlib.sha256(data).hexdigest()

    def write_alias(
        self, name: str, alias: str, record: dict[str, Any], expected: str | None
    ) -> None:
        """See `Store.write_alias`: under the alias's flock, re-read, compare, replace."""
        path = self._alias_file(name, alias)
        path.parent.mkdir(parents=True, exist_ok=True)
        with _flocked(path.with_name(f".{alias}.lock")):
            data = _read_or_none(path)
            current = None if data is None else hashlib.sha256(data).hexdigest()
            if current != expected:
                raise AliasChanged(None if data is None else parse_alias_record(data, str(path)))
            atomic_write_bytes(path, encode_json(record))
            _fsync_dir(path.parent)


def _read_or_none(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise RegistryError(f"{path}: cannot read ({exc.strerror})") from None


@contextlib.contextmanager
def _flocked(lock_path: Path, timeout_s: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    """Hold an exclusive flock on `lock_path`; give up with a clear error after `timeout_s`.

    Non-blocking attempts with a deadline rather than a blocking flock: a holder that hangs
    (stopped process, stuck disk) must surface as an error, not as a promote that never returns.
    """
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise RegistryError(
                        f"{lock_path}: held by another process for over {timeout_s:g} s; "
                        "is a promote stuck?"
                    ) from None
                time.sleep(0.005)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    """Make a rename durable: the new directory entry survives a power cut."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
