"""Serving follows only a signed alias move: the acceptance tests of the trust chain (issue 16).

The attacker has write access to the registry's store and no trusted key (at most one of their
own). Every attack on the production alias is refused at the "alias record" link: the running
server keeps its model, reports the refusal, and audits it naming the link; a server cannot start
on such a record. The good twins — a new promotion or a rollback, signed by the approver — are
followed, each with a higher sequence.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient

from secmlops.registry.trust_chain import ChainBroken, SequenceState, sign_alias_move

from .conftest import AUTH, NAME, TOKEN, alias_file, detect, jpeg, load_events, model_source

BROKEN = "trust chain broken at the alias record"


def version_record(served: dict[str, Any], version: str) -> dict[str, Any]:
    """What anyone who can read the store knows about a version."""
    return served["registry"].store.read_version_record(NAME, version)


def point_fields_at(target: str) -> Callable[[dict[str, Any], Any], str]:
    """Edit the production record's listed fields to name `target` (the envelope stays)."""

    def attack(served: dict[str, Any], pki: Any) -> str:
        path = alias_file(served["root"])
        record = json.loads(path.read_text())
        record.update(
            version=target, weights_sha256=version_record(served, target)["weights_sha256"]
        )
        path.write_text(json.dumps(record))
        return "version, weights_sha256 differ from what the approver signed"

    return attack


def strip_signature(served: dict[str, Any], pki: Any) -> str:
    """An unsigned record naming the failed-gate version (as records were before signing)."""
    path = alias_file(served["root"])
    record = json.loads(path.read_text())
    del record["envelope"]
    record.update(
        version="failed", weights_sha256=version_record(served, "failed")["weights_sha256"]
    )
    path.write_text(json.dumps(record))
    return "is unsigned"


def forge_with_own_key(served: dict[str, Any], pki: Any) -> str:
    """A well-formed move to the failed-gate version, signed by the attacker's own key."""
    target = version_record(served, "failed")
    record = sign_alias_move(
        {"name": NAME, "alias": "production", "version": "failed",
         "weights_sha256": target["weights_sha256"],
         "gate_record_sha256": target["files"]["gate-record.json"]["sha256"],
         "policy_digest": "sha256:" + "0" * 64, "sequence": 99, "previous": ["v1"],
         "moved_at": "2026-01-01T00:00:00+00:00", "moved_by": "approver", "kind": "promote",
         "policy_exception": None},
        pki["rogue"].key,
    )  # fmt: skip
    alias_file(served["root"]).write_text(json.dumps(record))
    return f"untrusted key {pki['rogue'].id}"


def copy_staging_record(served: dict[str, Any], pki: Any) -> str:
    """The gate key's genuine staging move of v2, copied over production."""
    served["promote"]("v2", "staging")
    shutil.copyfile(alias_file(served["root"], "staging"), alias_file(served["root"]))
    return f"signed by {pki['gate'].id}, a gate key; only an approver key may sign it"


def replay_older_record(served: dict[str, Any], pki: Any) -> str:
    """After v2 was promoted and is served, the approver's older record (v1) written back."""
    old = alias_file(served["root"]).read_bytes()
    served["promote"]("v2")
    assert served["source"].refresh() is True and served["source"].current.version == "v2"
    alias_file(served["root"]).write_bytes(old)
    return "sequence 1 is lower than 2, already accepted here: a replayed older record"


ATTACKS = {
    "edited-to-failed-gate-version": point_fields_at("failed"),
    "edited-to-ungated-version": point_fields_at("nogate"),
    "signature-stripped": strip_signature,
    "forged-with-own-key": forge_with_own_key,
    "staging-record-copied": copy_staging_record,
    "older-record-replayed": replay_older_record,
}


@pytest.mark.parametrize("attack", list(ATTACKS.values()), ids=list(ATTACKS))
def test_a_tampered_alias_record_is_refused_and_the_old_model_keeps_serving(served, pki, attack):
    client, source = served["client"], served["source"]
    detail = attack(served, pki)
    kept = source.current
    passes = len(load_events(served["tmp"] / "audit.jsonl", "pass"))

    assert source.refresh() is False
    assert source.current is kept and source.current.version in ("v1", "v2")
    assert source.last_error.startswith(BROKEN) and detail in source.last_error
    assert detect(client, jpeg()).json()["model"]["version"] == kept.version
    health = client.get("/v1/model", headers=AUTH).json()
    assert (health["version"], health["sequence"]) == (kept.version, kept.sequence)
    assert health["last_refusal"] == source.last_error
    (fail,) = load_events(served["tmp"] / "audit.jsonl", "fail")
    assert fail["subject"] == f"{NAME}@production"
    assert fail["details"]["link"] == "alias record" and fail["details"]["kept"] == kept.version
    assert fail["details"]["error"].startswith(BROKEN) and detail in fail["details"]["error"]
    # The same record is not retried (nor re-audited) every interval.
    assert source.refresh() is False
    assert len(load_events(served["tmp"] / "audit.jsonl", "fail")) == 1
    assert len(load_events(served["tmp"] / "audit.jsonl", "pass")) == passes

    # The good twin: the approver's next signed move replaces the attacker's record and serves.
    served["promote"]("v3")
    assert source.refresh() is True
    assert source.current.version == "v3" and source.current.sequence > kept.sequence
    assert source.last_error is None
    assert detect(client, jpeg()).json()["model"]["version"] == "v3"


