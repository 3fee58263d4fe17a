"""The one-run epsilon lower bound (Steinke, Nasr and Jagielski, NeurIPS 2023).

m canaries are each included in training with probability 1/2 by independent,
secret coin flips. After training an auditor guesses "in" for some canaries and
"out" for others (abstaining on the rest): r guesses, v of them correct. For an
algorithm that is eps-DP with respect to the canaries (delta = 0), the paper's
Theorem 3.1 bounds the number of correct guesses W by a binomial tail:

    P[W >= v] <= P[Binomial(r, p) >= v],   p = e^eps / (1 + e^eps),

which is the accuracy of eps-DP randomised response. So if that tail is below
beta = 1 - confidence, the algorithm is NOT eps-DP at confidence 1 - beta; the
lower bound is the largest such eps. The tail grows with eps (p grows), so the
bound is found by bisection. With delta = 0 the paper's extra delta term vanishes.

The tail is summed exactly in log space (lgamma terms, log-sum-exp), without
scipy, so it stays exact for the tiny p-values of large r.
"""

from __future__ import annotations

import math

# Bisection stops when the bracket is this narrow; the LOWER end is returned, so
# the bound is always on the conservative side of the exact root.
_TOLERANCE = 1e-9
_MAX_EPSILON = 1e4  # far above anything r <= 10^7 guesses can certify


def _log_probabilities(epsilon: float) -> tuple[float, float]:
    """log p and log(1 - p) for p = e^eps / (1 + e^eps), stable for large eps."""
    log_p = -math.log1p(math.exp(-epsilon))
    log_q = -epsilon + log_p  # 1 - p = e^-eps * p
    return log_p, log_q


def log_binomial_tail(r: int, v: int, log_p: float, log_q: float) -> float:
    """log P[Binomial(r, p) >= v] for p = exp(log_p), 1 - p = exp(log_q)."""
    if v <= 0:
        return 0.0
    if v > r:
        return -math.inf
    log_fact_r = math.lgamma(r + 1)
    terms = [
        log_fact_r - math.lgamma(j + 1) - math.lgamma(r - j + 1) + j * log_p + (r - j) * log_q
        for j in range(v, r + 1)
    ]
    top = max(terms)
    return top + math.log(math.fsum(math.exp(t - top) for t in terms))


def p_value(r: int, v: int, epsilon: float) -> float:
    """P[Binomial(r, e^eps/(1+e^eps)) >= v]: how likely v or more correct guesses out
    of r are under the null hypothesis that training was eps-DP (delta = 0)."""
    _check_counts(r, v)
    if epsilon < 0 or math.isnan(epsilon):
        raise ValueError(f"epsilon must be >= 0, got {epsilon}")
    return min(1.0, math.exp(log_binomial_tail(r, v, *_log_probabilities(epsilon))))


def epsilon_lower_bound(r: int, v: int, confidence: float) -> float:
    """The largest eps whose null hypothesis the observation (v of r correct) rejects.

    Returns 0.0 when even eps = 0 cannot be rejected (e.g. no better than chance),
    so the bound is never negative. Monotone: more correct guesses out of the same
    r never give a smaller bound.
    """
    _check_counts(r, v)
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    log_beta = math.log1p(-confidence)

    def rejected(epsilon: float) -> bool:
        return log_binomial_tail(r, v, *_log_probabilities(epsilon)) < log_beta

    if r == 0 or not rejected(0.0):
        return 0.0
    low, high = 0.0, 1.0
    while rejected(high):  # rejected(eps) is true below the root, false above it
        low, high = high, high * 2
        if high > _MAX_EPSILON:
            return _MAX_EPSILON
    while high - low > _TOLERANCE:
        middle = (low + high) / 2
        if rejected(middle):
            low = middle
        else:
            high = middle
    return low


def _check_counts(r: int, v: int) -> None:
    if not (0 <= v <= r):
        raise ValueError(f"need 0 <= correct ({v}) <= guesses ({r})")
