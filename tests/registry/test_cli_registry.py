"""`secmlops registry ...`: the same operations from the command line, exit 2 on a refusal."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from secmlops.cli import EXIT_USER_ERROR, app

from .conftest import NAME, audit_entries

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_push_list_show_promote_pull_rollback(releases, pki, tmp_path, monkeypatch):
    monkeypatch.setenv("SECMLOPS_REGISTRY", (tmp_path / "registry").as_uri())
    monkeypatch.setenv("SECMLOPS_TRUSTED_KEYS", str(pki["release"]["public"]))
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
    assert "production -> v2 (was v1; generation 2)" in moved.output
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
    assert pki["keyring"].ids[0] in shown.output.replace("\n", "").replace("│", "")
    assert "model.safetensors" in shown.output

    pulled = run("registry", "pull", NAME, "production", "--to", tmp_path / "prod")
    assert pulled.exit_code == 0, pulled.output
    card = json.loads((tmp_path / "prod" / "model.json").read_text())
    assert card["weights_sha256"] in pulled.output
    refused = run("registry", "pull", NAME, "v1", "--to", tmp_path / "prod")
    assert refused.exit_code == EXIT_USER_ERROR and "not empty" in refused.output

    back = run("registry", "rollback", NAME, "--alias", "production", "--audit-log", audit)
    assert back.exit_code == 0 and "rolled back to v1" in back.output
    assert [(e["action"], e["decision"]) for e in audit_entries(audit)] == [
        ("push", "pass"), ("push", "pass"), ("push", "fail"), ("promote", "pass"),
        ("promote", "pass"), ("promote", "fail"), ("rollback", "pass"),
    ]  # fmt: skip


def test_promote_without_a_gate_record_exits_2(releases, pki, tmp_path):
    registry = (tmp_path / "registry").as_uri()
    keys = ("--trusted-keys", pki["release"]["public"])
    audit = ("--audit-log", tmp_path / "audit.jsonl")
    assert run("registry", "push", releases["nogate"], "--name", NAME, "--version", "n1",
               "--registry", registry, *keys, *audit).exit_code == 0  # fmt: skip
    result = run("registry", "promote", NAME, "n1", "--alias", "production",
                 "--registry", registry, *keys, *audit)  # fmt: skip
    assert result.exit_code == EXIT_USER_ERROR
    assert "no gate record" in result.output
    unverified = run("registry", "show", NAME, "n1", "--registry", registry, "--no-verify")
    assert unverified.exit_code == 0 and "missing" in unverified.output
