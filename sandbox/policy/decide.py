"""The decision engine: one pure function from (policy, step results) to a decision.

Everything the pipeline learned about a job is summarised in `StepResults`; the
policy's rules turn it into `released`, `released_sanitized`, `released_dp` or
`rejected`, with a reason for each rule that fired. No I/O, no clock: the same
inputs always give the same decision, which the table tests pin down.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Decision = Literal["released", "released_sanitized", "released_dp", "rejected"]
DPMode = Literal["never", "on_suspicion", "always"]


@dataclass(frozen=True)
class CheckOutcome:
    name: str
    verdict: Literal["pass", "flag"]
    explanation: str = ""


@dataclass(frozen=True)
class StepResults:
    """What the pipeline found. Accuracies are holdout accuracies in [0, 1]."""

    failure: str | None = None  # a step failed: export, train, gate, ...
    checks: tuple[CheckOutcome, ...] = ()
    candidate_accuracy: float | None = None
    sanitized_accuracy: float | None = None  # None: the sanitizer did not run
    dp_accuracy: float | None = None  # None: no DP retraining ran
    dp_failure: str | None = None  # DP retraining was needed but failed or was refused


@dataclass(frozen=True)
class DecisionRules:
    """The policy's part of the decision (built from the Policy model)."""

    dp_mode: DPMode = "never"
    utility_floor: float = 0.0  # minimum holdout accuracy of whatever is released
    max_sanitize_drop: float = 0.02  # sanitized may lose at most this much accuracy
    allow_non_dp_release: bool = True  # False: only a DP-retrained model may be released


@dataclass(frozen=True)
class Outcome:
    decision: Decision
    reasons: tuple[str, ...] = field(default_factory=tuple)


def needs_dp(rules: DecisionRules, checks: tuple[CheckOutcome, ...]) -> bool:
    """Whether the pipeline must run DP retraining before it can decide."""
    if rules.dp_mode == "always":
        return True
    return rules.dp_mode == "on_suspicion" and any(c.verdict == "flag" for c in checks)


def _floor(rules: DecisionRules, accuracy: float | None, what: str) -> str | None:
    if accuracy is None:
        return f"the {what} model's holdout accuracy is unknown"
    if accuracy < rules.utility_floor:
        return (
            f"the {what} model's holdout accuracy {accuracy:.4f} is below the policy's "
            f"utility floor {rules.utility_floor:.4f}"
        )
    return None


def decide(rules: DecisionRules, results: StepResults) -> Outcome:
    outcome = _decide(rules, results)
    if outcome.decision in ("released", "released_sanitized") and not rules.allow_non_dp_release:
        return Outcome(
            "rejected",
            (
                "the policy forbids releases without DP (dp.allow_non_dp_release: false) "
                "and no DP-retrained model was made",
            ),
        )
    return outcome


def _decide(rules: DecisionRules, results: StepResults) -> Outcome:
    if results.failure is not None:
        return Outcome("rejected", (results.failure,))
    flagged = tuple(c for c in results.checks if c.verdict == "flag")
    flag_reasons = tuple(f"check {c.name} flagged the model: {c.explanation}" for c in flagged)
    if needs_dp(rules, results.checks):
        why = (
            "the policy retrains every model with DP"
            if rules.dp_mode == "always"
            else "a check flagged the provider's model, so the policy retrains it with DP"
        )
        if results.dp_failure is not None or results.dp_accuracy is None:
            failure = results.dp_failure or "DP retraining did not run"
            return Outcome("rejected", (*flag_reasons, why, failure))
        low = _floor(rules, results.dp_accuracy, "DP-retrained")
        if low is not None:
            return Outcome("rejected", (*flag_reasons, why, low))
        return Outcome(
            "released_dp",
            (
                *flag_reasons,
                why,
                "released the platform's DP-retrained model; the "
                "provider's weights were discarded",
            ),
        )
    if flagged:
        return Outcome("rejected", flag_reasons)
    if results.sanitized_accuracy is not None:
        low = _floor(rules, results.sanitized_accuracy, "sanitized")
        if low is not None:
            return Outcome("rejected", (low,))
        candidate = results.candidate_accuracy
        drop = 0.0 if candidate is None else candidate - results.sanitized_accuracy
        if drop > rules.max_sanitize_drop:
            return Outcome(
                "rejected",
                (
                    f"sanitizing the low mantissa bits cost {drop:.4f} accuracy (more than "
                    f"{rules.max_sanitize_drop:.4f}): the model depends on its lowest bits, "
                    "which honest models do not",
                ),
            )
        return Outcome(
            "released_sanitized",
            ("every check passed; released with its low mantissa bits randomised",),
        )
    low = _floor(rules, results.candidate_accuracy, "candidate")
    if low is not None:
        return Outcome("rejected", (low,))
    return Outcome("released", ("the model passed the egress gate and every check",))
