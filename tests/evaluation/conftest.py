"""Fixtures shared by the gate's library and CLI tests."""

import pytest

from secmlops.supplychain.keys import Keyring, generate_keypair

from .test_gate import write_policy, write_report
from .test_gate_checks import passing_report


@pytest.fixture
def setup(tmp_path, monkeypatch):
    """A report, a policy file with GATE, a signing key, its keyring, and paths to write."""
    monkeypatch.delenv("SECMLOPS_KEY_PASSPHRASE", raising=False)
    monkeypatch.delenv("SECMLOPS_SIGNING_KEY", raising=False)
    key, pub = generate_keypair(tmp_path / "keys", "gate")
    return {
        "report": write_report(tmp_path / "eval" / "robustness.json", passing_report()),
        "policy": write_policy(tmp_path / "policy.yaml"),
        "key": key,
        "keyring": Keyring.from_paths([pub]),
        "audit": tmp_path / "audit.jsonl",
        "record": tmp_path / "eval" / "gate-record.json",
    }
