"""Running the low-bit counts of a whole model on two cores: one forked child, no copies.

`np.bincount` holds the GIL, so threads do not parallelise the scan; a second
process does. The child is forked, so it sees the model's arrays as they are in
the parent's memory (copy-on-write, nothing is copied or sent), counts its half of
the values and writes back one small fixed-size int64 record per piece (about 4 KiB)
over a pipe. The split cuts the model's values, taken tensor after tensor, at the
middle: the two halves are equal in size whatever the tensor sizes, and at most one
tensor is cut in two (its two pieces are joined with `Counts.then`).

The child runs nothing but numpy counting on arrays the parent already holds and
leaves with `os._exit`, so it never runs the parent's threads, handlers or atexit
code. If it fails in any way (killed, short output, non-zero exit, no answer within
`CHILD_TIMEOUT_SECONDS`) the parent counts
the child's half itself: the result never depends on the child succeeding, only
the time does. A fork with 1 GB resident costs about 4 ms (fork, exit and wait,
measured on the 2-core VM), against about 25 ms of counting for 32 MiB of F32, so
models under `PARALLEL_MIN_VALUES` values, machines with one usable core, and
platforms without `os.fork` take the one-process path.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import time
from collections.abc import Sequence
from typing import Final

import numpy as np
import numpy.typing as npt

from sandbox.checks.lowbits_counts import (
    RECORD,
    Counts,
    count_bits,
    decode,
    empty_counts,
    encode,
)

#: A child that has not answered by then is killed and its half counted here: the fork
#: happens in a process that may run other threads (the gRPC server), and a lock one of
#: them held at fork time would otherwise hang the job. Counting half of a 1 GB model
#: takes about 1 s of CPU.
CHILD_TIMEOUT_SECONDS: Final = 60.0

#: Below this many values (32 MiB of F32) the fork is not worth it.
PARALLEL_MIN_VALUES: Final = 1 << 23

#: (array index, start, stop): a contiguous piece of one tensor's values.
Piece = tuple[int, int, int]


def usable_cores() -> int:
    """Cores this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def split_halves(sizes: Sequence[int]) -> tuple[list[Piece], list[Piece]]:
    """Cut the values of all arrays, in order, into two halves of equal size."""
    total = sum(sizes)
    cut = total // 2
    first: list[Piece] = []
    second: list[Piece] = []
    offset = 0
    for index, size in enumerate(sizes):
        lo, hi = offset, offset + size
        if hi <= cut:
            first.append((index, 0, size))
        elif lo >= cut:
            second.append((index, 0, size))
        else:
            first.append((index, 0, cut - lo))
            second.append((index, cut - lo, size))
        offset = hi
    return first, second


def count_arrays(
    arrays: Sequence[npt.NDArray[np.uint32]], *, workers: int | None = None
) -> list[Counts]:
    """Counts of each 1-D uint32 array; two processes when it pays (`workers`: None = auto)."""
    sizes = [int(a.size) for a in arrays]
    if workers is None:
        workers = 2 if sum(sizes) >= PARALLEL_MIN_VALUES and usable_cores() >= 2 else 1
    if workers < 2 or not hasattr(os, "fork"):
        return [count_bits(a) for a in arrays]
    mine, theirs = split_halves(sizes)
    child = _fork_child(arrays, theirs)
    try:
        my_counts = _count_pieces(arrays, mine)
    except BaseException:
        child.kill()
        raise
    return _join(len(arrays), my_counts + child.wait(arrays))


def _count_pieces(
    arrays: Sequence[npt.NDArray[np.uint32]], pieces: Sequence[Piece]
) -> list[tuple[Piece, Counts]]:
    return [((i, lo, hi), count_bits(arrays[i][lo:hi])) for i, lo, hi in pieces]


def _join(count: int, pieces: Sequence[tuple[Piece, Counts]]) -> list[Counts]:
    """Per array, its pieces' counts joined in order of their start."""
    by_array: list[list[tuple[int, Counts]]] = [[] for _ in range(count)]
    for (index, lo, _), counts in pieces:
        by_array[index].append((lo, counts))
    out = []
    for parts in by_array:
        joined = empty_counts()
        for _, counts in sorted(parts, key=lambda p: p[0]):
            joined = joined.then(counts)
        out.append(joined)
    return out


class _Child:
    """A forked child counting `pieces` (pid None: no child, the parent counts them)."""

    def __init__(self, pid: int | None, read_fd: int, pieces: Sequence[Piece]) -> None:
        self.pid, self.read_fd, self.pieces = pid, read_fd, list(pieces)

    def wait(self, arrays: Sequence[npt.NDArray[np.uint32]]) -> list[tuple[Piece, Counts]]:
        """The child's counts; if it failed in any way, the same counts made here."""
        if self.pid is None:
            return _count_pieces(arrays, self.pieces)
        try:
            data = _read_all(self.read_fd, time.monotonic() + CHILD_TIMEOUT_SECONDS)
        except TimeoutError:  # e.g. a lock some other parent thread held at fork time
            self.kill()
            return _count_pieces(arrays, self.pieces)
        os.close(self.read_fd)
        _, status = os.waitpid(self.pid, 0)
        records = np.frombuffer(data, dtype=np.int64)
        if status != 0 or records.size != RECORD * len(self.pieces):
            return _count_pieces(arrays, self.pieces)
        out = []
        for piece, record in zip(self.pieces, records.reshape(-1, RECORD), strict=True):
            tag, counts = decode(record)
            if tag != piece[0]:
                return _count_pieces(arrays, self.pieces)
            out.append((piece, counts))
        return out

    def kill(self) -> None:
        """Stop and reap the child (the parent failed before collecting it)."""
        if self.pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        os.close(self.read_fd)
        os.waitpid(self.pid, 0)


def _fork_child(arrays: Sequence[npt.NDArray[np.uint32]], pieces: Sequence[Piece]) -> _Child:
    """Fork a child that counts `pieces` and writes their records to a pipe."""
    read_fd, write_fd = os.pipe()
    try:
        pid = os.fork()
    except OSError:  # process or memory limits: the parent counts these pieces too
        os.close(read_fd)
        os.close(write_fd)
        return _Child(None, -1, pieces)
    if pid == 0:  # the child: count, write, leave without running any parent code
        status = 1
        try:
            os.close(read_fd)
            payload = np.concatenate(
                [encode(i, count_bits(arrays[i][lo:hi])) for i, lo, hi in pieces]
            )
            _write_all(write_fd, memoryview(payload.tobytes()))
            status = 0
        finally:
            os._exit(status)
    os.close(write_fd)
    return _Child(pid, read_fd, pieces)


def _write_all(fd: int, view: memoryview) -> None:
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _read_all(fd: int, deadline: float) -> bytes:
    """Everything until EOF; TimeoutError when the child has not finished by `deadline`."""
    chunks: list[bytes] = []
    while True:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            raise TimeoutError("the counting child did not finish")
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
