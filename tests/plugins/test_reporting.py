"""The overview library on real artifacts: a signed registry, an audit log, an Evidently report."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from secmlops.errors import DataError
from secmlops.reporting import (
    gate_history,
    latest_drift_report,
    read_report,
    registry_overview,
    report_file,
    sources_from_settings,
    tradeoff_table,
    trusted_keyring,
)
from secmlops.reporting.page import gather_overview, render_page
from secmlops.reporting.reports import DRIFT_HTML, DRIFT_JSON
from secmlops.settings import Settings
from secmlops.supplychain.keys import Keyring, generate_keypair

from .seed import MODEL, STUDY, TRADEOFF_ROWS, WINDOW


def sources_from_env():
    """What the Airflow view reads: the process's settings."""
    return sources_from_settings(Settings.from_env())


def by_version(overview):
    return {v.version: v for v in overview.versions}


def test_registry_overview_verifies_every_version(seeded):
    overview = registry_overview(seeded.registry.as_uri(), seeded.keyring)
    assert overview.message is None
    versions = by_version(overview)
    assert list(versions) == ["v1", "v2", "v3"]
    v1, v2, v3 = versions["v1"], versions["v2"], versions["v3"]
    assert (v1.model, v1.aliases, v1.weights_sha256) == (
        MODEL,
        ("production",),
        seeded.versions["v1"],
    )
    assert (v1.signature, v1.gate) == ("verified", "passed")
    assert v1.signature_detail == f"signed by {v1.signer}"
    assert v1.pushed_by == "ci@secmlops" and v1.pushed_at.startswith("20")
    # v2 is authentic, but its signed gate record says it failed: never promotable.
    assert (v2.signature, v2.gate, v2.aliases) == ("verified", "refused", ())
    assert "failed the robustness gate" in v2.gate_detail
    assert "secmlops-registry-" not in v2.gate_detail  # no throw-away folder in the message
    # v3 was edited in the registry after its push: refused; its gate record vouches for nothing.
    assert v3.signature == "refused"
    assert "model.json" in v3.signature_detail and "tampered" in v3.signature_detail
    assert v3.gate == "unverified"


def test_registry_overview_without_or_with_the_wrong_keys(seeded, tmp_path):
    unverified = registry_overview(seeded.registry.as_uri(), None)
    assert {v.signature for v in unverified.versions} == {"unverified"}
    assert {v.gate for v in unverified.versions} == {"unverified"}
    _, rogue = generate_keypair(tmp_path, "rogue")
    refused = registry_overview(str(seeded.registry), Keyring.from_paths([rogue]))
    assert {v.signature for v in refused.versions} == {"refused"}
    assert all(
        "trusted" in v.signature_detail for v in by_version(refused).values() if v.version != "v3"
    )


def test_registry_overview_of_an_empty_or_bad_registry(tmp_path):
    empty = registry_overview((tmp_path / "nothing").as_uri(), None)
    assert empty.versions == () and "no model versions" in empty.message
    bad = registry_overview("ftp://example/registry", None)
    assert bad.versions == () and bad.message.startswith("registry unreadable")
    garbled = tmp_path / "garbled" / "models" / MODEL / "versions" / "v1"
    garbled.mkdir(parents=True)
    (garbled / ".version.json").write_text("{not json")
    broken = registry_overview(str(tmp_path / "garbled"), None)
    assert broken.versions == () and "not valid JSON" in broken.message


def test_trusted_keyring_from_the_environment(seeded, monkeypatch):
    monkeypatch.delenv("SECMLOPS_TRUSTED_KEYS", raising=False)
    keyring, message = trusted_keyring(sources_from_env())
    assert keyring is None and "SECMLOPS_TRUSTED_KEYS" in message
    monkeypatch.setenv("SECMLOPS_TRUSTED_KEYS", str(seeded.public_key))
    monkeypatch.setenv("SECMLOPS_POLICY", seeded.env["SECMLOPS_POLICY"])
    keyring, message = trusted_keyring(sources_from_env())
    assert message is None and len(keyring) == 1
    assert keyring.roles[keyring.ids[0]] == "trainer"  # roles from the policy
    monkeypatch.setenv("SECMLOPS_POLICY", "/no/such/policy.yaml")
    keyring, message = trusted_keyring(sources_from_env())
    assert keyring is None and "policy file not found" in message
    monkeypatch.setenv("SECMLOPS_POLICY", seeded.env["SECMLOPS_POLICY"])
    monkeypatch.setenv("SECMLOPS_TRUSTED_KEYS", "/no/such/key.pub")
    keyring, message = trusted_keyring(sources_from_env())
    assert keyring is None and "unusable" in message


