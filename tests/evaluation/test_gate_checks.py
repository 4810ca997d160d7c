"""The gate's decision: each threshold failing alone, missing and malformed evidence, production."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from secmlops.errors import GateFailed
from secmlops.evaluation.gate_checks import evaluate_gate
from secmlops.policy import GatePolicy

WEIGHTS = "ab" * 32
BASELINE_WEIGHTS = "cd" * 32

GATE: dict[str, Any] = {
    "attacks": {
        "linf_eps_levels": [2, 4],
        "pgd_steps": 10,
        "restarts": 1,
        "patch_fraction": 0.15,
        "person_patch_fraction": 0.25,
        "person_patch_steps": 150,
        "corruption_severity": 3,
        "sanity_eps_levels": [8, 16, 64],
        "sanity_images": 16,
    },
    "operating_point": {"target_fppi": 0.1, "max_clean_fppi": 0.3},
    "min_clean_map50": 0.75,
    "min_clean_recall": 0.7,
    "min_robust_recall": {"worst_case_linf_4": 0.4, "vanishing_linf_4": 0.45},
    "max_robust_mr2": {"worst_case_linf_4": 0.8},
    "sanity": {
        "max_recall_at_largest_eps": 0.05,
        "max_recall_rise": 0.05,
        "max_effort_gain": 0.05,
        "max_transfer_gap": 0.02,
    },
    "min_robust_map50": {"fgsm_linf_4": 0.35, "pgd_linf_4": 0.30, "patch": 0.40, "jpeg": 0.5},
    "max_defence_cost": 0.10,
    "max_regression": 0.02,
    "record_validity_days": 14,
}
POLICY = GatePolicy.model_validate(GATE)


# Recall and MR^-2 at the operating point of the attacks GATE judges them for.
PEDESTRIAN = {
    "vanishing_linf_4": {"recall": 0.5, "mr2": 0.7},
    "worst_case_linf_4": {"recall": 0.45, "mr2": 0.75},
}


def passing_sanity() -> dict[str, Any]:
    """A sanity section that meets every tolerance of GATE's `sanity`."""
    sweep = [(2, 0.6, 0.55), (4, 0.5, 0.45), (8, 0.3, 0.25), (16, 0.1, 0.08), (64, 0.0, 0.0)]
    return {
        "images": 16,
        "people": 90,
        "threshold": 0.41,
        "sweep": [{"eps": k, "vanishing": v, "worst_case": w} for k, v, w in sweep],
        "effort": {
            "eps": 4,
            "steps": 10,
            "restarts": 1,
            "recall": 0.5,
            "more_steps": {"steps": 40, "recall": 0.47},
            "more_restarts": {"restarts": 4, "recall": 0.48},
        },
        "transfer": {
            "eps": 4,
            "white_box_recall": 0.5,
            "source": {"dir": "runs/models/plain", "weights_sha256": BASELINE_WEIGHTS},
            "transfer_recall": 0.7,
        },
        "seconds": 12.0,
    }


