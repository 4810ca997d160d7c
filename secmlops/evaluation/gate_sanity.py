"""The gate's judgement of a report's sanity checks (pure: figures in, checks out).

`secmlops.evaluation.sanity` measures, on a subset of the split, the recall at the operating
point under the white-box attacks as eps grows, with more steps and restarts, and under a
transfer attack from the baseline. Here each expectation of a working attack (Carlini et al.
2019, "On Evaluating Adversarial Robustness") becomes one gate check, named `sanity.<what>`, so
a refusal says which expectation the evidence broke. Missing or malformed figures fail.
"""

from __future__ import annotations

import itertools
from typing import Any, TypeGuard

from secmlops.evaluation.gate_decision import GateCheck
from secmlops.evaluation.gate_decision import fraction as _recall
from secmlops.policy import AttackSuitePolicy, SanityPolicy

# The white-box attacks of the eps sweep (see secmlops.evaluation.sanity).
SWEPT = ("vanishing", "worst_case")
_WHY = {
    "monotone": "robustness must fall as eps grows; a rise means the attack gets lost",
    "large_eps": "a working attack hides nearly everyone at a large eps: gradient masking or "
    "a broken attack",
    "more_steps": "more steps find much more: the suite's budget understates the attacker",
    "more_restarts": "more restarts find much more: the suite's budget understates the attacker",
    "transfer": "a transferred attack beats the white-box one: the model's gradients mislead "
    "(gradient masking)",
    "person_patch": "the optimised person patch hides fewer people than random pixels of the "
    "same size, its own starting point: the patch attack failed on this model and its figure "
    "is no evidence (a model trained on patches may take them as a person cue)",
}


def sanity_checks(sanity: Any, suite: AttackSuitePolicy, policy: SanityPolicy) -> list[GateCheck]:
    """One check per expectation of the sanity section; a missing section is one failed check.

    Args:
        sanity: the report's `sanity` section (parsed JSON, or anything a forger wrote).
        suite: the policy's attack suite (the sweep must cover its levels and the sanity ones).
        policy: the tolerances.
    """
    if not isinstance(sanity, dict):
        note = "missing: the report has no evidence that its attacks work"
        return [GateCheck("sanity", "sanity checks", None, None, "==", False, note)]
    checks = [_subset_check(sanity, suite)]
    checks.extend(_sweep_checks(sanity.get("sweep"), suite, policy))
    # The white-box figure more effort and the transfer are compared with is read from the
    # sweep at the suite's largest eps: the report's other copies of it are only claims.
    base = _white_box_recall(sanity.get("sweep"), max(suite.linf_eps_levels))
    effort = sanity.get("effort")
    if not isinstance(effort, dict):
        effort = {}
    for what, key in (("more_steps", "more_steps"), ("more_restarts", "more_restarts")):
        more = effort.get(key)
        stronger = _recall(more.get("recall")) if isinstance(more, dict) else None
        gain = None if base is None or stronger is None else round(base - stronger, 9)
        label = f"sanity: recall lost to {what.replace('_', ' ')} at {effort.get('eps')}/255"
        checks.append(_tolerance(f"sanity.{what}", label, gain, policy.max_effort_gain, what))
    checks.append(_transfer_check(sanity.get("transfer"), base, policy))
    return checks


def person_patch_check(attacks: Any, policy: SanityPolicy) -> GateCheck:
    """The person-worn patch beats its random control (the same square, random pixels, worn the
    same way; `train_patch` starts from such pixels): an optimisation that ends up hiding fewer
    people than its own start is a failed attack, as more steps finding more is in the effort
    checks, and within the same tolerance. Missing or malformed figures fail.

    Args:
        attacks: the report's `attacks` section.
        policy: the tolerances (`max_effort_gain`).
    """
    entries = attacks if isinstance(attacks, dict) else {}
    optimised, control = entries.get("person_patch"), entries.get("person_patch_random")
    worn = _recall(optimised.get("recall")) if isinstance(optimised, dict) else None
    random = _recall(control.get("recall")) if isinstance(control, dict) else None
    lost = None if worn is None or random is None else round(worn - random, 9)
    label = "sanity: recall with the optimised person patch above recall with random pixels"
    return _tolerance(
        "sanity.person_patch", label, lost, policy.max_effort_gain, "person_patch",
        "missing: the person patch and its random control must both have a recall",
    )  # fmt: skip


