"""What a registry backend stores, and the few operations the `Registry` needs from it.

Layout under the registry root (a folder, or an S3 bucket and prefix):

    models/<name>/versions/<version>/<artifact files + provenance.json>
    models/<name>/versions/<version>/.version.json   (the version record, written last)
    models/<name>/aliases/<alias>.json                (pointer moved by compare-and-swap)
    audit-anchors/<seq>-<hash>.json                   (signed audit heads, written once each)

Everything read back from a store is untrusted input: an attacker with write access to the bucket
or folder can put anything there. Names are validated before they become paths or keys (no
`..`, no `/`), records are schema-checked, and the bytes are judged by their signatures
(`verify_model`, `verify_gate_record`), never by where they were found.
"""

from __future__ import annotations

import json
import re
from abc import ABC, abstractmethod
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from secmlops import names
from secmlops.errors import SecMLOpsError
from secmlops.names import matches

# Matched in full (`secmlops.names`): "v1\n" is not "v1", and is no version at all.
NAME_PATTERN = names.NAME
VERSION_PATTERN = NAME_PATTERN
ALIAS_PATTERN = names.ALIAS
FILE_PATTERN = names.FILE_NAME
SHA256_PATTERN = names.SHA256_HEX
VERSION_RECORD = ".version.json"
VERSION_SCHEMA = "secmlops.registry.version/v1"
ANCHOR_PATTERN = names.full_pattern(r"[0-9]{12}-[0-9a-f]{16}\.json")
ALIAS_FIELDS = ("version", "weights_sha256", "previous", "generation", "moved_at", "moved_by")


class RegistryError(SecMLOpsError):
    """A registry URI, name, version or alias is invalid, missing, or its record is malformed."""


class RegistryConflict(RegistryError):
    """Someone else got there first: the version exists, or the alias moved under this change."""


class AliasChanged(Exception):
    """Internal: a compare-and-swap write found the alias changed; `current` is what won."""

    def __init__(self, current: dict[str, Any] | None) -> None:
        super().__init__("alias changed")
        self.current = current


def check_name(kind: str, value: str, pattern: re.Pattern[str] = NAME_PATTERN) -> str:
    """Return `value` if it is a valid `kind` name (model, version, alias, file).

    Raises:
        RegistryError: `pattern` does not match all of it (a trailing newline or any other
            control character included); the message shows the pattern.
    """
    if not matches(pattern, value):
        raise RegistryError(f"invalid {kind} name {value!r}: must match {names.rule(pattern)}")
    return value


