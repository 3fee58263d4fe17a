"""The membership audit's mathematics against answers derived independently.

The epsilon bound is checked three ways that share no code with it: exact rational
binomial sums (fractions.Fraction), brute-force enumeration of every outcome of r
guesses, and scipy's binomial survival function on a fine epsilon grid; plus the
closed form when every guess is right (q^r = beta).
"""

from __future__ import annotations

import itertools
import json
import math
from fractions import Fraction

import numpy as np
import pytest
from scipy.stats import binom

from sandbox.checks.membership import (
    GUESS_GRID,
    MIN_CANARIES,
    auc,
    audit_scores,
    canary_count,
    draw_canaries,
    epsilon_lower_bound,
    guess_counts,
    likelihood_ratio_score,
    loss_score,
    one_run_bound,
    p_value,
    resample,
    roc_curve,
    tpr_at_fpr,
)

# --------------------------------------------------------------------------- p-value


@pytest.mark.parametrize(("r", "v"), [(1, 1), (10, 7), (25, 20), (40, 21), (60, 60), (30, 0)])
def test_p_value_equals_an_exact_rational_binomial_sum(r: int, v: int) -> None:
    # eps = ln 3 gives p = e^eps / (1 + e^eps) = 3/4 exactly.
    p = Fraction(3, 4)
    exact = sum(math.comb(r, j) * p**j * (1 - p) ** (r - j) for j in range(v, r + 1))
    assert p_value(r, v, math.log(3)) == pytest.approx(float(exact), rel=1e-11)


@pytest.mark.parametrize("epsilon", [0.0, 0.3, 1.0, 2.5])
def test_p_value_equals_brute_force_enumeration_of_all_outcomes(epsilon: float) -> None:
    r = 12
    q = math.exp(epsilon) / (1 + math.exp(epsilon))
    for v in (0, 5, 8, 12):
        brute = 0.0
        for outcome in itertools.product((0, 1), repeat=r):  # 1 = a correct guess
            right = sum(outcome)
            if right >= v:
                brute += q**right * (1 - q) ** (r - right)
        assert p_value(r, v, epsilon) == pytest.approx(brute, rel=1e-10)


def test_p_value_keeps_tiny_tails_exact() -> None:
    # scipy's sf is accurate here; 1e-60-sized tails must not round to zero.
    q = 1 / (1 + math.exp(-0.5))
    assert p_value(1000, 950, 0.5) == pytest.approx(binom.sf(949, 1000, q), rel=1e-8)
    assert 0 < p_value(1000, 950, 0.5) < 1e-100


# --------------------------------------------------------------------------- epsilon bound


def _grid_bound(r: int, v: int, beta: float, step: float = 1e-4) -> float:
    """Independent: the largest eps on a grid whose scipy tail is still below beta."""
    eps = np.arange(0.0, 12.0, step)
    tails = binom.sf(v - 1, r, 1 / (1 + np.exp(-eps)))
    rejected = eps[tails < beta]
    return float(rejected.max()) if rejected.size else 0.0


@pytest.mark.parametrize(
    ("r", "v", "confidence"),
    [(20, 18, 0.95), (100, 75, 0.95), (200, 140, 0.95), (50, 40, 0.99), (400, 230, 0.9)],
)
def test_epsilon_bound_matches_a_grid_search_with_scipy(r: int, v: int, confidence: float) -> None:
    bound = epsilon_lower_bound(r, v, confidence)
    assert bound > 0
    assert bound == pytest.approx(_grid_bound(r, v, 1 - confidence), abs=2e-4)
    # and it is the root: rejected just below, not rejected just above
    assert p_value(r, v, bound - 1e-6) < 1 - confidence <= p_value(r, v, bound + 1e-6)


@pytest.mark.parametrize("r", [10, 50, 200, 1000])
def test_all_guesses_right_gives_the_closed_form(r: int) -> None:
    # P[Bin(r, q) >= r] = q^r = beta  =>  q = beta^(1/r), eps = ln(q / (1 - q))
    q = 0.05 ** (1 / r)
    assert epsilon_lower_bound(r, r, 0.95) == pytest.approx(math.log(q / (1 - q)), abs=1e-8)


def test_epsilon_bound_is_monotone_in_correct_guesses_and_zero_at_chance() -> None:
    r = 100
    bounds = [epsilon_lower_bound(r, v, 0.95) for v in range(r + 1)]
    assert all(a <= b for a, b in itertools.pairwise(bounds))
    assert bounds[0] == 0.0  # every guess wrong
    assert bounds[50] == 0.0  # chance
    # P[Bin(100, 1/2) >= 58] = 0.067 cannot reject eps = 0; >= 59 (0.044) can.
    assert bounds[58] == 0.0 < bounds[59]
    assert bounds[100] > bounds[90] > bounds[70] > 0


