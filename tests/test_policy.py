"""The policy file: strict schema, precise errors, audited overrides, stable digest."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from secmlops.errors import PolicyError
from secmlops.policy import (
    AttackSuitePolicy,
    DataPolicy,
    GatePolicy,
    Policy,
    apply_override,
    load_policy,
    parse_override_value,
    policy_digest,
)

REPO_POLICY = Path(__file__).resolve().parents[1] / "policy.yaml"
KEY = "ed25519:0123456789abcdef0123456789abcdef"
ROLE_KEYS = {
    "data_owner": [KEY],
    "trainer": ["ed25519:1123456789abcdef0123456789abcdef"],
    "gate": ["ed25519:2123456789abcdef0123456789abcdef"],
    "approver": ["ed25519:3123456789abcdef0123456789abcdef"],
}


def valid() -> dict[str, Any]:
    return {
        "version": 3,
        "roles": {role: list(keys) for role, keys in ROLE_KEYS.items()},
        "data": {
            "min_box_width": 4,
            "min_box_height": 8,
            "max_empty_image_ratio": 0.2,
            "max_near_duplicate_distance": 4,
            "poisoning_score_threshold": 3.0,
            "max_flagged_fraction": 0.0,
        },
        "gate": {
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
            "min_robust_map50": {"pgd_linf_4": 0.3, "patch": 0.4},
            "min_robust_recall": {"worst_case_linf_4": 0.3},
            "max_robust_mr2": {},
            "sanity": {
                "max_recall_at_largest_eps": 0.05,
                "max_recall_rise": 0.05,
                "max_effort_gain": 0.05,
                "max_transfer_gap": 0.02,
            },
            "max_defence_cost": 0.1,
            "max_regression": 0.02,
            "record_validity_days": 14,
        },
        "monitoring": {
            "drift_p_value": 0.01,
            "max_drifted_share": 0.3,
            "min_window": 20,
            "max_flagged_share": 0.1,
            "jump_p_value": 0.001,
            "adversarial_score_threshold": None,
            "cooldown_hours": 6,
        },
    }


def write(tmp_path: Path, content: dict[str, Any] | str) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(content if isinstance(content, str) else yaml.safe_dump(content))
    return path


def error_of(path: Path) -> str:
    with pytest.raises(PolicyError) as caught:
        load_policy(path)
    return str(caught.value)


def test_valid_file_loads(tmp_path):
    policy = load_policy(write(tmp_path, valid()))
    assert isinstance(policy, Policy)
    assert policy.data.min_box_height == 8
    assert policy.roles.data_owner == [KEY]
    assert policy.roles.role_of(ROLE_KEYS["gate"][0]) == "gate"


def test_repo_policy_loads():
    policy = load_policy(REPO_POLICY)
    assert policy.version == 3
    assert 0 < policy.data.max_empty_image_ratio < 1
    assert 0 < policy.gate.min_clean_map50 < 1
    assert policy.gate.min_robust_map50  # every gated attack is one the suite runs (schema)


@pytest.mark.parametrize("field", sorted(DataPolicy.model_fields))
def test_each_missing_threshold_is_an_error(tmp_path, field):
    content = valid()
    del content["data"][field]
    path = write(tmp_path, content)
    assert error_of(path) == f"{path}: data.{field}: field required"


@pytest.mark.parametrize("field", sorted(GatePolicy.model_fields))
def test_each_missing_gate_threshold_is_an_error(tmp_path, field):
    content = valid()
    del content["gate"][field]
    path = write(tmp_path, content)
    assert error_of(path) == f"{path}: gate.{field}: field required"


@pytest.mark.parametrize("field", sorted(AttackSuitePolicy.model_fields))
def test_each_missing_attack_suite_setting_is_an_error(tmp_path, field):
    content = valid()
    del content["gate"]["attacks"][field]
    path = write(tmp_path, content)
    assert error_of(path) == f"{path}: gate.attacks.{field}: field required"


@pytest.mark.parametrize("section", ["version", "data", "gate", "monitoring"])
def test_missing_section_is_an_error(tmp_path, section):
    content = valid()
    del content[section]
    assert f"policy.yaml: {section}: field required" in error_of(write(tmp_path, content))


def test_unknown_keys_are_errors_at_every_level(tmp_path):
    content = valid()
    content["data"]["colour"] = "red"
    content["gate"]["attacks"]["steps"] = 10
    content["gates"] = {}
    message = error_of(write(tmp_path, content))
    assert "data.colour: unknown key" in message
    assert "gate.attacks.steps: unknown key" in message
    assert "gates: unknown key" in message


def test_every_problem_is_reported_at_once(tmp_path):
    content = valid()
    del content["data"]["min_box_width"]
    del content["data"]["max_flagged_fraction"]
    message = error_of(write(tmp_path, content))
    assert "data.min_box_width: field required" in message
    assert "data.max_flagged_fraction: field required" in message


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("min_box_width", "four", "valid number"),
        ("min_box_width", "4", "valid number"),  # strict: no silent str -> number
        ("min_box_width", True, "valid number"),  # `yes` in YAML 1.1
        ("min_box_width", 0, "greater than 0"),
        ("max_empty_image_ratio", 1.5, "less than or equal to 1"),
        ("max_empty_image_ratio", float("inf"), "finite"),
        ("max_near_duplicate_distance", 2.5, "valid integer"),
        ("max_near_duplicate_distance", -1, "greater than or equal to 0"),
        ("poisoning_score_threshold", 0, "greater than 0"),
        ("max_flagged_fraction", -0.1, "greater than or equal to 0"),
    ],
)
def test_wrong_values_name_the_key(tmp_path, field, value, expected):
    content = valid()
    content["data"][field] = value
    message = error_of(write(tmp_path, content))
    assert f"policy.yaml: data.{field}: " in message
    assert expected in message


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("attacks.linf_eps_levels", [0], "[0]: input should be greater than or equal to 1"),
        ("attacks.linf_eps_levels", [4, 65], "[1]: input should be less than or equal to 64"),
        ("attacks.linf_eps_levels", [], "at least 1 item"),
        ("attacks.linf_eps_levels", [2, 4, 2], "eps levels listed more than once: [2]"),
        ("attacks.linf_eps_levels", [2.0, 4], "[0]: input should be a valid integer"),
        ("attacks.pgd_steps", 0, "greater than or equal to 1"),
        ("attacks.pgd_steps", "10", "valid integer"),
        ("attacks.patch_fraction", 0, "greater than 0"),
        ("attacks.patch_fraction", 0.6, "less than or equal to 0.5"),
        ("attacks.corruption_severity", 6, "less than or equal to 5"),
        ("attacks.corruption_severity", True, "valid integer"),
        ("min_clean_map50", 1.5, "less than or equal to 1"),
        ("min_clean_map50", "0.75", "valid number"),
        ("min_robust_map50", {}, "at least 1 item"),
        ("min_robust_map50", [0.3], "valid dictionary"),
        ("min_robust_map50.pgd_linf_4", 1.2, "less than or equal to 1"),
        ("min_robust_map50.pgd_linf_4", True, "valid number"),
        ("max_defence_cost", -0.1, "greater than or equal to 0"),
        ("max_regression", float("nan"), "finite"),
        ("record_validity_days", 0, "greater than or equal to 1"),
        ("record_validity_days", 1.5, "valid integer"),
    ],
)
def test_wrong_gate_values_name_the_key(tmp_path, field, value, expected):
    content = valid()
    *parents, last = field.split(".")
    section = content["gate"]
    for key in parents:
        section = section[key]
    section[last] = value
    message = error_of(write(tmp_path, content))
    assert f"policy.yaml: gate.{field}" in message
    assert expected in message


@pytest.mark.parametrize("name", ["PGD_linf_4", "pgd-linf-4", ""])
def test_attack_names_are_lower_snake_case(tmp_path, name):
    content = valid()
    content["gate"]["min_robust_map50"][name] = 0.3
    message = error_of(write(tmp_path, content))
    assert f"policy.yaml: gate.min_robust_map50.{name}: name string should match pattern" in message


def test_gated_linf_attack_must_be_in_the_suite(tmp_path):
    content = valid()
    content["gate"]["min_robust_map50"]["fgsm_linf_8"] = 0.3
    assert error_of(write(tmp_path, content)).endswith(
        "policy.yaml: gate.min_robust_map50: eps level 8 of fgsm_linf_8 is not in "
        "gate.attacks.linf_eps_levels [2, 4]"
    )


@pytest.mark.parametrize(
    "key", ["ed25519:0123", "rsa:0123456789abcdef0123456789abcdef", KEY.upper()]
)
def test_malformed_key_id_names_its_position(tmp_path, key):
    content = valid()
    content["roles"]["data_owner"] = [KEY.replace("0123", "4567"), key]
    assert "roles.data_owner[1]: string should match pattern" in error_of(write(tmp_path, content))


@pytest.mark.parametrize(
    ("role", "value", "expected"),
    [
        ("data_owner", [], "at least 1 item"),
        ("trainer", KEY, "valid list"),
        ("gate", [KEY, KEY], "listed more than once"),
    ],
)
def test_wrong_role_values_name_the_role(tmp_path, role, value, expected):
    content = valid()
    content["roles"][role] = value
    message = error_of(write(tmp_path, content))
    assert f"policy.yaml: roles.{role}" in message
    assert expected in message


def test_one_key_may_hold_one_role_only(tmp_path):
    content = valid()
    content["roles"]["approver"] = [KEY]  # the data owner's key, also as approver
    message = error_of(write(tmp_path, content))
    assert "a key may hold one role only (separation of duties)" in message
    assert f"{KEY} in data_owner and approver" in message


def test_a_missing_role_is_an_error(tmp_path):
    content = valid()
    del content["roles"]["approver"]
    assert "roles.approver: field required" in error_of(write(tmp_path, content))


def test_roles_cannot_be_overridden_for_one_run():
    policy = load_policy(REPO_POLICY)
    with pytest.raises(PolicyError, match="who holds a role is not a per-run threshold"):
        apply_override(policy, "roles.gate", [KEY], "my own key")
    changed, record = apply_override(policy, "roles.gate", [KEY], "new gate key", roles=True)
    assert changed.roles.gate == [KEY] and record["old"] != [KEY]


def test_version_1_policy_gets_a_migration_hint(tmp_path):
    content = valid()
    content["version"] = 1
    assert "version 2 moves them to roles.data_owner" in error_of(write(tmp_path, content))


def test_version_2_policy_gets_a_migration_hint(tmp_path):
    content = valid()
    content["version"] = 2
    assert "version 3 adds gate.operating_point" in error_of(write(tmp_path, content))


@pytest.mark.parametrize("version", [4, True, "3"])
def test_only_version_3_is_read(tmp_path, version):
    content = valid()
    content["version"] = version
    assert "policy.yaml: version: " in error_of(write(tmp_path, content))


@pytest.mark.parametrize(
    "text", ["version: 1\ndata:\n  min_box_width: [4\n", "version: 1\n? [a, b]\n: 1\n"]
)
def test_malformed_yaml_names_file_and_line(tmp_path, text):
    path = write(tmp_path, text)
    assert error_of(path).startswith(f"{path}: not valid YAML at line ")


def test_repeated_yaml_key_is_an_error(tmp_path):
    text = yaml.safe_dump(valid()) + "version: 3\n"
    assert "key 'version' appears twice" in error_of(write(tmp_path, text))


def test_missing_file_is_an_error(tmp_path):
    path = tmp_path / "nowhere.yaml"
    assert error_of(path) == f"{path}: policy file not found"


@pytest.mark.parametrize("text", ["", "- 1\n- 2\n"])
def test_top_level_must_be_a_mapping(tmp_path, text):
    assert "expected a mapping" in error_of(write(tmp_path, text))


def test_exponent_without_dot_is_a_number(tmp_path):
    text = yaml.safe_dump(valid()).replace(
        "poisoning_score_threshold: 3.0", "poisoning_score_threshold: 3e0"
    )
    assert load_policy(write(tmp_path, text)).data.poisoning_score_threshold == 3.0


def test_override_with_reason_returns_policy_and_audit_record(tmp_path):
    policy = load_policy(write(tmp_path, valid()))
    changed, record = apply_override(
        policy, "data.max_empty_image_ratio", 0.35, "  night footage: mostly empty frames  "
    )
    assert changed.data.max_empty_image_ratio == 0.35
    assert policy.data.max_empty_image_ratio == 0.2  # the original is untouched
    assert record == {
        "path": "data.max_empty_image_ratio",
        "old": 0.2,
        "new": 0.35,
        "reason": "night footage: mostly empty frames",
    }
    assert policy_digest(changed) != policy_digest(policy)


@pytest.mark.parametrize("reason", ["", "   \n\t"])
def test_override_without_reason_is_refused(reason):
    policy = Policy.model_validate(valid())
    with pytest.raises(PolicyError, match=r"^an override needs a written reason$"):
        apply_override(policy, "data.max_empty_image_ratio", 0.3, reason)


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        ("data.max_empty_image_ratio", 2.0, "data.max_empty_image_ratio: input should be less"),
        ("data.min_box_width", "3", "data.min_box_width: input should be a valid number"),
        ("data.nope", 1, "data.nope: unknown policy key"),
        ("gate.min_map", 1, "gate.min_map: unknown policy key"),
        ("monitoring.window", 1, "monitoring.window: unknown policy key"),
        ("gate.min_robust_map50.pgd_linf_8", 0.2, "gate.min_robust_map50.pgd_linf_8: unknown"),
        ("gate.min_robust_map50.patch", 1.5, "gate.min_robust_map50.patch: input should be less"),
        ("gate.min_robust_map50", {"patch": 0.1}, "names a section"),
        ("gate.attacks.linf_eps_levels", [2], "eps level 4 of pgd_linf_4 is not in"),
        ("data", {}, "names a section"),
        ("version", 2, "cannot be overridden"),
    ],
)
def test_bad_override_is_refused_with_its_path(path, value, expected):
    policy = Policy.model_validate(valid())
    with pytest.raises(PolicyError, match=re.escape(expected)):
        apply_override(policy, path, value, "because")


def test_override_of_one_attack_threshold():
    policy = Policy.model_validate(valid())
    changed, record = apply_override(
        policy, "gate.min_robust_map50.pgd_linf_4", parse_override_value("0.25"), "known weak"
    )
    assert changed.gate.min_robust_map50 == {"pgd_linf_4": 0.25, "patch": 0.4}
    assert record == {"path": "gate.min_robust_map50.pgd_linf_4", "old": 0.3, "new": 0.25,
                      "reason": "known weak"}  # fmt: skip
    assert policy_digest(changed) != policy_digest(policy)


def test_override_value_parses_like_the_file():
    policy = Policy.model_validate(valid())
    changed, record = apply_override(
        policy, "data.min_box_width", parse_override_value("6"), "bigger boxes only"
    )
    assert changed.data.min_box_width == 6.0
    assert record["new"] == 6.0
    assert parse_override_value(f"[{KEY}]") == [KEY]


def test_digest_is_canonical(tmp_path):
    digest = policy_digest(load_policy(write(tmp_path, valid())))
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", digest)
    reordered = "# comment\n" + yaml.safe_dump(valid(), sort_keys=False).replace(
        "min_box_width: 4", "min_box_width: 4.0"
    )
    assert policy_digest(load_policy(write(tmp_path, reordered))) == digest


def test_monitoring_section_is_strict(tmp_path):
    content = valid()
    content["monitoring"]["cooldown_hours"] = 0
    assert "monitoring.cooldown_hours" in error_of(write(tmp_path, content))
    content = valid()
    del content["monitoring"]["adversarial_score_threshold"]  # null is a choice; absent is not
    assert "monitoring.adversarial_score_threshold: field required" in error_of(
        write(tmp_path, content)
    )


# Where a user reads override examples: the README, the docs, the trigger form, the CLI's help.
DOCUMENTED = ["README.md", "Makefile", "docs/*.md", "dags/*.py", "secmlops/cli/*.py"]
OVERRIDE_EXAMPLE = re.compile(r"\b((?:data|gate|monitoring)\.[A-Za-z0-9_.]+)=([^\s\"'`,)]+)")


def documented_override_examples() -> list[tuple[str, str, str]]:
    root = Path(__file__).resolve().parents[1]
    found = {}
    for pattern in DOCUMENTED:
        for path in sorted(root.glob(pattern)):
            for key, value in OVERRIDE_EXAMPLE.findall(path.read_text()):
                if "$" not in value:  # a shell substitution, filled in when the command runs
                    found[(key, value)] = str(path.relative_to(root))
    return [(key, value, where) for (key, value), where in sorted(found.items())]


def test_every_documented_override_example_applies_to_the_policy():
    """The trigger form once suggested `gate.min_clean_mAP50=0.7`, an unknown key; every
    example a user can copy must name a real threshold with a valid value."""
    from secmlops.policy import parse_overrides

    examples = documented_override_examples()
    assert len(examples) >= 5 and ("gate.attacks.pgd_steps", "3") in {e[:2] for e in examples}
    policy = load_policy(REPO_POLICY)
    for key, value, where in examples:
        for path, parsed, reason in parse_overrides([f"{key}={value}"], f"example in {where}"):
            apply_override(policy, path, parsed, reason)  # raises PolicyError if it does not


def test_a_misspelt_override_example_would_be_caught():
    from secmlops.policy import parse_overrides

    ((path, value, reason),) = parse_overrides(["gate.min_clean_mAP50=0.7"], "the old example")
    with pytest.raises(PolicyError, match="unknown policy key"):
        apply_override(load_policy(REPO_POLICY), path, value, reason)