def passing_report(**attacks: float) -> dict[str, Any]:
    """A report of a defended model that meets every threshold of GATE (overrides: attack=mAP)."""
    scores = {"fgsm_linf_2": 0.6, "fgsm_linf_4": 0.45, "pgd_linf_2": 0.5, "pgd_linf_4": 0.36,
              "vanishing_linf_4": 0.5, "worst_case_linf_4": 0.3, "patch": 0.5, "jpeg": 0.7,
              **attacks}  # fmt: skip
    return {
        "schema": "secmlops.robustness/v1",
        "model": {
            "dir": "runs/models/candidate",
            "weights_sha256": WEIGHTS,
            "architecture": "compact_centernet",
            "defence": {"adversarial": {"method": "pgd", "eps": 4 / 255, "steps": 3}},
        },
        "data": {"dir": "runs/data/test", "split": "test", "images": 100, "boxes": 530},
        "suite": copy.deepcopy(GATE["attacks"]),
        "operating_point": {
            "score_threshold": 0.41,
            "chosen_by": "fppi",
            "target_fppi": 0.1,
            "split": "val",
            "metrics": {"recall": 0.83, "precision": 0.95, "fppi": 0.1, "mr2": 0.31},
        },
        "clean": {
            "mAP50": 0.86,
            "mAP50_95": 0.42,
            "recall": 0.81,
            "miss_rate": 0.19,
            "precision": 0.94,
            "fppi": 0.12,
            "mr2": 0.33,
        },
        "attacks": {
            name: {
                "family": "evasion",
                "library": "art",
                "mAP50": value,
                **PEDESTRIAN.get(name, {}),
                "seconds": 1.0,
            }
            for name, value in scores.items()
        },
        "cross_check": {
            "attack": "pgd_linf_4",
            "art_mAP50": 0.36,
            "ours_mAP50": 0.35,
            "difference": 0.01,
            "tolerance": 0.03,
            "passed": True,
        },
        "sanity": passing_sanity(),
        "baseline": {
            "dir": "runs/models/plain",
            "weights_sha256": BASELINE_WEIGHTS,
            "clean_mAP50": 0.88,
        },
        "seconds": 95.0,
    }


def gated_operating_point() -> Any:
    """The operating point `passing_report` says the gate judged at (what model.json signs)."""
    from secmlops.models import OperatingPoint

    return OperatingPoint.model_validate(passing_report()["operating_point"])


def failed_names(report: dict[str, Any], production: dict[str, Any] | None = None) -> list[str]:
    return [check.name for check in evaluate_gate(report, POLICY, production).failures]


def test_passing_report_passes():
    decision = evaluate_gate(passing_report(), POLICY)
    assert decision.passed, decision.message()
    assert decision.message() == f"gate passed: {len(decision.checks)} checks"
    names = {check.name for check in decision.checks}
    assert {"evidence", "suite", "clean_map50", "cross_check", "defence_cost"} <= names
    assert {f"robust_map50.{a}" for a in GATE["min_robust_map50"]} <= names
    regression = next(c for c in decision.checks if c.name == "regression")
    assert regression.passed and "no production report" in regression.note


def test_clean_map_below_floor_fails_alone():
    report = passing_report()
    report["clean"]["mAP50"] = 0.70
    report["baseline"]["clean_mAP50"] = 0.72  # keep the defence cost within bounds
    decision = evaluate_gate(report, POLICY)
    assert [c.name for c in decision.failures] == ["clean_map50"]
    assert decision.message() == "gate failed: clean mAP@0.5 0.700 < 0.750"


@pytest.mark.parametrize("attack", sorted(GATE["min_robust_map50"]))
def test_each_robust_attack_below_floor_fails_alone(attack):
    floor = GATE["min_robust_map50"][attack]
    decision = evaluate_gate(passing_report(**{attack: floor - 0.01}), POLICY)
    assert [c.name for c in decision.failures] == [f"robust_map50.{attack}"]
    assert f"{attack} robust mAP@0.5 {floor - 0.01:.3f} < {floor:.3f}" in decision.message()


def test_failure_message_lists_each_threshold_with_measured_and_floor():
    report = passing_report(pgd_linf_4=0.012)
    report["baseline"]["clean_mAP50"] = 1.0
    message = evaluate_gate(report, POLICY).message()
    assert message.startswith("gate failed: pgd_linf_4 robust mAP@0.5 0.012 < 0.300; ")
    assert "defence cost (clean mAP@0.5) 0.140 > 0.100 (baseline 1.000, defended 0.860)" in message


def test_robust_metric_at_the_floor_passes():
    assert evaluate_gate(passing_report(pgd_linf_4=0.30), POLICY).passed


