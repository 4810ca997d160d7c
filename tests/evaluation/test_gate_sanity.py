"""The gate's sanity checks: each expectation of a working attack failing alone, and missing
or forged figures failing (the measurements themselves: tests/evaluation/test_robustness.py)."""

from __future__ import annotations

import pytest

from secmlops.evaluation.gate_checks import evaluate_gate
from secmlops.policy import GatePolicy

from .test_gate_checks import GATE, POLICY, passing_report


def sanity_failures(mutate) -> tuple[list[str], str]:
    report = passing_report()
    mutate(report["sanity"])
    decision = evaluate_gate(report, POLICY)
    return [c.name for c in decision.failures], decision.message()


def test_a_passing_sanity_section_gives_one_check_per_expectation():
    decision = evaluate_gate(passing_report(), POLICY)
    names = [c.name for c in decision.checks if c.name.startswith("sanity")]
    assert names == [
        "sanity.subset",
        "sanity.monotone.vanishing", "sanity.large_eps.vanishing",
        "sanity.monotone.worst_case", "sanity.large_eps.worst_case",
        "sanity.more_steps", "sanity.more_restarts", "sanity.transfer",
    ]  # fmt: skip
    assert decision.passed, decision.message()


def test_recall_left_at_a_large_eps_fails_naming_the_check():
    def mutate(sanity):
        sanity["sweep"][-1]["vanishing"] = 0.1  # as many as at 16/255: nobody more is hidden

    names, message = sanity_failures(mutate)
    assert names == ["sanity.large_eps.vanishing"]
    assert "sanity: vanishing recall at 64/255 0.100 > 0.050" in message
    assert "gradient masking or a broken attack" in message


def test_recall_rising_with_eps_fails_naming_the_check():
    def mutate(sanity):
        sanity["sweep"][2]["worst_case"] = 0.6  # 0.45 at 4/255, 0.6 at 8/255

    names, message = sanity_failures(mutate)
    assert names == ["sanity.monotone.worst_case"]
    assert "largest rise of worst_case recall as eps grows 0.150 > 0.050" in message


def test_a_rise_within_the_tolerance_passes():
    def mutate(sanity):
        sanity["sweep"][2]["worst_case"] = 0.49  # +0.04: a few people of noise

    assert sanity_failures(mutate)[0] == []


@pytest.mark.parametrize("what", ["more_steps", "more_restarts"])
def test_more_effort_finding_much_more_fails_naming_the_check(what):
    def mutate(sanity):
        sanity["effort"][what]["recall"] = 0.3  # 0.5 with the suite's budget

    names, message = sanity_failures(mutate)
    assert names == [f"sanity.{what}"]
    assert "0.200 > 0.050" in message and "understates the attacker" in message


def test_a_transfer_attack_beating_the_white_box_fails_naming_the_check():
    def mutate(sanity):
        sanity["transfer"]["transfer_recall"] = 0.2  # white box leaves 0.5

    names, message = sanity_failures(mutate)
    assert names == ["sanity.transfer"]
    assert "0.300 > 0.020" in message and "gradient masking" in message


def test_no_model_to_transfer_from_fails():
    def mutate(sanity):
        sanity["transfer"]["source"] = None
        sanity["transfer"]["transfer_recall"] = None

    names, message = sanity_failures(mutate)
    assert names == ["sanity.transfer"]
    assert "no independently trained model to transfer from" in message


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda s: s["sweep"].pop(), ["sanity.sweep"]),  # 64/255 never run
        (lambda s: s["sweep"][0].update(eps=3), ["sanity.sweep"]),
        # 4/255 is also the white-box figure more effort and the transfer are compared with.
        (
            lambda s: s["sweep"][1].update(vanishing="0.5"),
            [
                "sanity.monotone.vanishing",
                "sanity.more_steps",
                "sanity.more_restarts",
                "sanity.transfer",
            ],
        ),
        (lambda s: s["sweep"][2].update(vanishing="0.3"), ["sanity.monotone.vanishing"]),
        (lambda s: s.update(people=0), ["sanity.subset"]),  # nobody to hide: vacuous
        (lambda s: s.update(images=17), ["sanity.subset"]),  # more than the policy asks
        (lambda s: s.update(people=True), ["sanity.subset"]),
        (lambda s: s["effort"].pop("more_steps"), ["sanity.more_steps"]),
        (lambda s: s["transfer"].update(transfer_recall=2.0), ["sanity.transfer"]),
        (lambda s: s["transfer"].update(transfer_recall=None), ["sanity.transfer"]),
    ],
)
def test_missing_or_malformed_sanity_figures_fail(mutate, expected):
    assert sanity_failures(mutate)[0] == expected


