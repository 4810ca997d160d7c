"""DVC data registry: publish versions, pull any older tag back, through local and S3 remotes."""

import json
import subprocess

import boto3
import pytest

from secmlops.data.synthetic import generate_scenes
from secmlops.data.versioning import (
    init_registry,
    list_versions,
    publish_dataset,
    pull_dataset,
)
from secmlops.errors import DataError


@pytest.fixture
def two_versions(tmp_path):
    """A dataset, and the same dataset with one box edited (what version 2 will hold)."""
    first = generate_scenes(tmp_path / "v1", 6, seed=11, width=96, height=96, workers=1)
    second = tmp_path / "v2"
    subprocess.run(["cp", "-r", str(first), str(second)], check=True)
    annotations = json.loads((second / "annotations.json").read_text())
    annotations["annotations"][0]["bbox"][0] += 3
    (second / "annotations.json").write_text(json.dumps(annotations))
    return first, second


def publish_both(first, second, registry, remote, endpoint=None):
    init_registry(registry, remote, endpoint)
    v1 = publish_dataset(first, "street", registry)
    v2 = publish_dataset(second, "street", registry)
    return v1, v2


def assert_same_bytes(a, b):
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert files_a == files_b
    for rel in files_a:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel


def fresh_clone(registry, tmp_path):
    """A clone has the git history but an empty DVC cache: every byte must come from the remote."""
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "--quiet", str(registry), str(clone)], check=True)
    return clone


def test_local_remote_round_trip_of_an_older_tag(two_versions, tmp_path, monkeypatch):
    first, second = two_versions
    registry = tmp_path / "registry"
    v1, v2 = publish_both(first, second, registry, str(tmp_path / "remote"))
    assert (v1.tag, v2.tag) == ("data/street/v1", "data/street/v2")
    assert list_versions(registry, "street") == ["data/street/v1", "data/street/v2"]
    clone = fresh_clone(registry, tmp_path)
    monkeypatch.chdir(tmp_path / "v1")  # any working directory
    old = pull_dataset("data/street/v1", tmp_path / "old", registry=clone)
    new = pull_dataset("data/street/v2", tmp_path / "new", registry=clone)
    assert_same_bytes(old, first)
    assert_same_bytes(new, second)
    assert (old / "annotations.json").read_bytes() != (new / "annotations.json").read_bytes()


def test_s3_remote_on_loopback_round_trip(two_versions, tmp_path, s3_bucket):
    endpoint, bucket = s3_bucket
    first, second = two_versions
    registry = tmp_path / "registry"
    publish_both(first, second, registry, f"s3://{bucket}/dvc", endpoint)
    stored = boto3.client("s3", endpoint_url=endpoint).list_objects_v2(Bucket=bucket)
    assert stored["KeyCount"] > 6  # images, annotations and splits went to S3
    config = (registry / ".dvc" / "config").read_text()
    assert endpoint in config and "secret" not in config.lower()
    clone = fresh_clone(registry, tmp_path)
    assert_same_bytes(pull_dataset("data/street/v1", tmp_path / "old", registry=clone), first)
    assert_same_bytes(pull_dataset("data/street/v2", tmp_path / "new", registry=clone), second)


def test_bad_tags_and_targets_are_refused(two_versions, tmp_path):
    first, _ = two_versions
    registry = tmp_path / "registry"
    init_registry(registry, str(tmp_path / "remote"))
    publish_dataset(first, "street", registry)
    with pytest.raises(DataError, match="must be a dataset tag"):
        pull_dataset("main", tmp_path / "x", registry=registry)
    with pytest.raises(DataError, match="cannot pull data/street/v9"):
        pull_dataset("data/street/v9", tmp_path / "x", registry=registry)
    assert not (tmp_path / "x").exists()
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep").write_text("1")
    with pytest.raises(DataError, match="not empty"):
        pull_dataset("data/street/v1", tmp_path / "busy", registry=registry)
    with pytest.raises(DataError, match="dataset name"):
        publish_dataset(first, "../escape", registry)
    with pytest.raises(DataError, match="not a dataset folder"):
        publish_dataset(tmp_path, "street", registry)