@pytest.mark.parametrize("value", ["0.9", True, float("nan"), float("inf"), 1.5, -0.1, None])
def test_malformed_robust_metric_fails(value):
    decision = evaluate_gate(passing_report(pgd_linf_4=value), POLICY)
    assert [c.name for c in decision.failures] == ["robust_map50.pgd_linf_4"]
    assert "not a mAP in 0..1" in decision.message()


def test_missing_attack_result_fails_naming_it():
    report = passing_report()
    del report["attacks"]["patch"]
    decision = evaluate_gate(report, POLICY)
    assert [c.name for c in decision.failures] == ["robust_map50.patch"]
    assert "patch robust mAP@0.5: missing from the report" in decision.message()


def test_missing_clean_metric_fails():
    report = passing_report()
    del report["clean"]["mAP50"]
    assert "clean_map50" in failed_names(report)


def test_defence_cost_above_limit_fails_alone():
    report = passing_report()
    report["baseline"]["clean_mAP50"] = 0.97  # 0.97 - 0.86 = 0.11 > 0.10
    assert failed_names(report) == ["defence_cost"]


def test_defence_cost_at_the_limit_passes():
    report = passing_report()
    report["clean"]["mAP50"], report["baseline"]["clean_mAP50"] = 0.77, 0.87  # float: 0.1000..09
    assert evaluate_gate(report, POLICY).passed


def test_undefended_model_costs_nothing():
    report = passing_report()
    report["model"]["defence"], report["baseline"] = None, None
    decision = evaluate_gate(report, POLICY)
    cost = next(c for c in decision.checks if c.name == "defence_cost")
    assert decision.passed and cost.measured == 0.0 and cost.note == "no defence"


@pytest.mark.parametrize("baseline", [None, {"dir": "x", "weights_sha256": BASELINE_WEIGHTS}])
def test_defended_model_without_baseline_fails(baseline):
    report = passing_report()
    report["baseline"] = baseline
    decision = evaluate_gate(report, POLICY)
    assert [c.name for c in decision.failures] == ["defence_cost"]
    assert "missing evidence" in decision.message()


def test_baseline_that_is_the_model_itself_fails():
    report = passing_report()
    report["baseline"]["weights_sha256"] = WEIGHTS
    assert failed_names(report) == ["defence_cost"]


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("pgd_steps", 5, "pgd_steps 5 in the report, policy 10"),
        ("linf_eps_levels", [2], "linf_eps_levels [2] in the report, policy [2, 4]"),
        ("patch_fraction", 0.1, "patch_fraction 0.1 in the report"),
        ("corruption_severity", True, "corruption_severity True in the report"),
        ("pgd_steps", None, "pgd_steps None in the report"),
    ],
)
def test_suite_mismatch_fails_alone(key, value, expected):
    report = passing_report()
    report["suite"][key] = value
    decision = evaluate_gate(report, POLICY)
    assert [c.name for c in decision.failures] == ["suite"]
    assert expected in decision.message()


def test_suite_eps_levels_in_another_order_match():
    report = passing_report()
    report["suite"]["linf_eps_levels"] = [4, 2]
    assert evaluate_gate(report, POLICY).passed


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"ours_mAP50": 0.20}, "gradient masking"),
        ({"passed": False}, "marks the cross-check as not passed"),
        ({"tolerance": "0.5"}, "cross-check incomplete"),
        ({"art_mAP50": None}, "cross-check incomplete"),
    ],
)
def test_cross_check_failure_fails_alone(changes, expected):
    report = passing_report()
    report["cross_check"].update(changes)
    decision = evaluate_gate(report, POLICY)
    assert [c.name for c in decision.failures] == ["cross_check"]
    assert expected in decision.message()


