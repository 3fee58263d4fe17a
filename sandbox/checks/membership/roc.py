"""ROC curve, AUC and TPR at a fixed FPR for membership scores (higher = "member").

AUC is the Mann-Whitney statistic: the probability that a random member scores
above a random non-member, ties counting one half, so identical scores give
exactly 0.5 and perfectly separated ones 1.0. TPR at a low FPR is the figure the
membership-inference literature asks for (Carlini et al., "Membership Inference
Attacks From First Principles", 2022): an attack that is confident about a few
records matters even when its AUC is near 0.5.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
ROC_POINTS = 101  # the report's ROC: TPR on an FPR grid 0, 0.01, ..., 1


@dataclass(frozen=True)
class Roc:
    """The empirical ROC: one point per distinct score threshold, from (0, 0) to (1, 1)."""

    fpr: FloatArray
    tpr: FloatArray


def _split(
    scores: npt.ArrayLike, members: npt.ArrayLike
) -> tuple[FloatArray, npt.NDArray[np.bool_]]:
    s = np.asarray(scores, dtype=np.float64)
    m = np.asarray(members, dtype=bool)
    if s.ndim != 1 or s.shape != m.shape:
        raise ValueError(f"scores {s.shape} and membership {m.shape} must be equal 1-d shapes")
    if not np.isfinite(s).all():
        raise ValueError("membership scores must be finite")
    if m.all() or not m.any():
        raise ValueError("an ROC needs at least one member and one non-member")
    return s, m


def roc_curve(scores: npt.ArrayLike, members: npt.ArrayLike) -> Roc:
    """Predict "member" for score >= t, for every distinct t from the highest down."""
    s, m = _split(scores, members)
    order = np.argsort(-s, kind="stable")
    s, m = s[order], m[order]
    true_pos = np.cumsum(m)
    false_pos = np.cumsum(~m)
    last_of_tie = np.r_[np.flatnonzero(np.diff(s) != 0), len(s) - 1]
    tpr = np.r_[0.0, true_pos[last_of_tie] / true_pos[-1]]
    fpr = np.r_[0.0, false_pos[last_of_tie] / false_pos[-1]]
    return Roc(fpr=fpr, tpr=tpr)


def auc(scores: npt.ArrayLike, members: npt.ArrayLike) -> float:
    """P[score(member) > score(non-member)] + P[equal] / 2, from average ranks."""
    s, m = _split(scores, members)
    order = np.argsort(s, kind="stable")
    ranks = np.empty(len(s), dtype=np.float64)
    sorted_s = s[order]
    # average rank (1-based) over each run of equal scores
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_s) != 0) + 1]
    ends = np.r_[starts[1:], len(s)]
    run_rank = (starts + ends + 1) / 2.0
    ranks[order] = np.repeat(run_rank, ends - starts)
    n_pos, n_neg = int(m.sum()), int((~m).sum())
    u = ranks[m].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def tpr_at_fpr(roc: Roc, max_fpr: float) -> float:
    """The highest TPR of a threshold whose FPR is at most `max_fpr`."""
    if not 0 <= max_fpr <= 1:
        raise ValueError(f"max_fpr must be in [0, 1], got {max_fpr}")
    allowed = roc.fpr <= max_fpr + 1e-12
    return float(roc.tpr[allowed].max())


def resample(roc: Roc, points: int = ROC_POINTS) -> tuple[list[float], list[float]]:
    """The ROC on an even FPR grid (for plots in report.json): TPR achievable at each FPR."""
    grid = np.linspace(0.0, 1.0, points)
    tpr = [tpr_at_fpr(roc, float(f)) for f in grid]
    return [round(float(f), 6) for f in grid], [round(t, 6) for t in tpr]
