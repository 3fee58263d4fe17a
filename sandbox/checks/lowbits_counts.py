"""The counting kernel of the low-bit scan: exact integer sums over a run of F32 values.

Everything the bit-plane checks need about the low 16 mantissa bits of a run of
values reduces to integer counts that add across pieces (`Counts`): the histogram
of each of the two low bytes, per bit plane the number of consecutive pairs whose
bits are both 1, and per byte the sum of products of consecutive byte values.

The fast way to get all three in numpy is two joint histograms per block: for the
low byte, the 65,536-bin histogram of (byte of value i, byte of value i+1), and the
same for the second byte. Each joint histogram holds its byte's histogram (a
marginal), its 1-1 pair counts (cells whose two bytes share a set bit) and its sum
of products (the histogram weighted by a*b), so a value costs two `np.bincount`
entries and three cheap integer operations per byte. The previous scan (kept in
`lowbits_reference`) spent two bincounts on a pattern and a pair histogram and then
did the products separately, and it reduced every tensor's histograms with a
65,536 x 16 float matrix, which cost milliseconds per tensor even for a bias of
ten values. Below `SMALL_VALUES` values a direct 256-bin path is cheaper than
allocating the 65,536-bin histograms at all.

Counts are exact: nothing is sampled, so a payload anywhere in a tensor counts.
The arithmetic is integer only (numpy's own loops, never BLAS), which also keeps a
forked child (`lowbits_fork`) clear of the parent's BLAS thread pool.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

#: Values (pairs) per block of the joint-histogram path: 512 KiB of uint16 each.
BLOCK: Final = 1 << 18
#: Below this many values the direct 256-bin path is faster (measured crossover).
SMALL_VALUES: Final = 1 << 15
_BYTE: Final = 256
_JOINT: Final = _BYTE * _BYTE
_LEVELS: Final = np.arange(_BYTE, dtype=np.int64)
#: _BITS8[v, j] = bit j of byte v.
_BITS8: Final = (_LEVELS[:, None] >> np.arange(8)) & 1
_CELLS: Final = np.arange(_JOINT, dtype=np.int64)
#: For joint cell k = a | b << 8: the AND of its two bytes, and their product.
_AND_OF_CELL: Final = (_CELLS & 0xFF) & (_CELLS >> 8)
_PRODUCT_OF_CELL: Final = (_CELLS & 0xFF) * (_CELLS >> 8)
#: Fields of one encoded `Counts` record (see `encode`).
RECORD: Final = 4 + 2 * _BYTE + 16 + 2


@dataclass(frozen=True)
class Counts:
    """Exact sums over a run of values (low 16 bits of each), mergeable in order.

    byte_hist[b]: histogram of byte b (0: bits 0-7, 1: bits 8-15) over every value;
    pairs11[j]: consecutive pairs inside the run with bit j set in both;
    products[b]: sum over consecutive pairs of the product of their byte-b values;
    first, last: the run's first and last 16-bit patterns (to join runs).
    """

    n: int
    byte_hist: npt.NDArray[np.int64]  # [2, 256]
    pairs11: npt.NDArray[np.int64]  # [16]
    products: tuple[int, int]
    first: int
    last: int

    def then(self, other: Counts) -> Counts:
        """The counts of this run followed directly by `other` (adds the joining pair)."""
        if self.n == 0:
            return other
        if other.n == 0:
            return self
        joint = self.last & other.first
        pairs = self.pairs11 + other.pairs11 + ((joint >> np.arange(16)) & 1)
        products = tuple(
            p + q + ((self.last >> (8 * b)) & 0xFF) * ((other.first >> (8 * b)) & 0xFF)
            for b, (p, q) in enumerate(zip(self.products, other.products, strict=True))
        )
        return Counts(
            self.n + other.n,
            self.byte_hist + other.byte_hist,
            pairs,
            (products[0], products[1]),
            self.first,
            other.last,
        )

    def ones(self) -> npt.NDArray[np.int64]:
        """Per bit plane (0-15), how many values have that bit set."""
        out: npt.NDArray[np.int64] = np.concatenate(
            (self.byte_hist[0] @ _BITS8, self.byte_hist[1] @ _BITS8)
        )
        return out


def empty_counts() -> Counts:
    return Counts(0, np.zeros((2, _BYTE), np.int64), np.zeros(16, np.int64), (0, 0), 0, 0)


def count_bits(bits: npt.NDArray[np.uint32]) -> Counts:
    """Counts of a 1-D uint32 run (the bit patterns of F32 values)."""
    n = int(bits.size)
    if n == 0:
        return empty_counts()
    if n < SMALL_VALUES:
        return _count_direct(bits)
    return _count_joint(bits)


def _count_direct(bits: npt.NDArray[np.uint32]) -> Counts:
    """Small runs: 256-bin histograms and integer dot products, no 65,536-bin arrays."""
    low = np.bitwise_and(bits, np.uint32(0xFFFF)).astype(np.int64)
    pair = low[:-1] & low[1:]
    hist = np.empty((2, _BYTE), np.int64)
    pairs11 = np.empty(16, np.int64)
    products = [0, 0]
    for b in range(2):
        byte = (low >> (8 * b)) & 0xFF
        hist[b] = np.bincount(byte, minlength=_BYTE)
        both = np.bincount((pair >> (8 * b)) & 0xFF, minlength=_BYTE)
        pairs11[8 * b : 8 * b + 8] = both @ _BITS8
        products[b] = int(byte[:-1] @ byte[1:])
    return Counts(
        int(bits.size), hist, pairs11, (products[0], products[1]), int(low[0]), int(low[-1])
    )


def _count_joint(bits: npt.NDArray[np.uint32]) -> Counts:
    """Large runs: per block, one 65,536-bin joint histogram per byte."""
    n = int(bits.size)
    joint = np.zeros((2, _JOINT), np.int64)
    block = max(1, min(BLOCK, n - 1))
    low = np.empty(block + 1, np.uint16)
    index = np.empty(block, np.uint16)
    scratch = np.empty(block, np.uint16)
    for start in range(0, n - 1, block):
        m = min(block, n - 1 - start)  # pairs (i, i+1) in this block
        x = low[: m + 1]
        np.copyto(x, bits[start : start + m + 1], casting="unsafe")  # keeps the low 16 bits
        head, tail, idx, tmp = x[:-1], x[1:], index[:m], scratch[:m]
        # low byte: cell = byte0(i) | byte0(i+1) << 8
        np.bitwise_and(head, np.uint16(0xFF), out=idx)
        np.left_shift(tail, np.uint16(8), out=tmp)
        np.bitwise_or(idx, tmp, out=idx)
        joint[0] += np.bincount(idx, minlength=_JOINT)
        # second byte: cell = byte1(i) | byte1(i+1) << 8
        np.right_shift(head, np.uint16(8), out=idx)
        np.bitwise_and(tail, np.uint16(0xFF00), out=tmp)
        np.bitwise_or(idx, tmp, out=idx)
        joint[1] += np.bincount(idx, minlength=_JOINT)
    first, last = int(bits[0]) & 0xFFFF, int(bits[-1]) & 0xFFFF
    hist = np.empty((2, _BYTE), np.int64)
    pairs11 = np.empty(16, np.int64)
    products = [0, 0]
    for b in range(2):
        grid = joint[b].reshape(_BYTE, _BYTE)  # [byte of i+1, byte of i]
        hist[b] = grid.sum(axis=0)  # values 0 .. n-2
        hist[b, (last >> (8 * b)) & 0xFF] += 1  # and the last value
        both = np.bincount(_AND_OF_CELL, weights=joint[b], minlength=_BYTE)
        pairs11[8 * b : 8 * b + 8] = np.rint(both).astype(np.int64) @ _BITS8
        products[b] = int(joint[b] @ _PRODUCT_OF_CELL)
    return Counts(n, hist, pairs11, (products[0], products[1]), first, last)


def encode(tag: int, counts: Counts) -> npt.NDArray[np.int64]:
    """One fixed-size int64 record (for a worker process to send its counts back)."""
    return np.concatenate(
        (
            np.array([tag, counts.n, counts.first, counts.last], np.int64),
            counts.byte_hist.reshape(-1),
            counts.pairs11,
            np.array(counts.products, np.int64),
        )
    )


def decode(record: npt.NDArray[np.int64]) -> tuple[int, Counts]:
    """Inverse of `encode`: (tag, counts)."""
    if record.shape != (RECORD,):
        raise ValueError(f"a counts record has {RECORD} fields, got shape {record.shape}")
    tag, n, first, last = (int(v) for v in record[:4])
    hist = record[4 : 4 + 2 * _BYTE].reshape(2, _BYTE).copy()
    pairs11 = record[4 + 2 * _BYTE : 4 + 2 * _BYTE + 16].copy()
    products = (int(record[-2]), int(record[-1]))
    return tag, Counts(n, hist, pairs11, products, first, last)
