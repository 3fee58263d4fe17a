"""Weight checks that need only the weights: low-bit planes, signs, value distributions.

Every check is a pure function of the named float tensors of one model (numpy
arrays as `tensors.float_tensors` gives them) and returns a `CheckResult` whose
statistic is a maximum (or a pooled sum) over the tensors, so a payload confined
to one tensor still shows. Statistics are normalised to be comparable across
tensor sizes where the null distribution allows it (z-scores), and the thresholds
come from the honest corpus (`calibrate`), never from textbook null distributions:
honest training is not a fair coin.

| check | tail | what it catches |
| --- | --- | --- |
| `lowbit_patterned` | upper | raw payloads in low bits: biased planes or bytes |
| `lowbit_uniform` | lower | low bits more uniform than honest training leaves them |
| `lowbit_serial` | upper | dependence between consecutive weights' low bits |
| `sign_balance` | upper | sign encoding of unbalanced bits (raw data) |
| `sign_runs` | upper | sign sequences with too few or too many runs |
| `value_ks` | upper | weights distributed unlike any of normal/Laplace/uniform |
| `value_kurtosis` | upper | heavy tails or a spike at zero |
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from sandbox.checks.lowbits import (
    ANALYSED_BITS,
    MIN_ELEMENTS,
    LowBitStats,
    patterned_score,
    scan_tensors,
    serial_score,
    z_of_chi2,
)
from sandbox.checks.result import CheckResult, judge

Tensors = Mapping[str, npt.NDArray[np.floating]]
LowBits = Mapping[str, LowBitStats]

#: Value-distribution tests need enough values for a stable shape estimate.
MIN_VALUE_ELEMENTS: Final = 256
#: How many tensors a result's details list (largest statistic first).
SHOWN_TENSORS: Final = 8


def f32_names(tensors: Tensors, minimum: int = MIN_ELEMENTS) -> list[str]:
    """F32 tensors with at least `minimum` values, sorted by name."""
    return sorted(n for n, t in tensors.items() if t.dtype == np.float32 and t.size >= minimum)


def scan_low_bits(tensors: Tensors) -> dict[str, LowBitStats]:
    """The low-bit scan of every analysable F32 tensor (shared by three checks).

    One call for the whole model, so a large model is split across two processes.
    """
    return scan_tensors({name: tensors[name] for name in f32_names(tensors)})


def _top(per_tensor: Mapping[str, float], *, reverse: bool = True) -> dict[str, float]:
    """The most extreme per-tensor values, rounded, for the report."""
    ordered = sorted(per_tensor.items(), key=lambda kv: kv[1], reverse=reverse)
    return {name: round(float(value), 4) for name, value in ordered[:SHOWN_TENSORS]}


def _max(per_tensor: Mapping[str, float]) -> float:
    return max(per_tensor.values()) if per_tensor else 0.0


# --------------------------------------------------------------------------- (a) bit planes


def lowbit_patterned(
    tensors: Tensors, threshold: float | None = None, *, lowbits: LowBits | None = None
) -> CheckResult:
    """Raw data in the low bits makes bit planes or bytes non-uniform in a pattern.

    Statistic: max over F32 tensors of the larger of the plane z-score (sum over the
    16 low planes of the per-plane chi-square of the ones frequency) and the low /
    second byte 256-cell chi-square z-scores.
    """
    stats = scan_low_bits(tensors) if lowbits is None else lowbits
    per_tensor: dict[str, float] = {}
    worst: dict[str, Any] = {}
    for name, s in stats.items():
        score, parts = patterned_score(s)
        per_tensor[name] = score
        if not worst or score > worst["score"]:
            frequencies = (s.ones / max(s.n, 1)).round(4).tolist()
            worst = {"tensor": name, "score": score, "parts": parts, "ones_frequency": frequencies}
    statistic = _max(per_tensor)
    top = _top(per_tensor)
    entropy = {name: round(plane_entropy_bits(stats[name]), 4) for name in top}
    return judge(
        "lowbit_patterned",
        statistic,
        threshold,
        "upper",
        flagged="the low mantissa bits are patterned the way raw data (not training noise) "
        "leaves them",
        passed="the low mantissa bits show no pattern beyond what honest training leaves",
        details={
            "analysed_bits": ANALYSED_BITS,
            "per_tensor": top,
            "entropy_bits": entropy,
            "worst": worst,
        },
    )


def plane_entropy_bits(stats: LowBitStats) -> float:
    """Entropy of the low bits in bits per value, each plane taken as an independent coin.

    The data owner's report shows it per tensor: fair coins give ANALYSED_BITS (16);
    a raw payload's biased planes give less. It is the readable face of the plane
    chi-square (1 - H(p) ~ chi2 / (2 n ln 2)), not a separate test.
    """
    if stats.n == 0:
        return 0.0
    p = np.clip(stats.ones / stats.n, 1e-12, 1 - 1e-12)
    return float(-(p * np.log2(p) + (1 - p) * np.log2(1 - p)).sum())


def lowbit_uniform(
    tensors: Tensors, threshold: float | None = None, *, lowbits: LowBits | None = None
) -> CheckResult:
    """An encrypted payload makes the low bits exactly uniform; is the model too uniform?

    Statistic: the pooled z-score of every per-plane chi-square over all F32 tensors
    (lower tail). Honest low bits deviate from fair coins mainly where training left
    weights at their initial values (dead inputs or units): the initialiser's
    arithmetic leaves excess trailing zeros, so such models score well above 0 and
    an encrypted payload, which erases that, scores about 0. But many honest models
    (weight decay, no dead units) also score about 0, and they set the lower-tail
    threshold, so at a 1% false-positive rate this check detects little: its
    measured detection rate is in bench/attacks.py. No statistic of the weights alone
    can do much better while some honest models are indistinguishable from fair
    coins; that is why the sanitizer, not detection, is the answer to LSB payloads.
    """
    stats = scan_low_bits(tensors) if lowbits is None else lowbits
    total = sum(float(s.plane_chi2().sum()) for s in stats.values())
    df = float(ANALYSED_BITS * len(stats))
    statistic = z_of_chi2(total, df) if df else float("nan")
    per_plane = np.zeros(ANALYSED_BITS)
    for s in stats.values():
        per_plane += s.plane_chi2()
    return judge(
        "lowbit_uniform",
        statistic,
        threshold,
        "lower",
        flagged="the low mantissa bits are more uniform than honest training leaves them, as "
        "an encrypted payload would make them",
        passed="the low mantissa bits are no more uniform than honest training leaves them",
        details={
            "tensors": len(stats),
            "values": sum(s.n for s in stats.values()),
            "chi2_per_plane": per_plane.round(3).tolist(),
        },
    )


# --------------------------------------------------------------------------- (b) serial


def lowbit_serial(
    tensors: Tensors, threshold: float | None = None, *, lowbits: LowBits | None = None
) -> CheckResult:
    """Consecutive weights' low bits should be independent; a payload's often are not.

    Statistic: max over F32 tensors of the z-score of the summed squared lag-1
    correlations (16 planes and the two low bytes' values).
    """
    stats = scan_low_bits(tensors) if lowbits is None else lowbits
    per_tensor = {name: serial_score(s) for name, s in stats.items()}
    return judge(
        "lowbit_serial",
        _max(per_tensor),
        threshold,
        "upper",
        flagged="the low mantissa bits of consecutive weights depend on each other, as "
        "sequential data would make them",
        passed="the low mantissa bits of consecutive weights look independent",
        details={"per_tensor": _top(per_tensor)},
    )


# --------------------------------------------------------------------------- (c) signs


def _signs(values: npt.NDArray[np.floating]) -> npt.NDArray[np.bool_]:
    """Positive (True) or negative (False), zeros dropped, row-major order."""
    flat = np.asarray(values).reshape(-1)
    return np.asarray(flat[flat != 0] > 0)


def sign_balance(tensors: Tensors, threshold: float | None = None) -> CheckResult:
    """Sign encoding of raw data makes signs as unbalanced as the data's bits.

    Statistic: max over float tensors (>= 64 values) of |positives - n/2| / sqrt(n/4).
    """
    per_tensor: dict[str, float] = {}
    fractions: dict[str, float] = {}
    for name in sorted(tensors):
        signs = _signs(tensors[name])
        n = int(signs.size)
        if n < MIN_ELEMENTS:
            continue
        positive = int(np.count_nonzero(signs))
        per_tensor[name] = abs(2.0 * positive - n) / math.sqrt(n)
        fractions[name] = positive / n
    top = _top(per_tensor)
    return judge(
        "sign_balance",
        _max(per_tensor),
        threshold,
        "upper",
        flagged="a tensor's signs are far more one-sided than honest training makes them",
        passed="the balance of positive and negative weights is within the honest range",
        details={"per_tensor": top, "fraction_positive": {n: round(fractions[n], 4) for n in top}},
    )


def runs_z(signs: npt.NDArray[np.bool_]) -> float:
    """Wald-Wolfowitz runs test z-score of a boolean sequence (0 when undefined)."""
    n = int(signs.size)
    n1 = int(np.count_nonzero(signs))
    n0 = n - n1
    if n < 2 or n0 == 0 or n1 == 0:
        return 0.0
    runs = 1 + int(np.count_nonzero(signs[1:] != signs[:-1]))
    mu = 2.0 * n0 * n1 / n + 1.0
    var = 2.0 * n0 * n1 * (2.0 * n0 * n1 - n) / (n * n * (n - 1.0))
    return (runs - mu) / math.sqrt(var) if var > 0 else 0.0


def sign_runs(tensors: Tensors, threshold: float | None = None) -> CheckResult:
    """Runs of equal signs in storage order: data bits come in long runs (or alternate).

    Statistic: max over float tensors (>= 64 values) of |z| of the runs test.
    """
    per_tensor: dict[str, float] = {}
    for name in sorted(tensors):
        signs = _signs(tensors[name])
        if signs.size >= MIN_ELEMENTS:
            per_tensor[name] = abs(runs_z(signs))
    return judge(
        "sign_runs",
        _max(per_tensor),
        threshold,
        "upper",
        flagged="the signs of consecutive weights follow each other the way encoded data does",
        passed="runs of equal signs are within the honest range",
        details={"per_tensor": _top(per_tensor)},
    )


# --------------------------------------------------------------------------- (d) values


def _erf(z: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """erf to within 1.5e-7 (Abramowitz and Stegun 7.1.26): ample for KS distances,
    and numpy-only."""
    t = 1.0 / (1.0 + 0.3275911 * np.abs(z))
    poly = t * (
        0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429)))
    )
    return np.asarray(np.sign(z) * (1.0 - poly * np.exp(-z * z)), dtype=np.float64)


def _cdf_normal(x: npt.NDArray[np.float64], mu: float, sigma: float) -> npt.NDArray[np.float64]:
    return 0.5 * (1.0 + _erf((x - mu) / (sigma * math.sqrt(2.0))))


def _cdf_laplace(x: npt.NDArray[np.float64], mu: float, b: float) -> npt.NDArray[np.float64]:
    z = (x - mu) / b
    return np.where(z < 0, 0.5 * np.exp(np.minimum(z, 0)), 1.0 - 0.5 * np.exp(-np.maximum(z, 0)))


def ks_distances(values: npt.NDArray[np.floating]) -> dict[str, float]:
    """KS distance of `values` to a normal, a Laplace and a uniform law fitted to them."""
    x = np.sort(np.asarray(values, dtype=np.float64).reshape(-1))
    n = x.size
    upper = np.arange(1, n + 1) / n
    lower = np.arange(0, n) / n

    def ks(cdf: npt.NDArray[np.float64]) -> float:
        return float(max(np.max(upper - cdf), np.max(cdf - lower)))

    sigma = float(x.std())
    median = float(np.median(x))
    b = float(np.mean(np.abs(x - median)))
    lo, hi = float(x[0]), float(x[-1])
    if sigma <= 0 or b <= 0 or hi <= lo:
        return {"normal": 1.0, "laplace": 1.0, "uniform": 1.0}
    return {
        "normal": ks(_cdf_normal(x, float(x.mean()), sigma)),
        "laplace": ks(_cdf_laplace(x, median, b)),
        "uniform": ks(np.clip((x - lo) / (hi - lo), 0.0, 1.0)),
    }


def value_ks(tensors: Tensors, threshold: float | None = None) -> CheckResult:
    """Weights that copy data take the data's distribution, unlike any honest shape.

    Statistic: max over float tensors (>= 256 values) of sqrt(n) times the KS
    distance to the best fitting of a normal, a Laplace and a uniform law (honest
    weights sit between their uniform initialisation and a bell shape).
    """
    per_tensor: dict[str, float] = {}
    fits: dict[str, dict[str, float]] = {}
    for name in sorted(tensors):
        t = tensors[name]
        if t.size < MIN_VALUE_ELEMENTS:
            continue
        distances = ks_distances(t)
        per_tensor[name] = min(distances.values()) * math.sqrt(t.size)
        fits[name] = {k: round(v, 4) for k, v in distances.items()}
    top = _top(per_tensor)
    return judge(
        "value_ks",
        _max(per_tensor),
        threshold,
        "upper",
        flagged="a tensor's values fit none of the shapes honest weights take",
        passed="every tensor's values fit a shape honest weights take",
        details={"per_tensor": top, "ks": {n: fits[n] for n in top}},
    )


def excess_kurtosis(values: npt.NDArray[np.floating]) -> float:
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    centred = x - x.mean()
    var = float(np.mean(centred**2))
    if var <= 0:
        return 0.0
    return float(np.mean(centred**4) / var**2 - 3.0)


def value_kurtosis(tensors: Tensors, threshold: float | None = None) -> CheckResult:
    """Regularisers that pin weights (to a sign, to zero) pile values up and fatten tails.

    Statistic: max over float tensors (>= 256 values) of the excess kurtosis.
    """
    per_tensor = {
        name: excess_kurtosis(tensors[name])
        for name in sorted(tensors)
        if tensors[name].size >= MIN_VALUE_ELEMENTS
    }
    return judge(
        "value_kurtosis",
        _max(per_tensor),
        threshold,
        "upper",
        flagged="a tensor's values are more heavy-tailed or peaked than honest weights get",
        passed="the tails of every tensor's values are within the honest range",
        details={"per_tensor": _top(per_tensor)},
    )
