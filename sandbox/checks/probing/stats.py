"""Per-family statistics of a model's answers to probe queries. Pure numpy over logits.

A capacity-abuse model has been trained to give arbitrary, attacker-chosen labels
to synthetic inputs. Off the data manifold it therefore answers like a lookup
table: predicted labels spread over all classes (high `label_entropy`), small
moves flip the answer (high `instability`, high `sensitivity`), and it is sure of
itself where an honest model is not (`confidence`). An honest model extrapolates
smoothly: noise collapses onto one or two classes and a 2% nudge rarely changes
the answer. Where reference models exist (the platform's own plain training of the
same graph on the same split, twice, from independent initialisations),
`agreement` with them is low and `divergence` from them high on the attacker's
region; see `reference_statistics`.

Every statistic is oriented so that one tail is suspicious (`TAILS`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Final

import numpy as np
import numpy.typing as npt

from sandbox.checks.result import Tail

Logits = npt.NDArray[np.floating]

#: Suspicious side of each statistic.
TAILS: Final[Mapping[str, Tail]] = {
    "confidence": "upper",
    "label_entropy": "upper",
    "instability": "upper",
    "sensitivity": "upper",
    "agreement": "lower",
    "confidence_gap": "upper",
    "divergence": "upper",
}
SUMMARIES: Final[Mapping[str, str]] = {
    "confidence": "mean top-class probability on the family",
    "label_entropy": "entropy of the predicted labels across the family, over log(classes)",
    "instability": "fraction of predictions that change under a 2% perturbation",
    "sensitivity": "mean total-variation distance of the class probabilities under a 2% "
    "perturbation",
    "agreement": "fraction of predictions equal to the platform's reference models'",
    "divergence": "distance from the platform's reference models beyond its distance on the "
    "holdout, in units of the references' distance from each other",
    "confidence_gap": "mean top-class probability on the holdout minus that on the family",
}
HISTOGRAM_BINS: Final = 10


def softmax(logits: Logits) -> npt.NDArray[np.float64]:
    """Row-wise softmax in float64 (non-finite logits give a uniform row)."""
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim != 2 or z.shape[1] < 1:
        raise ValueError(f"logits must have shape (n, classes), got {z.shape}")
    z = np.where(np.isfinite(z), z, 0.0)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    out: npt.NDArray[np.float64] = e / e.sum(axis=1, keepdims=True)
    return out


def confidence(logits: Logits) -> float:
    return float(softmax(logits).max(axis=1).mean())


def label_entropy(logits: Logits) -> float:
    """Entropy of the histogram of predicted labels, normalised to [0, 1] by
    log(classes): 0 when every query gets the same label, 1 when labels are uniform."""
    classes = int(np.asarray(logits).shape[1])
    if classes < 2:
        return 0.0
    counts = np.bincount(np.asarray(logits).argmax(axis=1), minlength=classes)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum() / np.log(classes))


def instability(logits: Logits, perturbed: Logits) -> float:
    _same_shape(logits, perturbed)
    return float((np.asarray(logits).argmax(axis=1) != np.asarray(perturbed).argmax(axis=1)).mean())


def sensitivity(logits: Logits, perturbed: Logits) -> float:
    _same_shape(logits, perturbed)
    return float(0.5 * np.abs(softmax(logits) - softmax(perturbed)).sum(axis=1).mean())


def agreement(logits: Logits, reference: Logits) -> float:
    _same_shape(logits, reference)
    return float((np.asarray(logits).argmax(axis=1) == np.asarray(reference).argmax(axis=1)).mean())


#: Floor of the references' mutual distance in `divergence`'s denominator: two
#: references that agree almost exactly on a family (a binary task's noise collapsing
#: onto one class) must not turn a tiny difference into a huge score.
MIN_REFERENCE_SPREAD: Final = 0.05


def total_variation(a: Logits, b: Logits) -> float:
    """Mean over queries of the total-variation distance between class probabilities."""
    _same_shape(a, b)
    return float(0.5 * np.abs(softmax(a) - softmax(b)).sum(axis=1).mean())


def reference_statistics(
    logits: Logits,
    holdout: Logits,
    references: Sequence[Logits],
    reference_holdouts: Sequence[Logits],
) -> dict[str, float]:
    """`agreement` and `divergence` of a family against two or more reference models.

    divergence = (mean_r TV(model, r) on the family - mean_r TV(model, r) on the
    holdout) / max(TV(r1, r2) on the family, MIN_REFERENCE_SPREAD).

    Both corrections are measured, not cosmetic (bench/probe_corpus.py, 320 honest
    models with varied recipes against 20 capacity-abuse models per task): an honest
    model trained differently from the platform's recipe (few epochs, SGD, a CNN)
    is far from the references everywhere, the holdout included, so the holdout
    distance is subtracted; and how far two references trained the same way fall
    from each other on a family says how much this architecture's answers there
    depend on chance alone, so the excess is measured in that unit. A model that
    memorised attacker-chosen labels on synthetic inputs matches the references on
    the holdout (it learned the task) and departs from them off the data manifold
    by many times their own spread.
    """
    if len(references) < 2 or len(references) != len(reference_holdouts):
        raise ValueError("divergence needs two or more references, each with its holdout")
    on_family = np.mean([total_variation(logits, r) for r in references])
    on_holdout = np.mean([total_variation(holdout, r) for r in reference_holdouts])
    spread = total_variation(references[0], references[1])
    return {
        "agreement": float(np.mean([agreement(logits, r) for r in references])),
        "divergence": float((on_family - on_holdout) / max(spread, MIN_REFERENCE_SPREAD)),
    }


def family_statistics(
    logits: Logits,
    perturbed: Logits,
    holdout: Logits | None = None,
) -> dict[str, float]:
    """Every statistic of one family that needs no reference model (confidence_gap
    only with the model's own logits on the holdout).

    confidence_gap compares the model with itself: a model trained to be sure of
    attacker-chosen labels on noise-like inputs is sure of the real task but unsure
    on fresh noise (it lands between memorised points of different labels), while
    an honest model is about as sure on noise as it is anywhere, so the gap does not
    depend on how well trained (or calibrated) a model is overall.
    """
    stats = {
        "confidence": confidence(logits),
        "label_entropy": label_entropy(logits),
        "instability": instability(logits, perturbed),
        "sensitivity": sensitivity(logits, perturbed),
    }
    if holdout is not None:
        stats["confidence_gap"] = confidence(holdout) - stats["confidence"]
    return stats


def confidence_histogram(logits: Logits) -> dict[str, list[float] | list[int]]:
    """report.json's plot data: top-class probability in ten bins over [0, 1]."""
    edges = np.linspace(0.0, 1.0, HISTOGRAM_BINS + 1)
    counts, _ = np.histogram(softmax(logits).max(axis=1), bins=edges)
    return {"edges": [round(float(e), 2) for e in edges], "counts": [int(c) for c in counts]}


def _same_shape(a: Logits, b: Logits) -> None:
    if np.shape(a) != np.shape(b):
        raise ValueError(f"logit shapes differ: {np.shape(a)} vs {np.shape(b)}")
