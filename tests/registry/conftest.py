"""Real signed releases and registries (a folder, and S3 on the loopback moto server).

Keys come from the session fixture `pki` (tests/trust.py): one real key per role of the release
chain and an untrusted rogue key. A release is signed as the pipeline signs it: its provenance
by the trainer key, naming a dataset manifest a data owner signed, and its gate record by the
gate key, under the policy of the `policy_path` fixture (whose `roles:` pin those keys).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from secmlops.errors import GateFailed

from ..evaluation.test_gate_checks import GATE, WEIGHTS, gated_operating_point, passing_report

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from secmlops.policy import Policy

    from ..trust import RolePKI

NAME = "pds"
# The digest of the dataset manifest a release's provenance names (the data stage verified it);
# the chain checks who signed it (`data_signer`), not the manifest itself.
DATA_MANIFEST_DIGEST = "sha256:" + "ef" * 32
# A stricter clean-mAP floor, applied to one gate run as an override with a written reason.
OVERRIDE = ("gate.min_clean_map50", 0.8, "stricter floor for this camera")
# What each release's chain holds. Default: provenance by the trainer key naming a dataset
# signed by the data owner, and a passed gate record, by the gate key, for its own weights.
RELEASES: dict[str, dict[str, Any]] = {
    "v1": {}, "v2": {}, "v3": {},
    "failed": {"gate": "fail"},  # the gate failed (its signed record says so)
    "othergate": {"gate": "other"},  # a passed record, for other weights
    "roguegate": {"gate_key": "rogue"},  # a passed record signed by an untrusted key
    "nogate": {"gate": "none"},  # no gate record at all
    "rogue": {"model_key": "rogue"},  # provenance signed by an untrusted key
    # Role misuse: trusted keys acting in a role they do not hold.
    "wrongrolegate": {"gate_key": "data_owner"},  # the data owner signed the gate decision
    "wrongrolemodel": {"model_key": "gate"},  # the gate key signed the provenance
    "nodata": {"data_signer": "trainer"},  # the dataset "signed" by the trainer itself
    "unsourced": {"data_signer": None},  # the provenance names no dataset manifest at all
    "override": {"overrides": [OVERRIDE]},  # gated under the policy plus one audited override
}  # fmt: skip


@pytest.fixture(scope="session")
def policy_path(tmp_path_factory, pki: RolePKI) -> Path:
    """The policy in force: the repository's, with the test gate (GATE) and `pki`'s roles."""
    return pki.write_policy(tmp_path_factory.mktemp("registry-policy") / "policy.yaml", gate=GATE)


@pytest.fixture(scope="session")
def policy(policy_path) -> Policy:
    """`policy_path`, loaded."""
    from secmlops.policy import load_policy

    return load_policy(policy_path)


def sign_release(
    model_dir: Path,
    key: Ed25519PrivateKey,
    data_signer: str | None,
    gate_record: Path | None = None,
) -> Path:
    """Sign `model_dir`'s provenance with `key`, naming a dataset signed by `data_signer`
    (None: no dataset at all) and carrying `gate_record`."""
    from secmlops.supplychain.provenance import sign_model

    return sign_model(
        model_dir, key, gate_record=gate_record, data_signer=data_signer,
        data_manifest_digest=DATA_MANIFEST_DIGEST if data_signer else None,
    )  # fmt: skip


def gate_release(
    work: Path,
    weights: str,
    policy: Path,
    key: Ed25519PrivateKey,
    *,
    fail: bool = False,
    overrides: tuple[tuple[str, Any, str], ...] = (),
) -> Path:
    """Run the real gate on a report for `weights` (failing when `fail`); the signed record."""
    from secmlops.evaluation.gate import run_gate

    report = passing_report(pgd_linf_4=0.01) if fail else passing_report()
    report["model"]["weights_sha256"] = weights
    work.mkdir(parents=True)
    (work / "report.json").write_text(json.dumps(report))
    record = work / "gate-record.json"
    # A failed gate raises, but writes its signed record all the same: that is the point.
    with contextlib.suppress(GateFailed):
        run_gate(work / "report.json", policy, signing_key=key, audit_log=work / "audit.jsonl",
                 record_path=record, overrides=overrides)  # fmt: skip
    return record


def _make_release(root: Path, label: str, pki: RolePKI, policy: Path, scenes: Path) -> Path:
    from secmlops.models import build, read_card, save

    spec = RELEASES[label]
    model_dir = root / label
    model = build("compact_centernet", input_size=(64, 64), widths=(8, 8, 8, 8), neck_width=8)
    save(model, model_dir, operating_point=gated_operating_point())
    if label == "v1":  # one release carries a drift reference: serving then logs embeddings
        from secmlops.monitoring.reference import profile_model

        profile_model(model_dir, scenes, "train", max_images=24)
    digest = read_card(model_dir).weights_sha256
    record = None
    if spec.get("gate", "pass") != "none":
        record = gate_release(
            root / f"{label}-gate",
            WEIGHTS if spec.get("gate") == "other" else digest,
            policy,
            pki[spec.get("gate_key", "gate")].key,
            fail=spec.get("gate") == "fail",
            overrides=tuple(spec.get("overrides", ())),
        )
    signer = spec.get("data_signer", "data_owner")
    sign_release(
        model_dir, pki[spec.get("model_key", "trainer")].key,
        pki[signer].id if signer else None, record,
    )  # fmt: skip
    return model_dir


@pytest.fixture(scope="session")
def releases(tmp_path_factory, pki, policy_path, tiny_scenes) -> dict[str, Path]:
    """Signed model folders by label (see RELEASES); read-only: copy before tampering."""
    root = tmp_path_factory.mktemp("releases")
    return {label: _make_release(root, label, pki, policy_path, tiny_scenes) for label in RELEASES}


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


def _alias_location(uri: str, alias: str, name: str) -> tuple[str, str]:
    if uri.startswith("file://"):
        root = Path(uri.removeprefix("file://"))
        return "", str(root / "models" / name / "aliases" / f"{alias}.json")
    bucket, prefix = uri.removeprefix("s3://").split("/", 1)
    return bucket, f"{prefix}/models/{name}/aliases/{alias}.json"


def read_alias_bytes(uri: str, alias: str, name: str = NAME) -> bytes:
    """The raw bytes of an alias record, read straight from the store."""
    bucket, key = _alias_location(uri, alias, name)
    if not bucket:
        return Path(key).read_bytes()
    return _s3().get_object(Bucket=bucket, Key=key)["Body"].read()


def write_alias_bytes(uri: str, alias: str, data: bytes, name: str = NAME) -> None:
    """Overwrite an alias record straight in the store, as an intruder with write access (a
    plain file write, or a PUT with the bucket's credentials) would: no key, no registry API."""
    bucket, key = _alias_location(uri, alias, name)
    if not bucket:
        Path(key).parent.mkdir(parents=True, exist_ok=True)
        Path(key).write_bytes(data)
    else:
        _s3().put_object(Bucket=bucket, Key=key, Body=data)


def audit_entries(path: Path) -> list[dict[str, Any]]:
    """Entries of a verified audit log."""
    from secmlops.audit import read_audit_log

    return read_audit_log(path)
