"""How much of the training data an attack got out: scored against the true records.

Scoring needs the data, so it is the red team's yardstick, never the attacker's
tool. `bit_accuracy` compares the plaintext bits a decoder read with the bits the
attack meant to carry (0.5 is chance); `record_mae` is the mean absolute error per
record in the data's own units; a record counts as recovered when its MAE is below
`tolerance(knowledge)`: the schema's `recovered_within` where it sets one (0.25
standard deviations for breast_cancer), else `RECOVERED_FRACTION` of the value
range (1.6 grey levels for digits' 0..16).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

from sandbox.redteam.attacks import Decoded, Knowledge, true_bits

RECOVERED_FRACTION: Final = 0.1


@dataclass(frozen=True)
class Extraction:
    records: int
    recovered: int
    fraction_recovered: float
    mean_abs_error: float
    bit_accuracy: float | None

    def to_dict(self) -> dict[str, float | int | None]:
        return {
            "records": self.records,
            "recovered": self.recovered,
            "fraction_recovered": round(self.fraction_recovered, 4),
            "mean_abs_error": round(self.mean_abs_error, 4),
            "bit_accuracy": None if self.bit_accuracy is None else round(self.bit_accuracy, 4),
        }


def bit_accuracy(decoded: npt.NDArray[np.uint8], truth: npt.NDArray[np.uint8]) -> float:
    n = min(len(decoded), len(truth))
    if n == 0:
        return float("nan")
    return float(np.mean(decoded[:n] == truth[:n]))


def record_mae(
    reconstructed: npt.NDArray[np.floating], truth: npt.NDArray[np.floating]
) -> npt.NDArray[np.float64]:
    n = min(len(reconstructed), len(truth))
    if n == 0:
        return np.zeros(0)
    a = np.asarray(reconstructed[:n], dtype=np.float64).reshape(n, -1)
    b = np.asarray(truth[:n], dtype=np.float64).reshape(n, -1)
    return np.asarray(np.abs(a - b).mean(axis=1), dtype=np.float64)


def tolerance(knowledge: Knowledge) -> float:
    """The MAE below which a record counts as recovered, in the data's units."""
    within = knowledge.params.get("recovered_within")
    if within is not None:
        return float(within)
    lo, hi = knowledge.value_range
    return RECOVERED_FRACTION * (hi - lo)


def score(decoded: Decoded, x_train: npt.NDArray[np.floating], knowledge: Knowledge) -> Extraction:
    """Compare a decoder's output with the first records of the training data."""
    n = min(len(decoded.records), len(x_train))
    errors = record_mae(decoded.records, x_train)
    recovered = int(np.count_nonzero(errors < tolerance(knowledge)))
    bits = None
    if decoded.bits is not None and n:
        bits = bit_accuracy(decoded.bits, true_bits(x_train, n, knowledge))
    return Extraction(
        records=n,
        recovered=recovered,
        fraction_recovered=recovered / n if n else 0.0,
        mean_abs_error=float(errors.mean()) if n else float("nan"),
        bit_accuracy=bits,
    )
