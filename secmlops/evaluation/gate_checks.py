"""The robustness gate's decision: one check per policy threshold, as a pure function of evidence.

`evaluate_gate(report, policy, production)` judges a `secmlops.robustness/v1` report (written by
`secmlops evaluate --attacks`) against the policy's `gate:` section. Missing or malformed evidence
is a failed check, never a pass; numbers are read strictly (a `true` or a "0.9" is not a mAP).
`secmlops.evaluation.gate` wraps it with the policy file, signing and the audit log.
"""

from __future__ import annotations

import math
from typing import Any, TypeGuard

from secmlops.errors import GateFailed
from secmlops.evaluation.gate_decision import GateCheck, GateDecision
from secmlops.evaluation.gate_decision import fraction as _fraction
from secmlops.evaluation.gate_sanity import person_patch_check, sanity_checks
from secmlops.names import SHA256_HEX, matches
from secmlops.policy import AttackSuitePolicy, GatePolicy

REPORT_SCHEMA = "secmlops.robustness/v1"
ABSENT = object()  # what `get_path` returns for a missing key (distinct from a JSON null)

_SECTIONS = (
    "model", "data", "suite", "operating_point", "clean", "attacks", "cross_check", "sanity",
    "baseline",
)  # fmt: skip
# Judged by their own checks, which name what is wrong with them.
_OWN_CHECK = ("operating_point", "sanity")


def evaluate_gate(
    report: dict[str, Any], policy: GatePolicy, production: dict[str, Any] | None = None
) -> GateDecision:
    """Judge a robustness report against the gate policy (pure: no I/O).

    Args:
        report: the candidate's `secmlops.robustness/v1` report (parsed JSON).
        policy: the policy's `gate:` section.
        production: the production model's report on the same data and suite, or None when
            there is no production model yet (then no regression is checked, and the decision
            says so).

    Returns:
        The decision with one check per threshold; missing or malformed evidence is a failed
        check, never a pass.

    Raises:
        GateFailed: `report` is not even a JSON object, so no check can be made.
    """
    if not isinstance(report, dict):
        check = _evidence_check([f"the report is a {type(report).__name__}, not a JSON object"])
        raise GateFailed(f"gate failed: {check.describe()}", [check.to_dict()])
    clean = get_path(report, "clean", "mAP50")
    checks = [
        _evidence_check(_evidence_problems(report), report.get("schema")),
        _suite_check(report.get("suite"), policy.attacks),
        _at_least("clean_map50", "clean mAP@0.5", clean, policy.min_clean_map50),
        _operating_point_check(report.get("operating_point", ABSENT), policy),
        _at_least(
            "clean_recall", "clean recall at the operating point",
            get_path(report, "clean", "recall"), policy.min_clean_recall,
        ),
        _at_most(
            "clean_fppi", "clean false positives per image at the operating point",
            get_path(report, "clean", "fppi"), policy.operating_point.max_clean_fppi,
        ),
    ]  # fmt: skip
    for name, floor in sorted(policy.min_robust_map50.items()):
        robust = get_path(report, "attacks", name, "mAP50")
        checks.append(_at_least(f"robust_map50.{name}", f"{name} robust mAP@0.5", robust, floor))
    for name, floor in sorted(policy.min_robust_recall.items()):
        recall = get_path(report, "attacks", name, "recall")
        label = f"{name} recall at the operating point"
        checks.append(_at_least(f"robust_recall.{name}", label, recall, floor))
    for name, ceiling in sorted(policy.max_robust_mr2.items()):
        mr2 = get_path(report, "attacks", name, "mr2")
        checks.append(_at_most(f"robust_mr2.{name}", f"{name} MR^-2", mr2, ceiling, fraction=True))
    checks.append(_cross_check(report.get("cross_check", ABSENT)))
    checks.extend(sanity_checks(report.get("sanity"), policy.attacks, policy.sanity))
    if "person_patch" in policy.min_robust_recall:  # a gated figure must come from a working attack
        checks.append(person_patch_check(report.get("attacks"), policy.sanity))
    checks.append(_defence_cost_check(report, policy.max_defence_cost))
    checks.extend(_regression_checks(report, production, policy))
    return GateDecision(tuple(checks))


