"""Reading a gated model into numpy, and writing tensors back in the gate's canonical form.

The checks step reads the file the egress gate wrote (already validated and
canonical), so this reader is simple, but it still goes through the gate's header
parser: one parser for every safetensors file the platform opens. Writing reuses the
gate's canonical layout (`canonical_order`, `canonical_header`, `write_atomically`),
so a sanitised model is canonical by the same definition and equal tensors give
equal bytes and an equal sha256.

numpy has no bfloat16, so a BF16 tensor is held as its raw `uint16` bit patterns;
`RawTensor.dtype` always carries the safetensors dtype name.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt

from sandbox.gate.canonical import canonical_header, canonical_order, write_atomically
from sandbox.gate.safetensors_header import DTYPE_SIZES, TensorEntry, parse_header

#: numpy storage dtype of each safetensors dtype (BF16: its bit patterns).
NUMPY_DTYPES: Final[Mapping[str, np.dtype[np.generic]]] = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
#: Explicit mantissa (fraction) bits of each floating-point dtype.
MANTISSA_BITS: Final[Mapping[str, int]] = {"F64": 52, "F32": 23, "F16": 10, "BF16": 7}
#: Unsigned view with the same width, for bit manipulation.
BITS_DTYPES: Final[Mapping[str, np.dtype[np.unsignedinteger]]] = {
    "F64": np.dtype("<u8"),
    "F32": np.dtype("<u4"),
    "F16": np.dtype("<u2"),
    "BF16": np.dtype("<u2"),
}
_DEFAULT_MAX_HEADER: Final = 100 * 1024 * 1024


@dataclass(frozen=True)
class RawTensor:
    """One tensor as stored: safetensors dtype name and a C-contiguous numpy array."""

    dtype: str
    data: npt.NDArray[np.generic]

    def __post_init__(self) -> None:
        want = NUMPY_DTYPES.get(self.dtype)
        if want is None:
            raise ValueError(f"unknown dtype {self.dtype!r}; known: {', '.join(NUMPY_DTYPES)}")
        if self.data.dtype != want:
            raise ValueError(
                f"a {self.dtype} tensor needs numpy dtype {want}, got {self.data.dtype}"
            )
        if not self.data.flags.c_contiguous:
            raise ValueError("tensor data must be C-contiguous")

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.data.shape)

    @property
    def is_float(self) -> bool:
        return self.dtype in MANTISSA_BITS

    def bits(self) -> npt.NDArray[np.unsignedinteger]:
        """The bit patterns of a float tensor (a view, not a copy)."""
        if not self.is_float:
            raise ValueError(f"{self.dtype} is not a floating-point dtype")
        return self.data.view(BITS_DTYPES[self.dtype])


def raw_from_numpy(array: npt.NDArray[np.generic]) -> RawTensor:
    """Wrap a numpy array (F64/F32/F16/integer/bool) as a RawTensor."""
    array = np.ascontiguousarray(array)
    for name, dtype in NUMPY_DTYPES.items():
        if name != "BF16" and array.dtype == dtype:
            return RawTensor(name, array)
    raise ValueError(f"numpy dtype {array.dtype} has no safetensors equivalent here")


def as_float(tensor: RawTensor) -> npt.NDArray[np.floating]:
    """The values of a float tensor as numpy floats.

    BF16 is widened exactly to float64 (numpy has no bfloat16); the other float
    dtypes keep their storage dtype, which the bit-level checks rely on.
    """
    if tensor.dtype == "BF16":
        widened = tensor.data.astype(np.uint32) << np.uint32(16)
        return widened.view(np.float32).astype(np.float64)
    if not tensor.is_float:
        raise ValueError(f"{tensor.dtype} is not a floating-point dtype")
    values: npt.NDArray[np.floating] = tensor.data.view(NUMPY_DTYPES[tensor.dtype].type)
    return values


def float_tensors(tensors: Mapping[str, RawTensor]) -> dict[str, npt.NDArray[np.floating]]:
    """The float tensors of a model, by name, in the form the weight checks take."""
    return {name: as_float(t) for name, t in sorted(tensors.items()) if t.is_float}


def read_safetensors(
    path: Path, *, max_header_bytes: int = _DEFAULT_MAX_HEADER
) -> dict[str, RawTensor]:
    """Read every tensor of a safetensors file (metadata, if any, is ignored)."""
    with open(path, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        header = parse_header(handle, size, max_header_bytes=max_header_bytes)
        out: dict[str, RawTensor] = {}
        for entry in header.tensors:
            dtype = NUMPY_DTYPES[entry.dtype]
            buffer = bytearray(entry.nbytes)
            handle.seek(header.data_start + entry.begin)
            if handle.readinto(buffer) != entry.nbytes:
                raise ValueError(f"{path} ended inside tensor {entry.name!r}")
            data = np.frombuffer(buffer, dtype=dtype).reshape(entry.shape)
            out[entry.name] = RawTensor(entry.dtype, data)
    return out


def write_safetensors(dest: Path, tensors: Mapping[str, RawTensor]) -> tuple[str, int]:
    """Write `tensors` canonically (the gate's layout) and atomically; (sha256, size)."""
    entries: list[TensorEntry] = []
    for name, tensor in tensors.items():
        nbytes = math.prod(tensor.shape) * DTYPE_SIZES[tensor.dtype]
        entries.append(TensorEntry(name, tensor.dtype, tensor.shape, 0, nbytes))
    ordered = canonical_order(entries)
    header = canonical_header(ordered)

    def write(fd: int) -> tuple[str, int]:
        digest = hashlib.sha256()
        size = 0
        for piece in [header] + [_as_bytes(tensors[e.name]) for e in ordered]:
            digest.update(piece)
            view = memoryview(piece)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            size += len(piece)
        return digest.hexdigest(), size

    return write_atomically(dest, write)


def _as_bytes(tensor: RawTensor) -> memoryview:
    return memoryview(tensor.data.reshape(-1).view(np.uint8).data)
