"""Thresholds from honest models at a chosen false-positive rate, and the shipped table.

`calibrate` turns each check's statistics on honest models into the threshold
that at most a fraction `fpr` of them lie beyond (an empirical quantile, rounded
to the conservative side: with n honest models, floor(fpr * n) of them may lie
beyond). `calibration.json`, next to this module and written by
`python -m bench.corpus`, holds every honest statistic, so thresholds for any FPR
are derived at run time, plus the precomputed per-FPR table, the false-positive
rates measured on a held-out half of the corpus and the sanitizer's accuracy sweep.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from functools import cache
from importlib import resources
from typing import Any, Final

from sandbox.checks.result import Tail, exceeds

CALIBRATION_FILE: Final = "calibration.json"
DEFAULT_FPR: Final = 0.01
#: The FPRs tabulated in calibration.json.
FPR_TABLE: Final = (0.001, 0.005, 0.01, 0.02, 0.05, 0.1)


def threshold_at(values: Sequence[float], fpr: float, tail: Tail) -> float:
    """The threshold beyond which at most floor(fpr * n) of `values` lie (ties pass)."""
    if not 0 <= fpr < 1:
        raise ValueError(f"fpr must be in [0, 1), got {fpr}")
    finite = sorted(v for v in values if math.isfinite(v))
    if not finite:
        raise ValueError("no finite honest statistics to calibrate on")
    allowed = math.floor(fpr * len(finite) + 1e-9)
    if tail == "upper":
        return finite[len(finite) - 1 - allowed]
    return finite[allowed]


def calibrate(
    statistics: Mapping[str, Sequence[float]],
    fpr: float = DEFAULT_FPR,
    tails: Mapping[str, Tail] | None = None,
) -> dict[str, float]:
    """Per check, the threshold at `fpr` from honest models' statistics.

    `tails` says which side is suspicious per check (default: the checks' own, or
    "upper" for names it does not know).
    """
    if tails is None:
        from sandbox.checks.battery import CHECKS

        tails = {name: spec.tail for name, spec in CHECKS.items()}
    return {
        name: threshold_at(values, fpr, tails.get(name, "upper"))
        for name, values in statistics.items()
    }


def false_positive_rate(values: Sequence[float], threshold: float, tail: Tail) -> float:
    """Fraction of (honest) `values` a threshold flags."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return float("nan")
    return sum(exceeds(v, threshold, tail) for v in finite) / len(finite)


@cache
def load_calibration() -> dict[str, Any]:
    """The shipped calibration.json (empty checks if it has not been generated)."""
    try:
        text = resources.files("sandbox.checks").joinpath(CALIBRATION_FILE).read_text()
    except FileNotFoundError:
        return {"checks": {}}
    document: dict[str, Any] = json.loads(text)
    return document


def shipped_thresholds(fpr: float = DEFAULT_FPR) -> dict[str, float]:
    """Thresholds at `fpr` from the shipped honest statistics."""
    checks: dict[str, Any] = load_calibration().get("checks", {})
    tails: dict[str, Tail] = {name: entry["tail"] for name, entry in checks.items()}
    honest = {name: entry["honest"] for name, entry in checks.items()}
    return calibrate(honest, fpr, tails)
