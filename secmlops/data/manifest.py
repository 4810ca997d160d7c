"""Signed SHA-256 manifests of dataset versions, verified before any stage reads the data.

Threat (MITRE ATLAS AML.T0020 "Poison Training Data", AML.T0010 "ML Supply Chain Compromise"):
someone with write access to the data store or the DVC remote edits images or boxes, adds or
removes files, or swaps a whole dataset. DVC's md5 hashes catch accidents, not an attacker who
recomputes them. Here the manifest lists path, size and SHA-256 of every file, and a DSSE
envelope (`manifest.sig`) signs the exact bytes of `manifest.json` with an Ed25519 key that the
verifier trusts out of band (`Keyring`). Verification fails closed:

1. the signature is checked before a single field of the manifest is believed;
2. the folder must hold exactly the listed files: nothing added, nothing missing;
3. symlinks and special files are refused (a symlink could point outside the dataset, or be
   retargeted between check and use), and manifest paths may not escape the folder;
4. every file's size and SHA-256 must match; all problems are reported, not just the first;
5. the manifest names the dataset and version it was signed for (`dataset: {name, version}`,
   the DVC tag `data/<name>/v<version>` it is published under), and a verifier that asked for
   a version refuses another: a signed older version, or another camera's signed data,
   replayed under a newer tag at the DVC remote is refused although every byte is signed.

Hashing streams each file in reads of at most 1 MiB on a thread pool: OpenSSL's SHA-256
releases the GIL, so threads scale across cores without the cost of processes.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from secmlops.errors import DataError, IntegrityError
from secmlops.fsutil import atomic_write_bytes
from secmlops.names import DATASET_NAME, SHA256_HEX, matches
from secmlops.supplychain.dsse import (
    envelope_from_bytes,
    envelope_to_bytes,
    sign_envelope,
    verify_envelope_signer,
)
from secmlops.supplychain.keys import Keyring, load_private_key

MANIFEST_NAME = "manifest.json"
SIGNATURE_NAME = "manifest.sig"
MANIFEST_PAYLOAD_TYPE = "application/vnd.secmlops.manifest+json"
MANIFEST_VERSION = 1
CHUNK_SIZE = 1 << 20
_CONTROL_FILES = frozenset({MANIFEST_NAME, SIGNATURE_NAME})
# O_NONBLOCK: a fifo swapped in after the scan must not hang the check (no effect on files).
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
_BAD_PARTS = frozenset({"", ".", ".."})


class DatasetTampered(IntegrityError):
    """The files on disk differ from the signed manifest; `problems` lists every difference."""

    def __init__(self, message: str, problems: list[str]) -> None:
        super().__init__(message)
        self.problems = problems


@dataclass(frozen=True)
class DatasetIdentity:
    """The dataset and version a manifest was signed for: published as `data/<name>/v<version>`."""

    name: str
    version: int

    @property
    def tag(self) -> str:
        """The data registry's tag of this version."""
        return f"data/{self.name}/v{self.version}"


@dataclass(frozen=True)
class VerifiedManifest:
    """What a successful `verify_dataset` vouches for."""

    root: Path
    digest: str  # "sha256:<hex>" of manifest.json: the dataset version's identity
    key_id: str  # the trusted key that signed it
    file_count: int
    total_bytes: int
    dataset: DatasetIdentity | None  # what it was signed as (None: a manifest that names none)


