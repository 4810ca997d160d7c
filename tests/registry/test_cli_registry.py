"""`secmlops registry ...`: the same operations from the command line, exit 2 on a refusal."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from secmlops.cli import EXIT_USER_ERROR, app
from secmlops.registry.trust_chain import SequenceState

from .conftest import NAME, audit_entries, read_alias_bytes, write_alias_bytes

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture
def deployment(pki, policy_path, tmp_path, monkeypatch):
    """The settings a deployment sets: trusted keys, the role keys, the policy, a workdir."""
    for variable, value in pki.env().items():
        monkeypatch.setenv(variable, value)
    monkeypatch.setenv("SECMLOPS_POLICY", str(policy_path))
    monkeypatch.setenv("SECMLOPS_WORKDIR", str(tmp_path / "work"))
    monkeypatch.setenv("SECMLOPS_REGISTRY", (tmp_path / "registry").as_uri())
    return tmp_path


def test_push_list_show_promote_pull_rollback(releases, pki, deployment):
    tmp_path = deployment
    audit = tmp_path / "audit.jsonl"
    for version in ("v1", "v2"):
        pushed = run("registry", "push", releases[version], "--name", NAME, "--version", version,
                     "--audit-log", audit)  # fmt: skip
        assert pushed.exit_code == 0, pushed.output
        assert f"pushed {NAME}@{version}" in pushed.output
    again = run("registry", "push", releases["v2"], "--name", NAME, "--version", "v1",
                "--audit-log", audit)  # fmt: skip
    assert again.exit_code == EXIT_USER_ERROR and "immutable" in again.output

    for version in ("v1", "v2"):
        moved = run("registry", "promote", NAME, version, "--alias", "production",
                    "--audit-log", audit)  # fmt: skip
        assert moved.exit_code == 0, moved.output
    assert "production -> v2 (was v1; sequence 2, signed as approver)" in moved.output
    assert "audit head anchored" in moved.output
    stale = run("registry", "promote", NAME, "v1", "--alias", "production",
                "--expect-current", "v1", "--audit-log", audit)  # fmt: skip
    assert stale.exit_code == EXIT_USER_ERROR and "not the expected v1" in stale.output

    listing = run("registry", "list", NAME)
    assert listing.exit_code == 0 and "v1" in listing.output and "production" in listing.output
    models = run("registry", "list")
    assert models.exit_code == 0 and "production -> v2" in models.output
    shown = run("registry", "show", NAME, "production")
    assert shown.exit_code == 0, shown.output
    assert "passed" in shown.output and "verified, signed by" in shown.output
    assert pki["trainer"].id in shown.output.replace("\n", "").replace("│", "")
    assert "model.safetensors" in shown.output

    pulled = run("registry", "pull", NAME, "production", "--to", tmp_path / "prod",
                 "--audit-log", audit)  # fmt: skip
    assert pulled.exit_code == 0, pulled.output
    card = json.loads((tmp_path / "prod" / "model.json").read_text())
    assert card["weights_sha256"] in pulled.output
    assert f"sequence 2, moved by {pki['approver'].id}" in pulled.output.replace("\n", "")
    # The accepted sequence is remembered in the installation's trust state.
    state = SequenceState(tmp_path / "work" / "trust" / "alias-sequences.json")
    assert state.highest((tmp_path / "registry").as_uri(), NAME, "production") == 2
    refused = run("registry", "pull", NAME, "v1", "--to", tmp_path / "prod", "--audit-log", audit)
    assert refused.exit_code == EXIT_USER_ERROR and "not empty" in refused.output

    back = run("registry", "rollback", NAME, "--alias", "production", "--audit-log", audit)
    assert back.exit_code == 0, back.output
    assert "rolled back to v1 (sequence 3)" in back.output
    assert [(e["action"], e["decision"]) for e in audit_entries(audit)] == [
        ("push", "pass"), ("push", "pass"), ("push", "fail"), ("promote", "pass"),
        ("promote", "pass"), ("promote", "fail"), ("pull", "pass"), ("pull", "fail"),
        ("rollback", "pass"),
    ]  # fmt: skip


def test_promote_without_a_gate_record_exits_2(releases, pki, policy_path, tmp_path, monkeypatch):
    """Keys and policy given as options, as a one-off operator command would."""
    registry = (tmp_path / "registry").as_uri()
    keys = ("--trusted-keys", pki["trainer"].public, "--trusted-keys", pki["gate"].public,
            "--trusted-keys", pki["approver"].public)  # fmt: skip
    audit = ("--audit-log", tmp_path / "audit.jsonl")
    monkeypatch.setenv("SECMLOPS_WORKDIR", str(tmp_path / "work"))  # trust state goes there
    monkeypatch.setenv("SECMLOPS_POLICY", str(policy_path))  # `registry push` has no --policy
    assert run("registry", "push", releases["nogate"], "--name", NAME, "--version", "n1",
               "--registry", registry, *keys, *audit).exit_code == 0  # fmt: skip
    # From here the settings' policy is the repository's (placeholder roles): only --policy
    # gives these keys their roles, so the refusal below is the gate's, not the approver's.
    monkeypatch.delenv("SECMLOPS_POLICY")
    result = run("registry", "promote", NAME, "n1", "--alias", "production", "--registry",
                 registry, *keys, "--policy", policy_path, "--approver-key",
                 pki["approver"].private, *audit)  # fmt: skip
    assert result.exit_code == EXIT_USER_ERROR
    assert "trust chain broken at the gate record" in result.output
    assert "no gate record" in result.output
    unverified = run("registry", "show", NAME, "n1", "--registry", registry, "--no-verify")
    assert unverified.exit_code == 0 and "missing" in unverified.output


def test_promote_with_a_key_of_another_role_exits_2(releases, pki, deployment):
    """The gate's key (the default for staging) cannot move production, nor the trainer's."""
    tmp_path = deployment
    audit = ("--audit-log", tmp_path / "audit.jsonl")
    assert run("registry", "push", releases["v1"], "--name", NAME, "--version", "v1",
               *audit).exit_code == 0  # fmt: skip
    for role in ("gate", "trainer"):
        refused = run("registry", "promote", NAME, "v1", "--alias", "production",
                      "--key", pki[role].private, *audit)  # fmt: skip
        assert refused.exit_code == EXIT_USER_ERROR, refused.output
        assert f"a {role} key; only an approver key may sign it" in refused.output.replace("\n", "")
    staged = run("registry", "promote", NAME, "v1", "--alias", "staging", *audit)
    assert staged.exit_code == 0, staged.output
    assert "staging -> v1 (was (none); sequence 1, signed as gate)" in staged.output


def test_pull_refuses_an_edited_alias_record(releases, pki, deployment):
    """An intruder with write access to the store repoints production by editing the file."""
    tmp_path = deployment
    audit = tmp_path / "audit.jsonl"
    registry = (tmp_path / "registry").as_uri()
    for version in ("v1", "failed"):
        assert run("registry", "push", releases[version], "--name", NAME, "--version", version,
                   "--audit-log", audit).exit_code == 0  # fmt: skip
    assert run("registry", "promote", NAME, "v1", "--alias", "production",
               "--audit-log", audit).exit_code == 0  # fmt: skip
    record = json.loads(read_alias_bytes(registry, "production"))
    write_alias_bytes(registry, "production", json.dumps({**record, "version": "failed"}).encode())
    pulled = run("registry", "pull", NAME, "production", "--to", tmp_path / "prod",
                 "--audit-log", audit)  # fmt: skip
    assert pulled.exit_code == EXIT_USER_ERROR
    message = pulled.output.replace("\n", "")
    assert "trust chain broken at the alias record" in message
    assert "version differ from what the approver signed" in message
    assert not (tmp_path / "prod").exists()
    assert audit_entries(audit)[-1]["action"] == "pull"
    assert audit_entries(audit)[-1]["decision"] == "fail"
