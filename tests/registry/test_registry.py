"""The registry on a folder and on S3: push, pull, immutability, promotion gate, rollback, audit.

The attacks on the alias record itself (edited, copied, replayed, unsigned), role misuse, gate
record expiry and the policy binding are in test_trust_chain.py.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from secmlops.audit import AuditLog
from secmlops.errors import IntegrityError
from secmlops.models import read_card
from secmlops.registry import Registry, RegistryConflict, RegistryError
from secmlops.registry.store import AliasChanged
from secmlops.registry.trust_chain import ChainBroken

from .conftest import (
    NAME,
    audit_entries,
    copy_release,
    read_alias_bytes,
    s3_endpoint_setting,
    stored_keys,
)


@pytest.fixture
def audit(tmp_path) -> AuditLog:
    return AuditLog(tmp_path / "audit.jsonl", actor="tester")


def digest(release: Path) -> str:
    return read_card(release).weights_sha256


def test_push_then_pull_round_trips_and_verifies(
    registry_uri, releases, pki, policy, audit, tmp_path
):
    registry = Registry.open(registry_uri, s3_endpoint_setting())
    record = registry.push(releases["v1"], NAME, "1.0.0", pki.keyring, audit)
    assert record["weights_sha256"] == digest(releases["v1"])
    assert record["signer"] == pki["trainer"].id
    assert set(record["files"]) == {
        "gate-record.json", "model.json", "model.safetensors", "provenance.json",
        "reference-profile.json",
    }  # fmt: skip
    assert registry.models() == [NAME]
    (row,) = registry.list(NAME)
    assert (row["version"], row["gate_record"], row["aliases"]) == ("1.0.0", True, [])

    pulled = registry.pull(NAME, "1.0.0", tmp_path / "pulled", pki.keyring, policy, audit=audit)
    assert pulled.move is None and pulled.gate["passed"] is True
    assert pulled.model.model_dir == tmp_path / "pulled"
    assert pulled.model.weights_sha256 == digest(releases["v1"])
    assert pulled.model.predicate["data"]["signer"] == pki["data_owner"].id
    for name in record["files"]:
        assert (tmp_path / "pulled" / name).read_bytes() == (releases["v1"] / name).read_bytes()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".pulled")]  # no staging left

    info = registry.show(NAME, "1.0.0", pki.keyring)
    assert info["verified"] == record["signer"] and info["gate"] == {"status": "passed"}
    push, pull = audit_entries(audit.path)
    assert (push["stage"], push["action"], push["decision"]) == ("registry", "push", "pass")
    assert push["subject"] == f"{NAME}@1.0.0"
    assert push["details"]["weights_sha256"] == digest(releases["v1"])
    assert (pull["action"], pull["decision"], pull["subject"]) == ("pull", "pass", f"{NAME}@1.0.0")
    assert pull["details"]["weights_sha256"] == digest(releases["v1"])


def test_a_version_is_immutable(registry_uri, releases, pki, policy, audit, tmp_path):
    registry = Registry.open(registry_uri, s3_endpoint_setting())
    registry.push(releases["v1"], NAME, "1.0.0", pki.keyring, audit)
    for again in ("v1", "v2"):  # the same bytes or other bytes: refused either way
        with pytest.raises(RegistryConflict, match=r"pds@1\.0\.0 already exists.*immutable"):
            registry.push(releases[again], NAME, "1.0.0", pki.keyring, audit)
    pulled = registry.pull(NAME, "1.0.0", tmp_path / "pulled", pki.keyring, policy, audit=None)
    assert pulled.model.weights_sha256 == digest(releases["v1"])
    decisions = [(e["decision"], e["details"].get("conflict")) for e in audit_entries(audit.path)]
    assert decisions == [("pass", None), ("fail", True), ("fail", True)]


@pytest.mark.parametrize(
    ("problem", "reason"),
    [
        ("unsigned", "unsigned model"),
        ("tampered", "model.safetensors: changed since it was signed"),
        ("extra file", "notes.pkl: not signed"),
        ("untrusted", "untrusted key"),
        ("wrong role", "a gate key; only a trainer key may sign it"),
    ],
)
def test_unsigned_tampered_or_untrusted_models_are_refused_with_nothing_written(
    registry_uri, releases, pki, audit, tmp_path, problem, reason
):
    source = {"untrusted": "rogue", "wrong role": "wrongrolemodel"}.get(problem, "v1")
    model = copy_release(releases[source], tmp_path / "m")
    if problem == "unsigned":
        (model / "provenance.json").unlink()
    elif problem == "tampered":
        data = bytearray((model / "model.safetensors").read_bytes())
        data[-1] ^= 0x01
        (model / "model.safetensors").write_bytes(bytes(data))
    elif problem == "extra file":
        (model / "notes.pkl").write_bytes(b"\x80\x04unsigned")
    registry = Registry.open(registry_uri, s3_endpoint_setting())
    with pytest.raises(IntegrityError, match=reason):
        registry.push(model, NAME, "1.0.0", pki.keyring, audit)
    assert stored_keys(registry_uri) == []
    assert registry.models() == [] and registry.list(NAME) == []
    (entry,) = audit_entries(audit.path)
    assert (entry["action"], entry["decision"]) == ("push", "fail")
    assert reason in entry["details"]["error"]


@pytest.mark.parametrize(
    ("label", "reason"),
    [
        ("nogate", "no gate record"),
        ("failed", "failed the robustness gate"),
        ("othergate", "for other weights"),
        ("roguegate", "untrusted key"),
    ],
)
def test_promote_requires_a_passed_trusted_gate_record_for_those_weights(
    registry_uri, releases, pki, policy, audit, label, reason
):
    registry = Registry.open(registry_uri, s3_endpoint_setting())
    registry.push(releases[label], NAME, label, pki.keyring, audit)
    with pytest.raises(ChainBroken, match=f"trust chain broken at the gate record: .*{reason}"):
        registry.promote(NAME, label, "production", pki.keyring, audit,
                         key=pki["approver"].key, policy=policy)  # fmt: skip
    assert registry.aliases(NAME) == {}
    _push, promote = audit_entries(audit.path)
    assert (promote["action"], promote["decision"]) == ("promote", "fail")
    assert promote["details"]["alias"] == "production" and promote["details"]["old_version"] is None
    assert reason in promote["details"]["error"]


def test_promote_rollback_history_and_audit(registry_uri, releases, pki, policy, audit, tmp_path):
    registry, keys = Registry.open(registry_uri, s3_endpoint_setting()), pki.keyring
    signing = {"key": pki["approver"].key, "policy": policy}
    for version in ("v1", "v2", "v3"):
        registry.push(releases[version], NAME, version, keys, audit)
    first = registry.promote(NAME, "v1", "production", keys, audit, **signing, expected_current="")
    assert (first["version"], first["previous"], first["generation"]) == ("v1", [], 1)
    registry.promote(NAME, "v2", "production", keys, audit, **signing)
    third = registry.promote(
        NAME, "v3", "production", keys, audit, **signing, expected_current="v2"
    )
    assert (third["previous"], third["generation"]) == (["v2", "v1"], 3)
    assert third["weights_sha256"] == digest(releases["v3"]) and third["moved_by"] == "tester"
    assert "envelope" in third  # the move is signed (test_trust_chain.py attacks it)
    assert json.loads(read_alias_bytes(registry_uri, "production")) == third
    prod = registry.pull(NAME, "production", tmp_path / "prod", keys, policy, audit=audit)
    assert prod.model.weights_sha256 == digest(releases["v3"])
    assert (prod.move.version, prod.move.sequence, prod.move.kind) == ("v3", 3, "promote")
    assert prod.move.signer == pki["approver"].id
    assert [r["aliases"] for r in registry.list(NAME)] == [[], [], ["production"]]
    with pytest.raises(RegistryError, match="already points at v3"):
        registry.promote(NAME, "v3", "production", keys, audit, **signing)

    back = registry.rollback(NAME, "production", keys, audit, **signing)
    assert (back["version"], back["previous"], back["generation"]) == ("v2", ["v1"], 4)
    assert registry.rollback(NAME, "production", keys, audit, **signing)["version"] == "v1"
    with pytest.raises(RegistryError, match="no previous version"):
        registry.rollback(NAME, "production", keys, audit, **signing)
    assert registry.show(NAME, "production")["aliases"] == ["production"]

    moves = [
        (e["action"], e["decision"], e["subject"], e["details"].get("old_version"))
        for e in audit_entries(audit.path)
        if e["action"] != "push"
    ]
    assert moves == [
        ("promote", "pass", "pds@v1", None),
        ("promote", "pass", "pds@v2", "v1"),
        ("promote", "pass", "pds@v3", "v2"),
        ("pull", "pass", "pds@production", None),
        ("promote", "fail", "pds@v3", "v3"),
        ("rollback", "pass", "pds@v2", "v3"),
        ("rollback", "pass", "pds@v1", "v2"),
        ("rollback", "fail", "pds@production", "v1"),
    ]


def test_a_stale_expected_current_is_a_conflict(registry_uri, releases, pki, policy, audit):
    registry, keys = Registry.open(registry_uri, s3_endpoint_setting()), pki.keyring
    signing = {"key": pki["gate"].key, "policy": policy}  # staging moves are the gate's
    for version in ("v1", "v2"):
        registry.push(releases[version], NAME, version, keys, audit)
    registry.promote(NAME, "v1", "staging", keys, audit, **signing)
    with pytest.raises(RegistryConflict, match="alias staging points at v1, not the expected v0"):
        registry.promote(NAME, "v2", "staging", keys, audit, **signing, expected_current="v0")
    assert registry.aliases(NAME)["staging"]["version"] == "v1"
    assert audit_entries(audit.path)[-1]["details"]["conflict"] is True


def test_compare_and_swap_refuses_a_stale_read(registry_uri):
    """The store primitive both backends rest on: a write with an outdated token changes nothing."""
    store = Registry.open(registry_uri, s3_endpoint_setting()).store
    record = {"version": "v1", "weights_sha256": "a" * 64, "previous": [], "generation": 1,
              "moved_at": "t", "moved_by": "me"}  # fmt: skip
    store.write_alias(NAME, "production", record, None)
    with pytest.raises(AliasChanged) as exists:  # create-only write when it exists already
        store.write_alias(NAME, "production", {**record, "version": "v9"}, None)
    assert exists.value.current == record
    _, token = store.read_alias(NAME, "production")
    second = {**record, "version": "v2", "previous": ["v1"], "generation": 2}
    store.write_alias(NAME, "production", second, token)
    with pytest.raises(AliasChanged) as stale:
        store.write_alias(NAME, "production", {**record, "version": "v3"}, token)
    assert stale.value.current == second
    assert store.read_alias(NAME, "production")[0] == second


def test_a_registry_edited_behind_its_back_is_refused(
    registry_uri, releases, pki, policy, audit, tmp_path
):
    registry = Registry.open(registry_uri, s3_endpoint_setting())
    registry.push(releases["v1"], NAME, "v1", pki.keyring, audit)
    swapped = (releases["v2"] / "model.safetensors").read_bytes()
    if registry_uri.startswith("file://"):
        stored = Path(registry_uri.removeprefix("file://")) / "models/pds/versions/v1"
        (stored / "model.safetensors").write_bytes(swapped)
    else:
        import boto3

        bucket, prefix = registry_uri.removeprefix("s3://").split("/", 1)
        s3 = boto3.client("s3", endpoint_url=os.environ["SECMLOPS_S3_ENDPOINT_URL"])
        s3.put_object(Bucket=bucket, Key=f"{prefix}/models/pds/versions/v1/model.safetensors",
                      Body=swapped)  # fmt: skip
    with pytest.raises(IntegrityError, match="tampered"):
        registry.pull(NAME, "v1", tmp_path / "pulled", pki.keyring, policy, audit=audit)
    assert not (tmp_path / "pulled").exists()
    with pytest.raises(IntegrityError, match="tampered"):
        registry.promote(NAME, "v1", "production", pki.keyring, audit,
                         key=pki["approver"].key, policy=policy)  # fmt: skip
    assert registry.aliases(NAME) == {}
    refused = [(e["action"], e["decision"]) for e in audit_entries(audit.path)]
    assert refused == [("push", "pass"), ("pull", "fail"), ("promote", "fail")]


def test_names_and_uris_are_validated(tmp_path, releases, pki, policy, audit):
    registry = Registry.open(tmp_path / "registry", s3_endpoint_setting())
    assert registry.uri == (tmp_path / "registry").as_uri()
    for name, version in [("pds", "../escape"), ("../pds", "v1"), ("pds", ".hidden"), ("", "v1")]:
        with pytest.raises(RegistryError, match="invalid"):
            registry.push(releases["v1"], name, version, pki.keyring, audit)
    with pytest.raises(RegistryError, match="invalid alias"):
        registry.promote(NAME, "v1", "Prod/../x", pki.keyring, audit,
                         key=pki["gate"].key, policy=policy)  # fmt: skip
    for uri in ("file://host/x", "s3://key:secret@bucket/x", "ftp://host/x", "file://relative"):
        with pytest.raises(RegistryError):
            Registry.open(uri, s3_endpoint_setting())
    assert not (tmp_path / "registry").exists()


def test_s3_uploads_without_a_version_record_are_invisible(
    s3_endpoint, monkeypatch, releases, pki, audit
):
    """A crashed push leaves objects but no record: not listed; other bytes cannot reuse it."""
    import boto3

    monkeypatch.setenv("SECMLOPS_S3_ENDPOINT_URL", s3_endpoint)
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.create_bucket(Bucket="registry-crashed-push")
    s3.put_object(Bucket="registry-crashed-push", Key="models/pds/versions/v1/gate-record.json",
                  Body=b"half of another push", Metadata={"sha256": "0" * 64})  # fmt: skip
    registry = Registry.open("s3://registry-crashed-push", s3_endpoint_setting())
    assert registry.uri == "s3://registry-crashed-push"
    assert registry.list(NAME) == []
    with pytest.raises(RegistryError, match="no version or alias 'v1'"):
        registry.show(NAME, "v1")
    with pytest.raises(RegistryConflict, match="holds other bytes"):
        registry.push(releases["v1"], NAME, "v1", pki.keyring, audit)
    assert registry.list(NAME) == []
    registry.push(releases["v1"], NAME, "v1.0", pki.keyring, audit)
    assert [r["version"] for r in registry.list(NAME)] == ["v1.0"]
