"""The policy file: every threshold the lifecycle enforces, in one schema-validated YAML file.

What it guards against is the quiet failure of a control: a threshold mistyped (`min_box_heigth`),
dropped in a merge, or written as a string or `yes` would, with defaults, turn a gate into one
that always passes. Here every model forbids unknown keys, no threshold has a default, values are
validated strictly (no "0.2" -> 0.2, no `yes` -> 1, no `.inf`), and every error names the file and
the exact key path. Changing a threshold for one run goes through `apply_override`, which demands a
written reason and returns the record that the caller appends to the audit log; decisions record
`policy_digest` so an audit shows which thresholds they were made under.

Layout: one model per lifecycle stage, each a required field of `Policy`: `roles:` (which keys
may act in which role of the release chain), `data:` (validation, leakage and poisoning screens),
`gate:` (the robustness validation gate: the attack suite its evidence must come from, the
operating point a release serves at, the clean recall at that point, clean and robust mAP floors,
the accuracy a defence may cost, the regression allowed against production, how long a gate
record stays valid) and `monitoring:` (drift and attack signals that request retraining, and the
cooldown between requests).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from secmlops.errors import PolicyError

POLICY_VERSION = 3
KEY_ID_PATTERN = r"^ed25519:[0-9a-f]{32}$"

ATTACK_NAME_PATTERN = r"^[a-z0-9_]+$"
# Attack names the evaluation suite derives from an L-inf eps level k (in 1/255 pixel steps).
LINF_ATTACK_PATTERN = re.compile(r"^(?:fgsm|pgd|vanishing|fabrication|worst_case)_linf_([0-9]+)$")

KeyId = Annotated[str, StringConstraints(pattern=KEY_ID_PATTERN)]
AttackName = Annotated[str, StringConstraints(pattern=ATTACK_NAME_PATTERN)]
Fraction = Annotated[float, Field(ge=0, le=1)]
EpsLevel = Annotated[int, Field(ge=1, le=64)]


class _Section(BaseModel):
    """Base of every policy model: unknown keys are errors, values are never coerced."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class DataPolicy(_Section):
    """Thresholds of the data stage (validation, leakage and poisoning screens)."""

    min_box_width: float = Field(gt=0, description="smallest person box width, pixels")
    min_box_height: float = Field(gt=0, description="smallest person box height, pixels")
    max_empty_image_ratio: float = Field(
        ge=0, le=1, description="largest share of images without any person box"
    )
    max_near_duplicate_distance: int = Field(
        ge=0, le=64, description="Hamming distance (bits of the 64-bit perceptual hash) at or "
        "below which two images in different splits are near-duplicates",
    )  # fmt: skip
    poisoning_score_threshold: float = Field(
        gt=0, description="images scoring above this are flagged by the poisoning screen"
    )
    max_flagged_fraction: float = Field(
        ge=0, le=1, description="the screen fails when more than this share of images is flagged"
    )


def _unique_key_ids(keys: list[str]) -> list[str]:
    # A repeated id is harmless by itself but usually means a key was meant to be replaced.
    repeated = sorted({k for k in keys if keys.count(k) > 1})
    if repeated:
        raise ValueError(f"key ids listed more than once: {', '.join(repeated)}")
    return keys


RoleKeys = Annotated[list[KeyId], Field(min_length=1), AfterValidator(_unique_key_ids)]


class RolesPolicy(_Section):
    """Which keys act in which role of the release chain (separation of duties).

    Each role signs one kind of document, and a verifier accepts that document only when its
    signer's key id is listed under that role: `data_owner` signs dataset manifests, `trainer`
    the provenance of a trained model, `gate` gate decisions (and non-production alias moves),
    `approver` the move of the production alias. A key id listed under two roles is refused, so
    that no single key can walk a model from data to production alone.
    """

    data_owner: RoleKeys = Field(description="key ids trusted to sign dataset manifests")
    trainer: RoleKeys = Field(description="key ids trusted to sign trained models' provenance")
    gate: RoleKeys = Field(description="key ids trusted to sign gate decisions and staging moves")
    approver: RoleKeys = Field(description="key ids trusted to approve promotion to production")

    @model_validator(mode="after")
    def _one_role_per_key(self) -> RolesPolicy:
        holders: dict[str, list[str]] = {}
        for role, keys in self.model_dump().items():
            for kid in keys:
                holders.setdefault(kid, []).append(role)
        shared = {kid: roles for kid, roles in holders.items() if len(roles) > 1}
        if shared:
            described = "; ".join(
                f"{kid} in {' and '.join(roles)}" for kid, roles in sorted(shared.items())
            )
            raise ValueError(f"a key may hold one role only (separation of duties): {described}")
        return self

    def role_of(self, kid: str) -> str | None:
        """The role key id `kid` holds, or None."""
        return next((role for role, keys in self.model_dump().items() if kid in keys), None)


