"""The model registry: immutable signed versions, and aliases moved by compare-and-swap.

Threat: the deployment stage is where a model that was never signed, never passed the gate, or
was swapped after the gate reaches production: a push of tampered files, an alias pointed at an
unvetted version, two pipelines overwriting each other's promotion, or a version silently replaced
under a name that production already trusts. Controls, all failing closed:

- `push` verifies the signed provenance (`verify_model`) of a staged copy before anything is
  written, and a version is written once: a second push of it is refused (`RegistryConflict`);
- an alias move is a signed record (`trust_chain.sign_alias_move`, by the approver for
  production, the gate role otherwise) with a sequence that only grows; `promote` signs one only
  after walking the version's whole chain from the bytes the registry holds now (provenance by
  a trainer key, a PASSED, unexpired gate record by a gate key made under the policy in force,
  a dataset signed by a data owner: `trust_chain.verify_chain`);
- `pull` (and so serving) verifies the same chain, and through an alias also the signed move:
  an unsigned, edited or replayed (lower sequence) alias record is refused, naming the link;
- an alias moves only by compare-and-swap against the state read at the start of the move: a
  lost race raises `RegistryConflict` naming the version that won; `expected_current` also
  refuses to move an alias that no longer points where the caller believes;
- `rollback` is a signed move forward to the previous version of the signed history, its chain
  re-verified (a key since revoked from the keyring cannot come back through a rollback);
- `pull` downloads into a temporary folder, verifies it, and only then renames it into place;
- every push, pull, promote and rollback, passed or refused, is appended to the audit log.

Backends: `FileStore` (`file:///abs/path` or a plain path), `S3Store` (`s3://bucket/prefix`).
"""

from __future__ import annotations

import builtins
import dataclasses
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

from secmlops.audit import AuditLog, default_actor
from secmlops.errors import IntegrityError, SecMLOpsError
from secmlops.fsutil import sha256_file
from secmlops.names import matches
from secmlops.registry.aliases import MAX_PREVIOUS, audited, check_expected
from secmlops.registry.file_store import FileStore
from secmlops.registry.releases import (
    GATE_RECORD_FILE,
    file_digests,
    gate_status,
    stage_release,
    verify_release,
)
from secmlops.registry.store import (
    ALIAS_PATTERN,
    VERSION_PATTERN,
    VERSION_SCHEMA,
    AliasChanged,
    RegistryConflict,
    RegistryError,
    Store,
    check_name,
    now_iso,
)
from secmlops.registry.trust_chain import (
    AliasMove,
    ChainBroken,
    SequenceState,
    VerifiedRelease,
    alias_role,
    gate_policy_is_current,
    sign_alias_move,
    signer_holds,
    verify_alias_move,
    verify_chain,
)
from secmlops.supplychain.keys import Keyring

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from secmlops.policy import Policy

__all__ = ["Registry", "RegistryConflict", "RegistryError"]


