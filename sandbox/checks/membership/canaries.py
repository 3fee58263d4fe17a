"""Planting canaries: which training records are held back, and the secret coin flips.

m records of the training split become canaries; each is kept in the data the
provider's code trains on with probability 1/2, by independent coin flips. The
audit's guarantee (epsilon.py) needs the flips to be uniform, independent and
unknown to whoever trains, so in production both the choice of records and the
flips come from the OS CSPRNG (`secrets`), are held only in the orchestrator's
memory, and never appear in a file, a log or a report. An explicit seed makes a
draw reproducible, for tests only.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

MIN_CANARIES = 20  # below this the one-run bound cannot exceed ~1 whatever happens


@dataclass(frozen=True, repr=False, eq=False)
class CanaryDraw:
    """`indices` into the training split (sorted) and `included[i]`: canary i is trained on.

    repr is disabled so that a stray log line or traceback cannot print the secret.
    """

    indices: npt.NDArray[np.intp]
    included: npt.NDArray[np.bool_]

    def __repr__(self) -> str:
        return f"CanaryDraw(m={len(self.indices)}, secret)"

    def keep_mask(self, n: int) -> npt.NDArray[np.bool_]:
        """Which of the n training records the provider's code may see."""
        keep = np.ones(n, dtype=bool)
        keep[self.indices[~self.included]] = False
        return keep


def canary_count(n_train: int, requested: int, max_fraction: float) -> int:
    """How many canaries to plant: the policy's m, at most `max_fraction` of the split.

    Raises ValueError (with the fix) when the split is too small for a meaningful audit.
    """
    allowed = math.floor(n_train * max_fraction)
    m = min(requested, allowed)
    if m < MIN_CANARIES:
        raise ValueError(
            f"the membership audit needs at least {MIN_CANARIES} canaries but a training "
            f"split of {n_train} records allows {allowed} (max_canary_fraction "
            f"{max_fraction}); disable membership in the policy or use a larger dataset"
        )
    return m


def draw_canaries(n_train: int, m: int, seed: int | None = None) -> CanaryDraw:
    """Choose m of n_train records uniformly, and flip a fair coin for each.

    seed=None (production) seeds from 256 bits of the OS CSPRNG.
    """
    if not 0 < m <= n_train:
        raise ValueError(f"need 0 < m ({m}) <= n_train ({n_train})")
    rng = np.random.default_rng(secrets.randbits(256) if seed is None else seed)
    indices = np.sort(rng.choice(n_train, size=m, replace=False)).astype(np.intp)
    included = rng.integers(0, 2, size=m).astype(bool)
    return CanaryDraw(indices=indices, included=included)
