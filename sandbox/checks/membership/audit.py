"""The membership audit: scores of planted canaries -> AUC, TPR@1%FPR, epsilon bound, verdict.

Choosing the guesses (k+ and k-). The auditor guesses "in" for the k+ highest-scoring
canaries and "out" for the k- lowest. Picking the (k+, k-) that gives the largest
bound after looking at the outcome would overstate it, so the search is ACCOUNTED
FOR: the candidate pairs are a fixed grid (`GUESS_GRID`, fractions of m, fixed
before any score is seen) and each pair is tested at level (1 - confidence) / |grid|
(Bonferroni). The reported bound is the largest over the grid; by the union bound,
the probability that it exceeds the true epsilon is at most 1 - confidence.

The bound is loose at small m: even perfect guesses of all m = 200 canaries certify
only about eps 3.8 at 95% with this grid (the binomial tail q^200 cannot fall
further). It is a lower bound on the privacy loss - a floor, never an estimate of it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from sandbox.checks.membership.epsilon import epsilon_lower_bound
from sandbox.checks.membership.roc import auc, resample, roc_curve, tpr_at_fpr

Verdict = Literal["pass", "flag"]
ScoreKind = Literal["loss", "likelihood_ratio"]

# (k+, k-) as fractions of m: guess the top/bottom 5-50% both ways, and "in" only
# (low loss is strong evidence of membership; high loss is weak evidence against).
GUESS_GRID: tuple[tuple[float, float], ...] = (
    (0.05, 0.05),
    (0.1, 0.1),
    (0.25, 0.25),
    (0.5, 0.5),
    (0.05, 0.0),
    (0.1, 0.0),
    (0.25, 0.0),
    (0.5, 0.0),
)
LOW_FPR = 0.01


@dataclass(frozen=True)
class OneRunBound:
    """The best grid pair: its guesses and correct guesses, and the certified epsilon."""

    epsilon: float
    k_plus: int
    k_minus: int
    correct: int
    hypotheses: int

    @property
    def guesses(self) -> int:
        return self.k_plus + self.k_minus


def guess_counts(scores: npt.ArrayLike, included: npt.ArrayLike, k_plus: int, k_minus: int) -> int:
    """Correct guesses when the top k_plus are guessed in and the bottom k_minus out.

    Ties are broken by position (the canaries' order is itself random and carries no
    information about the coin flips).
    """
    s = np.asarray(scores, dtype=np.float64)
    inc = np.asarray(included, dtype=bool)
    if k_plus < 0 or k_minus < 0 or k_plus + k_minus > len(s):
        raise ValueError(f"need k+ ({k_plus}) + k- ({k_minus}) <= m ({len(s)})")
    order = np.argsort(-s, kind="stable")
    top, bottom = order[:k_plus], order[len(s) - k_minus :]
    return int(inc[top].sum() + (~inc[bottom]).sum())


def one_run_bound(
    scores: npt.ArrayLike,
    included: npt.ArrayLike,
    confidence: float,
    grid: tuple[tuple[float, float], ...] = GUESS_GRID,
) -> OneRunBound:
    """The epsilon lower bound of Steinke et al. with the Bonferroni-accounted k search."""
    m = len(np.asarray(scores))
    pairs = sorted({(round(fp * m), round(fm * m)) for fp, fm in grid})
    pairs = [(kp, km) for kp, km in pairs if 0 < kp + km <= m]
    if not pairs:
        raise ValueError(f"no guesses are possible with m = {m} canaries")
    level = 1.0 - (1.0 - confidence) / len(pairs)
    best: OneRunBound | None = None
    for kp, km in pairs:
        correct = guess_counts(scores, included, kp, km)
        eps = epsilon_lower_bound(kp + km, correct, level)
        if best is None or eps > best.epsilon:
            best = OneRunBound(eps, kp, km, correct, len(pairs))
    assert best is not None
    return best


@dataclass(frozen=True)
class MembershipAudit:
    """Everything report.json's `membership` holds; aggregates only (no canary identities)."""

    canaries: int
    included: int
    score: ScoreKind
    auc: float
    tpr_at_1pct_fpr: float
    bound: OneRunBound
    confidence: float
    roc_fpr: list[float]
    roc_tpr: list[float]
    threshold: float
    verdict: Verdict
    explanation: str

    def to_report(self) -> dict[str, Any]:
        return {
            "canaries": self.canaries,
            "included": self.included,
            "score": self.score,
            "auc": round(self.auc, 6),
            "tpr_at_1pct_fpr": round(self.tpr_at_1pct_fpr, 6),
            "epsilon_lower_bound": round(self.bound.epsilon, 6),
            "confidence": self.confidence,
            "guesses": {
                "k_plus": self.bound.k_plus,
                "k_minus": self.bound.k_minus,
                "correct": self.bound.correct,
                "hypotheses": self.bound.hypotheses,
            },
            "roc": {"fpr": self.roc_fpr, "tpr": self.roc_tpr},
            "verdict": self.verdict,
            "threshold": self.threshold,
            "explanation": self.explanation,
        }


def audit_scores(
    scores: npt.ArrayLike,
    included: npt.ArrayLike,
    *,
    score: ScoreKind,
    confidence: float,
    max_epsilon: float,
) -> MembershipAudit:
    """Judge the canaries' scores: flag when the certified epsilon exceeds `max_epsilon`."""
    s = np.asarray(scores, dtype=np.float64)
    inc = np.asarray(included, dtype=bool)
    roc = roc_curve(s, inc)
    area = auc(s, inc)
    low = tpr_at_fpr(roc, LOW_FPR)
    bound = one_run_bound(s, inc, confidence)
    fpr, tpr = resample(roc)
    verdict: Verdict = "flag" if bound.epsilon > max_epsilon else "pass"
    said = (
        f"with {len(s)} planted canaries the model's {score} scores certify epsilon >= "
        f"{bound.epsilon:.2f} at {confidence:.0%} confidence ({bound.correct} of "
        f"{bound.guesses} membership guesses right; AUC {area:.3f}, TPR {low:.3f} at 1% FPR)"
    )
    if verdict == "flag":
        explanation = (
            f"{said}, above the policy's {max_epsilon:.2f}: the model memorises individual "
            "training records"
        )
    else:
        explanation = f"{said}, within the policy's {max_epsilon:.2f}"
    return MembershipAudit(
        canaries=len(s),
        included=int(inc.sum()),
        score=score,
        auc=area,
        tpr_at_1pct_fpr=low,
        bound=bound,
        confidence=confidence,
        roc_fpr=fpr,
        roc_tpr=tpr,
        threshold=max_epsilon,
        verdict=verdict,
        explanation=explanation,
    )