def now_iso() -> str:
    """UTC time, seconds precision: when a version was pushed or an alias moved."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def encode_json(obj: Any) -> bytes:
    """Indented, key-sorted JSON with a final newline (records and aliases)."""
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()


def _load_object(data: bytes, where: str) -> dict[str, Any]:
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise RegistryError(f"{where}: not valid JSON") from None
    if not isinstance(obj, dict):
        raise RegistryError(f"{where}: expected a JSON object")
    return obj


def parse_version_record(data: bytes, where: str) -> dict[str, Any]:
    """Check a version record: file names, digests and sizes, the weights digest, the signer.

    Raises:
        RegistryError: not JSON, wrong schema, or a field missing or malformed.
    """
    record = _load_object(data, where)
    try:
        if record.get("schema") != VERSION_SCHEMA:
            raise ValueError(f"schema is not {VERSION_SCHEMA}")
        check_name("model", record["name"])
        check_name("version", record["version"], VERSION_PATTERN)
        files = record["files"]
        if not isinstance(files, dict) or not files:
            raise ValueError("files must be a non-empty mapping")
        for file_name, meta in files.items():
            check_name("file", file_name, FILE_PATTERN)
            if not matches(SHA256_PATTERN, str(meta.get("sha256"))) or not isinstance(
                meta.get("size"), int
            ):
                raise ValueError(f"files.{file_name}: needs sha256 (hex) and size (int)")
        if not matches(SHA256_PATTERN, str(record["weights_sha256"])):
            raise ValueError("weights_sha256 is not a SHA-256 hex digest")
        for field in ("signer", "pushed_at", "pushed_by"):
            if not isinstance(record[field], str):
                raise ValueError(f"{field} must be a string")
    except (KeyError, TypeError, ValueError, AttributeError, RegistryError) as exc:
        raise RegistryError(f"{where}: malformed version record ({exc})") from None
    return record


def parse_alias_record(data: bytes, where: str) -> dict[str, Any]:
    """Check an alias record (`version`, `weights_sha256`, `previous`, `generation`, ...).

    Raises:
        RegistryError: not JSON, or a field missing or malformed (fail closed: a garbled alias
            must not be read as "no alias" and silently recreated).
    """
    record = _load_object(data, where)
    try:
        missing = [field for field in ALIAS_FIELDS if field not in record]
        if missing:
            raise ValueError(f"missing {', '.join(missing)}")
        check_name("version", record["version"], VERSION_PATTERN)
        if not matches(SHA256_PATTERN, str(record["weights_sha256"])):
            raise ValueError("weights_sha256 is not a SHA-256 hex digest")
        if not isinstance(record["previous"], list):
            raise ValueError("previous must be a list")
        for version in record["previous"]:
            check_name("version", version, VERSION_PATTERN)
        generation = record["generation"]
        if not isinstance(generation, int) or isinstance(generation, bool) or generation < 1:
            raise ValueError("generation must be a positive integer")
    except (TypeError, ValueError, RegistryError) as exc:
        raise RegistryError(f"{where}: malformed alias record ({exc})") from None
    return record


class Store(ABC):
    """A registry backend. Implementations: `FileStore` (a folder), `S3Store` (a bucket)."""

    uri: str

    @abstractmethod
    def list_models(self) -> list[str]:
        """Names of the models that have a `models/<name>/` entry (sorted)."""

    @abstractmethod
    def list_versions(self, name: str) -> list[str]:
        """Committed versions of `name` (sorted); uploads without a version record are ignored."""

    @abstractmethod
    def read_version_record(self, name: str, version: str) -> dict[str, Any] | None:
        """The version record, or None when the version is not committed.

        Raises:
            RegistryError: the record exists but is malformed, or the store cannot be read.
        """

    @abstractmethod
    def commit_version(self, name: str, version: str, staged: Path, record: dict[str, Any]) -> None:
        """Store the files of `staged` named in `record["files"]`, then the record itself.

        The version becomes visible only with its record, and only once: a version that exists
        (committed by anyone, at any time before) is never replaced.

        Raises:
            RegistryConflict: the version exists already (or a concurrent push of other bytes
                holds it).
            RegistryError: the store cannot be written.
        """

    @abstractmethod
    def fetch_file(self, name: str, version: str, file_name: str, dest: Path) -> None:
        """Copy one file of a committed version to `dest` (a new file).

        Raises:
            RegistryError: the file is missing or the store cannot be read.
        """

    @abstractmethod
    def list_aliases(self, name: str) -> list[str]:
        """Alias names of `name` (sorted)."""

    @abstractmethod
    def read_alias(self, name: str, alias: str) -> tuple[dict[str, Any] | None, str | None]:
        """(record, token) of an alias, or (None, None) when it does not exist.

        The token identifies exactly these bytes (an ETag, a digest); `write_alias` needs it.

        Raises:
            RegistryError: the alias record is malformed, or the store cannot be read.
        """

    @abstractmethod
    def create_anchor(self, file_name: str, data: bytes) -> None:
        """Store an audit anchor (`audit-anchors/<file_name>`) once; an existing one is kept.

        Raises:
            RegistryConflict: an anchor of that name holds other bytes.
            RegistryError: the name is not an anchor name, or the store cannot be written.
        """

    @abstractmethod
    def list_anchors(self) -> list[str]:
        """Names of the stored audit anchors (sorted: oldest sequence first)."""

    @abstractmethod
    def read_anchor(self, file_name: str) -> bytes | None:
        """The bytes of one audit anchor, or None when it does not exist."""

    @abstractmethod
    def write_alias(
        self, name: str, alias: str, record: dict[str, Any], expected: str | None
    ) -> None:
        """Compare-and-swap: write `record` only if the alias is still what `expected` named.

        Args:
            expected: the token `read_alias` returned; None means the alias must not exist.

        Raises:
            AliasChanged: the alias changed (or appeared) since it was read; nothing written.
            RegistryError: the store cannot be written.
        """
