"""The decision engine, pinned by a table: (rules, results) -> (decision, reason fragments)."""

import pytest

from sandbox.policy.decide import (
    CheckOutcome,
    DecisionRules,
    StepResults,
    decide,
    needs_dp,
)

PASS = CheckOutcome("lowbits", "pass")
FLAG = CheckOutcome("sign", "flag", "weight signs agree with training bits")
NEVER = DecisionRules(dp_mode="never", utility_floor=0.5)
SUSPICION = DecisionRules(dp_mode="on_suspicion", utility_floor=0.5)
ALWAYS = DecisionRules(dp_mode="always", utility_floor=0.5)
NO_PLAIN = DecisionRules(dp_mode="on_suspicion", allow_non_dp_release=False)

TABLE = [
    # rules, results, decision, fragments that must appear in the reasons
    (NEVER, StepResults(failure="train: killed"), "rejected", ["train: killed"]),
    (ALWAYS, StepResults(failure="gate: NaN"), "rejected", ["gate: NaN"]),
    (NEVER, StepResults(checks=(PASS,), candidate_accuracy=0.9), "released", ["passed"]),
    (NEVER, StepResults(checks=(PASS,), candidate_accuracy=0.4), "rejected", ["below", "0.5000"]),
    (NEVER, StepResults(candidate_accuracy=None), "rejected", ["unknown"]),
    (
        NEVER,
        StepResults(checks=(PASS,), candidate_accuracy=0.9, sanitized_accuracy=0.899),
        "released_sanitized",
        ["randomised"],
    ),
    (
        NEVER,
        StepResults(checks=(PASS,), candidate_accuracy=0.9, sanitized_accuracy=0.5),
        "rejected",
        ["lowest bits"],
    ),
    (
        NEVER,
        StepResults(checks=(PASS,), candidate_accuracy=0.9, sanitized_accuracy=0.45),
        "rejected",
        ["sanitized", "below"],
    ),
    (NEVER, StepResults(checks=(PASS, FLAG), candidate_accuracy=0.9), "rejected", ["sign"]),
    (
        SUSPICION,
        StepResults(checks=(FLAG,), candidate_accuracy=0.9, dp_accuracy=0.8),
        "released_dp",
        ["sign", "discarded"],
    ),
    (
        SUSPICION,
        StepResults(checks=(FLAG,), candidate_accuracy=0.9, dp_accuracy=0.3),
        "rejected",
        ["DP-retrained", "below"],
    ),
    (
        SUSPICION,
        StepResults(checks=(FLAG,), candidate_accuracy=0.9, dp_failure="BatchNorm refused"),
        "rejected",
        ["BatchNorm refused"],
    ),
    (SUSPICION, StepResults(checks=(FLAG,), candidate_accuracy=0.9), "rejected", ["did not run"]),
    (
        SUSPICION,
        StepResults(checks=(PASS,), candidate_accuracy=0.9, sanitized_accuracy=0.9),
        "released_sanitized",
        [],
    ),
    (
        ALWAYS,
        StepResults(
            checks=(PASS,), candidate_accuracy=0.9, sanitized_accuracy=0.9, dp_accuracy=0.85
        ),
        "released_dp",
        ["every model"],
    ),
    (ALWAYS, StepResults(checks=(PASS,), candidate_accuracy=0.9), "rejected", ["did not run"]),
    # A policy that forbids non-DP releases: only a DP model leaves (defence in depth:
    # the policy model also refuses allow_non_dp_release: false without mode always).
    (NO_PLAIN, StepResults(checks=(PASS,), candidate_accuracy=0.9), "rejected", ["forbids"]),
    (
        NO_PLAIN,
        StepResults(checks=(PASS,), candidate_accuracy=0.9, sanitized_accuracy=0.9),
        "rejected",
        ["forbids releases without DP"],
    ),
    (
        DecisionRules(dp_mode="always", allow_non_dp_release=False),
        StepResults(checks=(PASS,), candidate_accuracy=0.9, dp_accuracy=0.85),
        "released_dp",
        ["DP-retrained"],
    ),
]


@pytest.mark.parametrize(("rules", "results", "decision", "fragments"), TABLE)
def test_decision_table(
    rules: DecisionRules, results: StepResults, decision: str, fragments: list[str]
) -> None:
    outcome = decide(rules, results)
    assert outcome.decision == decision, outcome.reasons
    assert outcome.reasons, "every decision carries at least one reason"
    text = " ".join(outcome.reasons)
    for fragment in fragments:
        assert fragment in text, (fragment, outcome.reasons)


def test_needs_dp() -> None:
    assert not needs_dp(NEVER, (FLAG,))
    assert needs_dp(ALWAYS, ())
    assert needs_dp(SUSPICION, (PASS, FLAG))
    assert not needs_dp(SUSPICION, (PASS,))


def test_pure() -> None:
    results = StepResults(checks=(FLAG,), candidate_accuracy=0.9, dp_accuracy=0.8)
    assert decide(SUSPICION, results) == decide(SUSPICION, results)
