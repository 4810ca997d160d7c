"""Two processes race on one registry (a folder, and S3): exactly one push and one promote win."""

from __future__ import annotations

import json
import multiprocessing
import os

from secmlops.audit import AuditLog
from secmlops.registry import Registry

from .conftest import NAME, audit_entries, read_alias_bytes, s3_endpoint_setting
from .race_worker import race


def test_two_processes_race_to_push_and_promote(registry_uri, releases, pki, policy_path, tmp_path):
    """Both racers start each step at a barrier; both expect production at v1.

    On S3 this runs against moto's real HTTP server, which honours `If-None-Match: *` and
    `If-Match` but checks them without a lock across its request threads (a tiny window AWS and
    MinIO do not have); 1,600 concurrent create-only writes to 200 keys all resolved to exactly
    one winner when this was checked, so the window does not make this test flaky in practice.
    """
    from secmlops.policy import load_policy

    registry, keys = Registry.open(registry_uri, s3_endpoint_setting()), pki.keyring
    policy = load_policy(policy_path)
    setup_audit = AuditLog(tmp_path / "setup-audit.jsonl")
    for version in ("v1", "v2", "v3"):
        registry.push(releases[version], NAME, version, keys, setup_audit)
    registry.promote(NAME, "v1", "production", keys, setup_audit,
                     key=pki["approver"].key, policy=policy)  # fmt: skip
    audit_path = tmp_path / "audit.jsonl"

    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(2), context.Queue()
    trust = {
        "public_keys": [str(pki[role].public) for role in pki.roles],
        "roles": pki.roles,
        "approver_key": str(pki["approver"].private),
        "policy": str(policy_path),
    }
    racers = [
        context.Process(
            target=race,
            args=(registry_uri, str(releases[v]), v, trust, str(audit_path), barrier, results),
        )
        for v in ("v2", "v3")
    ]
    for racer in racers:
        racer.start()
    outcomes = [results.get(timeout=300) for _ in range(4)]
    for racer in racers:
        racer.join(timeout=60)
        assert racer.exitcode == 0
    print("race outcomes:", *outcomes, sep="\n  ")

    for step in ("push", "promote"):
        got = sorted((o[2], o[1]) for o in outcomes if o[0] == step)
        assert [g[0] for g in got] == ["conflict", "won"], got
    push_winner = next(o[1] for o in outcomes if o[:3:2] == ("push", "won"))
    promote_winner = next(o[1] for o in outcomes if o[:3:2] == ("promote", "won"))
    loser_message = next(o[3] for o in outcomes if o[:3:2] == ("promote", "conflict"))
    assert "alias production" in loser_message and promote_winner in loser_message

    # The alias is whole, valid JSON naming the winner; the "rc" version holds one push's bytes.
    alias = json.loads(read_alias_bytes(registry_uri, "production"))
    assert (alias["version"], alias["previous"], alias["generation"]) == (promote_winner, ["v1"], 2)
    winner_digest = registry.show(NAME, promote_winner)["weights_sha256"]
    assert alias["weights_sha256"] == winner_digest
    rc = registry.pull(NAME, "rc", tmp_path / "rc", keys, policy, audit=None)
    assert rc.model.weights_sha256 == registry.show(NAME, push_winner)["weights_sha256"]
    # The winner's signed move is what a consumer follows: it verifies, sequence 2.
    prod = registry.pull(NAME, "production", tmp_path / "prod", keys, policy, audit=None)
    assert (prod.move.version, prod.move.sequence) == (promote_winner, 2)
    assert os.listdir(tmp_path / "rc")

    entries = audit_entries(audit_path)  # both processes appended to one chain; it verifies
    seen = sorted(
        (e["action"], e["decision"], e["details"].get("conflict", False)) for e in entries
    )
    assert seen == [("promote", "fail", True), ("promote", "pass", False),
                    ("push", "fail", True), ("push", "pass", False)]  # fmt: skip
