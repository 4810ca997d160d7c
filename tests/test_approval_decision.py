"""`lifecycle.approval.decide`: who may approve a release for production, and what is audited."""

from __future__ import annotations

import pytest

from secmlops.audit import read_audit_log
from secmlops.lifecycle.approval import ApprovalRefused, decide
from secmlops.settings import Settings

RELEASE = {"name": "pds", "version": "v2", "weights_sha256": "0" * 64}


def response(user: str | None, option: str = "Approve") -> dict:
    return {
        "chosen_options": [option],
        "responded_by_user": {"id": user, "name": user} if user else None,
        "responded_at": "2026-12-02T10:00:00+00:00",
    }


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings.from_env({"SECMLOPS_WORKDIR": str(tmp_path)})


def decisions(settings: Settings) -> list[dict]:
    return [e for e in read_audit_log(settings.audit_log) if e["action"] == "approve_production"]


def test_a_second_person_approves(settings):
    approval = decide(settings, RELEASE, response("bob"), triggered_by="alice")
    assert approval["approved_by"] == "bob" and approval["triggered_by"] == "alice"
    (entry,) = decisions(settings)
    assert entry["decision"] == "pass" and entry["subject"] == "pds@v2"
    assert entry["details"]["responded_by"] == "bob"


def test_a_scheduled_run_has_no_trigger_and_any_user_approves(settings):
    assert decide(settings, RELEASE, response("bob"), triggered_by=None)["approved_by"] == "bob"


@pytest.mark.parametrize(
    ("answer", "triggered_by", "message", "refused"),
    [
        (
            response("alice"),
            "alice",
            "triggered this run and cannot also approve it",
            "self-approval",
        ),
        (response("bob", "Reject"), "alice", "rejected by bob", None),
        (response(None), "alice", "names no user", "no responder"),
        ({"error": "timed out", "error_type": "timeout"}, "alice", r"no approval \(timeout", None),
    ],
)
def test_refusals_are_audited_and_name_the_reason(settings, answer, triggered_by, message, refused):
    with pytest.raises(ApprovalRefused, match=message):
        decide(settings, RELEASE, answer, triggered_by)
    (entry,) = decisions(settings)
    assert entry["decision"] == "fail" and entry["details"]["triggered_by"] == triggered_by
    assert entry["details"].get("refused") == refused