def test_the_white_box_figure_is_read_from_the_sweep_not_from_its_copies():
    """A forger who lowers only the copies of the white-box recall (effort, transfer) to make
    more effort and the transfer look harmless still fails: the sweep holds the figure."""

    def mutate(sanity):
        sanity["sweep"][1]["vanishing"] = 0.9  # 4/255 in the sweep: 0.9, nearly clean
        sanity["sweep"][0]["vanishing"] = 0.9
        sanity["effort"]["recall"] = sanity["transfer"]["white_box_recall"] = 0.45

    names, _ = sanity_failures(mutate)
    assert names == ["sanity.more_steps", "sanity.more_restarts", "sanity.transfer"]


@pytest.mark.parametrize("value", [None, [], "passed"])
def test_a_report_without_a_sanity_section_fails(value):
    report = passing_report()
    report["sanity"] = value
    decision = evaluate_gate(report, POLICY)
    assert [c.name for c in decision.failures] == ["sanity"]
    assert "no evidence that its attacks work" in decision.message()


def test_a_report_missing_the_sanity_key_fails_the_evidence_too():
    report = passing_report()
    del report["sanity"]
    assert [c.name for c in evaluate_gate(report, POLICY).failures] == ["evidence", "sanity"]


# ------------------------------------------------------------------ the person patch

PATCH_POLICY = GatePolicy.model_validate(
    {**GATE, "min_robust_recall": {**GATE["min_robust_recall"], "person_patch": 0.2}}
)


def patch_report(optimised, control) -> dict:
    report = passing_report()
    for name, recall in (("person_patch", optimised), ("person_patch_random", control)):
        if recall is not None:
            report["attacks"][name] = {"family": "patch", "mAP50": 0.5, "recall": recall}
    return report


def test_an_optimised_patch_weaker_than_random_pixels_fails_naming_the_check():
    """A model trained on adversarial patches can make the patch attack fail: the evaluation's
    patch then leaves more people found (0.84) than the random square it starts from (0.30),
    and its high figure would pass the person-patch floor. It is no evidence."""
    decision = evaluate_gate(patch_report(0.84, 0.30), PATCH_POLICY)
    assert [c.name for c in decision.failures] == ["sanity.person_patch"]
    assert "hides fewer people than random pixels" in decision.message()


def test_an_optimised_patch_that_beats_random_pixels_passes():
    decision = evaluate_gate(patch_report(0.45, 0.60), PATCH_POLICY)
    assert decision.passed, decision.message()
    assert "sanity.person_patch" in [c.name for c in decision.checks]
    # Within the effort tolerance of its random start, too (seeded draws differ a little).
    assert evaluate_gate(patch_report(0.62, 0.60), PATCH_POLICY).passed


@pytest.mark.parametrize("control", [None, "0.3", 1.5])
def test_a_missing_or_malformed_random_control_fails(control):
    report = patch_report(0.45, None)
    if control is not None:
        report["attacks"]["person_patch_random"] = {"recall": control}
    decision = evaluate_gate(report, PATCH_POLICY)
    assert [c.name for c in decision.failures] == ["sanity.person_patch"]


def test_without_a_gated_person_patch_there_is_no_patch_check():
    names = [c.name for c in evaluate_gate(patch_report(0.84, 0.30), POLICY).checks]
    assert "sanity.person_patch" not in names