def test_more_confidence_gives_a_smaller_bound_and_bad_input_is_refused() -> None:
    assert epsilon_lower_bound(100, 80, 0.99) < epsilon_lower_bound(100, 80, 0.95)
    assert epsilon_lower_bound(0, 0, 0.95) == 0.0
    for r, v, c in [(10, 11, 0.95), (10, -1, 0.95), (10, 5, 1.0), (10, 5, 0.0)]:
        with pytest.raises(ValueError):
            epsilon_lower_bound(r, v, c)


# --------------------------------------------------------------------------- ROC


def test_auc_known_answers() -> None:
    members = np.array([True] * 5 + [False] * 5)
    assert auc(np.arange(10)[::-1], members) == 1.0  # members all score higher
    assert auc(np.arange(10), members) == 0.0
    assert auc(np.ones(10), members) == 0.5  # identical scores


def test_auc_equals_pairwise_counting_with_ties() -> None:
    rng = np.random.default_rng(3)
    scores = rng.integers(0, 6, size=80).astype(float)  # many ties
    members = rng.random(80) < 0.4
    pos, neg = scores[members], scores[~members]
    pairs = [(a > b) + 0.5 * (a == b) for a in pos for b in neg]
    assert auc(scores, members) == pytest.approx(sum(pairs) / len(pairs), abs=1e-12)


def test_tpr_at_one_percent_fpr_on_constructed_scores() -> None:
    non_members = np.arange(100.0)  # 0..99
    members = np.array([150.0, 120.0, 99.5, 98.5, 50.0])
    scores = np.r_[members, non_members]
    is_member = np.r_[np.ones(5, bool), np.zeros(100, bool)]
    roc = roc_curve(scores, is_member)
    # threshold 98.5: 4 of 5 members, 1 of 100 non-members (99) -> TPR 0.8 at FPR 0.01
    assert tpr_at_fpr(roc, 0.01) == pytest.approx(0.8)
    assert tpr_at_fpr(roc, 0.0) == pytest.approx(0.6)  # above 99: 150, 120, 99.5
    assert tpr_at_fpr(roc, 1.0) == 1.0
    assert roc.fpr[0] == roc.tpr[0] == 0.0 and roc.fpr[-1] == roc.tpr[-1] == 1.0
    fpr, tpr = resample(roc)
    assert len(fpr) == len(tpr) == 101 and fpr[1] == 0.01 and tpr[1] == pytest.approx(0.8)
    assert all(a <= b for a, b in itertools.pairwise(tpr))


def test_roc_refuses_one_sided_or_bad_input() -> None:
    with pytest.raises(ValueError, match="at least one member"):
        roc_curve([1.0, 2.0], [True, True])
    with pytest.raises(ValueError, match="finite"):
        auc([1.0, np.nan], [True, False])


# --------------------------------------------------------------------------- scores


def test_loss_score_is_the_log_probability_of_the_true_label() -> None:
    logits = np.array([[0.0, 0.0, 0.0, 0.0], [10.0, 0.0, 0.0, 0.0], [1000.0, 0.0, 0.0, -1000.0]])
    scores = loss_score(logits, np.array([2, 0, 1]))
    assert scores[0] == pytest.approx(-math.log(4))
    assert scores[1] == pytest.approx(-math.log1p(3 * math.exp(-10)))
    assert scores[2] == pytest.approx(-1000.0)  # stable: no overflow, no -inf
    ratio = likelihood_ratio_score(logits, np.zeros((3, 4)), np.array([2, 0, 1]))
    assert ratio == pytest.approx(scores + math.log(4))
    with pytest.raises(ValueError, match="labels"):
        loss_score(logits, np.array([0, 1, 4]))


# --------------------------------------------------------------------------- the audit


def test_guess_counts_top_and_bottom() -> None:
    scores = np.array([5.0, 4.0, 3.0, 2.0, 1.0, 0.0])
    included = np.array([True, False, True, False, True, False])
    assert guess_counts(scores, included, 2, 0) == 1  # 5 (in), 4 (out)
    assert guess_counts(scores, included, 1, 2) == 1 + 1  # 5 in right; 1 (in) wrong, 0 right
    assert guess_counts(scores, included, 3, 3) == 2 + 2  # in: 5, 3 right; out: 2, 0 right