class Registry:
    """A model registry on one `Store`; open it with `Registry.open(uri)`."""

    def __init__(self, store: Store) -> None:
        self.store = store

    @classmethod
    def open(cls, uri: str | Path, s3_endpoint_url: str | None = None) -> Registry:
        """Open `file:///abs/path`, a plain folder path, or `s3://bucket/prefix`
        (on `s3_endpoint_url`, None: AWS).

        Raises:
            RegistryError: an unknown scheme, a `file://` URI with a host or a relative path,
                an S3 URI without a bucket, or credentials embedded in the URI.
        """
        text = str(uri)
        parsed = urlparse(text)
        if parsed.scheme == "s3":
            if "@" in parsed.netloc or not parsed.netloc:
                raise RegistryError(
                    f"{text}: expected s3://bucket/prefix (credentials come from the "
                    "environment, never from the URI)"
                )
            from secmlops.registry.s3_store import S3Store

            return cls(S3Store(parsed.netloc, parsed.path, endpoint_url=s3_endpoint_url))
        if parsed.scheme == "file":
            if parsed.netloc not in ("", "localhost") or not parsed.path.startswith("/"):
                raise RegistryError(f"{text}: expected file:///absolute/path")
            return cls(FileStore(Path(unquote(parsed.path))))
        if parsed.scheme:
            raise RegistryError(f"{text}: unsupported registry URI (use file:// or s3://)")
        return cls(FileStore(Path(text).expanduser().resolve()))

    @property
    def uri(self) -> str:
        """Where this registry lives."""
        return self.store.uri

    def models(self) -> list[str]:
        """Names of the models in the registry."""
        return self.store.list_models()

    def aliases(self, name: str) -> dict[str, dict[str, Any]]:
        """Every alias of `name` with its record."""
        check_name("model", name)
        return {
            alias: record
            for alias in self.store.list_aliases(name)
            if (record := self.store.read_alias(name, alias)[0]) is not None
        }

    def resolve(self, name: str, ref: str) -> tuple[str, dict[str, Any] | None]:
        """Turn a version or an alias into (version, alias record or None).

        Raises:
            RegistryError: neither a committed version nor an alias of `name`, or both at once
                (refused rather than guessed: a version named like an alias must not hijack it).
        """
        check_name("model", name)
        is_version = bool(matches(VERSION_PATTERN, ref)) and (
            self.store.read_version_record(name, ref) is not None
        )
        alias = self.store.read_alias(name, ref)[0] if matches(ALIAS_PATTERN, ref) else None
        if is_version and alias is not None:
            raise RegistryError(
                f"{name}: {ref!r} is both a version and an alias; refusing to guess"
            )
        if alias is not None:
            return alias["version"], alias
        if is_version:
            return ref, None
        raise RegistryError(f"{name}: no version or alias {ref!r} in {self.uri}")

    def _record(self, name: str, version: str) -> dict[str, Any]:
        record = self.store.read_version_record(name, version)
        if record is None:
            raise RegistryError(f"{name}@{version}: no such version in {self.uri}")
        return record

    def show(self, name: str, ref: str, keyring: Keyring | None = None) -> dict[str, Any]:
        """Describe a version: files and digests, signer, gate status, aliases pointing at it.

        Args:
            name: the model.
            ref: a version or an alias.
            keyring: when given, the version is fetched and verified (provenance and gate
                record), and `verified`/`gate` say what holds now; else they come from the
                record written at push time and say "unverified".

        Raises:
            RegistryError: no such model, version or alias.
        """
        version, _ = self.resolve(name, ref)
        record = self._record(name, version)
        info = {
            **{k: record[k] for k in ("name", "version", "files", "weights_sha256", "signer")},
            **{k: record[k] for k in ("pushed_at", "pushed_by")},
            "registry": self.uri,
            "aliases": sorted(a for a, r in self.aliases(name).items() if r["version"] == version),
            "verified": None,
            "gate": {"status": "unverified" if record.get("gate_record") else "missing"},
        }
        if keyring is not None:
            with tempfile.TemporaryDirectory(prefix="secmlops-registry-") as tmp:
                try:
                    self._fetch(name, record, Path(tmp))
                    info["verified"] = verify_release(Path(tmp), keyring).signer
                except SecMLOpsError as exc:
                    info["verified"] = False
                    info["verify_error"] = str(exc)
                info["gate"] = gate_status(Path(tmp), keyring, record["weights_sha256"])
        return info

    def push(
        self, model_dir: Path, name: str, version: str, keyring: Keyring, audit: AuditLog
    ) -> dict[str, Any]:
        """Verify a signed model and store it as an immutable version.

        Args:
            model_dir: the release (`model.safetensors`, `model.json`, usually
                `gate-record.json`, and `provenance.json`).
            name, version: where it goes (`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`).
            keyring: keys trusted to sign models.
            audit: the audit log (action "push").

        Returns:
            The version record (files with digests and sizes, weights digest, signer, time).

        Raises:
            IntegrityError: unsigned, tampered, or signed by an untrusted key; nothing written.
            RegistryConflict: the version exists (or a concurrent push of it won).
            RegistryError: an invalid name or version, or the version is named like an alias.
        """
        details: dict[str, Any] = {"registry": self.uri, "source": str(model_dir)}

        def work() -> dict[str, Any]:
            check_name("model", name)
            check_name("version", version, VERSION_PATTERN)
            if self.store.read_version_record(name, version) is not None:
                raise RegistryConflict(
                    f"{name}@{version} already exists in {self.uri}; versions are immutable"
                )
            if matches(ALIAS_PATTERN, version) and self.store.read_alias(name, version)[0]:
                raise RegistryError(f"{name}: {version!r} is an alias; pick another version name")
            with tempfile.TemporaryDirectory(prefix="secmlops-push-") as tmp:
                # Verify a private copy and upload that copy: the source folder could change
                # between the check and the upload; the copy cannot.
                staged = Path(tmp)
                stage_release(Path(model_dir), staged)
                verified = verify_release(staged, keyring)
                record: dict[str, Any] = {
                    "schema": VERSION_SCHEMA,
                    "name": name,
                    "version": version,
                    "files": {
                        f: {"sha256": d, "size": (staged / f).stat().st_size}
                        for f, d in file_digests(staged).items()
                    },
                    "weights_sha256": verified.weights_sha256,
                    "signer": verified.signer,
                    "gate_record": GATE_RECORD_FILE in verified.subjects,
                    "pushed_at": now_iso(),
                    "pushed_by": audit.actor or default_actor(),
                }
                details.update(weights_sha256=verified.weights_sha256, signer=verified.signer)
                self.store.commit_version(name, version, staged, record)
            details["files"] = sorted(record["files"])
            return record

        return audited(audit, "push", lambda: f"{name}@{version}", details, work)

    def pull(
        self,
        name: str,
        ref: str,
        dest: Path,
        keyring: Keyring,
        policy: Policy,
        *,
        audit: AuditLog | None,
        state: SequenceState | None = None,
        overwrite: bool = False,
    ) -> VerifiedRelease:
        """Download a version (or an alias's version) into `dest`, its whole chain verified
        (`trust_chain.verify_chain`) before it appears there.

        Args:
            keyring: the trusted keys with their roles.
            policy: the policy in force (judges the gate record of an alias's release).
            audit: where a refusal (naming the broken link) and an alias pull are recorded.
            state: the highest alias sequences accepted so far (a replayed older alias record
                is refused); None: no memory across calls.

        Returns:
            The `VerifiedRelease` (its model's `model_dir` is `dest`).

        Raises:
            ChainBroken: (an IntegrityError) a link of the chain does not hold; nothing written.
            IntegrityError: a file differs from the registry's record.
            RegistryError: no such version or alias, or `dest` is not empty and `overwrite`
                is False.
        """
        from secmlops.fsutil import staged_directory

        details: dict[str, Any] = {"registry": self.uri, "ref": ref}

        def work() -> VerifiedRelease:
            version, record_of_alias = self.resolve(name, ref)
            move = None
            if record_of_alias is not None:
                move = verify_alias_move(record_of_alias, keyring, name, ref)
                (state or SequenceState(None)).check(self.uri, move)
                version = move.version
                details["sequence"] = move.sequence
            details["version"] = version
            record = self._record(name, version)
            target = Path(dest)
            if (
                target.exists() and (not target.is_dir() or any(target.iterdir()))
                and not overwrite
            ):  # fmt: skip
                raise RegistryError(
                    f"{target}: exists and is not empty (pass overwrite to replace it)"
                )
            with staged_directory(target, overwrite=overwrite) as staging:
                self._fetch(name, record, staging)
                chain = verify_chain(
                    staging, keyring, policy, registry_weights=record["weights_sha256"], move=move
                )
            if move is not None and state is not None:
                state.accept(self.uri, move)
            details["weights_sha256"] = chain.model.weights_sha256
            return dataclasses.replace(
                chain, model=dataclasses.replace(chain.model, model_dir=target)
            )

        if audit is None:
            return work()
        return audited(audit, "pull", lambda: f"{name}@{ref}", details, work)

    def _fetch(self, name: str, record: dict[str, Any], dest: Path) -> None:
        """Copy a version's files into `dest`, each checked against the record's digest."""
        for file_name, meta in sorted(record["files"].items()):
            self.store.fetch_file(name, record["version"], file_name, dest / file_name)
            if sha256_file(dest / file_name) != meta["sha256"]:
                raise IntegrityError(
                    f"{name}@{record['version']}: {file_name} in {self.uri} differs from the "
                    "digest recorded at push: the registry was tampered with"
                )

    def _chain(
        self, name: str, version: str, keyring: Keyring, policy: Policy, **checks: Any
    ) -> VerifiedRelease:
        """Fetch a version into a temporary folder and walk its chain (`verify_chain`)."""
        record = self._record(name, version)
        with tempfile.TemporaryDirectory(prefix="secmlops-promote-") as tmp:
            self._fetch(name, record, Path(tmp))
            return verify_chain(
                Path(tmp), keyring, policy, registry_weights=record["weights_sha256"], **checks
            )

    def current_move(
        self, name: str, alias: str, keyring: Keyring
    ) -> tuple[AliasMove | None, dict[str, Any] | None, str | None, str | None]:
        """(verified move or None, raw record, store token, why it did not verify) of an alias."""
        current, token = self.store.read_alias(name, alias)
        if current is None:
            return None, None, None, None
        try:
            return verify_alias_move(current, keyring, name, alias), current, token, None
        except IntegrityError as exc:
            return None, current, token, str(exc)

    def promote(
        self,
        name: str,
        version: str,
        alias: str,
        keyring: Keyring,
        audit: AuditLog,
        *,
        key: Ed25519PrivateKey,
        policy: Policy,
        state: SequenceState | None = None,
        expected_current: str | None = None,
        policy_exception: str | None = None,
        approved_by: str | None = None,
    ) -> dict[str, Any]:
        """Point `alias` at `version` with a signed move, after walking the version's chain.

        Args:
            key: the private key of the alias's role (`alias_role`: approver for production).
            policy: the policy in force: the gate record must be made under it (plus its listed
                overrides) and still valid, unless `policy_exception` gives a written reason.
            state: alias sequences seen here; the new move's sequence is above all of them.
            expected_current: the version the caller believes the alias points at now ("" for
                "does not exist yet"); refused if it differs. None: whatever was read at the
                start of this call (the compare-and-swap still protects the move).
            policy_exception: why a gate record made under another policy is accepted.
            approved_by: who approved the move (signed into it; default: the audit actor).

        Returns:
            The new alias record (listed fields and the signed envelope).

        Raises:
            ChainBroken: a link of the version's chain does not hold (named).
            IntegrityError: `key` is not a trusted key of the alias's role.
            RegistryConflict: the alias moved meanwhile, or is not at `expected_current`.
            RegistryError: invalid names, no such version, or the alias points there already.
        """
        details: dict[str, Any] = {"registry": self.uri, "alias": alias, "new_version": version}
        if policy_exception:
            details["policy_exception"] = policy_exception

        def work() -> dict[str, Any]:
            check_name("model", name)
            check_name("version", version, VERSION_PATTERN)
            check_name("alias", alias, ALIAS_PATTERN)
            signer_holds(keyring, key, alias_role(alias), f"moving {name}@{alias}")
            move, current, token, broken = self.current_move(name, alias, keyring)
            details["old_version"] = current["version"] if current else None
            if broken:
                details["replaces_unverified"] = broken  # promotion is how a bad record is fixed
            elif move is not None and state is not None:
                try:
                    state.check(self.uri, move)
                except ChainBroken as replayed:
                    details["replaces_replayed"] = str(replayed)  # the move goes above it
            check_expected(name, alias, current, expected_current)
            if move is not None and move.version == version and not policy_exception:
                # Re-approving the same version is a move only with a new reason to sign (a
                # policy changed since it was gated): anything else would be a no-op replay.
                raise RegistryError(f"{name}: {alias} already points at {version}")
            if self.store.read_version_record(name, alias) is not None:
                raise RegistryError(f"{name}: {alias!r} is a version; pick another alias name")
            now = datetime.now(UTC)
            chain = self._chain(
                name, version, keyring, policy, promoting_at=now,
                policy_exception=policy_exception,
            )  # fmt: skip
            previous = [move.version, *move.previous] if move else []
            if move is not None and move.version == version:
                previous = list(move.previous)  # re-approved in place: the history stays
            new = self._signed_move(
                name, alias, version, chain, previous, current, move, state, key, audit, now,
                kind="promote", policy_exception=policy_exception,
                approved_by=approved_by or audit.actor or default_actor(),
            )  # fmt: skip
            self._swap(name, alias, new, token)
            self._remember(state, new, name, alias, keyring)
            details.update(weights_sha256=chain.model.weights_sha256, generation=new["generation"])
            return new

        return audited(audit, "promote", lambda: f"{name}@{version}", details, work)

    def rollback(
        self,
        name: str,
        alias: str,
        keyring: Keyring,
        audit: AuditLog,
        *,
        key: Ed25519PrivateKey,
        policy: Policy,
        state: SequenceState | None = None,
        approved_by: str | None = None,
    ) -> dict[str, Any]:
        """Move `alias` back to the previous version of its signed history: a new signed move
        (higher sequence), the target's chain re-verified (a key since revoked cannot come back
        through a rollback). Its gate record may have expired or predate the policy: the move
        names itself a rollback, which the approver signs.

        Returns:
            The new alias record (the rolled-back version leaves the history).

        Raises:
            RegistryError: no such alias, or no previous version to return to.
            ChainBroken: the alias's current record or the target's chain does not verify.
            IntegrityError, RegistryConflict: as for `promote`.
        """
        details: dict[str, Any] = {"registry": self.uri, "alias": alias}

        def work() -> dict[str, Any]:
            check_name("model", name)
            check_name("alias", alias, ALIAS_PATTERN)
            signer_holds(keyring, key, alias_role(alias), f"moving {name}@{alias}")
            move, current, token, broken = self.current_move(name, alias, keyring)
            if current is None:
                raise RegistryError(f"{name}: no alias {alias!r} in {self.uri}")
            if move is None:
                raise ChainBroken("alias record", f"{broken}; promote a version explicitly instead")
            details["old_version"] = move.version
            if not move.previous:
                raise RegistryError(f"{name}: {alias} has no previous version to roll back to")
            target = move.previous[0]
            details["new_version"] = target
            chain = self._chain(name, target, keyring, policy)
            exception = None
            if not gate_policy_is_current(chain.gate, policy):
                exception = f"rollback from {move.version} to a release gated under another policy"
            new = self._signed_move(
                name, alias, target, chain, list(move.previous[1:]), current, move, state, key,
                audit, datetime.now(UTC), kind="rollback", policy_exception=exception,
                approved_by=approved_by or audit.actor or default_actor(),
            )  # fmt: skip
            self._swap(name, alias, new, token)
            self._remember(state, new, name, alias, keyring)
            details.update(weights_sha256=chain.model.weights_sha256, generation=new["generation"])
            return new

        def subject() -> str:
            return f"{name}@{details.get('new_version') or alias}"

        return audited(audit, "rollback", subject, details, work)

    def _signed_move(
        self, name: str, alias: str, version: str, chain: VerifiedRelease,
        previous: builtins.list[str],
        current: dict[str, Any] | None, move: AliasMove | None, state: SequenceState | None,
        key: Ed25519PrivateKey, audit: AuditLog, now: datetime, *, kind: str,
        policy_exception: str | None, approved_by: str,
    ) -> dict[str, Any]:  # fmt: skip
        """The signed record of the next move; its sequence is above every one seen so far."""
        seen = [
            current.get("generation", 0) if current else 0,
            move.sequence if move else 0,
            state.highest(self.uri, name, alias) if state else 0,
        ]
        history = [v for v in dict.fromkeys(previous) if v != version]
        return sign_alias_move(
            {
                "name": name, "alias": alias, "version": version,
                "weights_sha256": chain.model.weights_sha256,
                "gate_record_sha256": chain.model.predicate.get("gate_record_sha256"),
                "policy_digest": chain.gate.get("policy_digest"),
                "sequence": max(int(s) for s in seen) + 1,
                "previous": history[:MAX_PREVIOUS],
                "moved_at": now.isoformat(timespec="seconds"),
                "moved_by": audit.actor or default_actor(),
                "kind": kind, "policy_exception": policy_exception, "approved_by": approved_by,
            },
            key,
        )  # fmt: skip

    def _remember(
        self, state: SequenceState | None, record: dict[str, Any], name: str, alias: str,
        keyring: Keyring,
    ) -> None:  # fmt: skip
        if state is not None:
            state.accept(self.uri, verify_alias_move(record, keyring, name, alias))

    def _swap(self, name: str, alias: str, new: dict[str, Any], token: str | None) -> None:
        try:
            self.store.write_alias(name, alias, new, token)
        except AliasChanged as lost:
            if lost.current == new:  # our own write, seen again after a retried request
                return
            winner = lost.current["version"] if lost.current else "(deleted)"
            raise RegistryConflict(
                f"{name}: alias {alias} moved to {winner} while this change was being made "
                f"(lost the race; {new['version']} was not applied)"
            ) from None

    def list(self, name: str) -> builtins.list[dict[str, Any]]:
        """Committed versions of `name`, oldest push first, with the aliases pointing at each.

        Raises:
            RegistryError: an invalid name, or a malformed record.
        """
        check_name("model", name)
        pointing: dict[str, list[str]] = {}
        for alias, record in self.aliases(name).items():
            pointing.setdefault(record["version"], []).append(alias)
        rows = []
        for version in self.store.list_versions(name):
            record = self._record(name, version)
            rows.append(
                {
                    **{k: record[k] for k in ("version", "weights_sha256", "signer")},
                    **{k: record[k] for k in ("pushed_at", "pushed_by")},
                    "gate_record": bool(record.get("gate_record")),
                    "aliases": sorted(pointing.get(version, [])),
                }
            )
        return sorted(rows, key=lambda row: (row["pushed_at"], row["version"]))
