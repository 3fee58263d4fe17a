"""Per-family statistics of a model's answers to probe queries. Pure numpy over logits.

A capacity-abuse model has been trained to give arbitrary, attacker-chosen labels
to synthetic inputs. Off the data manifold it therefore answers like a lookup
table: predicted labels spread over all classes (high `label_entropy`), small
moves flip the answer (high `instability`, high `sensitivity`), and it is sure of
itself where an honest model is not (`confidence`). An honest model extrapolates
smoothly: noise collapses onto one or two classes and a 2% nudge rarely changes
the answer. Where a reference model (the platform's own plain training of the same
graph) exists, `agreement` with it is low on the attacker's region.

Every statistic is oriented so that one tail is suspicious (`TAILS`).
"""

from __future__ import annotations

from collections.abc import Mapping
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
}
SUMMARIES: Final[Mapping[str, str]] = {
    "confidence": "mean top-class probability on the family",
    "label_entropy": "entropy of the predicted labels across the family, over log(classes)",
    "instability": "fraction of predictions that change under a 2% perturbation",
    "sensitivity": "mean total-variation distance of the class probabilities under a 2% "
    "perturbation",
    "agreement": "fraction of predictions equal to the platform's reference model's",
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


def family_statistics(
    logits: Logits,
    perturbed: Logits,
    reference: Logits | None = None,
    holdout: Logits | None = None,
) -> dict[str, float]:
    """Every statistic of one family (agreement only with a reference model's logits,
    confidence_gap only with the model's own logits on the holdout).

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
    if reference is not None:
        stats["agreement"] = agreement(logits, reference)
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