def test_gate_history_reads_the_verified_chain_newest_first(seeded):
    history = gate_history(seeded.audit_log)
    assert history.chain_verified and history.entries == 8 and history.message is None
    events = [(e.stage, e.action, e.decision, e.subject) for e in history.events]
    digests = seeded.versions
    assert events == [
        ("registry", "promote", "fail", f"{MODEL}@v2"),
        ("registry", "promote", "pass", f"{MODEL}@v1"),
        ("registry", "push", "pass", f"{MODEL}@v3"),
        ("gate", "robustness_gate", "pass", digests["v3"]),
        ("registry", "push", "pass", f"{MODEL}@v2"),
        ("gate", "robustness_gate", "fail", digests["v2"]),
        ("registry", "push", "pass", f"{MODEL}@v1"),
        ("gate", "robustness_gate", "pass", digests["v1"]),
    ]
    summaries = {(e.action, e.subject): e.summary for e in history.events}
    assert (
        summaries[("robustness_gate", digests["v2"])] == "pgd_linf_4 robust mAP@0.5 0.010 < 0.300"
    )
    # A pass names the people found, clean and under each attack the gate judges recall for.
    assert summaries[("robustness_gate", digests["v1"])] == (
        "all checks passed; recall at the operating point: clean 0.81, vanishing_linf_4 0.50, "
        "worst_case_linf_4 0.45"
    )
    assert summaries[("promote", f"{MODEL}@v1")] == "production: (none) -> v1"
    assert summaries[("promote", f"{MODEL}@v2")].startswith("production: v1 -> v2: ")
    assert "failed the robustness gate" in summaries[("promote", f"{MODEL}@v2")]
    assert [e.seq for e in gate_history(seeded.audit_log, limit=2).events] == [8, 7]


def test_gate_history_withholds_a_broken_chain(seeded, tmp_path):
    lines = seeded.audit_log.read_text().splitlines()
    entry = json.loads(lines[2])
    entry["decision"] = "pass"  # someone turns the failed gate into a pass
    lines[2] = json.dumps(entry, sort_keys=True, separators=(",", ":"))
    edited = tmp_path / "audit.jsonl"
    edited.write_text("\n".join(lines) + "\n")
    history = gate_history(edited)
    assert not history.chain_verified and history.events == ()
    assert "line 3" in history.message and "edited" in history.message
    missing = gate_history(tmp_path / "none.jsonl")
    assert missing.events == () and "no audit log" in missing.message


def test_latest_drift_report_of_a_real_evidently_report(seeded, tmp_path):
    from secmlops.monitoring import drift
    from secmlops.monitoring.reference import FEATURE_COLUMNS

    assert (DRIFT_HTML, DRIFT_JSON) == (drift.HTML_REPORT, drift.JSON_REPORT)
    overview = latest_drift_report(seeded.reports_root)
    assert overview.message is None and overview.window == WINDOW
    assert overview.html_report == f"{WINDOW}/drift-report.html"
    assert overview.json_report == f"{WINDOW}/drift-report.json"
    assert [c.column for c in overview.columns] == list(FEATURE_COLUMNS)
    assert all(c.drifted and c.p_value < c.threshold == 0.01 for c in overview.columns)
    assert overview.checks_failed == overview.checks_total == len(FEATURE_COLUMNS)

    # An older window is ignored, a newer one wins even when its JSON is unreadable.
    root = tmp_path / "reports"
    shutil.copytree(seeded.reports_root, root)
    (root / "20200101T000000Z").mkdir()
    (root / "20200101T000000Z" / "drift-report.json").write_text("{}")
    (root / "not-a-window").mkdir()
    (root / "not-a-window" / "drift-report.json").write_text("{}")
    assert latest_drift_report(root).window == WINDOW
    (root / "20990101T000000Z").mkdir()
    (root / "20990101T000000Z" / "drift-report.json").write_text("{truncated")
    newer = latest_drift_report(root)
    assert newer.window == "20990101T000000Z" and "unreadable" in newer.message
    assert newer.columns == ()


