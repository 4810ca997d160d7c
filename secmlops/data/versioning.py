"""Dataset versions in a DVC data registry: publish a folder as a tagged version, pull one back.

The registry is a git repository managed by DVC (the "data registry" pattern): each dataset is
`datasets/<name>/`, tracked by `datasets/<name>.dvc`; every publication is a git commit tagged
`data/<name>/v<K>`, and its bytes are pushed to the DVC remote (a local folder by default, or S3).
A pull materialises exactly one tag's bytes into a clean folder, from any working directory.

DVC's own hashes (md5) protect against accidents, not against an attacker who can write to the
remote; the signed manifest inside each dataset (`secmlops.data.manifest`) is what proves
authenticity, and is verified after every pull.

Credentials never enter the registry: S3 keys come from the environment (`AWS_ACCESS_KEY_ID`,
`AWS_SECRET_ACCESS_KEY`) or an Airflow Connection; only the remote URL and endpoint are committed,
because DVC needs them to read older revisions.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from secmlops.errors import DataError
from secmlops.fsutil import staged_directory
from secmlops.names import DATASET_NAME, DATASET_TAG, matches

if TYPE_CHECKING:
    from secmlops.data.manifest import DatasetIdentity

# Matched in full (`secmlops.names`): a tag or name with a trailing newline is refused.
TAG_PATTERN = DATASET_TAG
NAME_PATTERN = DATASET_NAME
REMOTE_NAME = "storage"


@dataclass(frozen=True)
class PublishedVersion:
    """A dataset version as published in the registry."""

    name: str
    version: int
    tag: str
    commit: str
    registry: Path


def _run(args: list[str], cwd: Path) -> str:
    """Run git or dvc in `cwd`; a failure becomes a DataError carrying the tool's own message."""
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "GIT_TERMINAL_PROMPT": "0"}
    tool = args[0]
    if tool == "dvc":
        # The dvc of this interpreter's environment, whatever PATH says.
        args = [str(Path(sys.executable).with_name("dvc")), *args[1:]]
    done = subprocess.run(args, cwd=cwd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        message = (done.stderr or done.stdout).strip().splitlines()
        detail = message[-1] if message else f"exit status {done.returncode}"
        raise DataError(f"{tool} {' '.join(args[1:3])} failed in {cwd}: {detail}")
    return done.stdout.strip()


def init_registry(registry: Path, remote: str | None, endpoint_url: str | None = None) -> Path:
    """Create a DVC data registry (git + DVC) with a default remote, unless it already exists.

    Args:
        registry: folder of the registry repository.
        remote: DVC remote URL (a local path or `s3://bucket/prefix`; `Settings.dvc_remote`),
            needed only when the registry does not exist yet.
        endpoint_url: S3-compatible endpoint (MinIO, moto) of an `s3://` remote; None: AWS.

    Returns:
        The registry path.
    """
    registry = Path(registry).resolve()
    if (registry / ".dvc").is_dir() and (registry / ".git").exists():
        return registry
    if not remote:
        raise DataError(f"{registry}: a new data registry needs a DVC remote (SECMLOPS_DVC_REMOTE)")
    registry.mkdir(parents=True, exist_ok=True)
    _run(["git", "init", "--quiet", "--initial-branch=main"], registry)
    _run(["git", "config", "user.name", "secmlops"], registry)
    _run(["git", "config", "user.email", "secmlops@localhost"], registry)
    _run(["dvc", "init", "--quiet"], registry)
    _run(["dvc", "config", "core.analytics", "false"], registry)
    if not remote.startswith(("s3://", "gs://", "azure://", "http://", "https://", "ssh://")):
        Path(remote).mkdir(parents=True, exist_ok=True)
        remote = str(Path(remote).resolve())
    _run(["dvc", "remote", "add", "--default", REMOTE_NAME, remote], registry)
    if remote.startswith("s3://") and endpoint_url:
        _run(["dvc", "remote", "modify", REMOTE_NAME, "endpointurl", endpoint_url], registry)
    (registry / "datasets").mkdir(exist_ok=True)
    _run(["git", "add", "--all"], registry)
    _run(["git", "commit", "--quiet", "-m", "Initialise the SecMLOps data registry"], registry)
    return registry


def parse_tag(rev: str) -> DatasetIdentity:
    """The dataset name and version of a tag `data/<name>/v<K>`.

    Raises:
        DataError: not such a tag.
    """
    from secmlops.data.manifest import DatasetIdentity

    match = TAG_PATTERN.fullmatch(rev) if isinstance(rev, str) else None
    if not match:
        raise DataError(f"--rev must be a dataset tag like data/<name>/v<K>, got {rev!r}")
    return DatasetIdentity(match["name"], int(match["version"]))


def next_version(registry: Path, name: str) -> int:
    """The version number the next `publish_dataset` of `name` gets (1 for a new registry)."""
    if not (Path(registry) / ".git").exists():
        return 1
    versions = list_versions(registry, name)
    return parse_tag(versions[-1]).version + 1 if versions else 1


def list_versions(registry: Path, name: str | None = None) -> list[str]:
    """Tags `data/<name>/v<K>` in the registry, oldest version first."""
    tags = _run(["git", "tag", "--list", "data/*"], Path(registry)).split()
    parsed = [(m["name"], int(m["version"]), t) for t in tags if (m := TAG_PATTERN.fullmatch(t))]
    return [t for n, _, t in sorted(parsed) if name is None or n == name]


def publish_dataset(
    source: Path,
    name: str,
    registry: Path,
    remote: str | None = None,
    endpoint_url: str | None = None,
) -> PublishedVersion:
    """Publish `source` as the next version of dataset `name`: dvc add, git commit, tag, dvc push.

    A registry that does not exist yet is created with `remote` (on `endpoint_url`) as its
    DVC remote (`init_registry`); an existing one keeps its own remote. A signed dataset must
    have been signed as this very version (`sign_dataset(..., identity=...)` with `name` and
    `next_version`), so its signature binds the tag it is published under.

    Raises:
        DataError: a bad name, a missing source, or a git/dvc failure (with the tool's message).
    """
    source = Path(source).resolve()
    if not matches(NAME_PATTERN, name):
        raise DataError(
            f"dataset name {name!r} must be letters, digits, '.', '_' or '-' (at most 128, "
            "starting with a letter or digit)"
        )
    if not (source / "annotations.json").is_file():
        raise DataError(f"{source}: not a dataset folder (no annotations.json)")
    version = next_version(registry, name)
    _check_signed_identity(source, name, version)
    registry = init_registry(registry, remote, endpoint_url)
    target = registry / "datasets" / name
    with staged_directory(target, overwrite=True) as staging:
        shutil.copytree(source, staging, dirs_exist_ok=True)
    relative = f"datasets/{name}"
    _run(["dvc", "add", "--quiet", relative], registry)
    _run(["git", "add", f"{relative}.dvc", "datasets/.gitignore"], registry)
    tag = f"data/{name}/v{version}"
    _run(
        ["git", "commit", "--quiet", "--allow-empty", "-m", f"Publish dataset {name} v{version}"],
        registry,
    )
    _run(["git", "tag", tag], registry)
    _run(["dvc", "push", "--quiet", f"{relative}.dvc"], registry)
    commit = _run(["git", "rev-parse", "HEAD"], registry)
    return PublishedVersion(name, version, tag, commit, registry)


def _check_signed_identity(source: Path, name: str, version: int) -> None:
    """A dataset folder with a manifest must be signed as `name` v`version` (verification of
    the signature itself happens at every pull)."""
    import json

    from secmlops.data.manifest import MANIFEST_NAME

    manifest = source / MANIFEST_NAME
    if not manifest.is_file():
        return  # unsigned: publishable, but no verification will accept it
    try:
        dataset = json.loads(manifest.read_bytes()).get("dataset")
    except (ValueError, AttributeError):
        raise DataError(f"{manifest}: not a manifest (not a JSON object)") from None
    want = {"name": name, "version": version}
    if dataset != want:
        signed = f"{dataset['name']} v{dataset['version']}" if isinstance(dataset, dict) and {
            "name", "version"} <= set(dataset) else "no dataset version"  # fmt: skip
        raise DataError(
            f"{manifest}: signed as {signed}, would be published as data/{name}/v{version}: "
            f"re-sign it with `secmlops data sign --name {name} --version {version}`"
        )


def pull_dataset(rev: str, to: Path, registry: Path | str, overwrite: bool = False) -> Path:
    """Materialise dataset version `rev` (a tag `data/<name>/v<K>`) into a clean folder `to`.

    Reads through DVC's file system at that git revision, so it works from any working directory
    and fetches from the remote whatever the local cache lacks. `registry` may be a local path
    or a git URL of the registry.

    Raises:
        DataError: a malformed or unknown tag, or bytes that cannot be fetched.
    """
    from dvc.api import DVCFileSystem
    from dvc.exceptions import DvcException
    from scmrepo.exceptions import SCMError

    match = TAG_PATTERN.fullmatch(rev) if isinstance(rev, str) else None
    if not match:
        raise DataError(f"--rev must be a dataset tag like data/<name>/v<K>, got {rev!r}")
    source = f"datasets/{match['name']}"
    to = Path(to).resolve()
    try:
        fs = DVCFileSystem(str(registry), rev=rev)
        if not fs.isdir(source):
            raise DataError(f"{registry}: {rev} has no {source}")
        with staged_directory(to, overwrite=overwrite) as staging:
            fs.get(source, str(staging), recursive=True)
            _flatten_if_nested(staging, match["name"])
    except FileExistsError as exc:
        raise DataError(f"{exc}; choose another --to or pass --overwrite") from None
    except (DvcException, SCMError) as exc:
        raise DataError(f"cannot pull {rev} from {registry}: {exc}") from None
    return to


def _flatten_if_nested(staging: Path, name: str) -> None:
    """`fs.get` into an existing folder nests the source folder inside it; undo that."""
    nested = staging / name
    if nested.is_dir() and not (staging / "annotations.json").exists():
        for item in nested.iterdir():
            item.rename(staging / item.name)
        nested.rmdir()
