"""Dataset identity: a signed manifest names the dataset and version it was signed as, so a
signed older version (or another dataset) replayed under a newer tag is refused at verification.

The attacker can write the DVC remote (a folder, or the S3 bucket on 127.0.0.1) and nothing
else: no key, no access to the data registry's git history. DVC's remote is content-addressed
by md5, which the attacker does not need to forge: the newer tag's directory listing
(`<md5>.dir`) is simply overwritten with the older version's, whose files are all there and all
signed.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from secmlops.data.manifest import DatasetIdentity, sign_dataset, verify_dataset
from secmlops.data.synthetic import generate_scenes
from secmlops.data.versioning import init_registry, publish_dataset, pull_dataset
from secmlops.errors import DataError, IntegrityError
from secmlops.lifecycle import verify_data
from secmlops.settings import Settings


@pytest.fixture
def owner(tmp_path, pki):
    """The data owner's key, the deployment's trusted keys and a policy whose roles pin them."""
    return {
        "key": pki["data_owner"].private,
        "trusted_keys": pki.trusted_keys,
        "keyring": pki.keyring,
        "policy": pki.write_policy(tmp_path / "policy.yaml"),
    }


def signed_versions(tmp_path, owner, registry, remote, endpoint=None):
    """Two versions of `street`, each signed by the owner as what it is published as."""
    first = generate_scenes(tmp_path / "v1", 6, seed=11, width=96, height=96, workers=1)
    second = tmp_path / "v2"
    shutil.copytree(first, second)
    annotations = json.loads((second / "annotations.json").read_text())
    annotations["annotations"][0]["bbox"][0] += 3  # the correction v2 publishes
    (second / "annotations.json").write_text(json.dumps(annotations))
    init_registry(registry, remote, endpoint)
    for number, folder in ((1, first), (2, second)):
        sign_dataset(folder, owner["key"], identity=DatasetIdentity("street", number))
        publish_dataset(folder, "street", registry)
    return first, second


def dir_object(registry: Path, tag: str) -> str:
    """The remote path of a tag's directory listing (`files/md5/<2>/<30>.dir`)."""
    text = subprocess.run(
        ["git", "-C", str(registry), "show", f"{tag}:datasets/street.dvc"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    md5 = yaml.safe_load(text)["outs"][0]["md5"]
    return f"files/md5/{md5[:2]}/{md5[2:]}"


def fresh_clone(registry: Path, tmp_path: Path) -> Path:
    """A consumer's clone: git history, no DVC cache; every byte comes from the remote."""
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "--quiet", str(registry), str(clone)], check=True)
    return clone


def verify_pulled(owner, tmp_path, rev, data_dir):
    settings = Settings.from_env({"SECMLOPS_POLICY": str(owner["policy"]),
                                  "SECMLOPS_TRUSTED_KEYS": owner["trusted_keys"],
                                  "SECMLOPS_AUDIT_LOG": str(tmp_path / "audit.jsonl")})  # fmt: skip
    return verify_data(settings, {"rev": rev, "data_dir": str(data_dir)})


def test_an_older_signed_version_replayed_at_the_local_remote_is_refused(owner, tmp_path):
    registry, remote = tmp_path / "registry", tmp_path / "remote"
    signed_versions(tmp_path, owner, registry, str(remote))
    clone = fresh_clone(registry, tmp_path)
    # The good path first: v2 pulls and verifies as v2.
    good = pull_dataset("data/street/v2", tmp_path / "good", clone)
    assert verify_pulled(owner, tmp_path, "data/street/v2", good)["signer"].startswith("ed25519:")
    # The attacker overwrites v2's listing at the remote with v1's.
    shutil.copyfile(remote / dir_object(registry, "data/street/v1"),
                    remote / dir_object(registry, "data/street/v2"))  # fmt: skip
    replayed = pull_dataset(
        "data/street/v2", tmp_path / "replayed", fresh_clone(registry, tmp_path / "c2")
    )
    # Every byte is v1's, signed by the owner: only the identity tells.
    verify_dataset(replayed, owner["keyring"])
    with pytest.raises(IntegrityError, match="signed as data/street/v1, but data/street/v2"):
        verify_pulled(owner, tmp_path, "data/street/v2", replayed)
    entries = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert [e["decision"] for e in entries] == ["pass", "fail"]


