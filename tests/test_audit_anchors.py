"""Audit anchors: a signed head in the registry lets `secmlops audit verify` catch a cut-off tail
or a rewritten chain with no anchor kept by hand; an untouched, grown log still verifies.

The attacker may rewrite the audit log file and write the registry as they like (and knows how
the log's hashes are made: SHA-256 over sorted, compact JSON), but holds no trusted key, or one
key of a role that never anchors the log (trainer, data owner): anchors are signed by the roles
that move aliases (gate, approver).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from secmlops.audit import AuditLog
from secmlops.audit_anchors import latest_anchor, write_anchor
from secmlops.cli import EXIT_USER_ERROR, app
from secmlops.registry import Registry


@pytest.fixture
def anchored(tmp_path: Path, pki) -> dict:
    """A log of 6 entries whose head (seq 6) is anchored by the approver (as a promotion to
    production does), then 2 more entries appended."""
    registry = Registry.open(tmp_path / "registry")
    audit = AuditLog(tmp_path / "audit.jsonl", actor="tester")
    for i in range(6):
        audit.append("deployment", "promote", "pass", f"pds@v{i}", {"i": i})
    anchor = write_anchor(registry, audit, pki["approver"].key)
    for i in range(2):
        audit.append("monitoring", "check_window", "info", "pds", {"i": i})
    env = {"SECMLOPS_AUDIT_LOG": str(audit.path), "SECMLOPS_REGISTRY": registry.store.uri,
           "SECMLOPS_TRUSTED_KEYS": pki.trusted_keys,
           "SECMLOPS_POLICY": str(pki.write_policy(tmp_path / "policy.yaml"))}  # fmt: skip
    return {"audit": audit, "registry": registry, "anchor": anchor, "env": env, "tmp": tmp_path}


def verify(env: dict) -> object:
    return CliRunner().invoke(app, ["audit", "verify"], env=env)


def rehash(lines: list[str], start: int) -> list[str]:
    """What an attacker does after editing line `start`: recompute every hash and link after it."""
    out = lines[:start]
    prev = json.loads(out[-1])["hash"] if out else "0" * 64
    for line in lines[start:]:
        entry = json.loads(line)
        entry["prev"] = prev
        body = {k: v for k, v in entry.items() if k != "hash"}
        entry["hash"] = hashlib.sha256(
            json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
        ).hexdigest()
        prev = entry["hash"]
        out.append(json.dumps(entry, sort_keys=True, separators=(",", ":")) + "\n")
    return out


def test_an_untouched_log_that_grew_after_its_anchor_verifies(anchored):
    result = verify(anchored["env"])
    assert result.exit_code == 0, result.output
    assert "8 entries, hash chain intact, anchored at seq 6" in result.output


def test_cutting_off_the_tail_is_caught_without_a_hand_kept_anchor(anchored):
    path = anchored["audit"].path
    path.write_text("".join(path.read_text().splitlines(keepends=True)[:4]))
    result = verify(anchored["env"])
    assert result.exit_code == EXIT_USER_ERROR
    assert "the log ends at seq 4" in result.output and "tail truncation" in result.output


def test_a_chain_rewritten_from_some_entry_on_is_caught(anchored):
    path = anchored["audit"].path
    lines = path.read_text().splitlines(keepends=True)
    entry = json.loads(lines[2])
    entry["decision"] = "fail"  # hide that seq 3 passed: edit it and re-hash everything after
    lines[2] = json.dumps(entry, sort_keys=True, separators=(",", ":")) + "\n"
    path.write_text("".join(rehash(lines, 2)))
    from secmlops.audit import verify_audit_log

    assert verify_audit_log(path) == 8  # the rewritten chain is internally consistent
    result = verify(anchored["env"])
    assert result.exit_code == EXIT_USER_ERROR
    assert "entry 6 has another hash: the chain was rewritten" in result.output


def test_a_non_canonical_line_is_caught_by_the_cli(anchored):
    path = anchored["audit"].path
    lines = path.read_text().splitlines(keepends=True)
    lines[1] = json.dumps(json.loads(lines[1]), sort_keys=True) + "\n"  # spaces after separators
    path.write_text("".join(lines))
    result = verify(anchored["env"])
    assert result.exit_code == EXIT_USER_ERROR and "not canonical JSON" in result.output


def plant_anchor(anchored: dict, key) -> None:
    """Registry write access lets the attacker add an anchor of a rewritten log (9 entries)."""
    fake_log = AuditLog(anchored["tmp"] / "fake.jsonl")
    for i in range(9):
        fake_log.append("data", "x", "info", "s", {"i": i})
    write_anchor(anchored["registry"], fake_log, key)


def test_a_planted_anchor_from_an_untrusted_key_is_passed_over(anchored, pki):
    """The planted anchor is not signed by a trusted key, so the real one still judges the log."""
    plant_anchor(anchored, pki["rogue"].key)
    anchor, skipped = latest_anchor(anchored["registry"], pki.keyring)
    assert anchor is not None and anchor.seq == 6
    assert len(skipped) == 1 and "000000000009" in skipped[0]
    assert f"untrusted key {pki['rogue'].id}" in skipped[0]
    result = verify(anchored["env"])
    assert result.exit_code == 0 and "anchored at seq 6" in result.output
    assert "warning: anchor passed over" in result.output


@pytest.mark.parametrize("role", ["trainer", "data_owner"])
def test_a_planted_anchor_from_a_key_of_a_role_that_moves_no_alias_is_passed_over(
    anchored, pki, role
):
    """The attacker holds one trusted key, of a role that never anchors (the trainer's, the
    data owner's): their anchor of a rewritten log is not trusted as an anchor."""
    plant_anchor(anchored, pki[role].key)
    anchor, skipped = latest_anchor(anchored["registry"], pki.keyring)
    assert anchor is not None and anchor.seq == 6 and anchor.signer == pki["approver"].id
    (reason,) = skipped
    assert "000000000009" in reason
    assert f"audit anchor: signed by {pki[role].id}, a {role} key" in reason
    assert "only a gate or approver key may sign it" in reason
    result = verify(anchored["env"])
    assert result.exit_code == 0 and "anchored at seq 6" in result.output
    assert "warning: anchor passed over" in result.output


@pytest.mark.parametrize("role", ["gate", "approver"])
def test_an_anchor_by_a_role_that_moves_aliases_is_used(anchored, pki, role):
    """The good twin: the real log's newer head anchored by the gate (a staging move) or the
    approver (a production move) is the anchor that judges the log."""
    write_anchor(anchored["registry"], anchored["audit"], pki[role].key)
    anchor, skipped = latest_anchor(anchored["registry"], pki.keyring)
    assert anchor is not None and anchor.seq == 8 and anchor.signer == pki[role].id
    assert skipped == []
    result = verify(anchored["env"])
    assert result.exit_code == 0, result.output
    assert "8 entries, hash chain intact, anchored at seq 8" in result.output


def test_a_keyring_without_roles_trusts_no_anchor(anchored, pki):
    anchor, skipped = latest_anchor(anchored["registry"], pki.trusted_keyring())
    assert anchor is None
    (reason,) = skipped
    assert "no key roles configured" in reason


def test_anchors_are_write_once_on_s3(s3_bucket, tmp_path, pki):
    endpoint, bucket = s3_bucket
    registry = Registry.open(f"s3://{bucket}/team/registry", endpoint)
    audit = AuditLog(tmp_path / "audit.jsonl")
    audit.append("deployment", "promote", "pass", "pds@v1")
    first = write_anchor(registry, audit, pki["approver"].key)
    assert write_anchor(registry, audit, pki["approver"].key) is not None  # same head: kept
    assert registry.store.list_anchors() == [first.name]
    anchor, skipped = latest_anchor(registry, pki.keyring)
    assert anchor is not None and anchor.seq == 1 and skipped == []