def test_missing_cross_check_fails():
    report = passing_report()
    report["cross_check"] = None
    assert failed_names(report) == ["evidence", "cross_check"]


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda r: r.update(schema="secmlops.robustness/v0"), "schema 'secmlops.robustness/v0'"),
        (lambda r: r.pop("attacks"), "missing sections: attacks"),
        (lambda r: r.pop("baseline"), "missing sections: baseline"),
        (lambda r: r.update(clean=[0.9]), "clean is not an object"),
        (lambda r: r["model"].pop("defence"), "model.defence missing"),
        (lambda r: r["model"].update(weights_sha256="abc"), "not a SHA-256 hex digest"),
        (lambda r: r["data"].update(split="train"), "training images are not evidence"),
        (lambda r: r["data"].update(split="all"), "training images are not evidence"),
        (
            lambda r: (
                r["data"].update(split="all"),
                r["model"].update(trained_on="runs/data/test"),
            ),
            "training images are not evidence",
        ),
        (lambda r: r["data"].update(images=0), "data.images must be a positive count"),
    ],
)
def test_malformed_report_fails_its_evidence_check(mutate, expected):
    report = passing_report()
    mutate(report)
    decision = evaluate_gate(report, POLICY)
    assert not decision.passed
    assert "evidence" in [c.name for c in decision.failures]
    assert expected in decision.message()


def test_a_whole_held_out_dataset_is_evidence():
    report = passing_report()
    report["data"]["split"] = "all"  # e.g. PETS frames 601-795, imported as their own dataset
    report["model"]["trained_on"] = "/data/pets-train"
    assert evaluate_gate(report, POLICY).passed


@pytest.mark.parametrize("report", [[], "report", None, 3])
def test_report_that_is_not_an_object_raises(report):
    with pytest.raises(GateFailed, match=r"^gate failed: report evidence: the report is a ") as e:
        evaluate_gate(report, POLICY)
    assert e.value.failures[0]["name"] == "evidence"


def test_empty_report_fails_every_check():
    decision = evaluate_gate({}, POLICY)
    assert not decision.passed
    assert [c.name for c in decision.checks if c.passed] == ["regression"]


def test_regression_against_production_fails_alone():
    production = passing_report(pgd_linf_4=0.40)  # candidate 0.36 < 0.40 - 0.02
    decision = evaluate_gate(passing_report(), POLICY, production)
    assert [c.name for c in decision.failures] == ["regression.pgd_linf_4"]
    assert "pgd_linf_4 mAP@0.5 vs production 0.360 < 0.380 (production 0.400 - 0.020)" in (
        decision.message()
    )


def test_regression_within_the_allowance_passes():
    production = passing_report(pgd_linf_4=0.38)
    production["clean"]["mAP50"] = 0.88
    decision = evaluate_gate(passing_report(), POLICY, production)
    assert decision.passed, decision.message()
    assert {f"regression.{a}" for a in GATE["min_robust_map50"]} | {"regression.clean_map50"} <= {
        c.name for c in decision.checks
    }


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda p: p["data"].update(dir="runs/data/other"), "data.dir"),
        (lambda p: p["data"].update(split="val"), "data.split 'test' vs production 'val'"),
        (lambda p: p["data"].update(images=99), "data.images"),
        (lambda p: p["suite"].update(pgd_steps=20), "pgd_steps 20 in the production report"),
        (lambda p: p.update(schema="other"), "its schema is 'other'"),
    ],
)
def test_production_report_on_other_data_or_suite_fails(mutate, expected):
    production = passing_report()
    mutate(production)
    decision = evaluate_gate(passing_report(), POLICY, production)
    assert [c.name for c in decision.failures] == ["regression"]
    assert "not comparable with the production report" in decision.message()
    assert expected in decision.message()


def test_production_report_lacking_a_gated_metric_fails():
    production = passing_report()
    del production["attacks"]["jpeg"]
    assert failed_names(passing_report(), production) == ["regression.jpeg"]


