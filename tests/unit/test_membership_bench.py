"""bench/membership.py's positive control: the nearest-neighbour memoriser's logits."""

from __future__ import annotations

import numpy as np

from bench.membership import nearest_neighbour_logits
from sandbox.checks.membership import auc, loss_score


def test_nearest_neighbour_model_memorises_what_it_stores() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 8)) * 3
    y = rng.integers(0, 3, size=200)
    stored = np.arange(200) < 100
    logits = nearest_neighbour_logits(x[stored], y[stored], x, 3, tau=1.0)
    assert logits.shape == (200, 3)
    scores = loss_score(logits, y)
    # a stored record is at distance 0 from itself: small loss (a close record of
    # another class can cost a little); others' median loss is large
    assert np.all(scores[stored] > -0.05) and np.median(scores[~stored]) < -1.0
    assert auc(scores, stored) > 0.95
    # a class with no stored record gets (effectively) zero probability
    none = nearest_neighbour_logits(x[:5], np.zeros(5, np.int64), x[:2], 3)
    assert np.all(none[:, 1:] < -1e8) and np.allclose(none[:, 0], none.max(1))
