"""What a gate run decides: its checks, each a threshold with what was measured against it."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

_NEGATED = {">=": "<", "<=": ">"}


def fraction(value: Any) -> float | None:
    """Evidence read as a finite number in 0..1 (a mAP, a recall), else None; `true` is not a
    number here."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if math.isfinite(value) and 0 <= value <= 1 else None


@dataclass(frozen=True)
class GateCheck:
    """One threshold: what was measured, against what, and whether it held.

    `comparison` is ">=" or "<=" for numbers, "==" for evidence that must match exactly.
    """

    name: str
    label: str
    measured: float | str | None
    threshold: float | str | None
    comparison: str
    passed: bool
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        """The check as JSON-ready data (the record and the audit log keep this form)."""
        return asdict(self)

    def describe(self) -> str:
        """One phrase for the gate message, e.g. "pgd_linf_4 robust mAP@0.5 0.012 < 0.300"."""
        m, t = self.measured, self.threshold
        if isinstance(m, float) and isinstance(t, float):
            holds = m >= t if self.comparison == ">=" else m <= t
            op = self.comparison if holds else _NEGATED.get(self.comparison, self.comparison)
            text = f"{self.label} {m:.3f} {op} {t:.3f}"
            return f"{text} ({self.note})" if self.note else text
        return f"{self.label}: {self.note}"


@dataclass(frozen=True)
class GateDecision:
    """Every check of one gate run; it passed only if there were checks and all held."""

    checks: tuple[GateCheck, ...]

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(check.passed for check in self.checks)

    @property
    def failures(self) -> list[GateCheck]:
        return [check for check in self.checks if not check.passed]

    def message(self) -> str:
        """The verdict: "gate failed: <each failed threshold>" or "gate passed: N checks"."""
        if self.passed:
            return f"gate passed: {len(self.checks)} checks"
        return "gate failed: " + "; ".join(check.describe() for check in self.failures)

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "checks": [check.to_dict() for check in self.checks]}