def test_latest_drift_report_on_s3(seeded, s3_bucket, monkeypatch):
    """Monitoring uploads reports when its location is s3://; the overview reads them there."""
    import boto3

    endpoint, bucket = s3_bucket
    s3 = boto3.client("s3", endpoint_url=endpoint)
    for name in (DRIFT_HTML, DRIFT_JSON):
        body = (seeded.reports_root / WINDOW / name).read_bytes()
        s3.put_object(Bucket=bucket, Key=f"team/reports/{WINDOW}/{name}", Body=body)
    s3.put_object(Bucket=bucket, Key="team/secret.json", Body=b"{}")
    root = f"s3://{bucket}/team/reports"
    overview = latest_drift_report(root, endpoint)
    assert overview.message is None and overview.window == WINDOW
    assert overview.checks_failed == len(overview.columns) > 0
    html = read_report(root, WINDOW, DRIFT_HTML, endpoint)
    assert html == (seeded.reports_root / WINDOW / DRIFT_HTML).read_bytes()
    for folder, name in ((WINDOW, "missing.html"), ("..", "secret.json"), (WINDOW, "../../x.json")):
        with pytest.raises(DataError, match="no report"):
            read_report(root, folder, name, endpoint)
    empty = latest_drift_report(f"s3://{bucket}/nothing-here", endpoint)
    assert empty.window is None and "no drift report yet" in empty.message
    missing_bucket = latest_drift_report("s3://no-such-bucket-secmlops/reports", endpoint)
    assert missing_bucket.window is None and "cannot list" in missing_bucket.message


def test_latest_drift_report_without_reports(tmp_path):
    assert "no drift report yet" in latest_drift_report(tmp_path / "none").message
    (tmp_path / "empty").mkdir()
    assert "no drift report yet" in latest_drift_report(tmp_path / "empty").message


def test_tradeoff_table_reads_the_newest_study(seeded, tmp_path):
    table = tradeoff_table(seeded.tradeoffs_root)
    assert table.message is None and table.run == STUDY
    assert table.columns == tuple(TRADEOFF_ROWS[0]) and list(table.rows) == TRADEOFF_ROWS
    assert (table.report_html, table.markdown, table.plots) == (
        "report.html",
        "tradeoffs.md",
        ("pareto.png",),
    )
    root = tmp_path / "studies"
    shutil.copytree(seeded.tradeoffs_root, root)
    (root / "later").mkdir()
    (root / "later" / "tradeoffs.csv").write_text("configuration,latency_ms\n")
    old = (root / STUDY / "tradeoffs.csv").stat().st_mtime
    os.utime(root / "later" / "tradeoffs.csv", (old + 60, old + 60))
    later = tradeoff_table(root)
    assert later.run == "later" and later.rows == () and "has no rows" in later.message
    assert later.report_html is None and later.plots == ()


def test_tradeoff_table_without_a_study(tmp_path):
    table = tradeoff_table(tmp_path / "tradeoffs")
    assert table.run is None and table.rows == () and "no study yet" in table.message


def test_report_file_stays_inside_its_root(seeded, tmp_path):
    root = seeded.tradeoffs_root
    assert report_file(root, STUDY, "report.html") == (root / STUDY / "report.html").resolve()
    assert report_file(root, STUDY, "pareto.png").name == "pareto.png"
    outside = tmp_path / "secret.html"
    outside.write_text("secret")
    study = tmp_path / "root" / "study"
    shutil.copytree(root / STUDY, study)
    (study / "leak.html").symlink_to(outside)
    refused = [
        (root, STUDY, "notes.txt"),  # not a report suffix
        (root, STUDY, "missing.html"),
        (root, "..", "secret.html"),
        (root, STUDY, "../report.html"),
        (root, f"{STUDY}/..", "report.html"),
        (root, "/etc", "hostname.html"),
        (tmp_path / "root", "study", "leak.html"),  # a symlink out of the root
    ]
    for where, folder, name in refused:
        with pytest.raises(DataError, match="no report"):
            report_file(where, folder, name)