class AttackSuitePolicy(_Section):
    """The attack suite whose results the gate judges; evidence from another suite is refused."""

    linf_eps_levels: list[EpsLevel] = Field(
        min_length=1, description="L-inf budgets in 1/255 pixel levels; level k names the attacks "
        "fgsm_linf_<k>, pgd_linf_<k>, vanishing_linf_<k>, fabrication_linf_<k> and "
        "worst_case_linf_<k>",
    )  # fmt: skip
    pgd_steps: int = Field(ge=1, description="PGD iterations per image (also APGD's)")
    restarts: int = Field(
        ge=1, le=100, description="random restarts of the score-level attacks, the worst kept "
        "per image",
    )  # fmt: skip
    patch_fraction: float = Field(
        gt=0, le=0.5, description="adversarial patch side as a fraction of the image's short side"
    )
    person_patch_fraction: float = Field(
        gt=0, le=1, description="side of the person-worn patch as a fraction of the wearer's "
        "height",
    )  # fmt: skip
    person_patch_steps: int = Field(ge=1, description="optimisation steps of the person patch")
    corruption_severity: int = Field(
        ge=1, le=5, description="natural corruption severity (ImageNet-C scale)"
    )
    sanity_eps_levels: list[EpsLevel] = Field(
        min_length=1, description="extra L-inf levels of the sanity checks' eps sweep (the "
        "largest should be far beyond any defence, e.g. 64)",
    )  # fmt: skip
    sanity_images: int = Field(
        ge=1, description="images with people the sanity checks attack (spread over the split)"
    )

    @field_validator("linf_eps_levels", "sanity_eps_levels")
    @classmethod
    def _no_repeated_levels(cls, levels: list[int]) -> list[int]:
        # A repeat would run one attack twice under the same name; it is always a typo.
        repeated = sorted({level for level in levels if levels.count(level) > 1})
        if repeated:
            raise ValueError(f"eps levels listed more than once: {repeated}")
        return levels


class OperatingPointPolicy(_Section):
    """The score threshold a release serves at, and how many false alarms it may raise."""

    target_fppi: float = Field(
        gt=0, le=10, description="training picks the lowest score threshold whose false "
        "positives per image on the validation split are at most this",
    )  # fmt: skip
    max_clean_fppi: float = Field(
        gt=0, le=10, description="most false positives per clean test image at the operating point"
    )


class SanityPolicy(_Section):
    """How far the evidence may stray from what working attacks show (Carlini et al. 2019).

    Every figure is a recall at the operating point on the sanity subset, under the white-box
    attacks (vanishing and the per-image worst case); a report outside these bounds is not
    evidence of robustness, whatever its robust figures say.
    """

    max_recall_at_largest_eps: Fraction = Field(
        description="most recall left at the sweep's largest eps (a working attack hides "
        "nearly everyone there)"
    )
    max_recall_rise: Fraction = Field(
        description="most recall may rise from one eps level to the next larger one"
    )
    max_effort_gain: Fraction = Field(
        description="most recall 4x the steps or 4x the restarts may take off the suite's "
        "figure, and the most the optimised person patch may leave found above its random start"
    )
    max_transfer_gap: Fraction = Field(
        description="most the white-box recall may exceed the recall under the same attack "
        "transferred from the independently trained baseline"
    )


class GatePolicy(_Section):
    """Thresholds of the robustness validation gate (secmlops/evaluation/gate.py)."""

    attacks: AttackSuitePolicy
    operating_point: OperatingPointPolicy
    min_clean_map50: Fraction = Field(description="lowest clean mAP@0.5 on the test split")
    min_robust_map50: dict[AttackName, Fraction] = Field(
        min_length=1, description="attack name -> lowest mAP@0.5 under that attack"
    )
    min_clean_recall: Fraction = Field(
        description="lowest share of the clean test split's people found at the operating point"
    )
    min_robust_recall: dict[AttackName, Fraction] = Field(
        min_length=1, description="attack name -> lowest share of people found at the "
        "operating point under that attack",
    )  # fmt: skip
    max_robust_mr2: dict[AttackName, Fraction] = Field(
        description="attack name -> highest log-average miss rate MR^-2 under that attack "
        "(may be empty)"
    )
    sanity: SanityPolicy

    max_defence_cost: Fraction = Field(
        description="most clean mAP@0.5 a defence may cost against the undefended baseline model"
    )
    max_regression: Fraction = Field(
        description="how far below the production model any gated metric may fall"
    )
    record_validity_days: int = Field(
        ge=1, le=366, description="days a passed gate record may be used to promote its model"
    )

    @field_validator("min_robust_map50", "min_robust_recall", "max_robust_mr2")
    @classmethod
    def _gated_attacks_are_in_the_suite(
        cls, thresholds: dict[str, float], info: ValidationInfo
    ) -> dict[str, float]:
        # A threshold for an eps level the suite never runs could only ever fail the gate.
        suite = info.data.get("attacks")
        if suite is None:  # `attacks` is invalid itself and reported on its own
            return thresholds
        levels = sorted(suite.linf_eps_levels)
        for name in thresholds:
            match = LINF_ATTACK_PATTERN.fullmatch(name)
            if match and int(match.group(1)) not in levels:
                raise ValueError(
                    f"eps level {match.group(1)} of {name} is not in "
                    f"gate.attacks.linf_eps_levels {levels}"
                )
        return thresholds