def get_path(obj: Any, *keys: str) -> Any:
    """`obj[k1][k2]...`, or ABSENT where a level is missing or not an object."""
    for key in keys:
        if not isinstance(obj, dict) or key not in obj:
            return ABSENT
        obj = obj[key]
    return obj


def _at_least(name: str, label: str, value: Any, floor: float, note: str = "") -> GateCheck:
    measured = _fraction(value)
    if measured is None:
        problem = "missing from the report" if value is ABSENT else f"not a mAP in 0..1: {value!r}"
        return GateCheck(name, label, None, floor, ">=", False, problem)
    return GateCheck(name, label, measured, floor, ">=", measured >= floor, note)


def _at_most(
    name: str, label: str, value: Any, ceiling: float, *, fraction: bool = False
) -> GateCheck:
    """`value` <= `ceiling`, for a count per image (>= 0) or, with `fraction`, a rate in 0..1."""
    measured = value if _is_number(value) and math.isfinite(value) and value >= 0 else None
    if fraction:
        measured = _fraction(value)
    if measured is None:
        kind = "a rate in 0..1" if fraction else "a count >= 0"
        problem = "missing from the report" if value is ABSENT else f"not {kind}: {value!r}"
        return GateCheck(name, label, None, ceiling, "<=", False, problem)
    return GateCheck(name, label, float(measured), ceiling, "<=", measured <= ceiling)


def _operating_point_check(point: Any, policy: GatePolicy) -> GateCheck:
    """The report was scored at an operating point chosen on validation data at the policy's
    false-alarm rate: a threshold picked any other way (by hand, on the test split, at a looser
    rate) would make the recall figures say something else."""
    name, label = "operating_point", "operating point"
    target = policy.operating_point.target_fppi
    wanted = f"chosen at {target} FPPI on val"
    if not isinstance(point, dict):
        note = "missing: the model card has no signed operating point to score at"
        return GateCheck(name, label, None, wanted, "==", False, note)
    threshold = _fraction(point.get("score_threshold"))
    problems = []
    if threshold is None:
        problems.append(f"score_threshold {point.get('score_threshold')!r} is not in 0..1")
    if point.get("chosen_by") != "fppi":
        problems.append(f"chosen_by {point.get('chosen_by')!r}, not 'fppi'")
    if not _is_number(point.get("target_fppi")) or point.get("target_fppi") != target:
        problems.append(f"target_fppi {point.get('target_fppi')!r}, policy {target}")
    if point.get("split") != "val":
        problems.append(f"chosen on {point.get('split')!r}, not 'val'")
    measured = (
        f"score >= {threshold:.3f}, chosen by {point.get('chosen_by')} at "
        f"{point.get('target_fppi')} FPPI on {point.get('split')}"
        if threshold is not None
        else None
    )
    note = "; ".join(problems) or "as the policy asks"
    return GateCheck(name, label, measured, wanted, "==", not problems, note)


def _evidence_check(problems: list[str], schema: Any = None) -> GateCheck:
    measured = schema if isinstance(schema, str) else None
    note = "; ".join(problems) or "complete"
    return GateCheck(
        "evidence", "report evidence", measured, REPORT_SCHEMA, "==", not problems, note
    )


