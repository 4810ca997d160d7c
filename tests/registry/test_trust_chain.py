"""The release trust chain, attacked as an intruder with write access to the store but no key.

Each test plays the attacker with only what it has: it edits files of the registry folder or
PUTs objects into the bucket directly (`write_alias_bytes`, `commit_version`), or holds a key of
one role and uses it for another. A consumer (`Registry.pull`, which serving also uses) must
refuse, naming the broken link, and audit the refusal; each control also has a test where the
legitimate move passes.
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from secmlops.audit import AuditLog
from secmlops.errors import IntegrityError
from secmlops.models import read_card
from secmlops.policy import Policy, load_policy, policy_digest
from secmlops.registry import Registry, RegistryError
from secmlops.registry.store import VERSION_SCHEMA
from secmlops.registry.trust_chain import (
    ChainBroken,
    SequenceState,
    VerifiedRelease,
    alias_role,
    gate_policy_is_current,
    verify_chain,
)

from ..evaluation.test_gate_checks import GATE
from .conftest import (
    NAME,
    OVERRIDE,
    audit_entries,
    copy_release,
    read_alias_bytes,
    s3_endpoint_setting,
    sign_release,
    write_alias_bytes,
)


@pytest.fixture
def audit(tmp_path) -> AuditLog:
    return AuditLog(tmp_path / "audit.jsonl", actor="tester")


@pytest.fixture(scope="module")
def other_policy(tmp_path_factory, pki) -> Policy:
    """A policy in force after a threshold changed: gate records made before are not under it."""
    path = tmp_path_factory.mktemp("other-policy") / "policy.yaml"
    return load_policy(pki.write_policy(path, gate={**GATE, "max_defence_cost": 0.2}))


def digest(release: Path) -> str:
    return read_card(release).weights_sha256


def open_with(uri: str, releases, pki, audit, versions: tuple[str, ...]) -> Registry:
    """The registry at `uri` with `versions` (release labels) pushed under their own names."""
    registry = Registry.open(uri, s3_endpoint_setting())
    for version in versions:
        registry.push(releases[version], NAME, version, pki.keyring, audit)
    return registry


def promote(registry, pki, policy, audit, version, alias="production", **kwargs) -> dict:
    """A legitimate move, signed by the alias's role."""
    key = pki[alias_role(alias)].key
    return registry.promote(NAME, version, alias, pki.keyring, audit, key=key, policy=policy,
                            **kwargs)  # fmt: skip


def pull(registry, pki, policy, audit, dest: Path, **kwargs) -> VerifiedRelease:
    """What a consumer (`registry pull`, serving) does: follow production, chain verified."""
    return registry.pull(NAME, "production", dest, pki.keyring, policy, audit=audit, **kwargs)


def signed_move(record: dict[str, Any]) -> dict[str, Any]:
    """The signed predicate of an alias record (read as an auditor would, not trusted)."""
    return json.loads(base64.b64decode(record["envelope"]["payload"]))["predicate"]


def assert_refused_and_audited(
    exc: pytest.ExceptionInfo, audit: AuditLog, link: str, message: str, dest: Path
) -> None:
    assert exc.value.link == link
    assert str(exc.value).startswith(f"trust chain broken at the {link}: ")
    assert message in str(exc.value)
    assert not dest.exists()  # nothing of the refused release appears
    last = audit_entries(audit.path)[-1]
    assert (last["action"], last["decision"], last["subject"]) == (
        "pull", "fail", f"{NAME}@production",
    )  # fmt: skip
    assert last["details"]["error"] == str(exc.value)


# --- the alias record: edited, copied, replayed, unsigned ------------------------------------