class MonitoringPolicy(_Section):
    """Thresholds of the monitoring stage: when a window of served requests asks for retraining."""

    drift_p_value: float = Field(
        gt=0, lt=1, description="a feature drifts when its K-S p-value is below this"
    )
    max_drifted_share: float = Field(
        gt=0, le=1, description="drift is declared when at least this share of features drifts"
    )
    min_window: int = Field(ge=5, description="fewest requests a window needs to be judged")
    max_flagged_share: float = Field(
        gt=0, le=1, description="attack alarm when at least this share of requests is flagged"
    )
    jump_p_value: float = Field(
        gt=0, lt=1, description="attack alarm when the flagged share rises this significantly"
    )
    adversarial_score_threshold: float | None = Field(
        description="requests served without a calibrated screener count as flagged above this "
        "score; null: such requests cannot be judged (an error, not a pass)"
    )
    cooldown_hours: float = Field(
        gt=0, description="a request for the same reason inside this time is suppressed"
    )


class Policy(_Section):
    """The whole policy file: its format version and one section per lifecycle stage."""

    version: Literal[3]
    roles: RolesPolicy
    data: DataPolicy
    gate: GatePolicy
    monitoring: MonitoringPolicy

    @field_validator("version", mode="before")
    @classmethod
    def _version_is_not_a_bool(cls, value: Any) -> Any:
        # `True == 1` in Python, so Literal[1] alone would accept `version: yes`.
        if isinstance(value, bool):
            raise ValueError(f"must be {POLICY_VERSION}, got {value!r}")
        if value == 1:
            raise ValueError(
                f"must be {POLICY_VERSION}: version 1 trusted data keys in "
                "data.trusted_data_keys; version 2 moves them to roles.data_owner and adds "
                "roles.trainer, roles.gate, roles.approver and gate.record_validity_days"
            )
        if value == 2:
            raise ValueError(
                f"must be {POLICY_VERSION}: version 3 adds gate.operating_point (the score "
                "threshold a release serves at, and its false alarms), gate.min_clean_recall, "
                "gate.min_robust_recall, gate.max_robust_mr2, gate.sanity, and "
                "gate.attacks.restarts, person_patch_fraction, person_patch_steps, "
                "sanity_eps_levels and sanity_images"
            )
        return value


