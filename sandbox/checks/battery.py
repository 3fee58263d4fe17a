"""Every weight check by name, and `run_checks`: the whole battery on one model.

The low-bit scan is shared by the three bit-plane checks; the data-aware checks run
only when the training data are given. Thresholds default to the shipped
calibration at the given false-positive rate; a check without a threshold passes
and says so (it never flags blindly).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Final

import numpy as np
import numpy.typing as npt

from sandbox.checks import data, weights
from sandbox.checks.calibrate import (
    DEFAULT_FPR,
    choose_group,
    shipped_familywise,
    shipped_thresholds,
)
from sandbox.checks.lowbits import LowBitStats
from sandbox.checks.result import CheckResult, Tail

Tensors = Mapping[str, npt.NDArray[np.floating]]
Runner = Callable[
    [
        Tensors,
        "npt.NDArray[np.floating] | None",
        "float | None",
        Mapping[str, LowBitStats],
        "int | None",
    ],
    CheckResult,
]


@dataclass(frozen=True)
class CheckSpec:
    name: str
    tail: Tail
    needs_data: bool
    run: Runner
    summary: str


def _spec(
    name: str, tail: Tail, summary: str, run: Runner, *, needs_data: bool = False
) -> CheckSpec:
    return CheckSpec(name, tail, needs_data, run, summary)


CHECKS: Final[dict[str, CheckSpec]] = {
    s.name: s
    for s in (
        _spec(
            "lowbit_patterned",
            "upper",
            "raw payload in the low mantissa bits (bit-plane and byte chi-square)",
            lambda t, x, th, low, seed: weights.lowbit_patterned(t, th, lowbits=low),
        ),
        _spec(
            "lowbit_uniform",
            "lower",
            "low mantissa bits more uniform than honest training leaves them",
            lambda t, x, th, low, seed: weights.lowbit_uniform(t, th, lowbits=low),
        ),
        _spec(
            "lowbit_serial",
            "upper",
            "dependence between consecutive weights' low bits",
            lambda t, x, th, low, seed: weights.lowbit_serial(t, th, lowbits=low),
        ),
        _spec(
            "sign_balance",
            "upper",
            "one-sided signs",
            lambda t, x, th, low, seed: weights.sign_balance(t, th),
        ),
        _spec(
            "sign_runs",
            "upper",
            "runs test on the sign sequence",
            lambda t, x, th, low, seed: weights.sign_runs(t, th),
        ),
        _spec(
            "value_ks",
            "upper",
            "value distribution unlike normal, Laplace or uniform",
            lambda t, x, th, low, seed: weights.value_ks(t, th),
        ),
        _spec(
            "value_kurtosis",
            "upper",
            "heavy tails or a spike of values",
            lambda t, x, th, low, seed: weights.value_kurtosis(t, th),
        ),
        _spec(
            "data_correlation",
            "upper",
            "weight windows correlated with individual training records",
            lambda t, x, th, low, seed: data.data_correlation(t, _need(x), th, seed=seed),
            needs_data=True,
        ),
        _spec(
            "data_sign_agreement",
            "upper",
            "weight signs spelling out training records' bits",
            lambda t, x, th, low, seed: data.data_sign_agreement(t, _need(x), th, seed=seed),
            needs_data=True,
        ),
    )
}


def _need(x: npt.NDArray[np.floating] | None) -> npt.NDArray[np.floating]:
    if x is None:
        raise ValueError("this check needs the training data")
    return x


def run_checks(
    tensors: Tensors,
    x: npt.NDArray[np.floating] | None = None,
    *,
    fpr: float = DEFAULT_FPR,
    thresholds: Mapping[str, float | None] | None = None,
    enabled: Iterable[str] | None = None,
    seed: int | None = None,
    num_classes: int | None = None,
    check_fpr: Mapping[str, float] | None = None,
) -> list[CheckResult]:
    """Run the enabled checks (default: all; data-aware ones only if `x` is given).

    `fpr` is family-wise: the shipped thresholds of the checks that run are
    calibrated together so that at most that fraction of honest models is flagged by
    any of them (`calibrate.shipped_familywise`). `thresholds` overrides them per
    check, and `check_fpr` gives a check its own false-positive rate, calibrated on
    its own (either way the check is left out of the family, whose rate the others
    then share); a check missing from all of them runs without a threshold (it
    reports, never flags). The shipped thresholds are those of the calibration group of
    `num_classes` (the training data's class count) and the model's own parameter
    count, or of the pooled corpus (`calibrate.choose_group`); each result names its
    group and the calibration in `details`. `seed`
    fixes the data-aware checks' sampling (calibration); leave it None in production
    so their record subsample, window offsets and controls are unpredictable.
    """
    names = list(CHECKS) if enabled is None else list(enabled)
    unknown = [n for n in [*names, *(check_fpr or {})] if n not in CHECKS]
    if unknown:
        raise ValueError(f"unknown checks {unknown}; known: {', '.join(CHECKS)}")
    names = [n for n in names if x is not None or not CHECKS[n].needs_data]
    group = choose_group(num_classes, sum(int(t.size) for t in tensors.values()))
    # Overrides sit outside the family: the rate is shared by the others only.
    own_rates = {n: r for n, r in (check_fpr or {}).items() if n in names}
    overridden = set(thresholds or {}) | set(own_rates)
    family = shipped_familywise(fpr, group, tuple(n for n in names if n not in overridden))
    own: dict[str, float | None] = {
        n: shipped_thresholds(rate, group).get(n) for n, rate in own_rates.items()
    }
    limits: dict[str, float | None] = {**family.thresholds, **own, **(thresholds or {})}
    calibration = family.describe()
    low = weights.scan_low_bits(tensors)
    results = []
    for name in names:
        result = CHECKS[name].run(tensors, x, limits.get(name), low, seed)
        details = {**result.details, "calibration_group": group}
        if name in family.thresholds:
            details["calibration"] = calibration
        elif name in own_rates and name not in (thresholds or {}):
            details["calibration"] = f"this check alone at {own_rates[name]:.4g}"
        results.append(replace(result, details=details))
    return results
