"""Audit anchors: a signed head in the registry lets `secmlops audit verify` catch a cut-off tail
or a rewritten chain with no anchor kept by hand; an untouched, grown log still verifies.

The attacker may rewrite the audit log file as they like (and knows how its hashes are made:
SHA-256 over sorted, compact JSON), but holds no trusted key.
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
from secmlops.supplychain.keys import Keyring, generate_keypair, load_private_key


@pytest.fixture
def anchored(tmp_path: Path) -> dict:
    """A log of 6 entries whose head (seq 6) is anchored, then 2 more entries appended."""
    key, pub = generate_keypair(tmp_path / "keys", "signer")
    registry = Registry.open(tmp_path / "registry")
    audit = AuditLog(tmp_path / "audit.jsonl", actor="tester")
    for i in range(6):
        audit.append("deployment", "promote", "pass", f"pds@v{i}", {"i": i})
    anchor = write_anchor(registry, audit, load_private_key(key))
    for i in range(2):
        audit.append("monitoring", "check_window", "info", "pds", {"i": i})
    env = {"SECMLOPS_AUDIT_LOG": str(audit.path), "SECMLOPS_REGISTRY": registry.store.uri,
           "SECMLOPS_TRUSTED_KEYS": str(pub)}  # fmt: skip
    return {"audit": audit, "registry": registry, "anchor": anchor, "env": env, "pub": pub,
            "tmp": tmp_path}  # fmt: skip


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


def test_a_planted_anchor_from_an_untrusted_key_is_passed_over(anchored):
    """Registry write access lets the attacker add an anchor of a shorter, rewritten log; it is
    not signed by a trusted key, so the real one still judges the log."""
    tmp = anchored["tmp"]
    rogue, _ = generate_keypair(tmp / "rogue", "rogue")
    fake_log = AuditLog(tmp / "fake.jsonl")
    for i in range(9):
        fake_log.append("data", "x", "info", "s", {"i": i})
    write_anchor(anchored["registry"], fake_log, load_private_key(rogue))
    anchor, skipped = latest_anchor(anchored["registry"], Keyring.from_paths([anchored["pub"]]))
    assert anchor is not None and anchor.seq == 6
    assert len(skipped) == 1 and "000000000009" in skipped[0]
    result = verify(anchored["env"])
    assert result.exit_code == 0 and "anchored at seq 6" in result.output
    assert "warning: anchor passed over" in result.output


def test_anchors_are_write_once_on_s3(s3_bucket, tmp_path):
    endpoint, bucket = s3_bucket
    key, pub = generate_keypair(tmp_path / "keys", "signer")
    registry = Registry.open(f"s3://{bucket}/team/registry", endpoint)
    audit = AuditLog(tmp_path / "audit.jsonl")
    audit.append("deployment", "promote", "pass", "pds@v1")
    first = write_anchor(registry, audit, load_private_key(key))
    assert write_anchor(registry, audit, load_private_key(key)) is not None  # same head: kept
    assert registry.store.list_anchors() == [first.name]
    anchor, skipped = latest_anchor(registry, Keyring.from_paths([pub]))
    assert anchor is not None and anchor.seq == 1 and skipped == []
