"""The low-bit sanitizer: fresh random bits in the low mantissa bits of every float weight.

Why: an LSB payload (Song et al., CCS 2017) lives in the low mantissa bits, and
steganalysis cannot reliably tell an encrypted payload from honest rounding noise
(Gilkarov and Dubin, TIFS 2024). Overwriting those bits with bits the provider
cannot predict removes any such payload whatever its encoding, at no measurable
accuracy cost for small enough k ("Disarming Attacks Inside Neural Network Models",
2023). So the platform sanitises always and detects only what sanitising cannot
remove.

What changes: for every *normal* floating-point value, the low k bits of the
mantissa (k per dtype, `DEFAULT_BITS`) are replaced; sign, exponent and the high
mantissa bits stay. Zeros, subnormals, infinities and NaNs are left as they are:
randomising the mantissa of a zero would create a subnormal (which the gate
flushes), and non-finite values are the gate's business. Integer and bool tensors
are untouched. The relative change of a value is below 2**(k - mantissa_bits).

Randomness: AES-256 in counter mode keyed with 32 bytes from `secrets` (the
kernel's CSPRNG behind os.urandom), fresh per call: a standard CSPRNG
construction (NIST SP 800-90A CTR_DRBG without reseeding) that runs at several
GB/s, where os.urandom alone runs at a few hundred MB/s on the 2-core reference
machine. Only the k low bits of each element are drawn (1, 2, 4 or 8 bytes).

Default k: measured on the honest corpus by `python -m bench.corpus` (`sanitizer`
in calibration.json): per dtype, the largest k whose mean holdout-accuracy drop over
all models and draws (gains counted as no drop) stays within 0.1 percentage point,
for it and every smaller k. F32: 19, F16: 6, BF16: 3 - exactly what keeping F32's
relative precision gives (`bits_for`: the same 4 high mantissa bits kept), which is
also how F64 (48) is set, since no model in the corpus is F64. A test keeps these
constants equal to the shipped measurement.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from sandbox.checks.tensors import (
    BITS_DTYPES,
    MANTISSA_BITS,
    RawTensor,
    raw_from_numpy,
    read_safetensors,
    write_safetensors,
)

#: Low mantissa bits randomised in F32 weights by default (see the module docstring).
DEFAULT_F32_BITS: Final = 19
#: Elements per block: the working set stays in cache and nothing large is allocated.
BLOCK_ELEMENTS: Final = 1 << 16
_RANDOM_DTYPES: Final = (np.dtype("<u1"), np.dtype("<u2"), np.dtype("<u4"), np.dtype("<u8"))


def bits_for(f32_bits: int) -> dict[str, int]:
    """Bits to randomise per float dtype so that each keeps the precision F32 keeps.

    F32 keeps 23 - k mantissa bits; F64 then randomises 52 - (23 - k), F16
    10 - (23 - k) and BF16 7 - (23 - k), clamped to [0, mantissa bits].
    """
    if not 0 <= f32_bits <= MANTISSA_BITS["F32"]:
        raise ValueError(f"sanitize bits for F32 must be in [0, 23], got {f32_bits}")
    kept = MANTISSA_BITS["F32"] - f32_bits
    return {dtype: max(0, min(m, m - kept)) for dtype, m in MANTISSA_BITS.items()}


DEFAULT_BITS: Final[Mapping[str, int]] = bits_for(DEFAULT_F32_BITS)


def resolve_bits(bits: int | Mapping[str, int] | None) -> dict[str, int]:
    """None: the defaults; an int: F32 bits, the rest by `bits_for`; a mapping: per
    dtype, missing dtypes from `bits_for` of its F32 entry (or the default)."""
    if bits is None:
        return dict(DEFAULT_BITS)
    if isinstance(bits, int):
        return bits_for(bits)
    resolved = bits_for(bits.get("F32", DEFAULT_F32_BITS))
    for dtype, k in bits.items():
        if dtype not in MANTISSA_BITS:
            raise ValueError(
                f"no mantissa for dtype {dtype!r}; float dtypes: {list(MANTISSA_BITS)}"
            )
        if not 0 <= k <= MANTISSA_BITS[dtype]:
            raise ValueError(
                f"sanitize bits for {dtype} must be in [0, {MANTISSA_BITS[dtype]}], got {k}"
            )
        resolved[dtype] = k
    return resolved


class KeyStream:
    """AES-256-CTR keystream: a CSPRNG keyed from `secrets` unless a key is given.

    A fixed `key` is for tests and benchmarks that need reproducible runs; the
    platform always uses the default, so no two sanitisations share bits.
    """

    def __init__(self, key: bytes | None = None) -> None:
        key = secrets.token_bytes(32) if key is None else key
        if len(key) != 32:
            raise ValueError("KeyStream needs a 32-byte key")
        nonce = bytes(16)  # the key is fresh per stream, so a zero counter block is safe
        self._encryptor = Cipher(algorithms.AES(key), modes.CTR(nonce)).encryptor()
        self._zeros = bytes(0)
        self._out = bytearray(0)

    def fill(self, out: npt.NDArray[np.unsignedinteger]) -> None:
        """Overwrite the (C-contiguous) array `out` with keystream bytes."""
        n = out.nbytes
        if len(self._zeros) < n:
            self._zeros = bytes(n)
            self._out = bytearray(n + 15)
        self._encryptor.update_into(memoryview(self._zeros)[:n], self._out)
        out.reshape(-1).view(np.uint8)[:] = np.frombuffer(self._out, dtype=np.uint8, count=n)

    def bytes(self, n: int) -> bytes:
        buffer = np.empty(n, dtype=np.uint8)
        self.fill(buffer)
        return buffer.tobytes()


@dataclass(frozen=True)
class TensorSanitized:
    """What the sanitizer did to one tensor."""

    dtype: str
    bits: int  # low mantissa bits randomised per element (0: untouched)
    elements: int
    randomised: int  # normal values whose low bits were replaced
    skipped: int  # zeros, subnormals, Inf and NaN, left as they were
    bits_changed: int  # bits that differ from the input (about half of bits * randomised)


@dataclass(frozen=True)
class SanitizeReport:
    tensors: dict[str, TensorSanitized]
    sha256: str | None = None
    size: int | None = None

    @property
    def randomised(self) -> int:
        return sum(t.randomised for t in self.tensors.values())

    @property
    def bits_changed(self) -> int:
        return sum(t.bits_changed for t in self.tensors.values())

    def summary(self) -> dict[str, object]:
        """A JSON-ready summary for report.json: `bits` per dtype is the fewest any
        tensor got; `bits_by_tensor` lists the tensors that got more, if any."""
        per_dtype: dict[str, int] = {}
        for t in self.tensors.values():
            if t.bits:
                per_dtype[t.dtype] = min(t.bits, per_dtype.get(t.dtype, t.bits))
        more = {
            name: t.bits
            for name, t in sorted(self.tensors.items())
            if t.bits and t.bits > per_dtype[t.dtype]
        }
        return {
            "bits": per_dtype,
            **({"bits_by_tensor": more} if more else {}),
            "tensors": len(self.tensors),
            "values_randomised": self.randomised,
            "values_skipped": sum(t.skipped for t in self.tensors.values()),
            "bits_changed": self.bits_changed,
            "sha256": self.sha256,
        }


def sanitize_bits_inplace(
    bits: npt.NDArray[np.unsignedinteger], dtype: str, k: int, stream: KeyStream
) -> tuple[int, int, int]:
    """Randomise the low `k` mantissa bits of the normal values in `bits` (a 1-D
    contiguous unsigned view of a float tensor, changed in place).

    Returns (randomised, skipped, bits_changed).
    """
    mantissa = MANTISSA_BITS[dtype]
    if not 0 <= k <= mantissa:
        raise ValueError(f"k must be in [0, {mantissa}] for {dtype}, got {k}")
    if k == 0 or bits.size == 0:
        return 0, 0, 0
    utype = BITS_DTYPES[dtype].type
    width = BITS_DTYPES[dtype].itemsize * 8
    low = utype((1 << k) - 1)
    keep = utype(((1 << width) - 1) ^ ((1 << k) - 1))
    abs_mask = utype((1 << (width - 1)) - 1)
    min_normal = utype(1 << mantissa)
    inf_bits = utype(((1 << (width - 1 - mantissa)) - 1) << mantissa)
    rtype = next(d for d in _RANDOM_DTYPES if d.itemsize * 8 >= k)
    block = min(BLOCK_ELEMENTS, bits.size)
    rand = np.empty(block, dtype=rtype)
    widened = np.empty(block, dtype=BITS_DTYPES[dtype])
    magnitude = np.empty(block, dtype=BITS_DTYPES[dtype])
    before = np.empty(block, dtype=BITS_DTYPES[dtype])
    randomised = skipped = changed = 0
    for start in range(0, bits.size, block):
        part = bits[start : start + block]
        n = part.size
        r, w, mag, old = rand[:n], widened[:n], magnitude[:n], before[:n]
        stream.fill(r)
        np.copyto(w, r, casting="unsafe")
        np.bitwise_and(w, low, out=w)
        np.copyto(old, part)
        np.bitwise_and(part, abs_mask, out=mag)
        all_normal = int(mag.min()) >= int(min_normal) and int(mag.max()) < int(inf_bits)
        if all_normal:
            np.bitwise_and(part, keep, out=part)
            np.bitwise_or(part, w, out=part)
            randomised += n
        else:
            normal = (mag >= min_normal) & (mag < inf_bits)
            fresh = (part & keep) | w
            np.copyto(part, fresh, where=normal)
            count = int(np.count_nonzero(normal))
            randomised += count
            skipped += n - count
        np.bitwise_xor(old, part, out=old)
        changed += int(np.bitwise_count(old).sum(dtype=np.int64))
    return randomised, skipped, changed


def sanitize_tensors(
    tensors: Mapping[str, RawTensor],
    bits: int | Mapping[str, int] | None = None,
    *,
    stream: KeyStream | None = None,
    per_tensor: Mapping[str, int | Mapping[str, int] | None] | None = None,
) -> tuple[dict[str, RawTensor], SanitizeReport]:
    """Sanitised copies of `tensors` (inputs are not modified) and what changed.

    `per_tensor` gives some tensors other bits than `bits` (same forms, `resolve_bits`)."""
    per_dtype = resolve_bits(bits)
    overrides = {name: resolve_bits(b) for name, b in (per_tensor or {}).items()}
    stream = stream or KeyStream()
    out: dict[str, RawTensor] = {}
    counts: dict[str, TensorSanitized] = {}
    for name in sorted(tensors):
        tensor = tensors[name]
        table = overrides.get(name, per_dtype)
        k = table.get(tensor.dtype, 0) if tensor.is_float else 0
        data = tensor.data.copy()
        fresh = RawTensor(tensor.dtype, data)
        if k:
            randomised, skipped, changed = sanitize_bits_inplace(
                fresh.bits().reshape(-1), tensor.dtype, k, stream
            )
        else:
            randomised, skipped, changed = 0, 0, 0
        out[name] = fresh
        counts[name] = TensorSanitized(
            tensor.dtype, k, int(data.size), randomised, skipped, changed
        )
    return out, SanitizeReport(counts)


def sanitize_arrays(
    arrays: Mapping[str, npt.NDArray[np.generic]],
    bits: int | Mapping[str, int] | None = None,
    *,
    stream: KeyStream | None = None,
) -> dict[str, npt.NDArray[np.generic]]:
    """`sanitize_tensors` for plain numpy arrays (F64/F32/F16, integers, bool)."""
    raw = {name: raw_from_numpy(a) for name, a in arrays.items()}
    clean, _ = sanitize_tensors(raw, bits, stream=stream)
    return {name: t.data for name, t in clean.items()}


def sanitize_file(
    src: Path,
    dest: Path,
    bits: int | Mapping[str, int] | None = None,
    *,
    stream: KeyStream | None = None,
) -> SanitizeReport:
    """Read a (gated, canonical) safetensors file, sanitise it, write `dest` canonically."""
    clean, report = sanitize_tensors(read_safetensors(src), bits, stream=stream)
    sha256, size = write_safetensors(dest, clean)
    return SanitizeReport(report.tensors, sha256=sha256, size=size)