def _evidence_problems(report: dict[str, Any]) -> list[str]:
    problems = []
    if report.get("schema") != REPORT_SCHEMA:
        problems.append(f"schema {report.get('schema')!r}, expected {REPORT_SCHEMA!r}")
    missing = [section for section in _SECTIONS if section not in report]
    if missing:
        problems.append(f"missing sections: {', '.join(missing)}")
    for section in _SECTIONS[:-1]:
        if section in _OWN_CHECK:
            continue
        if section in report and not isinstance(report[section], dict):
            problems.append(f"{section} is not an object")
    if report.get("baseline") is not None and not isinstance(report["baseline"], dict):
        problems.append("baseline is neither an object nor null")
    model, data = report.get("model"), report.get("data")
    if isinstance(model, dict):
        if not matches(SHA256_HEX, model.get("weights_sha256")):
            problems.append("model.weights_sha256 is not a SHA-256 hex digest")
        # An absent key must not read as "undefended": that would skip the defence-cost check.
        if "defence" not in model:
            problems.append("model.defence missing (null for an undefended model)")
    if isinstance(data, dict):
        split, images = data.get("split"), data.get("images")
        if not isinstance(split, str):
            problems.append("data.split missing")
        elif split == "train" or (split == "all" and not _held_out(model, data)):
            problems.append(f"data.split is {split!r}: metrics on training images are not evidence")
        if isinstance(images, bool) or not isinstance(images, int) or images < 1:
            problems.append(f"data.images must be a positive count, got {images!r}")
    return problems


def _held_out(model: Any, data: dict[str, Any]) -> bool:
    """Whether the evaluated dataset is not the one the model was trained on: "all" of a dataset
    is evidence only then (PETS frames 601-795 imported as their own dataset, say)."""
    trained_on = model.get("trained_on") if isinstance(model, dict) else None
    return isinstance(trained_on, str) and trained_on != data.get("dir")


def _suite_differences(suite: Any, expected: AttackSuitePolicy, whose: str) -> list[str]:
    if not isinstance(suite, dict):
        return [f"no attack suite in the {whose}"]
    differences = []
    for key, want in expected.model_dump(mode="json").items():
        got = suite.get(key, ABSENT)
        if isinstance(want, list):  # eps levels: the same set, in any order
            same = isinstance(got, list) and all(_is_number(g) for g in got)
            same = same and sorted(got) == sorted(want)
        else:
            same = _is_number(got) and got == want
        if not same:
            shown = "missing" if got is ABSENT else repr(got)
            differences.append(f"{key} {shown} in the {whose}, policy {want!r}")
    return differences