def test_sources_follow_the_environment(monkeypatch, tmp_path):
    for name in ("SECMLOPS_REGISTRY", "SECMLOPS_AUDIT_LOG", "SECMLOPS_MONITORING_REPORTS",
                 "SECMLOPS_TRADEOFFS_DIR"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SECMLOPS_WORKDIR", str(tmp_path))
    sources = sources_from_env()
    assert sources.registry_uri == (tmp_path / "registry").as_uri()
    assert sources.audit_log == tmp_path / "audit" / "audit.jsonl"
    assert sources.reports_root == tmp_path / "runs" / "monitoring" / "reports"
    assert sources.tradeoffs_root == tmp_path / "runs" / "tradeoffs"
    monkeypatch.setenv("SECMLOPS_REGISTRY", "s3://bucket/prefix")
    monkeypatch.setenv("SECMLOPS_AUDIT_LOG", "/var/audit.jsonl")
    monkeypatch.setenv("SECMLOPS_MONITORING_REPORTS", "/srv/reports")
    monkeypatch.setenv("SECMLOPS_TRADEOFFS_DIR", "/srv/studies")
    assert sources_from_env().to_json() == {
        "registry_uri": "s3://bucket/prefix",
        "audit_log": "/var/audit.jsonl",
        "reports_root": "/srv/reports",
        "tradeoffs_root": "/srv/studies",
    }


def test_page_escapes_what_it_read(seeded_env, tmp_path, monkeypatch):
    study = tmp_path / "studies" / "run"
    study.mkdir(parents=True)
    (study / "tradeoffs.csv").write_text('configuration,note\n"<script>alert(1)</script>",x&y\n')
    monkeypatch.setenv("SECMLOPS_TRADEOFFS_DIR", str(tmp_path / "studies"))
    page = render_page(gather_overview(sources_from_env()), "/secmlops")
    assert "<script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "x&amp;y" in page
    for section in ("registry", "gates", "drift", "tradeoffs"):
        assert f"<section id='{section}'>" in page
    assert f"/secmlops/reports/drift/{WINDOW}/drift-report.html" in page


def test_page_survives_a_source_that_raises(seeded_env, monkeypatch):
    def boom(*args: object) -> None:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr("secmlops.reporting.page.gate_history", boom)
    overview = gather_overview(sources_from_env())
    assert overview.gates.message == "could not be read (RuntimeError: disk on fire)"
    assert overview.registry.versions  # the other sections still show
    assert "disk on fire" in render_page(overview, "")


def test_seeded_registry_is_where_the_defaults_look(seeded_env):
    sources = sources_from_env()
    assert sources.registry_uri == Path(seeded_env.registry).as_uri()
    assert sources.audit_log == seeded_env.audit_log


def test_drift_overview_reports_the_backbone_embedding_drift(tmp_path):
    """A real Evidently report whose window moved in the embedding only: the view says so."""
    import numpy as np
    import pandas as pd

    from secmlops.monitoring.drift import MonitoringThresholds, check_drift
    from secmlops.monitoring.reference import FEATURE_COLUMNS
    from secmlops.reporting.reports import latest_drift_report

    rng = np.random.default_rng(0)
    columns = [*FEATURE_COLUMNS, *(f"emb_{i}" for i in range(8))]
    reference = pd.DataFrame(rng.normal(size=(100, len(columns))), columns=columns)
    window = pd.DataFrame(rng.normal(size=(60, len(columns))), columns=columns)
    thresholds = MonitoringThresholds(0.3, 0.01, 20, 0.1, 0.001, None)
    check_drift(reference, window, tmp_path / "20260101T000000Z", thresholds)
    quiet = latest_drift_report(tmp_path).embedding
    assert quiet is not None and not quiet["drifted"] and quiet["threshold"] == 0.3
    window[[c for c in columns if c.startswith("emb_")]] += 1.0
    check_drift(reference, window, tmp_path / "20260101T010000Z", thresholds)
    moved = latest_drift_report(tmp_path)
    assert moved.window == "20260101T010000Z"
    assert moved.embedding == {"share": 1.0, "threshold": 0.3, "drifted": True}
    assert not any(c.drifted for c in moved.columns)  # the pixel features did not move