class _StrictLoader(yaml.SafeLoader):
    """Safe YAML loader that rejects repeated keys (PyYAML silently keeps the last one)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, Hashable):
                continue  # the base class reports unhashable keys
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice in one mapping", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


# YAML 1.1 reads `1e-3` as a string; a threshold written so should be the number it looks like.
_StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9]+(?:\.[0-9]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def load_policy(path: Path | str) -> Policy:
    """Read and validate a policy file.

    Args:
        path: the YAML policy file.

    Returns:
        The validated, immutable policy.

    Raises:
        PolicyError: the file is missing or unreadable, is not valid YAML, or does not match the
            schema; the message names the file and the key path of every problem.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PolicyError(f"{path}: policy file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyError(f"{path}: cannot read the policy file ({exc})") from None
    try:
        raw = yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass: no arbitrary objects
    except yaml.YAMLError as exc:
        raise PolicyError(f"{path}: {_yaml_error(exc)}") from None
    if not isinstance(raw, dict):
        got = "an empty file" if raw is None else f"a {type(raw).__name__}"
        raise PolicyError(
            f"{path}: expected a mapping with 'version', 'roles', 'data', 'gate' and "
            f"'monitoring', got {got}"
        )
    return _validate(raw, str(path))


def policy_digest(policy: Policy) -> str:
    """Digest of the policy's canonical JSON (sorted keys, no whitespace): "sha256:<hex>".

    Two files that differ only in comments, key order or `3` vs `3.0` give the same digest.
    """
    canonical = json.dumps(
        policy.model_dump(mode="json"), sort_keys=True, separators=(",", ":"), ensure_ascii=True
    )
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


def parse_override_value(text: str) -> Any:
    """Parse a command-line override value the way the policy file would (`0.3`, `[a, b]`).

    Raises:
        PolicyError: the text is not a valid YAML scalar or list.
    """
    try:
        return yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass: no arbitrary objects
    except yaml.YAMLError as exc:
        raise PolicyError(f"override value {text!r}: {_yaml_error(exc)}") from None


def parse_overrides(assignments: Sequence[str], reason: str) -> list[tuple[str, Any, str]]:
    """`KEY.PATH=VALUE` assignments (command line, DAG params) -> (path, value, reason) triples
    for `apply_override` and the gate.

    Raises:
        PolicyError: an assignment without `=` or a key, a value that does not parse, or
            assignments without a written reason.
    """
    if assignments and not (reason or "").strip():
        raise PolicyError("an override needs a written reason")
    overrides = []
    for assignment in assignments:
        path, sep, text = assignment.partition("=")
        if not sep or not path.strip():
            raise PolicyError(f"an override must look like KEY.PATH=VALUE, got {assignment!r}")
        overrides.append((path.strip(), parse_override_value(text), reason.strip()))
    return overrides


def apply_override(
    policy: Policy, path: str, value: Any, reason: str, *, roles: bool = False
) -> tuple[Policy, dict[str, Any]]:
    """Change one threshold for this run, with a written reason.

    Args:
        policy: the policy to start from (not modified).
        path: dotted key path of one threshold, e.g. "data.max_empty_image_ratio".
        value: the new value, validated as strictly as the policy file.
        reason: why; recorded in the audit log by the caller.
        roles: allow changing `roles.*` (who is trusted): only when writing a new policy file
            (`secmlops policy override`, the embedded workspace), never for one run, where the
            person triggering it could otherwise trust their own key.

    Returns:
        The new validated policy and the record {"path", "old", "new", "reason"} to audit.

    Raises:
        PolicyError: the reason is empty, the path is not a threshold of the policy, or the value
            is invalid for it.
    """
    if not isinstance(reason, str) or not reason.strip():
        raise PolicyError("an override needs a written reason")
    keys = path.split(".")
    raw = policy.model_dump(mode="python")
    if keys == ["version"]:
        raise PolicyError("override version: the policy format version cannot be overridden")
    if keys[0] == "roles" and not roles:
        raise PolicyError(
            f"override {path}: who holds a role is not a per-run threshold; change it in the "
            "policy file (`secmlops policy override --set roles.<role>=[...]` writes a new one)"
        )
    parent: Any = raw
    for depth, key in enumerate(keys):
        if not isinstance(parent, dict) or key not in parent:
            where = ".".join(keys[: depth + 1])
            raise PolicyError(f"override {path}: {where}: unknown policy key")
        if depth < len(keys) - 1:
            parent = parent[key]
    if isinstance(parent[keys[-1]], dict):
        raise PolicyError(f"override {path}: names a section; override one threshold at a time")
    old = policy.model_dump(mode="json")
    parent[keys[-1]] = value
    new_policy = _validate(raw, f"override {path}")
    new = new_policy.model_dump(mode="json")
    for key in keys:
        old, new = old[key], new[key]
    return new_policy, {"path": path, "old": old, "new": new, "reason": reason.strip()}


def _validate(raw: dict[str, Any], where: str) -> Policy:
    try:
        return Policy.model_validate(raw)
    except ValidationError as exc:
        problems = [_describe(error) for error in exc.errors()]
        raise PolicyError("; ".join(f"{where}: {p}" for p in problems)) from None


def _describe(error: Any) -> str:
    """One pydantic error as "data.key[0]: what is wrong (got value)"."""
    location = ""
    for part in error["loc"]:
        if part == "[key]":  # pydantic's marker for a bad key of a mapping (an attack name)
            continue
        location += f"[{part}]" if isinstance(part, int) else f".{part}" if location else str(part)
    if error["type"] == "missing":
        return f"{location}: field required"
    if error["type"] == "extra_forbidden":
        return f"{location}: unknown key"
    message = error["msg"].removeprefix("Value error, ")
    message = message[:1].lower() + message[1:]
    if "[key]" in error["loc"]:
        message = f"name {message}"
    if isinstance(error["input"], dict):
        # A whole-section check: the message names the keys, the section's dump would drown it.
        return f"{location or '(top level)'}: {message}"
    return f"{location or '(top level)'}: {message} (got {error['input']!r})"


def _yaml_error(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    if mark is None:
        return f"not valid YAML: {problem}"
    return f"not valid YAML at line {mark.line + 1}, column {mark.column + 1}: {problem}"