# --------------------------------------------------------------------- the operating point
def test_clean_recall_and_false_alarms_at_the_operating_point_are_gated():
    low = passing_report()
    low["clean"]["recall"] = 0.69
    assert failed_names(low) == ["clean_recall"]
    noisy = passing_report()
    noisy["clean"]["fppi"] = 0.31
    assert failed_names(noisy) == ["clean_fppi"]
    message = evaluate_gate(noisy, POLICY).message()
    assert "clean false positives per image at the operating point 0.310 > 0.300" in message
    at_limits = passing_report()
    at_limits["clean"].update(recall=0.7, fppi=0.3)
    assert evaluate_gate(at_limits, POLICY).passed


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda p: p.update(chosen_by="fixed"), "chosen_by 'fixed', not 'fppi'"),
        (lambda p: p.update(target_fppi=1.0), "target_fppi 1.0, policy 0.1"),
        (lambda p: p.update(split="test"), "chosen on 'test', not 'val'"),
        (lambda p: p.update(score_threshold=1.5), "not in 0..1"),
        (lambda p: p.update(score_threshold=True), "not in 0..1"),
    ],
)
def test_an_operating_point_chosen_otherwise_fails(mutate, expected):
    """A threshold picked by hand, on the test split or at a looser false-alarm rate makes the
    recall figures say something else: the report is not evidence for this policy."""
    report = passing_report()
    mutate(report["operating_point"])
    decision = evaluate_gate(report, POLICY)
    assert [c.name for c in decision.failures] == ["operating_point"]
    assert expected in decision.failures[0].note


@pytest.mark.parametrize("value", ["absent", None, [0.4]])
def test_missing_operating_point_or_pedestrian_figures_fail(value):
    report = passing_report()
    if value == "absent":
        del report["operating_point"]
    else:
        report["operating_point"] = value
    assert "operating_point" in failed_names(report)
    figures = passing_report()
    del figures["clean"]["recall"], figures["clean"]["fppi"]
    assert failed_names(figures) == ["clean_recall", "clean_fppi"]
    bad = passing_report()
    bad["clean"]["fppi"] = float("nan")
    assert failed_names(bad) == ["clean_fppi"]


# ------------------------------------------------------- pedestrian figures under attack
@pytest.mark.parametrize(
    ("attack", "figure", "value", "expected"),
    [
        ("worst_case_linf_4", "recall", 0.39, "worst_case_linf_4 recall at the operating point "
         "0.390 < 0.400"),
        ("vanishing_linf_4", "recall", 0.44, "vanishing_linf_4 recall at the operating point "
         "0.440 < 0.450"),
        ("worst_case_linf_4", "mr2", 0.81, "worst_case_linf_4 MR^-2 0.810 > 0.800"),
    ],
)  # fmt: skip
def test_each_pedestrian_threshold_under_attack_fails_alone(attack, figure, value, expected):
    report = passing_report()
    report["attacks"][attack][figure] = value
    decision = evaluate_gate(report, POLICY)
    kind = "robust_recall" if figure == "recall" else "robust_mr2"
    assert [c.name for c in decision.failures] == [f"{kind}.{attack}"]
    assert expected in decision.message()


@pytest.mark.parametrize("figure", ["recall", "mr2"])
@pytest.mark.parametrize("value", [None, "0.5", True, 1.5, float("nan")])
def test_missing_or_malformed_pedestrian_figure_under_attack_fails(figure, value):
    report = passing_report()
    entry = report["attacks"]["worst_case_linf_4"]
    if value is None:
        del entry[figure]
    else:
        entry[figure] = value
    kind = "robust_recall" if figure == "recall" else "robust_mr2"
    assert failed_names(report) == [f"{kind}.worst_case_linf_4"]


def test_recall_under_attack_may_not_regress_against_production():
    production = passing_report()
    production["attacks"]["worst_case_linf_4"]["recall"] = 0.5  # candidate 0.45 < 0.5 - 0.02
    assert failed_names(passing_report(), production) == ["regression.worst_case_linf_4.recall"]


def test_a_threshold_for_an_eps_level_outside_the_suite_is_refused():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="eps level 8 of worst_case_linf_8"):
        GatePolicy.model_validate({**GATE, "min_robust_recall": {"worst_case_linf_8": 0.1}})
