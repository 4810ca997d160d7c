"""What `make demo` prints: task and epoch progress, and the closing summary."""

from __future__ import annotations

import base64
import json
from pathlib import Path

from secmlops.lifecycle.approval import gate_record_checks
from secmlops.local.story import model_figures, render_summary

CHECKS = [
    {"name": "clean_map50", "label": "clean mAP@0.5", "measured": 0.81, "threshold": 0.75,
     "comparison": ">=", "passed": True, "note": ""},
    {"name": "robust_recall.worst_case_linf_4", "label": "worst_case_linf_4 recall",
     "measured": 0.12, "threshold": 0.2, "comparison": ">=", "passed": False, "note": ""},
    {"name": "suite", "label": "attack suite", "measured": "pgd 10", "threshold": "pgd 10",
     "comparison": "==", "passed": True, "note": ""},
]  # fmt: skip


def summary(**changes) -> dict:
    base = {
        "data": {"rev": "data/street/v1", "signed_by": "data-owner:ab12", "files": 1003,
                 "manifest_digest": "sha256:00", "validation": {},
                 "screening": {"images": 800, "flagged": 0, "passed": True}},
        "training": {
            "defended": {"defence": {"adversarial": {"method": "fgsm-rs"}}, "epochs": 12,
                         "best_epoch": 11, "seconds": 301.0, "device": "cpu"},
            "undefended": {"defence": None, "epochs": 12, "best_epoch": 12, "seconds": 250.0,
                           "device": "cpu"},
        },
        "figures": {
            "defended": {"clean_mAP50": 0.81, "clean_recall": 0.56, "clean_mr2": 0.40,
                         "worst_case_linf_2_recall": 0.40, "worst_case_linf_4_recall": 0.29,
                         "person_patch_recall": 0.49},
            "undefended": {"clean_mAP50": 0.87, "clean_recall": 0.67, "clean_mr2": 0.33,
                           "worst_case_linf_2_recall": 0.06, "worst_case_linf_4_recall": 0.0,
                           "person_patch_recall": None},
        },
        "operating_point": {"score_threshold": 0.42},
        "gate": {"passed": True, "checks": 3, "failed": [], "policy_digest": "sha256:" + "1" * 64,
                 "thresholds": {"clean_map50": 0.75, "robust_recall.worst_case_linf_4": 0.2}},
        "release": {"name": "pedestrian-detector", "version": "1-abc", "alias": "production",
                    "sequence": 1, "weights_sha256": "2" * 64, "audit_anchor": None},
        "monitoring": {"records": 60, "drift_detected": True, "drifted_share": 0.5,
                       "drifted_columns": ["brightness", "contrast"], "attack_alarm": False,
                       "attack_flagged_share": 0.0, "retraining_requested": True,
                       "retraining_reason": "drift"},
        "audit": {"entries": 42, "chain": "verified"},
        "stage_seconds": {"workspace": 20.0, "training_to_release": 400.0},
    }  # fmt: skip
    base.update(changes)
    return base


def test_the_summary_puts_both_models_beside_the_gate_bars():
    text = "\n".join(render_summary(summary()))
    lines = text.splitlines()
    row = next(line for line in lines if "recall, worst attack 4/255" in line)
    assert row.split()[-3:] == ["0.000", "0.290", "0.200"]  # undefended, defended, the bar
    patch = next(line for line in lines if "person-worn patch" in line)
    assert patch.split()[-3:] == ["-", "0.490", "-"]  # no figure, no bar: shown as such
    assert "poisoning screen flagged 0 of 800 images" in text
    assert "gate      PASSED 3 checks" in text
    assert "pedestrian-detector@1-abc is `production`" in text
    assert "drift in 50% of features (brightness, contrast); requested retraining (drift)" in text
    assert "audit     42 entries, hash chain verified" in text
    assert "workspace 20 s, training_to_release 400 s" in text


def test_a_failed_gate_and_a_quiet_window_read_as_such():
    failed = {**summary()["gate"], "passed": False, "failed": [CHECKS[1]]}
    quiet = {**summary()["monitoring"], "drift_detected": False, "retraining_requested": False}
    text = "\n".join(render_summary(summary(gate=failed, monitoring=quiet)))
    assert "gate      FAILED" in text and "failed: worst_case_linf_4 recall" in text
    assert "no drift; requested nothing" in text


def test_model_figures_read_the_report_at_its_operating_point():
    report = {
        "clean": {"mAP50": 0.8, "recall": 0.6, "mr2": 0.4},
        "attacks": {"worst_case_linf_2": {"recall": 0.3}, "person_patch": {"recall": 0.5}},
    }
    assert model_figures(report) == {
        "clean_mAP50": 0.8, "clean_recall": 0.6, "clean_mr2": 0.4,
        "worst_case_linf_2_recall": 0.3, "worst_case_linf_4_recall": None,
        "person_patch_recall": 0.5,
    }  # fmt: skip


def test_gate_checks_come_from_the_records_signed_payload(tmp_path: Path):
    statement = {"predicate": {"checks": CHECKS}}
    payload = base64.b64encode(json.dumps(statement).encode()).decode()
    record = tmp_path / "gate-record.json"
    record.write_text(json.dumps({"payload": payload, "signatures": []}))
    assert gate_record_checks(record) == CHECKS
