"""Hash-chained audit log: appends chain, concurrent writers keep one chain, and every edit,
deletion, reordering, garbled line or truncated tail (with an anchor) is caught by line."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import pytest

from secmlops.audit import (
    GENESIS,
    AuditLog,
    canonical_json,
    entry_hash,
    read_audit_log,
    verify_audit_log,
)
from secmlops.errors import AuditError


def fill(path: Path, count: int) -> AuditLog:
    log = AuditLog(path, actor="tester")
    for i in range(count):
        decision = ("pass", "fail", "override", "info")[i % 4]
        log.append("data", f"action_{i}", decision, f"subject-{i}", {"i": i})
    return log


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines(keepends=True)


def rewrite(path: Path, new_lines: list[str]) -> None:
    path.write_text("".join(new_lines))


def test_append_builds_a_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit" / "audit.jsonl"
    log = AuditLog(path, actor="alice")
    first = log.append(
        "data", "verify_manifest", "pass", "sha256:abc", {"files": 3, "p": Path("x")}
    )
    second = log.append("validation", "robustness_gate", "fail", "model:v2")
    assert first["seq"] == 1 and first["prev"] == GENESIS
    assert second["seq"] == 2 and second["prev"] == first["hash"]
    assert first["actor"] == "alice" and first["details"] == {"files": 3, "p": "x"}
    assert first["time"].endswith("+00:00")
    assert first["hash"] == entry_hash(first)
    assert log.head() == second["hash"]
    assert verify_audit_log(path) == 2
    stored = [json.loads(line) for line in lines(path)]
    assert stored == [first, second]
    assert lines(path)[0] == canonical_json(first) + "\n"


def test_actor_and_path_come_from_the_settings(tmp_path: Path) -> None:
    from secmlops.settings import Settings

    env = {"SECMLOPS_ACTOR": "airflow:secmlops_data", "SECMLOPS_WORKDIR": str(tmp_path / "work")}
    entry = Settings.from_env(env).audit().append("data", "pull", "info", "rev:abc")
    assert entry["actor"] == "airflow:secmlops_data"
    assert verify_audit_log(tmp_path / "work" / "audit" / "audit.jsonl") == 1
    env["SECMLOPS_AUDIT_LOG"] = str(tmp_path / "x.jsonl")
    assert Settings.from_env(env).audit(actor="airflow").append("d", "a", "info", "s")["actor"] == (
        "airflow"
    )
    assert verify_audit_log(tmp_path / "x.jsonl") == 1


def test_unknown_decision_is_refused(tmp_path: Path) -> None:
    with pytest.raises(AuditError, match="decision must be one of"):
        AuditLog(tmp_path / "a.jsonl").append("data", "x", "maybe", "s")


def _append_many(path: str, worker: int, count: int) -> None:
    log = AuditLog(Path(path), actor=f"worker{worker}")
    for i in range(count):
        log.append("training", "step", "info", f"w{worker}", {"i": i})


def test_concurrent_appenders_keep_one_valid_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    workers, per_worker = 4, 25
    ctx = multiprocessing.get_context("spawn")
    procs = [
        ctx.Process(target=_append_many, args=(str(path), w, per_worker)) for w in range(workers)
    ]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=120)
        assert proc.exitcode == 0
    entries = read_audit_log(path)
    assert len(entries) == workers * per_worker
    assert [e["seq"] for e in entries] == list(range(1, workers * per_worker + 1))
    for w in range(workers):
        mine = [e["details"]["i"] for e in entries if e["actor"] == f"worker{w}"]
        assert mine == list(range(per_worker))


def test_empty_and_missing_logs(tmp_path: Path) -> None:
    with pytest.raises(AuditError, match="audit log not found"):
        verify_audit_log(tmp_path / "none.jsonl")
    (tmp_path / "empty.jsonl").write_text("")
    assert verify_audit_log(tmp_path / "empty.jsonl") == 0
    assert AuditLog(tmp_path / "absent.jsonl").head() == GENESIS


def test_edited_entry_is_a_hash_mismatch(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    fill(path, 5)
    content = lines(path)
    entry = json.loads(content[1])
    entry["decision"] = "pass" if entry["decision"] != "pass" else "fail"
    content[1] = canonical_json(entry) + "\n"
    rewrite(path, content)
    with pytest.raises(AuditError, match=r"line 2 \(seq 2\): hash mismatch"):
        verify_audit_log(path)


def test_edited_and_rehashed_entry_breaks_the_next_link(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    fill(path, 5)
    content = lines(path)
    entry = json.loads(content[2])
    entry["details"] = {"i": 999}
    entry["hash"] = entry_hash(entry)
    content[2] = canonical_json(entry) + "\n"
    rewrite(path, content)
    with pytest.raises(AuditError, match=r"line 4 \(seq 4\): prev does not match .* line 3"):
        verify_audit_log(path)


def test_deleted_entry_is_a_seq_gap(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    fill(path, 5)
    content = lines(path)
    del content[2]
    rewrite(path, content)
    with pytest.raises(
        AuditError, match=r"line 3 \(seq 4\): seq jumps from 2 to 4: 1 entries deleted"
    ):
        verify_audit_log(path)


def test_deleted_first_entry(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    fill(path, 3)
    rewrite(path, lines(path)[1:])
    with pytest.raises(AuditError, match=r"line 1 \(seq 2\): seq jumps from 0 to 2"):
        verify_audit_log(path)


def test_reordered_entries(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    fill(path, 5)
    content = lines(path)
    content[1], content[3] = content[3], content[1]
    rewrite(path, content)
    with pytest.raises(AuditError, match=r"line 2 \(seq 4\).*reordered"):
        verify_audit_log(path)
    # Renumbering the moved entries (and re-hashing them) still breaks the prev links.
    path2 = tmp_path / "b.jsonl"
    fill(path2, 5)
    content = [json.loads(line) for line in lines(path2)]
    content[1], content[2] = content[2], content[1]
    for seq, entry in enumerate(content, start=1):
        entry["seq"] = seq
        entry["hash"] = entry_hash(entry)
    rewrite(path2, [canonical_json(e) + "\n" for e in content])
    with pytest.raises(AuditError, match=r"line 2 \(seq 2\): prev does not match"):
        verify_audit_log(path2)


@pytest.mark.parametrize(
    ("garble", "reason"),
    [
        (lambda line: line[: len(line) // 2] + "\n", "garbled: not valid JSON"),
        (lambda line: "\n", "garbled: not valid JSON"),
        (lambda line: "[1, 2]\n", "garbled: not a JSON object"),
        (lambda line: '{"seq": 3}\n', "malformed entry: field 'time'"),
    ],
)
def test_garbled_line(tmp_path: Path, garble, reason: str) -> None:
    path = tmp_path / "a.jsonl"
    fill(path, 5)
    content = lines(path)
    content[2] = garble(content[2])
    rewrite(path, content)
    with pytest.raises(AuditError, match=rf"line 3: {reason}"):
        verify_audit_log(path)


def test_cut_off_last_line(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    log = fill(path, 3)
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(AuditError, match="line 3: truncated"):
        verify_audit_log(path)
    with pytest.raises(AuditError, match="last line is incomplete"):
        log.append("data", "x", "info", "s")


def test_append_refuses_to_chain_onto_an_edited_last_entry(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    log = fill(path, 3)
    content = lines(path)
    content[-1] = content[-1].replace('"subject":"subject-2"', '"subject":"other"')
    rewrite(path, content)
    with pytest.raises(AuditError, match=r"last entry \(seq 3\) was edited"):
        log.append("data", "x", "info", "s")


def test_expected_head_catches_tail_truncation(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    log = fill(path, 5)
    anchor = log.head()
    log.append("deployment", "promote", "pass", "model:v3")
    # The log may grow after the anchor was exported.
    assert verify_audit_log(path, expected_head=anchor) == 6
    rewrite(path, lines(path)[:3])
    # Without an anchor a truncated tail is a valid shorter chain: the documented limitation.
    assert verify_audit_log(path) == 3
    with pytest.raises(AuditError, match=f"anchor {anchor} not found.*tail truncation"):
        verify_audit_log(path, expected_head=anchor)
    assert verify_audit_log(path, expected_head=GENESIS) == 3


def test_a_non_canonical_line_is_refused_even_when_its_hash_matches(tmp_path: Path) -> None:
    """A repeated key: json.loads keeps the last value (what the hash covers), while another
    reader of the raw line may take the first. The line must be the canonical form."""
    path = tmp_path / "a.jsonl"
    fill(path, 3)
    content = lines(path)
    entry = json.loads(content[1])
    body = canonical_json(entry)[1:]  # without the opening brace
    content[1] = '{"decision":"pass",' + body + "\n"  # "decision" twice; the last one wins
    assert json.loads(content[1]) == entry  # parses to the very same, correctly hashed entry
    rewrite(path, content)
    with pytest.raises(AuditError, match="line 2: not canonical JSON"):
        verify_audit_log(path)
    # Spacing alone is refused too; an untouched log still verifies.
    content[1] = json.dumps(entry, sort_keys=True) + "\n"
    rewrite(path, content)
    with pytest.raises(AuditError, match="not canonical JSON"):
        verify_audit_log(path)
    fill(tmp_path / "b.jsonl", 3)
    assert verify_audit_log(tmp_path / "b.jsonl") == 3


def test_appending_after_a_non_canonical_last_line_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    log = fill(path, 2)
    content = lines(path)
    content[-1] = json.dumps(json.loads(content[-1]), sort_keys=True) + "\n"
    rewrite(path, content)
    with pytest.raises(AuditError, match="not canonical JSON"):
        log.append("data", "x", "info", "s")