@pytest.mark.parametrize("target", ["failed", "nogate", "v2"])
def test_an_edited_production_record_is_refused_naming_the_link(
    registry_uri, releases, pki, policy, audit, tmp_path, target
):
    """The intruder repoints production at a failed-gate, an ungated, or another (passed)
    version by editing the record's listed fields; the signed move still names v1."""
    registry = open_with(registry_uri, releases, pki, audit, ("v1", "v2", "failed", "nogate"))
    promote(registry, pki, policy, audit, "v1")
    assert pull(registry, pki, policy, audit, tmp_path / "before").move.version == "v1"

    record = json.loads(read_alias_bytes(registry_uri, "production"))
    record.update(version=target, weights_sha256=digest(releases[target]))
    write_alias_bytes(registry_uri, "production", json.dumps(record).encode())
    assert registry.resolve(NAME, "production")[0] == target  # the listing is fooled...

    with pytest.raises(ChainBroken) as refused:  # ...the consumer is not
        pull(registry, pki, policy, audit, tmp_path / "prod")
    assert_refused_and_audited(
        refused, audit, "alias record",
        "version, weights_sha256 differ from what the approver signed: the record was edited",
        tmp_path / "prod",
    )  # fmt: skip


def test_an_edited_signed_payload_fails_the_approvers_signature(
    registry_uri, releases, pki, policy, audit, tmp_path
):
    """The intruder edits the signed payload too, keeping the approver's signature."""
    registry = open_with(registry_uri, releases, pki, audit, ("v1", "failed"))
    promote(registry, pki, policy, audit, "v1")
    record = json.loads(read_alias_bytes(registry_uri, "production"))
    statement = json.loads(base64.b64decode(record["envelope"]["payload"]))
    statement["predicate"].update(version="failed", weights_sha256=digest(releases["failed"]))
    statement["subject"][0]["digest"]["sha256"] = digest(releases["failed"])
    record["envelope"]["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    record.update(version="failed", weights_sha256=digest(releases["failed"]))
    write_alias_bytes(registry_uri, "production", json.dumps(record).encode())
    with pytest.raises(ChainBroken) as refused:
        pull(registry, pki, policy, audit, tmp_path / "prod")
    assert_refused_and_audited(
        refused, audit, "alias record", f"bad signature by trusted key {pki['approver'].id}",
        tmp_path / "prod",
    )  # fmt: skip


@pytest.mark.parametrize(
    ("source", "message"),
    [
        # Another model's production record: the approver's signature, for another alias.
        ("pds-canary@production", "holds a move signed for pds-canary@production: copied"),
        # This model's staging record: signed by the gate key, which cannot approve production.
        ("pds@staging", "a gate key; only an approver key may sign it"),
    ],
)
def test_a_signed_record_copied_from_another_alias_is_refused(
    registry_uri, releases, pki, policy, audit, tmp_path, source, message
):
    registry = open_with(registry_uri, releases, pki, audit, ("v1", "v2"))
    registry.push(releases["v2"], "pds-canary", "v2", pki.keyring, audit)
    promote(registry, pki, policy, audit, "v1")
    registry.promote("pds-canary", "v2", "production", pki.keyring, audit,
                     key=pki["approver"].key, policy=policy)  # fmt: skip
    promote(registry, pki, policy, audit, "v2", alias="staging")
    name, alias = source.split("@")
    write_alias_bytes(registry_uri, "production", read_alias_bytes(registry_uri, alias, name))
    assert registry.resolve(NAME, "production")[0] == "v2"
    with pytest.raises(ChainBroken) as refused:
        pull(registry, pki, policy, audit, tmp_path / "prod")
    assert_refused_and_audited(refused, audit, "alias record", message, tmp_path / "prod")


def test_a_replayed_older_signed_record_is_refused_once_a_newer_one_was_seen(
    registry_uri, releases, pki, policy, audit, tmp_path
):
    registry = open_with(registry_uri, releases, pki, audit, ("v1", "v2"))
    promote(registry, pki, policy, audit, "v1")
    first = read_alias_bytes(registry_uri, "production")  # a genuine record, signed, sequence 1
    promote(registry, pki, policy, audit, "v2")
    state = SequenceState(tmp_path / "trust" / "alias-sequences.json")
    seen = pull(registry, pki, policy, audit, tmp_path / "current", state=state)
    assert (seen.move.version, seen.move.sequence) == ("v2", 2)

    write_alias_bytes(registry_uri, "production", first)  # the intruder puts the old one back
    for consumer in (state, SequenceState(state.path)):  # this one, and another sharing the file
        with pytest.raises(ChainBroken) as refused:
            pull(registry, pki, policy, audit, tmp_path / "prod", state=consumer)
        assert_refused_and_audited(
            refused, audit, "alias record",
            "sequence 1 is lower than 2, already accepted here: a replayed older record",
            tmp_path / "prod",
        )  # fmt: skip
    assert state.highest(registry.uri, NAME, "production") == 2  # the refusal changed nothing


def test_a_move_signed_over_a_replayed_record_forks_and_the_consumer_refuses_it(
    tmp_path, releases, pki, policy, audit
):
    """An approver without memory of the sequences signs over a replayed record: the new move
    reuses a sequence a consumer already accepted for another move. With its state, the
    approver signs above the replay and the consumer follows."""
    registry = open_with(tmp_path / "registry", releases, pki, audit, ("v1", "v2", "v3"))
    uri = registry.uri
    promote(registry, pki, policy, audit, "v1")
    first = read_alias_bytes(uri, "production")
    approver = SequenceState(tmp_path / "approver.json")
    promote(registry, pki, policy, audit, "v2", state=approver)
    consumer = SequenceState(tmp_path / "consumer.json")
    assert pull(registry, pki, policy, audit, tmp_path / "v2", state=consumer).move.sequence == 2

    write_alias_bytes(uri, "production", first)
    forked = promote(registry, pki, policy, audit, "v3")  # no state: sequence 1 + 1
    assert forked["generation"] == 2
    with pytest.raises(ChainBroken) as refused:
        pull(registry, pki, policy, audit, tmp_path / "prod", state=consumer)
    assert_refused_and_audited(
        refused, audit, "alias record", "sequence 2 names another move than the one accepted",
        tmp_path / "prod",
    )  # fmt: skip

    write_alias_bytes(uri, "production", first)
    moved = promote(registry, pki, policy, audit, "v3", state=approver)
    assert moved["generation"] == 3
    assert "replayed older record" in audit_entries(audit.path)[-1]["details"]["replaces_replayed"]
    followed = pull(registry, pki, policy, audit, tmp_path / "v3", state=consumer)
    assert (followed.move.version, followed.move.sequence) == ("v3", 3)


def test_a_fresh_consumer_trusts_the_first_signed_record_it_sees_trust_on_first_use(
    registry_uri, releases, pki, policy, audit, tmp_path
):
    """Documented limit: with no memory of a newer sequence, a replayed genuine record is
    accepted (it is still signed and its whole chain holds, so only a once-approved release)."""
    registry = open_with(registry_uri, releases, pki, audit, ("v1", "v2"))
    promote(registry, pki, policy, audit, "v1")
    first = read_alias_bytes(registry_uri, "production")
    promote(registry, pki, policy, audit, "v2")
    write_alias_bytes(registry_uri, "production", first)
    for state in (None, SequenceState(tmp_path / "new-consumer.json")):
        old = pull(registry, pki, policy, audit, tmp_path / f"prod-{state is None}", state=state)
        assert (old.move.version, old.move.sequence) == ("v1", 1)


def test_an_unsigned_alias_record_is_refused_and_only_a_promotion_replaces_it(
    registry_uri, releases, pki, policy, audit, tmp_path
):
    registry = open_with(registry_uri, releases, pki, audit, ("v1", "v2"))
    promote(registry, pki, policy, audit, "v1")
    record = json.loads(read_alias_bytes(registry_uri, "production"))
    del record["envelope"]
    write_alias_bytes(registry_uri, "production", json.dumps({**record, "version": "v2"}).encode())
    with pytest.raises(ChainBroken) as refused:
        pull(registry, pki, policy, audit, tmp_path / "prod")
    assert_refused_and_audited(
        refused, audit, "alias record",
        "pds@production is unsigned; only a signed move is followed", tmp_path / "prod",
    )  # fmt: skip
    # A rollback follows the signed history, and there is none to follow here.
    with pytest.raises(ChainBroken, match=r"unsigned.*promote a version explicitly instead"):
        registry.rollback(NAME, "production", pki.keyring, audit, key=pki["approver"].key,
                          policy=policy)  # fmt: skip
    promote(registry, pki, policy, audit, "v2")
    assert audit_entries(audit.path)[-1]["details"]["replaces_unverified"]
    assert pull(registry, pki, policy, audit, tmp_path / "fixed").move.version == "v2"


def test_a_signed_rollback_is_a_forward_move_that_consumers_follow(
    registry_uri, releases, pki, policy, audit, tmp_path
):
    registry = open_with(registry_uri, releases, pki, audit, ("v1", "v2"))
    state = SequenceState(tmp_path / "alias-sequences.json")
    promote(registry, pki, policy, audit, "v1")
    promote(registry, pki, policy, audit, "v2")
    assert pull(registry, pki, policy, audit, tmp_path / "v2", state=state).move.sequence == 2
    with pytest.raises(IntegrityError, match="a gate key; only an approver key may sign it"):
        registry.rollback(NAME, "production", pki.keyring, audit, key=pki["gate"].key,
                          policy=policy)  # fmt: skip
    back = registry.rollback(NAME, "production", pki.keyring, audit, key=pki["approver"].key,
                             policy=policy)  # fmt: skip
    assert (back["version"], back["generation"]) == ("v1", 3)
    followed = pull(registry, pki, policy, audit, tmp_path / "v1", state=state)
    assert (followed.move.version, followed.move.kind, followed.move.sequence) == (
        "v1", "rollback", 3,
    )  # fmt: skip
    assert followed.move.signer == pki["approver"].id and followed.move.previous == ()
    assert followed.model.weights_sha256 == digest(releases["v1"])
    assert state.highest(registry.uri, NAME, "production") == 3


def test_a_version_swapped_for_another_signed_release_is_refused_at_the_alias_record(
    tmp_path, releases, pki, policy, audit
):
    """The intruder leaves the alias alone and replaces the version it names with another
    signed, gated release (files and version record): the signed move names other weights."""
    import shutil

    from secmlops.registry.store import VERSION_RECORD

    registry = open_with(tmp_path / "registry", releases, pki, audit, ("v1", "v2"))
    promote(registry, pki, policy, audit, "v1")
    versions = tmp_path / "registry" / "models" / NAME / "versions"
    shutil.rmtree(versions / "v1")
    shutil.copytree(versions / "v2", versions / "v1")
    record = json.loads((versions / "v1" / VERSION_RECORD).read_text())
    (versions / "v1" / VERSION_RECORD).write_text(json.dumps({**record, "version": "v1"}))
    assert registry.show(NAME, "v1")["weights_sha256"] == digest(releases["v2"])
    with pytest.raises(ChainBroken) as refused:
        pull(registry, pki, policy, audit, tmp_path / "prod")
    assert_refused_and_audited(
        refused, audit, "alias record", f"it names weights {digest(releases['v1'])[:16]}...",
        tmp_path / "prod",
    )  # fmt: skip


# --- role misuse: a key of one role acting in another ---------------------------------------


@pytest.mark.parametrize(
    ("role", "message"),
    [
        ("gate", "signed by {kid}, a gate key; only an approver key may sign it"),
        ("trainer", "signed by {kid}, a trainer key; only an approver key may sign it"),
        ("data_owner", "signed by {kid}, a data_owner key; only an approver key may sign it"),
        ("rogue", "key {kid} is not a trusted key; it cannot sign as approver"),
    ],
)
def test_only_an_approver_key_moves_production(
    tmp_path, releases, pki, policy, audit, role, message
):
    registry = open_with(tmp_path / "registry", releases, pki, audit, ("v1",))
    with pytest.raises(IntegrityError) as refused:
        registry.promote(NAME, "v1", "production", pki.keyring, audit, key=pki[role].key,
                         policy=policy)  # fmt: skip
    assert f"moving {NAME}@production: " + message.format(kid=pki[role].id) in str(refused.value)
    assert registry.aliases(NAME) == {}
    last = audit_entries(audit.path)[-1]
    assert (last["action"], last["decision"]) == ("promote", "fail")


def test_the_gate_key_moves_staging_and_the_approver_key_does_not(
    tmp_path, releases, pki, policy, audit
):
    registry = open_with(tmp_path / "registry", releases, pki, audit, ("v1",))
    with pytest.raises(IntegrityError, match=r"an? approver key; only a gate key may sign it"):
        registry.promote(NAME, "v1", "staging", pki.keyring, audit, key=pki["approver"].key,
                         policy=policy)  # fmt: skip
    record = registry.promote(NAME, "v1", "staging", pki.keyring, audit, key=pki["gate"].key,
                              policy=policy)  # fmt: skip
    assert signed_move(record)["alias"] == "staging"
    staged = registry.pull(NAME, "staging", tmp_path / "staged", pki.keyring, policy, audit=audit)
    assert staged.move.signer == pki["gate"].id


@pytest.mark.parametrize(
    ("label", "link", "messages"),
    [
        ("wrongrolegate", "gate record", ["a data_owner key; only a gate key may sign it"]),
        ("nodata", "dataset", ["dataset's manifest", "a trainer key; only a data_owner key"]),
        ("unsourced", "dataset", ["the provenance names no verified dataset manifest"]),
    ],
)
def test_a_release_signed_in_the_wrong_role_is_refused_at_promotion_and_pull(
    tmp_path, releases, pki, policy, audit, label, link, messages
):
    """Pushed fine (the trainer signed the provenance), but a link further down is signed by a
    key of another role, or missing: neither promotion nor a pull by version accepts it."""
    registry = open_with(tmp_path / "registry", releases, pki, audit, (label,))
    with pytest.raises(ChainBroken) as refused:
        promote(registry, pki, policy, audit, label)
    with pytest.raises(ChainBroken) as pulled:
        registry.pull(NAME, label, tmp_path / "pulled", pki.keyring, policy, audit=audit)
    for exc in (refused, pulled):
        assert exc.value.link == link
        assert str(exc.value).startswith(f"trust chain broken at the {link}: ")
        assert all(m in str(exc.value) for m in messages), str(exc.value)
    assert registry.aliases(NAME) == {} and not (tmp_path / "pulled").exists()
    assert [e["decision"] for e in audit_entries(audit.path)] == ["pass", "fail", "fail"]


def plant_version(registry: Registry, model_dir: Path, version: str) -> None:
    """Write a version into the store as an intruder with write access would: files and a
    version record, without `push` (which verifies the provenance first)."""
    from secmlops.fsutil import sha256_file

    files = {p.name: {"sha256": sha256_file(p), "size": p.stat().st_size}
             for p in sorted(model_dir.iterdir())}  # fmt: skip
    record = {
        "schema": VERSION_SCHEMA, "name": NAME, "version": version, "files": files,
        "weights_sha256": read_card(model_dir).weights_sha256, "signer": "ed25519:" + "0" * 32,
        "gate_record": True, "pushed_at": "2024-01-01T00:00:00+00:00", "pushed_by": "ci",
    }  # fmt: skip
    registry.store.commit_version(NAME, version, model_dir, record)


def test_a_model_signed_by_the_gate_key_is_refused_at_the_provenance_even_if_planted(
    registry_uri, releases, pki, policy, audit, tmp_path
):
    """`push` refuses it (test_registry.py); an intruder writes it into the store directly."""
    registry = Registry.open(registry_uri, s3_endpoint_setting())
    plant_version(registry, releases["wrongrolemodel"], "planted")
    assert [r["version"] for r in registry.list(NAME)] == ["planted"]
    with pytest.raises(ChainBroken) as refused:
        promote(registry, pki, policy, audit, "planted")
    with pytest.raises(ChainBroken) as pulled:
        registry.pull(NAME, "planted", tmp_path / "pulled", pki.keyring, policy, audit=audit)
    for exc in (refused, pulled):
        assert exc.value.link == "provenance"
        assert "a gate key; only a trainer key may sign it" in str(exc.value)
    assert registry.aliases(NAME) == {} and not (tmp_path / "pulled").exists()


def test_a_keyring_without_roles_refuses_everything(tmp_path, releases, pki, policy, audit):
    """Fail closed: trusted keys whose roles nobody configured verify nothing."""
    registry = open_with(tmp_path / "registry", releases, pki, audit, ("v1",))
    with pytest.raises(ChainBroken, match="no key roles configured") as refused:
        registry.pull(NAME, "v1", tmp_path / "pulled", pki.trusted_keyring(), policy, audit=audit)
    assert refused.value.link == "provenance"


# --- the gate record: still valid, and made under the policy in force -------------------------


def test_a_gate_record_is_refused_for_promotion_after_it_expired(
    tmp_path, releases, pki, policy, audit, monkeypatch
):
    registry = open_with(tmp_path / "registry", releases, pki, audit, ("v1",))
    fetched = registry.pull(NAME, "v1", tmp_path / "v1", pki.keyring, policy, audit=audit)
    now = datetime.now(UTC)
    validity = timedelta(days=GATE["record_validity_days"])
    assert datetime.fromisoformat(fetched.gate["valid_until"]) - now <= validity
    chain = {"registry_weights": digest(releases["v1"])}
    assert verify_chain(tmp_path / "v1", pki.keyring, policy, promoting_at=now, **chain).gate
    with pytest.raises(ChainBroken, match=r"expired at .*: re-run the gate") as expired:
        verify_chain(tmp_path / "v1", pki.keyring, policy,
                     promoting_at=now + validity + timedelta(days=1), **chain)  # fmt: skip
    assert expired.value.link == "gate record"

    class Later(datetime):  # the registry's clock, 15 days on: the same record, now expired
        @classmethod
        def now(cls, tz=None):
            return datetime.now(tz) + validity + timedelta(days=1)

    monkeypatch.setattr("secmlops.registry.datetime", Later)
    with pytest.raises(ChainBroken, match="gate record: expired at"):
        promote(registry, pki, policy, audit, "v1")
    assert registry.aliases(NAME) == {}
    monkeypatch.undo()
    promote(registry, pki, policy, audit, "v1")  # at the real time it is still valid
    assert registry.aliases(NAME)["production"]["version"] == "v1"


def test_a_gate_record_made_under_another_policy_needs_a_written_exception(
    tmp_path, releases, pki, policy, other_policy, audit
):
    registry = open_with(tmp_path / "registry", releases, pki, audit, ("v1",))
    with pytest.raises(ChainBroken, match="not the policy in force") as refused:
        promote(registry, pki, other_policy, audit, "v1")
    assert refused.value.link == "gate record"
    assert registry.aliases(NAME) == {}

    reason = "threshold lowered after review; v1 was gated under the stricter floor"
    record = promote(registry, pki, other_policy, audit, "v1", policy_exception=reason)
    move = signed_move(record)
    assert move["policy_exception"] == reason  # signed into the move, by the approver
    assert move["policy_digest"] == policy_digest(policy) != policy_digest(other_policy)
    assert audit_entries(audit.path)[-1]["details"]["policy_exception"] == reason
    # A consumer under the new policy follows it: the approver accepted the exception.
    followed = pull(registry, pki, other_policy, audit, tmp_path / "prod")
    assert followed.move.policy_exception == reason


def test_a_consumer_under_a_newer_policy_refuses_a_move_without_an_exception(
    tmp_path, releases, pki, policy, other_policy, audit
):
    registry = open_with(tmp_path / "registry", releases, pki, audit, ("v1",))
    promote(registry, pki, policy, audit, "v1")
    assert pull(registry, pki, policy, audit, tmp_path / "prod").move.policy_exception is None
    with pytest.raises(ChainBroken) as refused:
        pull(registry, pki, other_policy, audit, tmp_path / "new-policy")
    assert_refused_and_audited(
        refused, audit, "gate record", "the approver accepted no exception",
        tmp_path / "new-policy",
    )  # fmt: skip


def test_a_gate_record_made_with_an_audited_override_promotes_under_the_base_policy(
    tmp_path, releases, pki, policy, other_policy, audit
):
    registry = open_with(tmp_path / "registry", releases, pki, audit, ("override",))
    gate = registry.pull(NAME, "override", tmp_path / "o", pki.keyring, policy, audit=None).gate
    assert [(o["path"], o["new"], o["reason"]) for o in gate["overrides"]] == [OVERRIDE]
    assert gate["policy_digest"] != policy_digest(policy)  # the override changed the policy...
    assert gate_policy_is_current(gate, policy)  # ...and replaying it on the base gives it back
    assert not gate_policy_is_current(gate, other_policy)
    record = promote(registry, pki, policy, audit, "override")
    assert signed_move(record)["policy_exception"] is None  # no exception was needed
    assert pull(registry, pki, policy, audit, tmp_path / "prod").move.version == "override"
    with pytest.raises(ChainBroken, match="not the policy in force"):
        promote(registry, pki, other_policy, audit, "override", alias="staging")


def test_after_a_policy_change_the_approver_re_approves_the_running_version_in_place(
    tmp_path, releases, pki, policy, other_policy, audit
):
    """A policy change must not strand production: the approver signs the same version again
    with a written exception (a new, higher move); without one it stays a refused no-op."""
    registry = open_with(tmp_path / "registry", releases, pki, audit, ("v1",))
    promote(registry, pki, policy, audit, "v1")
    with pytest.raises(RegistryError, match="already points at v1"):
        promote(registry, pki, other_policy, audit, "v1")
    record = promote(registry, pki, other_policy, audit, "v1", policy_exception="new policy")
    assert record["generation"] == 2 and record["previous"] == []
    followed = pull(registry, pki, other_policy, audit, tmp_path / "prod")
    assert (followed.move.version, followed.move.policy_exception) == ("v1", "new policy")


def test_a_deleted_production_alias_is_not_mistaken_for_no_production(
    tmp_path, releases, pki, policy, audit
):
    """An intruder who deletes the alias would make the next run's gate skip its regression
    check against production; a consumer that accepted a production move refuses instead."""
    from secmlops.lifecycle import evaluate_production
    from secmlops.registry.trust_chain import SequenceState
    from secmlops.settings import Settings

    registry = open_with((tmp_path / "registry").as_uri(), releases, pki, audit, ("v1",))
    state_file = tmp_path / "trust.json"
    promote(registry, pki, policy, audit, "v1", state=SequenceState(state_file))
    settings = Settings.from_env({
        "SECMLOPS_WORKDIR": str(tmp_path), "SECMLOPS_REGISTRY": registry.uri,
        "SECMLOPS_MODEL_NAME": NAME, "SECMLOPS_TRUST_STATE": str(state_file),
    })  # fmt: skip
    (tmp_path / "registry" / "models" / NAME / "aliases" / "production.json").unlink()
    with pytest.raises(ChainBroken, match="the alias was deleted from the store"):
        evaluate_production(settings, {}, {"rev": "data/street/v1"}, "run-1")  # type: ignore[arg-type]
    # A consumer that never saw production (a new installation) cannot tell: no production yet.
    fresh = Settings.from_env({
        "SECMLOPS_WORKDIR": str(tmp_path), "SECMLOPS_REGISTRY": registry.uri,
        "SECMLOPS_MODEL_NAME": NAME, "SECMLOPS_TRUST_STATE": str(tmp_path / "none.json"),
    })  # fmt: skip
    no_production = evaluate_production(fresh, {}, {"rev": "data/street/v1"}, "run-1")  # type: ignore[arg-type]
    assert no_production is None


def test_a_release_served_at_another_threshold_than_gated_is_refused(
    releases, pki, policy, tmp_path
):
    """A trainer who lowers the threshold in model.json after the gate (more people found,
    far more false alarms) signs a valid provenance, but not the threshold the gate judged."""
    from secmlops.fsutil import atomic_write_json

    release = copy_release(releases["v1"], tmp_path / "v1")
    card = json.loads((release / "model.json").read_text())
    card["operating_point"]["score_threshold"] = 0.05
    atomic_write_json(release / "model.json", card)
    sign_release(release, pki["trainer"].key, pki["data_owner"].id, release / "gate-record.json")
    with pytest.raises(ChainBroken) as refused:
        verify_chain(
            release, pki.keyring, policy, registry_weights=read_card(release).weights_sha256
        )
    assert refused.value.link == "gate record"
    assert "judged the model at score threshold 0.41; model.json serves at score >= 0.05" in str(
        refused.value
    )
    verify_chain(releases["v1"], pki.keyring, policy, registry_weights=digest(releases["v1"]))
