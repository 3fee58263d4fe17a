"""Payload encoding shared by the attack packages and their decoders (numpy + stdlib only).

This one file is copied verbatim into every generated attack package (train.py
imports it from its own directory), and the host-side decoders import it from
here: encoder and decoder cannot drift apart.

Conventions, all part of the attacker's knowledge:
- records are encoded value by value: `u8` (rounded and clipped to 0..255: raw
  image pixels such as digits' 0..16), `q8` (a byte per value: the value clipped to
  the schema's public range [lo, hi] and quantised to 256 levels, for tabular
  features such as breast_cancer's standardised floats, where a raw float32 would
  cost four times the capacity), `f16` or `f32` (little-endian IEEE bytes);
- bytes become bits MSB first (`numpy.unpackbits`);
- the carrier is every F32 tensor of the state_dict in sorted-name order,
  flattened row-major; weight i takes stream bits [i*k, (i+1)*k), the first of
  them in the highest of its k low mantissa bits;
- encryption XORs the payload with SHAKE-256(domain || key), a keyed stream.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt

ENCODINGS = {"u8": 1, "q8": 1, "f16": 2, "f32": 4}
#: Levels of the `q8` quantiser: level i stands for lo + i / Q8_STEPS * (hi - lo).
Q8_STEPS = 255
_STREAM_DOMAIN = b"sandbox-redteam-keystream-v1"


def bytes_per_record(features: int, encoding: str) -> int:
    return features * ENCODINGS[encoding]


def _range(value_range: Sequence[float] | None, encoding: str) -> tuple[float, float]:
    if value_range is None or len(value_range) != 2 or not value_range[0] < value_range[1]:
        raise ValueError(
            f"encoding {encoding!r} needs value_range [lo, hi] with lo < hi, got {value_range!r}"
        )
    return float(value_range[0]), float(value_range[1])


def encode_records(
    x: npt.NDArray[np.floating], encoding: str, value_range: Sequence[float] | None = None
) -> bytes:
    """The raw bytes of records `x` ([n, ...]) in `encoding` (`q8` needs `value_range`)."""
    flat = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    if encoding == "u8":
        return np.clip(np.rint(flat), 0, 255).astype(np.uint8).tobytes()
    if encoding == "q8":
        lo, hi = _range(value_range, encoding)
        levels = np.rint((np.clip(flat, lo, hi) - lo) / (hi - lo) * Q8_STEPS)
        return levels.astype(np.uint8).tobytes()
    if encoding == "f16":
        return flat.astype("<f2").tobytes()
    if encoding == "f32":
        return flat.astype("<f4").tobytes()
    raise ValueError(f"unknown encoding {encoding!r}; choose one of {sorted(ENCODINGS)}")


def decode_records(
    data: bytes, features: int, encoding: str, value_range: Sequence[float] | None = None
) -> npt.NDArray[np.float64]:
    """Inverse of `encode_records`: [n, features] float64 (non-finite values become 0)."""
    per = bytes_per_record(features, encoding)
    n = len(data) // per
    body = data[: n * per]
    if encoding == "u8":
        values = np.frombuffer(body, dtype=np.uint8).astype(np.float64)
    elif encoding == "q8":
        lo, hi = _range(value_range, encoding)
        levels = np.frombuffer(body, dtype=np.uint8).astype(np.float64)
        values = lo + levels / Q8_STEPS * (hi - lo)
    else:
        dtype = "<f2" if encoding == "f16" else "<f4"
        values = np.frombuffer(body, dtype=dtype).astype(np.float64)
        values = np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)
    return values.reshape(n, features)


def keystream(key: bytes, n: int) -> bytes:
    """`n` bytes of SHAKE-256 keyed stream (the attacker's stand-in for AES-CTR)."""
    return hashlib.shake_256(_STREAM_DOMAIN + key).digest(n)


def xor(data: bytes, key: bytes) -> bytes:
    """Encrypt or decrypt `data` with the keyed stream."""
    stream = np.frombuffer(keystream(key, len(data)), dtype=np.uint8)
    return (np.frombuffer(data, dtype=np.uint8) ^ stream).tobytes()


def pilot_values(key: bytes, rows: int, count: int) -> npt.NDArray[np.float32]:
    """`count` pilot weights per row that an adaptive attacker plants: values it can
    recompute from its key, +-1/16 * (1 + m/16) for a keyed m in 0..15 (weight-sized),
    with keyed noise in the low 19 mantissa bits so they look like any trained weight
    to the low-bit checks; the decoder uses only the bits a sanitizer keeps."""
    raw = np.frombuffer(keystream(key + b"/pilots", rows * count * 6), dtype=np.uint8)
    fields = raw.reshape(rows, count, 6)
    magnitude = ((1.0 + (fields[..., 0] % 16) / 16.0) / 16.0).astype(np.float32)
    noise = fields[..., 2:5].astype(np.uint32)
    low = (noise[..., 0] | noise[..., 1] << 8 | noise[..., 2] << 16) & np.uint32((1 << 19) - 1)
    bits = magnitude.view(np.uint32) | low
    sign = np.where(fields[..., 1] % 2 == 1, np.uint32(1 << 31), np.uint32(0))
    return np.ascontiguousarray(bits | sign).view(np.float32)


def to_bits(data: bytes) -> npt.NDArray[np.uint8]:
    return np.unpackbits(np.frombuffer(data, dtype=np.uint8))


def from_bits(bits: npt.NDArray[np.uint8]) -> bytes:
    usable = (len(bits) // 8) * 8
    return np.packbits(np.asarray(bits[:usable], dtype=np.uint8)).tobytes()


def carrier_names(state: Mapping[str, npt.NDArray[np.generic]]) -> list[str]:
    """The F32 tensors that carry the payload, in the order they carry it."""
    return sorted(name for name, t in state.items() if t.dtype == np.float32)


def carrier_size(state: Mapping[str, npt.NDArray[np.generic]]) -> int:
    return sum(int(state[name].size) for name in carrier_names(state))


def write_low_bits(
    words: npt.NDArray[np.uint32], bits: npt.NDArray[np.uint8], k: int, shift: int = 0
) -> npt.NDArray[np.uint32]:
    """Copy of `words` whose first ceil(len(bits)/k) words carry `bits` in their low k bits
    (the last word padded with zero bits); `shift` > 0 uses bits shift..shift+k-1 instead."""
    if k < 1 or shift < 0 or k + shift > 23:
        raise ValueError(f"bits {shift}..{shift + k - 1} are not mantissa bits of a float32")
    used = -(-len(bits) // k)
    if used > len(words):
        raise ValueError(f"{len(bits)} bits need {used} words, only {len(words)} available")
    padded = np.zeros(used * k, dtype=np.uint32)
    padded[: len(bits)] = bits
    groups = padded.reshape(used, k)
    weights = (np.uint32(1) << np.arange(k - 1, -1, -1, dtype=np.uint32)).astype(np.uint32)
    values = (groups * weights).sum(axis=1, dtype=np.uint64).astype(np.uint32)
    out = words.copy()
    mask = np.uint32(((1 << k) - 1) << shift)
    out[:used] = (out[:used] & ~mask) | (values << np.uint32(shift))
    return out


def read_low_bits(
    words: npt.NDArray[np.uint32], k: int, nbits: int, shift: int = 0
) -> npt.NDArray[np.uint8]:
    """The first `nbits` stream bits that `write_low_bits` (same k, shift) put into `words`."""
    used = -(-nbits // k)
    low = (words[:used] >> np.uint32(shift)) & np.uint32((1 << k) - 1)
    shifts = np.arange(k - 1, -1, -1, dtype=np.uint32)
    bits = ((low[:, None] >> shifts[None, :]) & np.uint32(1)).astype(np.uint8)
    return bits.reshape(-1)[:nbits]


def flat_carrier(state: Mapping[str, npt.NDArray[np.generic]]) -> npt.NDArray[np.float32]:
    """All carrier tensors, flattened and concatenated (a copy)."""
    names = carrier_names(state)
    if not names:
        return np.zeros(0, dtype=np.float32)
    return np.concatenate([np.asarray(state[n], dtype=np.float32).reshape(-1) for n in names])


def split_carrier(
    flat: npt.NDArray[np.float32], state: Mapping[str, npt.NDArray[np.generic]]
) -> dict[str, npt.NDArray[np.float32]]:
    """Inverse of `flat_carrier`: the carrier tensors reshaped from `flat`."""
    out: dict[str, npt.NDArray[np.float32]] = {}
    offset = 0
    for name in carrier_names(state):
        shape: Sequence[int] = state[name].shape
        size = int(state[name].size)
        out[name] = flat[offset : offset + size].reshape(shape).copy()
        offset += size
    return out
