"""The registry in an S3 bucket (AWS S3, MinIO, moto): `s3://bucket/prefix`.

The endpoint is `Settings.s3_endpoint_url` (unset: AWS), credentials come from boto3's
standard chain (`AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`, `AWS_PROFILE`, an instance role):
never from the registry URI, which ends up in logs, audit entries and DAG configs.

Immutability and compare-and-swap rest on S3 conditional writes
(https://docs.aws.amazon.com/AmazonS3/latest/userguide/conditional-writes.html):
- every file of a version is created with `If-None-Match: *`, so no honest client overwrites a
  file another push created; a leftover of a crashed push with the same bytes (SHA-256 in the
  object metadata) is reused, different bytes refuse the push;
- the version record `.version.json` is written LAST with `If-None-Match: *`: it makes the
  version visible, and exactly one push of a version can create it;
- an alias is replaced with `If-Match: <ETag read>` (created with `If-None-Match: *`); a 412
  PreconditionFailed, or the 409 ConditionalRequestConflict S3 returns to concurrent conditional
  writers, means another move won.
Anyone holding write credentials can still overwrite objects unconditionally: that is what the
signatures are for (every pull and promote re-verifies), and what S3 Object Lock or a bucket
policy requiring conditional writes prevents at the storage level.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

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
from secmlops.s3 import s3_client

LOST_RACE_CODES = frozenset({"PreconditionFailed", "ConditionalRequestConflict", "412", "409"})
MISSING_CODES = frozenset({"NoSuchKey", "404", "NotFound"})


class S3Store(Store):
    """A registry under `s3://bucket/prefix/`."""

    def __init__(
        self, bucket: str, prefix: str = "", client: Any = None, endpoint_url: str | None = None
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.uri = f"s3://{bucket}/{self.prefix}".rstrip("/")
        self._client = client if client is not None else s3_client(endpoint_url)

    def _key(self, *parts: str) -> str:
        return self.prefix + "/".join(parts)

    def _version_key(self, name: str, version: str, file_name: str) -> str:
        return self._key("models", name, "versions", version, file_name)

    def _alias_key(self, name: str, alias: str) -> str:
        return self._key("models", name, "aliases", f"{alias}.json")

    def _call(self, operation: str, key: str, **kwargs: Any) -> Any:
        """One S3 call; errors other than lost races and missing keys become RegistryError."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return getattr(self._client, operation)(Bucket=self.bucket, **kwargs)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in LOST_RACE_CODES or code in MISSING_CODES:
                raise
            message = exc.response.get("Error", {}).get("Message", "")
            raise RegistryError(
                f"s3://{self.bucket}/{key}: {operation} failed: {code} {message}".rstrip()
            ) from None
        except BotoCoreError as exc:  # no credentials, endpoint unreachable, ...
            raise RegistryError(f"s3://{self.bucket}/{key}: {operation} failed: {exc}") from None

    def _get(self, key: str) -> tuple[bytes, str] | None:
        """(body, ETag) of an object, or None when it does not exist."""
        from botocore.exceptions import ClientError

        try:
            response = self._call("get_object", key, Key=key)
        except ClientError as exc:
            if _code(exc) in MISSING_CODES:
                return None
            raise RegistryError(f"s3://{self.bucket}/{key}: get_object failed: {exc}") from None
        return response["Body"].read(), response["ETag"]

    def _keys(self, prefix: str, delimiter: str | None = None) -> list[str]:
        """Every key (or, with a delimiter, every common prefix) under `prefix`."""
        paginator = self._client.get_paginator("list_objects_v2")
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix}
        if delimiter:
            kwargs["Delimiter"] = delimiter
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            found = []
            for page in paginator.paginate(**kwargs):
                if delimiter:
                    found += [p["Prefix"] for p in page.get("CommonPrefixes", [])]
                else:
                    found += [o["Key"] for o in page.get("Contents", [])]
        except (ClientError, BotoCoreError) as exc:
            raise RegistryError(f"s3://{self.bucket}/{prefix}: cannot list ({exc})") from None
        return found

    def list_models(self) -> list[str]:
        """See `Store.list_models`."""
        base = self._key("models") + "/"
        names = (p[len(base) :].rstrip("/") for p in self._keys(base, delimiter="/"))
        return sorted(n for n in names if matches(NAME_PATTERN, n))

    def list_versions(self, name: str) -> list[str]:
        """See `Store.list_versions`: versions whose record (the commit marker) exists."""
        base = self._key("models", name, "versions") + "/"
        versions = []
        for key in self._keys(base):
            version, _, rest = key[len(base) :].partition("/")
            if rest == VERSION_RECORD and matches(VERSION_PATTERN, version):
                versions.append(version)
        return sorted(versions)

    def read_version_record(self, name: str, version: str) -> dict[str, Any] | None:
        """See `Store.read_version_record`."""
        key = self._version_key(name, version, VERSION_RECORD)
        found = self._get(key)
        return (
            None if found is None else parse_version_record(found[0], f"s3://{self.bucket}/{key}")
        )

    def commit_version(self, name: str, version: str, staged: Path, record: dict[str, Any]) -> None:
        """See `Store.commit_version` and the module docstring."""
        marker = self._version_key(name, version, VERSION_RECORD)
        exists = RegistryConflict(
            f"{name}@{version} already exists in {self.uri}; versions are immutable"
        )
        if self._get(marker) is not None:
            raise exists
        for file_name, meta in sorted(record["files"].items()):
            key = self._version_key(name, version, file_name)
            if not self._create(key, (Path(staged) / file_name).read_bytes(), meta["sha256"]):
                found = self._head_sha256(key)
                if found != meta["sha256"] and self._get(marker) is not None:
                    raise RegistryConflict(
                        f"{name}@{version} already exists in {self.uri} (a concurrent push "
                        "won); versions are immutable"
                    )
                if found != meta["sha256"]:
                    raise RegistryConflict(
                        f"s3://{self.bucket}/{key} holds other bytes: another push of "
                        f"{name}@{version} is running, or one crashed half-way (if none is "
                        "running, delete that version's objects), or use another version"
                    )
        body = encode_json(record)
        # A retried put whose first attempt landed also answers 412: our own record is a success.
        if not self._create(marker, body, None) and (self._get(marker) or (b"",))[0] != body:
            raise exists

    def _create(self, key: str, body: bytes, sha256: str | None) -> bool:
        """Put `body` at `key` only if nothing is there; False when something already was."""
        from botocore.exceptions import ClientError

        extra = {"Metadata": {"sha256": sha256}} if sha256 else {}
        try:
            self._call("put_object", key, Key=key, Body=body, IfNoneMatch="*", **extra)
        except ClientError as exc:
            if _code(exc) in LOST_RACE_CODES:
                return False
            raise RegistryError(f"s3://{self.bucket}/{key}: put_object failed: {exc}") from None
        return True

    def _head_sha256(self, key: str) -> str | None:
        from botocore.exceptions import ClientError

        try:
            return self._call("head_object", key, Key=key).get("Metadata", {}).get("sha256")
        except ClientError:
            return None

    def fetch_file(self, name: str, version: str, file_name: str, dest: Path) -> None:
        """See `Store.fetch_file`: streamed, so a large weights file is not held in memory."""
        from botocore.exceptions import ClientError

        key = self._version_key(name, version, file_name)
        try:
            body = self._call("get_object", key, Key=key)["Body"]
        except ClientError:
            raise RegistryError(f"s3://{self.bucket}/{key}: missing from the registry") from None
        with open(dest, "wb") as handle:
            for chunk in body.iter_chunks(1 << 20):
                handle.write(chunk)

    def list_aliases(self, name: str) -> list[str]:
        """See `Store.list_aliases`."""
        base = self._key("models", name, "aliases") + "/"
        names = (
            k[len(base) :].removesuffix(".json") for k in self._keys(base) if k.endswith(".json")
        )
        return sorted(n for n in names if matches(ALIAS_PATTERN, n))

    def create_anchor(self, file_name: str, data: bytes) -> None:
        """See `Store.create_anchor`: `If-None-Match: *` (with Object Lock, not even deletable)."""
        key = self._key("audit-anchors", check_name("anchor", file_name, ANCHOR_PATTERN))
        if not self._create(key, data, None) and (self._get(key) or (b"",))[0] != data:
            raise RegistryConflict(f"s3://{self.bucket}/{key}: another anchor holds that name")

    def list_anchors(self) -> list[str]:
        """See `Store.list_anchors`."""
        base = self._key("audit-anchors") + "/"
        return sorted(
            k[len(base) :] for k in self._keys(base) if matches(ANCHOR_PATTERN, k[len(base) :])
        )

    def read_anchor(self, file_name: str) -> bytes | None:
        """See `Store.read_anchor`."""
        found = self._get(
            self._key("audit-anchors", check_name("anchor", file_name, ANCHOR_PATTERN))
        )
        return None if found is None else found[0]

    def read_alias(self, name: str, alias: str) -> tuple[dict[str, Any] | None, str | None]:
        """See `Store.read_alias`; the token is the ETag of the bytes read (same response)."""
        key = self._alias_key(name, alias)
        found = self._get(key)
        if found is None:
            return None, None
        return parse_alias_record(found[0], f"s3://{self.bucket}/{key}"), found[1]

    def write_alias(
        self, name: str, alias: str, record: dict[str, Any], expected: str | None
    ) -> None:
        """See `Store.write_alias`: `If-Match: expected`, or `If-None-Match: *` to create."""
        from botocore.exceptions import ClientError

        key = self._alias_key(name, alias)
        condition = {"IfMatch": expected} if expected else {"IfNoneMatch": "*"}
        try:
            self._call(
                "put_object",
                key,
                Key=key,
                Body=encode_json(record),
                ContentType="application/json",
                **condition,
            )
        except ClientError as exc:
            # 412: the ETag changed (or the alias appeared); 409: a concurrent conditional write;
            # 404 on If-Match: the alias was deleted meanwhile. All three: another writer won.
            if _code(exc) in LOST_RACE_CODES or _code(exc) in MISSING_CODES:
                raise AliasChanged(self.read_alias(name, alias)[0]) from None
            raise RegistryError(f"s3://{self.bucket}/{key}: put_object failed: {exc}") from None


def _code(exc: Any) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))