def default_workers() -> int:
    """Hashing threads: one per usable CPU (affinity-aware), between 1 and 16."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(16, cpus))


def build_manifest(
    root: Path, workers: int | None = None, identity: DatasetIdentity | None = None
) -> dict[str, Any]:
    """Hash every regular file under `root` (except manifest.json and manifest.sig).

    Args:
        root: the dataset folder.
        workers: hashing threads (default: `default_workers()`).
        identity: the dataset name and version the manifest is signed for.

    Returns:
        {"version": 1, "created_at": UTC ISO time, "files": [{"path", "size", "sha256"}],
         "dataset": {"name", "version"} (with `identity`)} with files sorted by path.

    Raises:
        DataError: `root` is not a folder.
        IntegrityError: the folder holds a symlink or a special file (refused, not signed).
    """
    root = _require_folder(root)
    files, problems = _scan(root)
    if problems:
        problems.sort()
        raise DatasetTampered(_summary(root, "cannot sign", problems), problems)
    results = _hash_all(root, [(path, None) for path in files], workers)
    entries = []
    for path, (size, digest, error) in zip(files, results, strict=True):
        if error is not None or digest is None:
            raise IntegrityError(f"{root / path}: cannot hash ({error})")
        entries.append({"path": path, "size": size, "sha256": digest})
    manifest: dict[str, Any] = {
        "version": MANIFEST_VERSION,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "files": entries,
    }
    if identity is not None:
        manifest["dataset"] = {"name": identity.name, "version": identity.version}
    return manifest


def manifest_bytes(manifest: dict[str, Any]) -> bytes:
    """The canonical bytes of a manifest: key-sorted, indented JSON with a final newline."""
    return (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()


def sign_dataset(
    root: Path,
    private_key_path: Path,
    workers: int | None = None,
    passphrase: str | None = None,
    identity: DatasetIdentity | None = None,
) -> str:
    """Write `manifest.json` and its DSSE signature `manifest.sig` into `root`.

    Args:
        root: the dataset folder.
        private_key_path: Ed25519 private key (PEM).
        workers: hashing threads.
        passphrase: decrypts an encrypted key (`Settings.key_passphrase`).
        identity: the dataset name and version this is signed as (what `publish_dataset` will
            tag it; verification by tag refuses a manifest without one).

    Returns:
        The manifest digest "sha256:<hex>" of the manifest.json bytes.

    Raises:
        DataError: the folder or the key cannot be read.
        IntegrityError: the folder holds a symlink or special file, or the key is not Ed25519.
    """
    private_key = load_private_key(private_key_path, passphrase)  # fail before hashing gigabytes
    root = _require_folder(root)
    payload = manifest_bytes(build_manifest(root, workers, identity))
    envelope = sign_envelope(payload, MANIFEST_PAYLOAD_TYPE, private_key)
    # manifest.json first: a crash in between leaves a signature that no longer matches,
    # which fails closed.
    atomic_write_bytes(root / MANIFEST_NAME, payload)
    atomic_write_bytes(root / SIGNATURE_NAME, envelope_to_bytes(envelope))
    return "sha256:" + hashlib.sha256(payload).hexdigest()


def verify_dataset(
    root: Path,
    keyring: Keyring,
    workers: int | None = None,
    expected: DatasetIdentity | None = None,
) -> VerifiedManifest:
    """Check that `root` holds exactly the files a trusted key signed, byte for byte.

    Args:
        root: the dataset folder.
        keyring: keys trusted to sign datasets.
        workers: hashing threads (default: `default_workers()`).
        expected: the dataset version asked for (pulled by its tag): the manifest must have
            been signed as exactly that one.

    Returns:
        The verified manifest's digest, signer, file count and total bytes.

    Raises:
        DataError: `root` is not a folder.
        IntegrityError: manifest.sig or manifest.json missing, malformed or a symlink; the
            signature is bad or by an untrusted key; manifest.json was edited; the manifest
            is malformed or names a path outside the folder; it was signed as another dataset
            or version than `expected` (or names none).
        DatasetTampered: (an IntegrityError) files differ: content changed, size changed,
            unexpected file, missing file, symlink or special file. `problems` lists all.
    """
    root = _require_folder(root)
    signature = _read_control_file(root, SIGNATURE_NAME, "unsigned: manifest.sig missing")
    payload = _read_control_file(root, MANIFEST_NAME, "manifest.json missing")
    sig_path = root / SIGNATURE_NAME
    try:
        envelope = envelope_from_bytes(signature, str(sig_path))
        verified = verify_envelope_signer(
            envelope, keyring, MANIFEST_PAYLOAD_TYPE, role="data_owner", what="dataset manifest"
        )
    except IntegrityError as exc:
        message = str(exc)
        prefix = "" if message.startswith(str(sig_path)) else f"{sig_path}: "
        raise IntegrityError(prefix + message) from None
    if verified.payload != payload:
        raise IntegrityError(
            f"{root / MANIFEST_NAME}: signature does not match: manifest.json was edited "
            f"after signing (manifest.sig by {verified.key_id} signs different bytes)"
        )

    # From here on the manifest is authentic, so its fields may steer the checks.
    identity = _parse_identity(payload, root / MANIFEST_NAME)
    if expected is not None and identity != expected:
        signed_as = f"signed as {identity.tag}" if identity else "names no dataset version"
        raise IntegrityError(
            f"{root / MANIFEST_NAME}: {signed_as}, but {expected.tag} was asked for: another "
            "signed dataset or an older version replayed under this tag; refused"
        )
    signed_files = _parse_manifest(payload, root / MANIFEST_NAME)
    files, problems = _scan(root)
    present = set(files)
    for path in files:
        if path not in signed_files:
            problems.append(f"{path}: unexpected file (not in the signed manifest)")
    for path in signed_files:
        if path not in present:
            problems.append(f"{path}: missing file (listed in the signed manifest)")
    to_hash = sorted(
        (p for p in signed_files if p in present), key=lambda p: signed_files[p][0], reverse=True
    )
    results = _hash_all(root, [(p, signed_files[p][0]) for p in to_hash], workers)
    for path, (size, digest, error) in zip(to_hash, results, strict=True):
        want_size, want_digest = signed_files[path]
        if error is not None:
            problems.append(f"{path}: {error}")
        elif size != want_size:
            problems.append(f"{path}: size changed (signed {want_size} bytes, found {size})")
        elif digest != want_digest:
            problems.append(f"{path}: content changed (sha256 mismatch)")
    if problems:
        problems.sort()
        summary = _summary(root, "does not match its signed manifest", problems)
        raise DatasetTampered(summary, problems)
    return VerifiedManifest(
        root=root,
        digest="sha256:" + hashlib.sha256(payload).hexdigest(),
        key_id=verified.key_id,
        file_count=len(signed_files),
        total_bytes=sum(size for size, _ in signed_files.values()),
        dataset=identity,
    )


def _summary(root: Path, what: str, problems: Sequence[str]) -> str:
    more = f" and {len(problems) - 1} more" if len(problems) > 1 else ""
    return f"{root}: {what}: {problems[0]}{more}"


def _require_folder(root: Path) -> Path:
    root = Path(root)
    if root.is_symlink() or not root.is_dir():
        raise DataError(f"{root}: dataset folder not found (or is a symlink)")
    return root


def _read_control_file(root: Path, name: str, missing: str) -> bytes:
    path = root / name
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except FileNotFoundError:
        raise IntegrityError(f"{path}: {missing}") from None
    except OSError as exc:
        if path.is_symlink():
            raise IntegrityError(
                f"{path}: symlink refused (could point outside the dataset)"
            ) from None
        raise IntegrityError(f"{path}: cannot read ({exc.strerror})") from None
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise IntegrityError(f"{path}: not a regular file")
        return handle.read()


def _parse_manifest(payload: bytes, source: Path) -> dict[str, tuple[int, str]]:
    """path -> (size, sha256) of a signed manifest, refusing paths that leave the folder."""
    try:
        manifest = json.loads(payload)
        if manifest.get("version") != MANIFEST_VERSION:
            raise ValueError(f"unsupported version {manifest.get('version')!r}")
        entries = manifest["files"]
        if not isinstance(entries, list):
            raise ValueError("'files' must be a list")
        expected: dict[str, tuple[int, str]] = {}
        for entry in entries:
            path, size, digest = entry["path"], entry["size"], entry["sha256"]
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise ValueError(f"{path!r}: bad size {size!r}")
            if not matches(SHA256_HEX, digest):
                raise ValueError(f"{path!r}: bad sha256 {digest!r}")
            _check_manifest_path(path, source)
            if path in expected:
                raise ValueError(f"{path!r} listed twice")
            expected[path] = (size, digest)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise IntegrityError(f"{source}: malformed manifest ({exc})") from None
    return expected


def _parse_identity(payload: bytes, source: Path) -> DatasetIdentity | None:
    """The `dataset` a signed manifest names, or None for a manifest that names none."""
    try:
        dataset = json.loads(payload).get("dataset")
        if dataset is None:
            return None
        name, version = dataset["name"], dataset["version"]
        if not matches(DATASET_NAME, name):
            raise ValueError(f"bad dataset name {name!r}")
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise ValueError(f"bad dataset version {version!r}")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise IntegrityError(f"{source}: malformed manifest ({exc})") from None
    return DatasetIdentity(name, version)


def _check_manifest_path(path: Any, source: Path) -> None:
    if not isinstance(path, str) or not path:
        raise ValueError(f"bad path {path!r}")
    # Relative, normalized posix paths only: no "..", ".", empty parts (leading, trailing or
    # double slash), backslashes or NUL. Plain string checks: this runs once per file.
    unsafe = "\\" in path or "\x00" in path or any(part in _BAD_PARTS for part in path.split("/"))
    if unsafe:
        raise IntegrityError(f"{source}: path {path!r} escapes the dataset folder; refused")
    if path in _CONTROL_FILES:
        raise ValueError(f"{path!r} cannot be listed in the manifest")


def _scan(root: Path) -> tuple[list[str], list[str]]:
    """Regular files under `root` (posix relative paths, sorted) and refused entries.

    Uses d_type from scandir (no stat per file) and never follows a symlink.
    """
    files: list[str] = []
    problems: list[str] = []
    stack: list[tuple[str, str]] = [(str(root), "")]
    while stack:
        folder, prefix = stack.pop()
        try:
            with os.scandir(folder) as entries:
                for entry in entries:
                    rel = prefix + entry.name
                    if entry.is_symlink():
                        problems.append(f"{rel}: symlink refused (could point outside the dataset)")
                    elif entry.is_dir(follow_symlinks=False):
                        stack.append((entry.path, rel + "/"))
                    elif entry.is_file(follow_symlinks=False):
                        if not (prefix == "" and entry.name in _CONTROL_FILES):
                            files.append(rel)
                    else:
                        problems.append(f"{rel}: not a regular file (device, fifo or socket)")
        except OSError as exc:
            problems.append(f"{prefix or '.'}: cannot list folder ({exc.strerror})")
    files.sort()
    return files, problems


_Result = tuple[int, str | None, str | None]  # size, sha256 hex (None: not hashed), error


def _hash_all(
    root: Path, items: Sequence[tuple[str, int | None]], workers: int | None
) -> list[_Result]:
    """Hash `items` (path, expected size or None) on `workers` threads, results in order.

    Each thread pulls the next file from a shared cursor, so a few large files do not leave
    the other threads idle; a file whose size differs from the expected one is not read.
    """
    results: list[_Result] = [(0, None, None)] * len(items)
    count = max(1, min(workers or default_workers(), len(items)))
    cursor = iter(range(len(items)))
    lock = threading.Lock()
    base = str(root) + os.sep

    def run() -> None:
        while True:
            with lock:
                index = next(cursor, None)
            if index is None:
                return
            path, want_size = items[index]
            results[index] = _hash_file(base + path, want_size)

    if count == 1:
        run()
    else:
        with ThreadPoolExecutor(count, thread_name_prefix="sha256") as pool:
            for future in [pool.submit(run) for _ in range(count)]:
                future.result()
    return results


def _hash_file(path: str, want_size: int | None) -> _Result:
    try:
        # O_NOFOLLOW: a file swapped for a symlink after the scan is refused, not followed.
        fd = os.open(path, _OPEN_FLAGS)
    except FileNotFoundError:
        return 0, None, "missing file (removed during verification)"
    except OSError as exc:
        if os.path.islink(path):
            return 0, None, "symlink refused (could point outside the dataset)"
        return 0, None, f"cannot read ({exc.strerror})"
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return 0, None, "not a regular file"
        if want_size is not None and info.st_size != want_size:
            return info.st_size, None, None
        digest = hashlib.sha256()
        size = 0
        # Plain os.read of at most 1 MiB: measured ~25% faster per ~40 KB file here than
        # readinto/readv into a reused 1 MiB bytearray, and the same speed on large files.
        while chunk := os.read(fd, CHUNK_SIZE):
            size += len(chunk)
            digest.update(chunk)
        return size, digest.hexdigest(), None
    except OSError as exc:
        return 0, None, f"cannot read ({exc.strerror})"
    finally:
        os.close(fd)
