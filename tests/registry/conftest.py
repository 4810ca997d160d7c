"""Real signed releases, keys and registries (a folder, and S3 on the loopback moto server)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from secmlops.errors import GateFailed
from secmlops.supplychain.keys import Keyring, generate_keypair, load_private_key

from ..conftest import REPO_ROOT
from ..evaluation.test_gate_checks import GATE, WEIGHTS, passing_report

NAME = "pds"
# What each release's gate record says: a pass for its own weights, a failed gate, a pass for
# other weights, a pass signed by an untrusted key, or no record at all.
RELEASES: dict[str, dict[str, Any]] = {
    "v1": {}, "v2": {}, "v3": {},
    "failed": {"gate": "fail"},
    "othergate": {"gate": "other"},
    "roguegate": {"gate_key": "rogue"},
    "nogate": {"gate": "none"},
    "rogue": {"model_key": "rogue"},
}  # fmt: skip


@pytest.fixture(scope="session")
def pki(tmp_path_factory) -> dict[str, Any]:
    """The trusted release key (signs models and gate records) and an untrusted rogue key."""
    folder = tmp_path_factory.mktemp("registry-keys")
    keys = {}
    for name in ("release", "rogue"):
        private, public = generate_keypair(folder, name)
        keys[name] = {"key": load_private_key(private), "private": private, "public": public}
    return {**keys, "keyring": Keyring.from_paths([keys["release"]["public"]])}


def _make_release(root: Path, label: str, pki: dict[str, Any], policy: Path, scenes: Path) -> Path:
    from secmlops.evaluation.gate import run_gate
    from secmlops.models import build, read_card, save
    from secmlops.supplychain.provenance import sign_model

    spec = RELEASES[label]
    model_dir = root / label
    model = build("compact_centernet", input_size=(64, 64), widths=(8, 8, 8, 8), neck_width=8)
    save(model, model_dir)
    if label == "v1":  # one release carries a drift reference: serving then logs embeddings
        from secmlops.monitoring.reference import profile_model

        profile_model(model_dir, scenes, "train", max_images=24)
    digest = read_card(model_dir).weights_sha256
    record = None
    if spec.get("gate", "pass") != "none":
        report = passing_report(pgd_linf_4=0.01) if spec.get("gate") == "fail" else passing_report()
        report["model"]["weights_sha256"] = WEIGHTS if spec.get("gate") == "other" else digest
        work = root / f"{label}-gate"
        work.mkdir()
        (work / "report.json").write_text(json.dumps(report))
        record = work / "gate-record.json"
        gate_key = pki[spec.get("gate_key", "release")]["key"]
        # A failed gate raises, but writes its signed record all the same: that is the point.
        with contextlib.suppress(GateFailed):
            run_gate(work / "report.json", policy, signing_key=gate_key,
                     audit_log=work / "audit.jsonl", record_path=record)  # fmt: skip
    sign_model(model_dir, pki[spec.get("model_key", "release")]["key"], gate_record=record)
    return model_dir


@pytest.fixture(scope="session")
def releases(tmp_path_factory, pki, tiny_scenes) -> dict[str, Path]:
    """Signed model folders by label (see RELEASES); read-only: copy before tampering."""
    root = tmp_path_factory.mktemp("releases")
    content = yaml.safe_load((REPO_ROOT / "policy.yaml").read_text())
    content["gate"] = GATE
    policy = root / "policy.yaml"
    policy.write_text(yaml.safe_dump(content))
    return {label: _make_release(root, label, pki, policy, tiny_scenes) for label in RELEASES}


@pytest.fixture(params=["file", "s3"])
def registry_uri(request, tmp_path, monkeypatch) -> str:
    """An empty registry: a folder, or a fresh bucket on the real moto S3 server."""
    if request.param == "file":
        return (tmp_path / "registry").as_uri()
    import boto3

    endpoint = request.getfixturevalue("s3_endpoint")
    monkeypatch.setenv("SECMLOPS_S3_ENDPOINT_URL", endpoint)
    bucket = f"registry-{uuid.uuid4().hex[:16]}"
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
    return f"s3://{bucket}/team/models-registry"


def s3_endpoint_setting() -> str | None:
    """The loopback S3 endpoint the `registry_uri` fixture set, as the settings would hold it."""
    return os.environ.get("SECMLOPS_S3_ENDPOINT_URL")


def copy_release(source: Path, dest: Path) -> Path:
    """A writable copy of a release, for tampering."""
    shutil.copytree(source, dest)
    return dest


def _s3() -> Any:
    import boto3

    return boto3.client("s3", endpoint_url=os.environ["SECMLOPS_S3_ENDPOINT_URL"])


def stored_keys(uri: str) -> list[str]:
    """Every file (or object) under a registry root: what a refused push must not leave."""
    if uri.startswith("file://"):
        root = Path(uri.removeprefix("file://"))
        return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    bucket = uri.removeprefix("s3://").split("/", 1)[0]
    return sorted(o["Key"] for o in _s3().list_objects_v2(Bucket=bucket).get("Contents", []))


def read_alias_bytes(uri: str, alias: str) -> bytes:
    """The raw bytes of an alias record, read straight from the store."""
    if uri.startswith("file://"):
        root = Path(uri.removeprefix("file://"))
        return (root / "models" / NAME / "aliases" / f"{alias}.json").read_bytes()
    bucket, prefix = uri.removeprefix("s3://").split("/", 1)
    key = f"{prefix}/models/{NAME}/aliases/{alias}.json"
    return _s3().get_object(Bucket=bucket, Key=key)["Body"].read()


def audit_entries(path: Path) -> list[dict[str, Any]]:
    """Entries of a verified audit log."""
    from secmlops.audit import read_audit_log

    return read_audit_log(path)