def test_perfect_separation_certifies_the_bonferroni_closed_form() -> None:
    m = 200
    included = np.r_[np.ones(100, bool), np.zeros(100, bool)]
    scores = np.where(included, 1.0, 0.0) + np.linspace(0, 0.5, m)
    bound = one_run_bound(scores, included, 0.95)
    assert bound.hypotheses == len(GUESS_GRID) == 8
    assert (bound.k_plus, bound.k_minus, bound.correct) == (100, 100, 200)
    q = (0.05 / 8) ** (1 / 200)
    assert bound.epsilon == pytest.approx(math.log(q / (1 - q)), abs=1e-7)


def test_uninformative_scores_rarely_certify_more_than_the_truth() -> None:
    """Coverage: guesses from eps-DP randomised response must not beat eps > 5% of the time."""
    rng = np.random.default_rng(11)
    eps_true, m, trials = 1.0, 100, 200
    q = math.exp(eps_true) / (1 + math.exp(eps_true))
    exceed, zero_on_noise = 0, 0
    for _ in range(trials):
        included = rng.random(m) < 0.5
        told = np.where(rng.random(m) < q, included, ~included)  # randomised response
        if one_run_bound(told + rng.random(m) * 0.1, included, 0.95).epsilon > eps_true:
            exceed += 1
        if one_run_bound(rng.random(m), included, 0.95).epsilon == 0.0:
            zero_on_noise += 1
    assert exceed <= 17  # expected <= 10 (5% of 200); +2.2 sigma of binomial slack
    assert zero_on_noise >= 180


def test_audit_verdicts_and_report_fields() -> None:
    included = np.r_[np.ones(50, bool), np.zeros(50, bool)]
    separated = np.where(included, 0.0, -5.0) + np.linspace(0, 1, 100)
    flagged = audit_scores(separated, included, score="loss", confidence=0.95, max_epsilon=1.0)
    assert flagged.verdict == "flag" and "above the policy's 1.00" in flagged.explanation
    assert flagged.auc == 1.0 and flagged.tpr_at_1pct_fpr == 1.0
    noise = np.random.default_rng(0).random(100)
    passed = audit_scores(noise, included, score="loss", confidence=0.95, max_epsilon=1.0)
    assert passed.verdict == "pass" and passed.bound.epsilon < 1.0
    assert 0.3 < passed.auc < 0.7
    report = flagged.to_report()
    assert set(report) >= {
        "canaries", "included", "score", "auc", "tpr_at_1pct_fpr", "epsilon_lower_bound",
        "confidence", "roc", "verdict", "threshold", "explanation",
    }  # fmt: skip
    assert (report["canaries"], report["included"], report["confidence"]) == (100, 50, 0.95)
    assert len(report["roc"]["fpr"]) == len(report["roc"]["tpr"]) == 101
    json.dumps(report)  # JSON-ready


# --------------------------------------------------------------------------- canaries


def test_canary_draws_are_reproducible_with_a_seed_and_secret_without() -> None:
    a, b = draw_canaries(1000, 200, seed=5), draw_canaries(1000, 200, seed=5)
    assert np.array_equal(a.indices, b.indices) and np.array_equal(a.included, b.included)
    assert len(np.unique(a.indices)) == 200 and a.indices.max() < 1000
    s1, s2 = draw_canaries(1000, 200), draw_canaries(1000, 200)
    assert not np.array_equal(s1.included, s2.included)  # 2^-200 chance to be equal
    assert "secret" in repr(s1) and str(s1.indices[0]) not in repr(s1).split("m=")[0]


def test_coin_flips_are_fair() -> None:
    # 20000 secret flips: 1/2 +- 6 sigma (sigma = 0.0035)
    flips = np.concatenate([draw_canaries(1000, 1000).included for _ in range(20)])
    assert 0.479 < flips.mean() < 0.521
    seeded = draw_canaries(100000, 20000, seed=1).included
    assert 0.479 < seeded.mean() < 0.521
    # no dependence on position: the first and second halves agree too
    assert abs(seeded[:10000].mean() - seeded[10000:].mean()) < 0.03


def test_keep_mask_drops_exactly_the_excluded_canaries() -> None:
    draw = draw_canaries(500, 100, seed=2)
    keep = draw.keep_mask(500)
    assert int((~keep).sum()) == int((~draw.included).sum())
    assert not keep[draw.indices[~draw.included]].any()
    assert keep[draw.indices[draw.included]].all()


def test_canary_count_is_bounded_by_the_split() -> None:
    assert canary_count(10000, 200, 0.1) == 200
    assert canary_count(1437, 200, 0.1) == 143
    with pytest.raises(ValueError, match="disable membership"):
        canary_count(100, 200, 0.1)
    assert MIN_CANARIES == 20
