"""Bit-plane analysis of the low mantissa bits of F32 weights: one vectorised scan.

For every F32 tensor the scan reads the low `ANALYSED_BITS` (16) mantissa bits of
each value once, as a 16-bit integer, and keeps only histograms: how often each
16-bit pattern occurs, and how often each pattern occurs in the AND of two
consecutive values. Everything the bit-level checks need follows from those:

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
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

#: Low mantissa bits the bit-level checks analyse.
ANALYSED_BITS: Final = 16
#: Tensors with fewer values carry too little to test (and too little to hide much).
MIN_ELEMENTS: Final = 64
#: Byte chi-squares need about 5 expected counts per cell.
MIN_BYTE_ELEMENTS: Final = 1280
_BLOCK: Final = 1 << 18
_PATTERNS: Final = 1 << ANALYSED_BITS
#: _BIT_TABLE[p, j] = bit j of pattern p.
_BIT_TABLE: Final = (
    (np.arange(_PATTERNS, dtype=np.int64)[:, None] >> np.arange(ANALYSED_BITS)) & 1
).astype(np.float64)


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


def low_bits_stats(values: npt.NDArray[np.float32]) -> LowBitStats:
    """Scan one F32 tensor (any shape; flattened in row-major order).

    Two 65536-bin histograms per block (the low 16 bits, and their AND with the next
    value's) plus integer products of consecutive bytes; every buffer is allocated
    once, so the loop runs at about 1 GB/s on the 2-core reference machine.
    """
    bits = np.ascontiguousarray(values, dtype=np.float32).reshape(-1).view(np.uint32)
    n = int(bits.size)
    hist = np.zeros(_PATTERNS, dtype=np.int64)
    pair_hist = np.zeros(_PATTERNS, dtype=np.int64)
    products = [0, 0]  # per byte: sum of value[i] * value[i+1]
    block = max(1, min(_BLOCK, n))
    low = np.empty(block, dtype=np.uint16)
    scratch = np.empty(block, dtype=np.uint16)
    column = np.empty(block, dtype=np.uint16)
    index = np.empty(block, dtype=np.intp)
    previous: int | None = None
    for start in range(0, n, block):
        m = min(block, n - start)
        lo, sc, col, idx = low[:m], scratch[:m], column[:m], index[:m]
        np.copyto(lo, bits[start : start + m], casting="unsafe")  # keeps the low 16 bits
        np.copyto(idx, lo, casting="unsafe")
        hist += np.bincount(idx, minlength=_PATTERNS)
        np.bitwise_and(lo[:-1], lo[1:], out=sc[:-1])
        np.copyto(idx[:-1], sc[:-1], casting="unsafe")
        pair_hist += np.bincount(idx[:-1], minlength=_PATTERNS)
        first = int(lo[0])
        if previous is not None:
            pair_hist[previous & first] += 1
        for b in range(2):
            np.right_shift(lo, np.uint16(8 * b), out=col)
            np.bitwise_and(col, np.uint16(0xFF), out=col)
            np.multiply(col[:-1], col[1:], out=sc[:-1])  # <= 255 * 255: no overflow
            products[b] += int(sc[:-1].sum(dtype=np.uint64))
            if previous is not None:
                products[b] += ((previous >> (8 * b)) & 0xFF) * ((first >> (8 * b)) & 0xFF)
        previous = int(lo[-1])
    ones = np.rint(hist @ _BIT_TABLE).astype(np.int64)
    pairs11 = np.rint(pair_hist @ _BIT_TABLE).astype(np.int64)
    grid = hist.reshape(256, 256)  # [second byte, low byte]
    byte_hist = np.stack((grid.sum(axis=0), grid.sum(axis=1)))
    first_value = int(bits[0]) & 0xFFFF if n else 0
    last_value = int(bits[-1]) & 0xFFFF if n else 0
    return LowBitStats(
        n, ones, pairs11, byte_hist, _byte_serial(byte_hist, products, first_value, last_value, n)
    )


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