def _white_box_recall(sweep: Any, level: int) -> float | None:
    """Recall under vanishing at eps `level` in the sweep (None: not there, or not a recall)."""
    rows = sweep if isinstance(sweep, list) else []
    found = [row for row in rows if isinstance(row, dict) and row.get("eps") == level]
    return _recall(found[0].get("vanishing")) if len(found) == 1 else None


def _tolerance(
    name: str, label: str, measured: float | None, ceiling: float, why: str, missing: str = ""
) -> GateCheck:
    if measured is None:
        note = missing or "missing or not a recall in 0..1"
        return GateCheck(name, label, None, ceiling, "<=", False, note)
    passed = measured <= ceiling
    return GateCheck(name, label, measured, ceiling, "<=", passed, "" if passed else _WHY[why])


def _subset_check(sanity: dict[str, Any], suite: AttackSuitePolicy) -> GateCheck:
    """The checks ran on people: a subset without anyone would pass every check vacuously."""
    images, people = sanity.get("images"), sanity.get("people")
    note = f"{images!r} images with {people!r} people"
    if not (_is_count(images) and _is_count(people)):
        return GateCheck("sanity.subset", "sanity subset people", None, 1.0, ">=", False, note)
    ok = 1 <= images <= suite.sanity_images and people >= 1
    note += "" if ok else f": the policy asks for 1..{suite.sanity_images} images with people"
    return GateCheck("sanity.subset", "sanity subset people", float(people), 1.0, ">=", ok, note)


def _is_count(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _sweep_checks(sweep: Any, suite: AttackSuitePolicy, policy: SanityPolicy) -> list[GateCheck]:
    wanted = sorted({*suite.linf_eps_levels, *suite.sanity_eps_levels})
    rows = sweep if isinstance(sweep, list) else []
    levels = [row.get("eps") for row in rows if isinstance(row, dict)]
    if levels != wanted or len(rows) != len(wanted):
        note = f"the sweep covers eps {levels or 'nothing'}, the policy asks for {wanted}"
        return [GateCheck("sanity.sweep", "sanity eps sweep", None, str(wanted), "==", False, note)]
    checks = []
    for attack in SWEPT:
        recalls = [_recall(row.get(attack)) for row in rows]
        if any(r is None for r in recalls):
            label = f"sanity: {attack} recall over eps"
            checks.append(_tolerance(f"sanity.monotone.{attack}", label, None, 0.0, "monotone"))
            continue
        known = [r for r in recalls if r is not None]
        rise = max((later - earlier for earlier, later in itertools.pairwise(known)), default=0.0)
        label = f"sanity: largest rise of {attack} recall as eps grows"
        checks.append(
            _tolerance(
                f"sanity.monotone.{attack}", label, round(max(rise, 0.0), 9),
                policy.max_recall_rise, "monotone",
            )
        )  # fmt: skip
        label = f"sanity: {attack} recall at {wanted[-1]}/255"
        checks.append(
            _tolerance(
                f"sanity.large_eps.{attack}", label, known[-1],
                policy.max_recall_at_largest_eps, "large_eps",
            )
        )  # fmt: skip
    return checks


def _transfer_check(transfer: Any, white: float | None, policy: SanityPolicy) -> GateCheck:
    name, label = "sanity.transfer", "sanity: white-box recall above transferred recall"
    if not isinstance(transfer, dict) or transfer.get("source") is None:
        missing = (
            "no independently trained model to transfer from: evaluate with the undefended "
            "baseline (`secmlops evaluate --baseline`; the training DAG trains one for every "
            "defended run, and an undefended run cannot pass)"
        )
        return _tolerance(name, label, None, policy.max_transfer_gap, "transfer", missing)
    moved = _recall(transfer.get("transfer_recall"))
    gap = None if white is None or moved is None else round(white - moved, 9)
    label = f"{label} at {transfer.get('eps')}/255"
    return _tolerance(name, label, gap, policy.max_transfer_gap, "transfer")
