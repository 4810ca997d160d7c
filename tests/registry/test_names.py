"""Names are matched in full wherever they enter: "v1\\n" is not "v1", and is no name at all.

`re.match(r"^...$")` accepts a trailing newline, which let a second "v1" into the registry.
Every name rule now lives in `secmlops.names`, anchored at both ends.
"""

from __future__ import annotations

import json
import shutil

import jsonschema
import pytest
from typer.testing import CliRunner

from secmlops import names
from secmlops.audit import AuditLog
from secmlops.cli import EXIT_USER_ERROR, app
from secmlops.data.versioning import parse_tag, publish_dataset
from secmlops.errors import DataError
from secmlops.fsutil import safe_name
from secmlops.registry import Registry, RegistryError
from secmlops.reporting.sources import report_file

from .conftest import NAME

CONTROL = ["\n", "\r", "\t", "\x00"]
# Each control character at the end, inside, and at the start of a name that is valid without it.
HOSTILE = [f"v1{c}" for c in CONTROL] + [f"v{c}1" for c in CONTROL] + [f"{c}v1" for c in CONTROL]


@pytest.fixture
def audit(tmp_path) -> AuditLog:
    return AuditLog(tmp_path / "audit.jsonl", actor="tester")


@pytest.mark.parametrize("bad", HOSTILE, ids=repr)
def test_push_refuses_control_characters_in_names_and_versions(tmp_path, releases, pki, audit, bad):
    registry = Registry.open(tmp_path / "registry")
    with pytest.raises(RegistryError, match="invalid version name"):
        registry.push(releases["v1"], NAME, bad, pki.keyring, audit)
    with pytest.raises(RegistryError, match="invalid model name"):
        registry.push(releases["v1"], bad.replace("v", "pds"), "v1", pki.keyring, audit)
    assert not (tmp_path / "registry").exists()


def test_promote_refuses_control_characters_and_plain_names_pass(
    tmp_path, releases, pki, policy, audit
):
    registry = Registry.open(tmp_path / "registry")
    registry.push(releases["v1"], NAME, "1.0.0", pki.keyring, audit)  # the good twin
    signing = {"key": pki["gate"].key, "policy": policy}
    for bad in ("staging\n", "staging\r", "stag\ting", "staging\x00"):
        with pytest.raises(RegistryError, match="invalid alias name"):
            registry.promote(NAME, "1.0.0", bad, pki.keyring, audit, **signing)
    with pytest.raises(RegistryError, match="invalid version name"):
        registry.promote(NAME, "1.0.0\n", "staging", pki.keyring, audit, **signing)
    assert registry.aliases(NAME) == {}
    moved = registry.promote(NAME, "1.0.0", "staging", pki.keyring, audit, **signing)
    assert moved["version"] == "1.0.0" and list(registry.aliases(NAME)) == ["staging"]


def test_a_version_planted_with_a_trailing_newline_is_not_listed(tmp_path, releases, pki, audit):
    registry = Registry.open(tmp_path / "registry")
    registry.push(releases["v1"], NAME, "v1", pki.keyring, audit)
    versions = tmp_path / "registry" / "models" / NAME / "versions"
    shutil.copytree(versions / "v1", versions / "v1\n")  # written behind the registry's back
    record = json.loads((versions / "v1\n" / ".version.json").read_text())
    (versions / "v1\n" / ".version.json").write_text(json.dumps({**record, "version": "v1\n"}))
    assert [row["version"] for row in registry.list(NAME)] == ["v1"]
    with pytest.raises(RegistryError):
        registry.resolve(NAME, "v1\n")


def test_the_cli_refuses_a_version_with_a_newline_in_one_line(
    releases, tmp_path, pki, policy_path, monkeypatch
):
    for variable, value in pki.env().items():
        monkeypatch.setenv(variable, value)
    monkeypatch.setenv("SECMLOPS_POLICY", str(policy_path))
    monkeypatch.setenv("SECMLOPS_WORKDIR", str(tmp_path / "work"))
    monkeypatch.setenv("SECMLOPS_REGISTRY", (tmp_path / "registry").as_uri())
    push = ["registry", "push", str(releases["v1"]), "--name", NAME, "--audit-log",
            str(tmp_path / "audit.jsonl"), "--version"]  # fmt: skip
    result = CliRunner().invoke(app, [*push, "v1\n"])
    assert result.exit_code == EXIT_USER_ERROR, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    assert "invalid version name 'v1\\n'" in lines[0]
    assert CliRunner().invoke(app, [*push, "v1"]).exit_code == 0


@pytest.mark.parametrize("bad", HOSTILE, ids=repr)
def test_dataset_names_and_tags_are_matched_in_full(tmp_path, bad):
    name = bad.replace("v1", "cam")
    with pytest.raises(DataError, match="dataset name"):
        publish_dataset(tmp_path, name, tmp_path / "data-registry")
    with pytest.raises(DataError, match="dataset tag"):
        parse_tag(f"data/{name}/v1")
    with pytest.raises(DataError, match="dataset tag"):
        parse_tag(f"data/cam/{bad}")
    assert parse_tag("data/cam/v1").tag == "data/cam/v1"


@pytest.mark.parametrize("bad", HOSTILE, ids=repr)
def test_every_name_rule_refuses_control_characters(bad):
    good = {names.NAME: "v1", names.ALIAS: "staging", names.FILE_NAME: "report.html",
            names.DATASET_NAME: "cam", names.SHA256_HEX: "ab" * 32}  # fmt: skip
    for pattern, plain in good.items():
        assert names.matches(pattern, plain)
        hostile = bad.replace("v1", plain)
        assert not names.matches(pattern, hostile)
        # Anchored with \A...\Z: even a careless .match or .search cannot stop at the newline.
        assert not pattern.match(hostile) and not pattern.search(hostile)


def test_trigger_form_patterns_match_whole_strings():
    from secmlops.airflow_support import DATA_REV_PATTERN
    from secmlops.training.request import EPS_PATTERN

    for pattern, good in ((DATA_REV_PATTERN, "data/cam/v3"), (EPS_PATTERN, "4/255")):
        jsonschema.validate(good, {"type": "string", "pattern": pattern})
        for bad in (f"{good}\n", f"{good}\r", f"{good}\x00"):
            with pytest.raises(jsonschema.ValidationError):
                jsonschema.validate(bad, {"type": "string", "pattern": pattern})


def test_run_folders_and_report_files_stay_one_plain_component(tmp_path):
    assert safe_name("manual__2026-11-25T10:00:00+00:00") == "manual__2026-11-25T10_00_00_00_00"
    for hostile in ("..", ".", "../..", "\n"):
        assert safe_name(hostile) == "run"
    (tmp_path / "20260101T000000Z").mkdir()
    (tmp_path / "20260101T000000Z" / "drift.html").write_text("<html>")
    assert report_file(tmp_path, "20260101T000000Z", "drift.html").is_file()
    with pytest.raises(DataError):
        report_file(tmp_path, "20260101T000000Z\n", "drift.html")
