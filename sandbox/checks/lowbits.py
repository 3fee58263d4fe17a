"""Bit-plane analysis of the low mantissa bits of F32 weights: one vectorised scan.

For every F32 tensor the scan reads the low `ANALYSED_BITS` (16) mantissa bits of
each value once, as a 16-bit integer, and keeps only exact counts (`lowbits_counts`:
per low byte, the joint histogram of consecutive values' bytes; a large model is
counted by two processes, `lowbits_fork`). Everything the bit-level checks need
follows from those:

- per bit plane j, the frequency of ones (a chi-square uniformity statistic per
  plane, and for the low and second byte a 256-cell chi-square);
- per plane, the lag-1 serial correlation of the bits (from the count of 1-1 pairs);
- per byte, the lag-1 serial correlation of the byte values.

Under the hypothesis that the low bits are independent fair coins, each per-plane
chi-square is chi2(1), so sums are normalised to z = (sum - df) / sqrt(2 df). Honest
training leaves the low bits close to that; a raw payload (pixel bytes, text) makes
them patterned (z large), while an encrypted payload makes them exactly uniform,
which honest weights already nearly are: see the "too uniform" check's docstring.

Only F32 tensors are analysed: thresholds are calibrated on F32 models, and F16,
BF16 and F64 tensors have other mantissa widths (the sanitizer covers them anyway).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

from sandbox.checks.lowbits_counts import Counts
from sandbox.checks.lowbits_fork import count_arrays

#: Low mantissa bits the bit-level checks analyse.
ANALYSED_BITS: Final = 16
#: Tensors with fewer values carry too little to test (and too little to hide much).
MIN_ELEMENTS: Final = 64
#: Byte chi-squares need about 5 expected counts per cell.
MIN_BYTE_ELEMENTS: Final = 1280


@dataclass(frozen=True)
class LowBitStats:
    """Histograms of one tensor's low 16 mantissa bits."""

    n: int
    ones: npt.NDArray[np.int64]  # [16] ones per plane
    pairs11: npt.NDArray[np.int64]  # [16] consecutive pairs with both bits 1, per plane
    byte_hist: npt.NDArray[np.int64]  # [2, 256] low byte, second byte
    byte_serial: npt.NDArray[np.float64]  # [2] lag-1 correlation of the byte values

    def plane_chi2(self) -> npt.NDArray[np.float64]:
        """Per plane, (ones - n/2)^2 / (n/4): chi2(1) for fair independent bits."""
        if self.n == 0:
            return np.zeros(ANALYSED_BITS)
        return np.asarray((2.0 * self.ones - self.n) ** 2 / self.n, dtype=np.float64)

    def byte_chi2(self) -> npt.NDArray[np.float64]:
        """Per byte, the 256-cell chi-square (chi2(255) for uniform bytes)."""
        expected = self.n / 256.0
        if expected == 0:
            return np.zeros(2)
        return np.asarray(((self.byte_hist - expected) ** 2).sum(axis=1) / expected)

    def plane_serial(self) -> npt.NDArray[np.float64]:
        """Per plane, the lag-1 correlation of the bits (0 where a plane is constant)."""
        if self.n < 3:
            return np.zeros(ANALYSED_BITS)
        p = self.ones / self.n
        var = p * (1.0 - p)
        joint = self.pairs11 / (self.n - 1)
        with np.errstate(divide="ignore", invalid="ignore"):
            r = (joint - p * p) / var
        return np.where(var > 0, r, 0.0)


def z_of_chi2(total: float, df: float) -> float:
    """Normalise a chi-square sum with `df` degrees of freedom to a z-like score."""
    return (total - df) / math.sqrt(2.0 * df) if df > 0 else 0.0


def low_bits_stats(values: npt.NDArray[np.float32], *, workers: int | None = None) -> LowBitStats:
    """Scan one F32 tensor (any shape; flattened in row-major order).

    `workers`: 1 for one process, 2 for two, None to use two only for large tensors
    on a machine with two usable cores (see `lowbits_fork`).
    """
    return scan_tensors({"": values}, workers=workers)[""]


def scan_tensors(
    tensors: Mapping[str, npt.NDArray[np.floating]], *, workers: int | None = None
) -> dict[str, LowBitStats]:
    """Scan every tensor of a model at once, so a two-process split covers the whole model.

    Counts come from `lowbits_counts` (two joint byte histograms per value) and are
    exact, so the statistics equal the one-tensor-at-a-time reference scan
    (`lowbits_reference`) to the last bit.
    """
    names = list(tensors)
    arrays = [
        np.ascontiguousarray(tensors[name], dtype=np.float32).reshape(-1).view(np.uint32)
        for name in names
    ]
    counts = count_arrays(arrays, workers=workers)
    return {name: _stats(c) for name, c in zip(names, counts, strict=True)}


def _stats(counts: Counts) -> LowBitStats:
    byte_hist = counts.byte_hist
    serial = _byte_serial(byte_hist, list(counts.products), counts.first, counts.last, counts.n)
    return LowBitStats(counts.n, counts.ones(), counts.pairs11.copy(), byte_hist, serial)


def _byte_serial(
    byte_hist: npt.NDArray[np.int64], products: list[int], first: int, last: int, n: int
) -> npt.NDArray[np.float64]:
    """Lag-1 Pearson correlation of each byte's values, from exact integer sums."""
    serial = np.zeros(2)
    m = n - 1
    if m < 2:
        return serial
    levels = np.arange(256, dtype=np.int64)
    for b in range(2):
        total = int(byte_hist[b] @ levels)
        squares = int(byte_hist[b] @ (levels * levels))
        head, tail = (first >> (8 * b)) & 0xFF, (last >> (8 * b)) & 0xFF
        sa, sc = total - tail, total - head  # x[:-1] and x[1:]
        saa, scc = squares - tail * tail, squares - head * head
        cov = products[b] / m - (sa / m) * (sc / m)
        va = saa / m - (sa / m) ** 2
        vc = scc / m - (sc / m) ** 2
        serial[b] = cov / math.sqrt(va * vc) if va > 1e-12 and vc > 1e-12 else 0.0
    return serial


def patterned_score(stats: LowBitStats) -> tuple[float, dict[str, float]]:
    """How far from fair coins: the max of the plane and byte z-scores (upper tail)."""
    planes = z_of_chi2(float(stats.plane_chi2().sum()), ANALYSED_BITS)
    parts = {"planes_z": planes}
    if stats.n >= MIN_BYTE_ELEMENTS:
        chi = stats.byte_chi2()
        parts["low_byte_z"] = z_of_chi2(float(chi[0]), 255)
        parts["second_byte_z"] = z_of_chi2(float(chi[1]), 255)
    return max(parts.values()), parts


def serial_score(stats: LowBitStats) -> float:
    """Lag-1 dependence: per-plane and per-byte correlations as a chi2 sum, as z."""
    scale = stats.n - 1
    terms = np.concatenate((stats.plane_serial(), stats.byte_serial)) ** 2 * scale
    return z_of_chi2(float(terms.sum()), float(terms.size))
