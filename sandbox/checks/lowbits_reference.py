"""The low-bit scan as first written (commit 974398a), kept as an oracle.

`sandbox.checks.lowbits` now computes the same statistics a faster way (joint
histograms of consecutive bytes, and two processes for large models). This copy
is the definition those results must equal, integer for integer and float for
float: the unit tests compare the two on random and structured tensors, and
`bench/scan_throughput.py` times the two side by side. The pipeline never calls it.
"""

from __future__ import annotations

import math
from typing import Final

import numpy as np
import numpy.typing as npt

from sandbox.checks.lowbits import ANALYSED_BITS, LowBitStats

_BLOCK: Final = 1 << 18
_PATTERNS: Final = 1 << ANALYSED_BITS
#: _BIT_TABLE[p, j] = bit j of pattern p.
_BIT_TABLE: Final = (
    (np.arange(_PATTERNS, dtype=np.int64)[:, None] >> np.arange(ANALYSED_BITS)) & 1
).astype(np.float64)


def reference_low_bits_stats(values: npt.NDArray[np.float32]) -> LowBitStats:
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
        n,
        ones,
        pairs11,
        byte_hist,
        _reference_byte_serial(byte_hist, products, first_value, last_value, n),
    )


def _reference_byte_serial(
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
