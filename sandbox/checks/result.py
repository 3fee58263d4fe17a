"""What every weight check returns, and how a statistic becomes a verdict.

A check reduces a model (and, for the data-aware checks, the training data) to one
number, the `statistic`, oriented so that one tail is suspicious: `tail="upper"`
flags values above the threshold, `tail="lower"` values below it. Thresholds come
from the honest-model corpus at a policy-set false-positive rate (`calibrate`), so a
verdict of `flag` means "rarer than `fpr` among honest models", not proof of an attack.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

Verdict = Literal["pass", "flag"]
Tail = Literal["upper", "lower"]


@dataclass(frozen=True)
class CheckResult:
    """One check's outcome on one model.

    `threshold` is None when no calibrated threshold exists (the check then passes
    and says so); `details` holds per-tensor figures for the data owner's report.
    """

    name: str
    statistic: float
    threshold: float | None
    verdict: Verdict
    explanation: str
    details: dict[str, Any] = field(default_factory=dict)
    tail: Tail = "upper"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict for report.json (non-finite floats become None)."""
        return {
            "name": self.name,
            "statistic": _finite(self.statistic),
            "threshold": _finite(self.threshold),
            "tail": self.tail,
            "verdict": self.verdict,
            "explanation": self.explanation,
            "details": self.details,
        }


def _finite(value: float | None) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return round(float(value), 6)


def exceeds(statistic: float, threshold: float, tail: Tail) -> bool:
    """Whether `statistic` lies beyond `threshold` on the suspicious side (ties pass)."""
    if math.isnan(statistic):
        return False
    return statistic > threshold if tail == "upper" else statistic < threshold


def judge(
    name: str,
    statistic: float,
    threshold: float | None,
    tail: Tail,
    *,
    flagged: str,
    passed: str,
    details: dict[str, Any] | None = None,
) -> CheckResult:
    """Build the result: `flagged`/`passed` are one-sentence explanations (no threshold
    text needed: it is appended here)."""
    side = "above" if tail == "upper" else "below"
    if threshold is None:
        verdict: Verdict = "pass"
        explanation = f"{passed} (no calibrated threshold, so this check cannot flag)"
    elif exceeds(statistic, threshold, tail):
        verdict = "flag"
        explanation = f"{flagged} (statistic {statistic:.4g} is {side} {threshold:.4g})"
    else:
        verdict = "pass"
        explanation = f"{passed} (statistic {statistic:.4g}, threshold {threshold:.4g})"
    return CheckResult(
        name=name,
        statistic=float(statistic),
        threshold=threshold,
        verdict=verdict,
        explanation=explanation,
        details=dict(details or {}),
        tail=tail,
    )