def test_an_older_signed_version_replayed_at_the_s3_remote_is_refused(owner, tmp_path, s3_bucket):
    import boto3

    endpoint, bucket = s3_bucket
    registry = tmp_path / "registry"
    signed_versions(tmp_path, owner, registry, f"s3://{bucket}/dvc", endpoint)
    s3 = boto3.client("s3", endpoint_url=endpoint)
    old = s3.get_object(Bucket=bucket, Key=f"dvc/{dir_object(registry, 'data/street/v1')}")
    s3.put_object(Bucket=bucket, Key=f"dvc/{dir_object(registry, 'data/street/v2')}",
                  Body=old["Body"].read())  # fmt: skip
    replayed = pull_dataset(
        "data/street/v2", tmp_path / "replayed", fresh_clone(registry, tmp_path)
    )
    with pytest.raises(IntegrityError, match="signed as data/street/v1, but data/street/v2"):
        verify_pulled(owner, tmp_path, "data/street/v2", replayed)
    good = pull_dataset(
        "data/street/v1", tmp_path / "v1-pulled", fresh_clone(registry, tmp_path / "c2")
    )
    assert verify_pulled(owner, tmp_path, "data/street/v1", good)["manifest_digest"]


def test_another_datasets_signed_data_and_an_unnamed_manifest_are_refused(owner, tmp_path):
    data = generate_scenes(tmp_path / "cam2", 4, seed=3, width=96, height=96, workers=1)
    keyring = owner["keyring"]
    sign_dataset(data, owner["key"], identity=DatasetIdentity("camera2", 2))
    assert verify_dataset(data, keyring, expected=DatasetIdentity("camera2", 2)).dataset == (
        DatasetIdentity("camera2", 2)
    )
    with pytest.raises(IntegrityError, match="signed as data/camera2/v2, but data/street/v2"):
        verify_dataset(data, keyring, expected=DatasetIdentity("street", 2))
    sign_dataset(data, owner["key"])  # an old-style manifest: names no version
    with pytest.raises(IntegrityError, match="names no dataset version"):
        verify_dataset(data, keyring, expected=DatasetIdentity("camera2", 2))
    assert verify_dataset(data, keyring).dataset is None  # without a tag asked for, as before


def test_publish_refuses_data_signed_as_another_version(owner, tmp_path):
    registry = tmp_path / "registry"
    data = generate_scenes(tmp_path / "d", 4, seed=3, width=96, height=96, workers=1)
    init_registry(registry, str(tmp_path / "remote"))
    sign_dataset(data, owner["key"], identity=DatasetIdentity("street", 3))
    with pytest.raises(
        DataError, match="signed as street v3, would be published as data/street/v1"
    ):
        publish_dataset(data, "street", registry)
    sign_dataset(data, owner["key"], identity=DatasetIdentity("street", 1))
    assert publish_dataset(data, "street", registry).tag == "data/street/v1"


def test_training_on_older_data_than_production_needs_an_audited_reason(tmp_path):
    from secmlops.audit import read_audit_log
    from secmlops.errors import OlderDataRefused
    from secmlops.lifecycle.release import check_not_older

    settings = Settings.from_env({"SECMLOPS_AUDIT_LOG": str(tmp_path / "audit.jsonl")})
    with pytest.raises(OlderDataRefused, match="data/street/v2 is older than data/street/v3"):
        check_not_older(settings, "data/street/v2", "data/street/v3", "", "run-1")
    # The same or a newer version, another dataset, or a production model trained elsewhere.
    for rev, production in (
        ("data/street/v3", "data/street/v3"),
        ("data/street/v4", "data/street/v3"),
        ("data/camera2/v1", "data/street/v3"),
        ("data/street/v1", None),
    ):
        check_not_older(settings, rev, production, "", "run-1")  # fmt: skip
    assert not (tmp_path / "audit.jsonl").exists()
    check_not_older(settings, "data/street/v2", "data/street/v3", "v3 mislabelled", "run-2")
    (entry,) = read_audit_log(tmp_path / "audit.jsonl")
    assert (entry["action"], entry["decision"], entry["subject"]) == (
        "older_data",
        "override",
        "run-2",
    )
    assert entry["details"]["reason"] == "v3 mislabelled"