def test_a_signed_promotion_is_served_with_a_higher_sequence(served, pki):
    source = served["source"]
    assert (source.current.version, source.current.sequence) == ("v1", 1)
    assert source.refresh() is False  # nothing moved
    served["promote"]("v2")
    assert source.refresh() is True
    assert (source.current.version, source.current.sequence) == ("v2", 2)
    assert source.current.signer == pki["trainer"].id
    assert detect(served["client"], jpeg()).json()["model"]["version"] == "v2"
    loads = [e["details"] for e in load_events(served["tmp"] / "audit.jsonl")]
    assert [(d.get("version"), d.get("sequence"), d.get("previous")) for d in loads] == [
        ("v1", 1, None), ("v2", 2, "v1")
    ]  # fmt: skip
    state = SequenceState(served["tmp"] / "serving-state.json")
    assert state.highest(served["registry"].uri, NAME, "production") == 2


def test_a_signed_rollback_is_served_and_the_newer_record_cannot_be_replayed(served):
    source = served["source"]
    served["promote"]("v2")
    assert source.refresh() is True
    v2_record = alias_file(served["root"]).read_bytes()
    served["rollback"]()
    assert source.refresh() is True
    assert (source.current.version, source.current.sequence) == ("v1", 3)  # a forward move
    # The approver's genuine v2 record now carries a lower sequence than the rollback's.
    alias_file(served["root"]).write_bytes(v2_record)
    assert source.refresh() is False
    assert (source.current.version, source.current.sequence) == ("v1", 3)
    assert "sequence 2 is lower than 3" in source.last_error
    (fail,) = load_events(served["tmp"] / "audit.jsonl", "fail")
    assert fail["details"]["link"] == "alias record" and fail["details"]["kept"] == "v1"


def swap_version_files(stocked: dict[str, Any], pki: Any) -> tuple[str, str]:
    """Replace production's version (v1) in the store by the failed-gate release, its version
    record rewritten to match (the alias record untouched)."""
    versions = stocked["root"] / "models" / NAME / "versions"
    shutil.rmtree(versions / "v1")
    shutil.copytree(versions / "failed", versions / "v1")
    record = json.loads((versions / "v1" / ".version.json").read_text())
    (versions / "v1" / ".version.json").write_text(json.dumps({**record, "version": "v1"}))
    return "alias record", "it names weights"


def replay_across_a_restart(stocked: dict[str, Any], pki: Any) -> tuple[str, str]:
    """Serving ran v2 (its state file remembers sequence 2) and stopped; the store now holds
    the approver's older v1 record again."""
    old = alias_file(stocked["root"]).read_bytes()
    stocked["promote"]("v2")
    earlier = model_source(stocked, pki, stocked["policy"])
    assert earlier.refresh() is True and earlier.current.version == "v2"
    alias_file(stocked["root"]).write_bytes(old)
    return "alias record", "a replayed older record"


def as_start(attack: Callable[[dict[str, Any], Any], str]) -> Callable[..., tuple[str, str]]:
    def start_attack(stocked: dict[str, Any], pki: Any) -> tuple[str, str]:
        return "alias record", attack(stocked, pki)

    return start_attack


START_ATTACKS = {
    "edited-to-failed-gate-version": as_start(point_fields_at("failed")),
    "signature-stripped": as_start(strip_signature),
    "forged-with-own-key": as_start(forge_with_own_key),
    "version-files-swapped": swap_version_files,
    "older-record-replayed-after-restart": replay_across_a_restart,
}


@pytest.mark.parametrize("attack", list(START_ATTACKS.values()), ids=list(START_ATTACKS))
def test_serving_cannot_start_on_a_broken_chain(stocked, pki, policy, attack):
    from secmlops.serving.app import ServingConfig, create_app
    from secmlops.serving.inference_log import InferenceLog

    link, detail = attack(stocked, pki)
    loaded_before = load_events(stocked["tmp"] / "audit.jsonl", "pass")
    source = model_source(stocked, pki, policy)
    app = create_app(source, InferenceLog(stocked["tmp"] / "log"), ServingConfig(token=TOKEN))
    broken = pytest.raises(ChainBroken, match=f"trust chain broken at the {link}")
    with broken as refused, TestClient(app):
        pass
    assert refused.value.link == link and detail in str(refused.value)
    assert source.current is None
    fails = load_events(stocked["tmp"] / "audit.jsonl", "fail")
    assert len(fails) == 1 and fails[0]["details"]["link"] == link
    assert fails[0]["details"]["kept"] is None and detail in fails[0]["details"]["error"]
    assert load_events(stocked["tmp"] / "audit.jsonl", "pass") == loaded_before


def test_serving_cannot_start_on_a_release_gated_under_another_policy(stocked, pki, tmp_path):
    """The policy in force was tightened after the gate ran: its record no longer vouches."""
    from secmlops.policy import load_policy

    from ..evaluation.test_gate_checks import GATE

    stricter = load_policy(
        pki.write_policy(tmp_path / "stricter.yaml", gate={**GATE, "min_clean_map50": 0.8})
    )
    source = model_source(stocked, pki, stricter)
    with pytest.raises(ChainBroken, match="trust chain broken at the gate record") as refused:
        source.refresh()
    assert refused.value.link == "gate record" and "the approver accepted no exception" in str(
        refused.value
    )
    (fail,) = load_events(stocked["tmp"] / "audit.jsonl", "fail")
    assert fail["details"]["link"] == "gate record"
