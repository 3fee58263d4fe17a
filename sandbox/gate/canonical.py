"""Canonical re-serialisation of a validated safetensors file, streamed.

Why canonical: the provider controls every free choice of the format (key order,
whitespace, padding, tensor order, metadata). Re-writing the file with all of them
fixed removes those side channels and makes equal tensors give equal bytes, so the
sha256 identifies the model.

The layout: header = compact JSON with sorted keys and no __metadata__, padded with
spaces to a multiple of 8 bytes; data = tensors back to back, ordered by element size
(largest first) and then by name. That order is as deterministic as name order and
keeps every tensor aligned to its element size, so consumers can map the file
without copying (the reference safetensors writer orders the same way for the same
reason).

Why streamed this way: the data is read with pread into our own buffers (never mapped
from the untrusted file, so the bytes we check are exactly the bytes we write and
hash), checked and fixed in place there, and handed to `OutputStream`, whose threads
write and hash while the next piece is read and scanned.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, TypeVar

from sandbox.gate.safetensors_header import DTYPE_SIZES, TensorEntry
from sandbox.gate.scan import Scanner, TensorStats
from sandbox.gate.stream import OutputStream
from sandbox.gate.violation import GateViolation

_ALIGN: Final = 8

T = TypeVar("T")


def canonical_order(entries: Iterable[TensorEntry]) -> list[TensorEntry]:
    """Largest element size first, then by name: deterministic and aligned."""
    return sorted(entries, key=lambda e: (-DTYPE_SIZES[e.dtype], e.name))


def canonical_header(ordered: Sequence[TensorEntry]) -> bytes:
    """The 8-byte length plus the padded JSON header for tensors in `ordered` order."""
    document: dict[str, dict[str, object]] = {}
    offset = 0
    for entry in ordered:
        document[entry.name] = {
            "dtype": entry.dtype,
            "shape": list(entry.shape),
            "data_offsets": [offset, offset + entry.nbytes],
        }
        offset += entry.nbytes
    text = json.dumps(document, separators=(",", ":"), sort_keys=True).encode("ascii")
    text += b" " * (-len(text) % _ALIGN)
    return len(text).to_bytes(8, "little") + text


@dataclass(frozen=True)
class CanonicalFile:
    """What was written: its digest and size, and what the scan saw per tensor."""

    sha256: str
    size: int
    stats: dict[str, TensorStats]


def write_canonical(
    src_fd: int,
    data_start: int,
    entries: Sequence[TensorEntry],
    dest: Path,
    scanner: Scanner,
    after_tensor: Callable[[TensorEntry, TensorStats], None],
    *,
    direct: bool = True,
) -> CanonicalFile:
    """Copy the tensors of `src_fd` into `dest` in canonical form, atomically.

    `after_tensor` sees each tensor's scan result once its data is through and may
    raise to abort; nothing then appears at `dest`.
    """
    ordered = canonical_order(entries)

    def write(fd: int) -> CanonicalFile:
        stream = OutputStream(fd, direct=direct)
        try:
            stream.put(canonical_header(ordered))
            stats: dict[str, TensorStats] = {}
            for entry in ordered:
                stats[entry.name] = _copy_tensor(src_fd, data_start, entry, stream, scanner)
                after_tensor(entry, stats[entry.name])
            size, digest = stream.finish()
        finally:
            stream.close()
        return CanonicalFile(sha256=digest, size=size, stats=stats)

    return write_atomically(dest, write)


def _copy_tensor(
    src_fd: int, data_start: int, entry: TensorEntry, stream: OutputStream, scanner: Scanner
) -> TensorStats:
    """Move one tensor through the stream piece by piece, scanning each piece.

    Canonical order keeps each tensor's stream offset a multiple of its element
    size and buffers are a multiple of 8 bytes, so pieces are whole elements.
    """
    itemsize = DTYPE_SIZES[entry.dtype]
    stats = TensorStats()
    position = data_start + entry.begin
    remaining = entry.nbytes
    while remaining:
        size = min(remaining, stream.room())
        if size % itemsize:
            raise RuntimeError(f"tensor {entry.name!r} is not aligned in the output stream")
        piece = stream.reserve(size)
        read_exactly(src_fd, piece, position)
        scanner.scan(entry.dtype, piece, stats)
        stream.commit(size)
        position += size
        remaining -= size
    return stats


def read_exactly(fd: int, view: memoryview, offset: int) -> None:
    """Fill `view` from `fd` at `offset`; a short read means the file shrank."""
    done = 0
    while done < len(view):
        n = os.preadv(fd, [view[done:]], offset + done)
        if n <= 0:
            raise GateViolation(
                "model.safetensors ended early: it changed while the gate was reading it; "
                "make sure train.py has finished writing before it exits",
                code="truncated",
            )
        done += n


def write_atomically(dest: Path, write: Callable[[int], T]) -> T:
    """Run `write` on a temp file next to `dest`, fsync it, then rename it into place.

    A crash or a rejection leaves either the old `dest` or nothing - never a partial
    model that a later step could mistake for a checked one.
    """
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    try:
        result = write(fd)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(tmp_name)
        raise
    os.close(fd)
    os.replace(tmp_name, dest)
    _fsync_dir(dest.parent)
    return result


def _fsync_dir(directory: Path) -> None:
    """Make the rename durable; some filesystems refuse fsync on directories."""
    try:
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)