def _is_number(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _suite_check(suite: Any, expected: AttackSuitePolicy) -> GateCheck:
    # Evidence made under a smaller eps or fewer PGD steps overstates robustness for this policy.
    differences = _suite_differences(suite, expected, "report")
    note = "; ".join(differences) or "matches the policy"
    measured = _suite_text(suite) if isinstance(suite, dict) else None
    threshold = _suite_text(expected.model_dump(mode="json"))
    return GateCheck("suite", "attack suite", measured, threshold, "==", not differences, note)


def _suite_text(suite: dict[str, Any]) -> str:
    """A suite in one short line: "eps [2, 4]/255, pgd 10 steps, 1 restarts, patch 0.15,
    severity 3, sanity eps [8, 16, 64]/255 on 16 images"."""
    return (
        f"eps {suite.get('linf_eps_levels')}/255, pgd {suite.get('pgd_steps')} steps, "
        f"{suite.get('restarts')} restarts, patch {suite.get('patch_fraction')}, "
        f"severity {suite.get('corruption_severity')}, sanity eps "
        f"{suite.get('sanity_eps_levels')}/255 on {suite.get('sanity_images')} images"
    )


def _cross_check(cross: Any) -> GateCheck:
    name, label = "cross_check", "cross-check |ART - ours| mAP@0.5"
    if not isinstance(cross, dict):
        note = "no cross-check in the report: the attack's strength is unverified"
        return GateCheck(name, label, None, None, "<=", False, note)
    art, ours = _fraction(cross.get("art_mAP50")), _fraction(cross.get("ours_mAP50"))
    tolerance = cross.get("tolerance")
    if art is None or ours is None or not _is_number(tolerance) or not 0 <= tolerance < 1:
        note = "cross-check incomplete: needs art_mAP50, ours_mAP50 and a tolerance in 0..1"
        return GateCheck(name, label, None, None, "<=", False, note)
    # Recomputed, not taken from the report: its `difference` and `passed` are claims.
    difference = round(abs(art - ours), 9)
    passed = cross.get("passed") is True and difference <= tolerance
    note = f"{cross.get('attack')}: ART {art:.3f}, ours {ours:.3f}"
    if difference > tolerance:
        note += "; the implementations disagree: a weak attack or gradient masking"
    elif cross.get("passed") is not True:
        note += "; the report marks the cross-check as not passed"
    return GateCheck(name, label, difference, float(tolerance), "<=", passed, note)


def _defence_cost_check(report: dict[str, Any], max_cost: float) -> GateCheck:
    name, label = "defence_cost", "defence cost (clean mAP@0.5)"
    model = report.get("model")
    if not isinstance(model, dict) or "defence" not in model:
        note = "missing evidence: the report does not say whether the model is defended"
        return GateCheck(name, label, None, max_cost, "<=", False, note)
    if model["defence"] is None:
        return GateCheck(name, label, 0.0, max_cost, "<=", True, "no defence")
    baseline = report.get("baseline")
    base = _fraction(get_path(baseline, "clean_mAP50"))
    clean = _fraction(get_path(report, "clean", "mAP50"))
    if base is None or clean is None:
        note = "missing evidence: a defended model needs its undefended baseline's clean mAP@0.5"
        return GateCheck(name, label, None, max_cost, "<=", False, note)
    if get_path(baseline, "weights_sha256") == model.get("weights_sha256"):
        note = "the baseline is the defended model itself"
        return GateCheck(name, label, None, max_cost, "<=", False, note)
    cost = round(base - clean, 9)  # rounding: 0.87 - 0.77 must not read as 0.1000000001
    note = f"baseline {base:.3f}, defended {clean:.3f}"
    return GateCheck(name, label, cost, max_cost, "<=", cost <= max_cost, note)


def _regression_checks(
    report: dict[str, Any], production: Any, policy: GatePolicy
) -> list[GateCheck]:
    if production is None:
        note = "no production report given: not checked"
        return [GateCheck("regression", "regression", None, None, ">=", True, note)]
    problems = _comparability_problems(report, production, policy.attacks)
    if problems:
        note = "not comparable with the production report: " + "; ".join(problems)
        return [GateCheck("regression", "production comparison", None, None, "==", False, note)]
    metrics: list[tuple[str, str, tuple[str, ...]]] = [
        ("clean_map50", "clean mAP@0.5", ("clean", "mAP50")),
        ("clean_recall", "clean recall", ("clean", "recall")),
    ]
    metrics += [
        (a, f"{a} mAP@0.5", ("attacks", a, "mAP50")) for a in sorted(policy.min_robust_map50)
    ]
    metrics += [
        (f"{a}.recall", f"{a} recall", ("attacks", a, "recall"))
        for a in sorted(policy.min_robust_recall)
    ]
    checks = []
    for name, label, path in metrics:
        label = f"{label} vs production"
        prod = _fraction(get_path(production, *path))
        if prod is None:
            note = "the production report lacks it: a regression cannot be ruled out"
            checks.append(GateCheck(f"regression.{name}", label, None, None, ">=", False, note))
            continue
        floor = round(prod - policy.max_regression, 9)
        note = f"production {prod:.3f} - {policy.max_regression:.3f}"
        checks.append(_at_least(f"regression.{name}", label, get_path(report, *path), floor, note))
    return checks


def _comparability_problems(
    report: dict[str, Any], production: Any, suite: AttackSuitePolicy
) -> list[str]:
    if not isinstance(production, dict):
        return [f"it is a {type(production).__name__}, not a JSON object"]
    problems = []
    if production.get("schema") != REPORT_SCHEMA:
        problems.append(f"its schema is {production.get('schema')!r}")
    for key in ("dir", "split", "images"):
        ours, theirs = get_path(report, "data", key), get_path(production, "data", key)
        if ours is ABSENT or theirs is ABSENT or ours != theirs:
            shown = ["missing" if v is ABSENT else repr(v) for v in (ours, theirs)]
            problems.append(f"data.{key} {shown[0]} vs production {shown[1]}")
    problems.extend(_suite_differences(production.get("suite"), suite, "production report"))
    return problems
