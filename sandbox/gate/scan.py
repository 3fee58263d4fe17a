"""Value checks on raw tensor bytes: NaN/Inf, subnormals, BOOL bytes.

Everything works on unsigned-integer views of the little-endian bytes, so a float
is classified by its bit pattern, never by arithmetic (no FP exceptions, no NaN
payload games, identical on every CPU). The common case - a clean chunk - costs
four vectorised passes over a cache-sized block: |x| bits, max, |x|-1, min. Only a
block that trips one of those bounds pays for exact counting and in-place fixing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

import numpy as np
import numpy.typing as npt

#: Elements per block: 256 KiB of F32 stays in L2 across the four passes.
BLOCK_ELEMENTS: Final = 1 << 16


@dataclass(frozen=True)
class FloatFormat:
    """Bit layout of one IEEE-754 style format, as unsigned-integer constants."""

    view: np.dtype[np.unsignedinteger]
    abs_mask: int  # every bit but the sign
    inf_bits: int  # exponent all ones, mantissa zero; |bits| >= this is Inf or NaN
    min_normal: int  # smallest normal; 0 < |bits| < this is subnormal


FLOAT_FORMATS: Final[dict[str, FloatFormat]] = {
    "F64": FloatFormat(np.dtype("<u8"), (1 << 63) - 1, 0x7FF << 52, 1 << 52),
    "F32": FloatFormat(np.dtype("<u4"), (1 << 31) - 1, 0xFF << 23, 1 << 23),
    "F16": FloatFormat(np.dtype("<u2"), (1 << 15) - 1, 0x1F << 10, 1 << 10),
    "BF16": FloatFormat(np.dtype("<u2"), (1 << 15) - 1, 0xFF << 7, 1 << 7),
}


@dataclass
class TensorStats:
    """What the scan found in one tensor (counts before any fixing)."""

    nan: int = 0
    inf: int = 0
    subnormal: int = 0
    bad_bool: int = 0

    @property
    def nonfinite(self) -> int:
        return self.nan + self.inf


@dataclass
class Scanner:
    """Scans (and, per policy, fixes in place) the raw bytes of tensors.

    zero_nonfinite: replace NaN/Inf by +0.0 instead of only counting them.
    flush_subnormals: replace subnormals (either sign) by +0.0.
    Scratch buffers are kept per integer width so the hot loop never allocates.
    """

    zero_nonfinite: bool
    flush_subnormals: bool
    _scratch: dict[np.dtype[np.unsignedinteger], npt.NDArray[np.unsignedinteger]] = field(
        default_factory=dict
    )

    def scan(self, dtype: str, raw: memoryview, stats: TensorStats) -> None:
        """Check one piece of a tensor's data (a whole number of elements)."""
        fmt = FLOAT_FORMATS.get(dtype)
        if fmt is not None:
            self._scan_float(fmt, np.frombuffer(raw, dtype=fmt.view), stats)
        elif dtype == "BOOL":
            values = np.frombuffer(raw, dtype=np.uint8)
            if values.size and int(values.max()) > 1:
                stats.bad_bool += int(np.count_nonzero(values > 1))

    def _scan_float(
        self, fmt: FloatFormat, bits: npt.NDArray[np.unsignedinteger], stats: TensorStats
    ) -> None:
        scratch = self._scratch.get(fmt.view)
        if scratch is None:
            scratch = np.empty(BLOCK_ELEMENTS, dtype=fmt.view)
            self._scratch[fmt.view] = scratch
        abs_mask = fmt.view.type(fmt.abs_mask)
        one = fmt.view.type(1)
        for start in range(0, bits.size, BLOCK_ELEMENTS):
            block = bits[start : start + BLOCK_ELEMENTS]
            magnitude = scratch[: block.size]
            np.bitwise_and(block, abs_mask, out=magnitude)
            suspicious = int(magnitude.max()) >= fmt.inf_bits
            if self.flush_subnormals and not suspicious:
                # |x| - 1 wraps 0 to the maximum, so min < min_normal - 1 iff a subnormal.
                np.subtract(magnitude, one, out=magnitude)
                suspicious = int(magnitude.min()) < fmt.min_normal - 1
            if suspicious:
                self._fix_block(fmt, block, stats)

    def _fix_block(
        self, fmt: FloatFormat, block: npt.NDArray[np.unsignedinteger], stats: TensorStats
    ) -> None:
        """Exact counts for a block known to hold a non-finite or subnormal value."""
        magnitude = block & fmt.view.type(fmt.abs_mask)
        nonfinite = magnitude >= fmt.inf_bits
        n_nonfinite = int(np.count_nonzero(nonfinite))
        if n_nonfinite:
            n_inf = int(np.count_nonzero(magnitude == fmt.inf_bits))
            stats.inf += n_inf
            stats.nan += n_nonfinite - n_inf
            if self.zero_nonfinite:
                block[nonfinite] = 0
        subnormal = (magnitude != 0) & (magnitude < fmt.min_normal)
        n_subnormal = int(np.count_nonzero(subnormal))
        stats.subnormal += n_subnormal
        if n_subnormal and self.flush_subnormals:
            block[subnormal] = 0
