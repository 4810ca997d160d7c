"""Fixtures shared by the gate's library and CLI tests."""

import pytest

from .test_gate import write_policy, write_report
from .test_gate_checks import passing_report


@pytest.fixture
def setup(tmp_path, monkeypatch, pki):
    """A report, a policy file with GATE whose roles pin the test keys, the gate's key, the
    deployment's keyring (roles bound), and paths to write. The environment trusts the four
    role keys and names no private key, as a deployment whose gate key is passed explicitly."""
    monkeypatch.delenv("SECMLOPS_KEY_PASSPHRASE", raising=False)
    for role in ("trainer", "gate", "approver"):
        monkeypatch.delenv(f"SECMLOPS_{role.upper()}_KEY", raising=False)
    monkeypatch.delenv("SECMLOPS_POLICY", raising=False)
    monkeypatch.setenv("SECMLOPS_TRUSTED_KEYS", pki.trusted_keys)
    return {
        "report": write_report(tmp_path / "eval" / "robustness.json", passing_report()),
        "policy": write_policy(tmp_path / "policy.yaml", roles=pki.roles),
        "roles": pki.roles,
        "key": pki["gate"].private,
        "keyring": pki.keyring,
        "audit": tmp_path / "audit.jsonl",
        "record": tmp_path / "eval" / "gate-record.json",
    }
