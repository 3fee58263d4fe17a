"""Membership scores from a model's logits on the canaries (higher = "was trained on").

- `loss_score`: the negative cross-entropy of the true label, log softmax(logits)[y].
  Training drives the loss of its own examples down, so members score higher (Yeom
  et al., "Privacy Risk in Machine Learning", 2018).
- `likelihood_ratio_score`: the candidate's log-probability of the true label minus a
  reference model's. Subtracting what a model that did not train on the record
  predicts removes each record's intrinsic difficulty (an easy digit has low loss
  whether or not it was trained on), the idea behind LiRA's offline variant (Carlini
  et al., 2022). The reference must NOT have been trained on any canary, or it cancels
  exactly the signal being measured.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]


def _log_softmax(logits: npt.ArrayLike) -> FloatArray:
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim != 2 or z.shape[1] < 1:
        raise ValueError(f"logits must be [n, classes], got shape {z.shape}")
    if not np.isfinite(z).all():
        raise ValueError("logits must be finite")
    z = z - z.max(axis=1, keepdims=True)
    out: FloatArray = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return out


def loss_score(logits: npt.ArrayLike, labels: npt.ArrayLike) -> FloatArray:
    """log p(y | x) under the model: the negative cross-entropy of the true label."""
    log_probs = _log_softmax(logits)
    y = np.asarray(labels, dtype=np.int64)
    if y.shape != (log_probs.shape[0],):
        raise ValueError(f"labels must be [{log_probs.shape[0]}], got shape {y.shape}")
    if y.size and (y.min() < 0 or y.max() >= log_probs.shape[1]):
        raise ValueError(f"labels must lie in [0, {log_probs.shape[1]})")
    scores: FloatArray = log_probs[np.arange(len(y)), y]
    return scores


def likelihood_ratio_score(
    logits: npt.ArrayLike, reference_logits: npt.ArrayLike, labels: npt.ArrayLike
) -> FloatArray:
    """log p_candidate(y | x) - log p_reference(y | x)."""
    candidate = loss_score(logits, labels)
    reference = loss_score(reference_logits, labels)
    if candidate.shape != reference.shape:
        raise ValueError("candidate and reference logits must cover the same canaries")
    ratio: FloatArray = candidate - reference
    return ratio
