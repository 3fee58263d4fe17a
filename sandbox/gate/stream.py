"""The gate's output stream: write and sha256 a byte stream in parallel.

Why this shape: a 1 GB model must be read, scanned, written, synced and hashed at
>= 1 GB/s on two cores. The caller fills a buffer (read + scan); a writer thread and
a hashing thread then consume the same buffer concurrently (both release the GIL),
and the buffer goes back to a small pool when both are done. Memory stays at
`buffers * chunk_bytes` whatever the model size.

Buffers are page-aligned anonymous maps that hold the output bytes back to back, so
every full buffer is one aligned write. That lets the file be written with O_DIRECT
where the filesystem supports it: the data goes to disk once, the final fsync has
nothing left to flush, and the gate does not evict the host's page cache with a
model nobody reads again soon. Where O_DIRECT is refused the stream silently falls
back to ordinary buffered writes.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import mmap
import os
import queue
import threading
from collections.abc import Callable
from typing import Final

CHUNK_BYTES: Final = 16 << 20
BUFFERS: Final = 4
#: O_DIRECT needs block-aligned sizes and offsets; 4 KiB covers every common disk.
DIRECT_ALIGN: Final = 4096
_O_DIRECT: Final = getattr(os, "O_DIRECT", 0)

_Item = tuple[int, int] | None


class _Worker:
    """A thread applying `action(index, length)` to queued buffers, in order."""

    def __init__(self, name: str, action: Callable[[int, int], None], done: Callable[[int], None]):
        self._queue: queue.SimpleQueue[_Item] = queue.SimpleQueue()
        self._action = action
        self._done = done
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, index: int, length: int) -> None:
        self._queue.put((index, length))

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join()

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            index, length = item
            try:
                if self.error is None:
                    self._action(index, length)
            except BaseException as error:  # reported by the caller's finish()
                self.error = error
            finally:
                self._done(index)


class OutputStream:
    """Append-only stream of bytes to `fd`, written and hashed in the background.

    Use: `room()` free bytes in the current buffer; `reserve(n)` a view to fill;
    `commit(n)` once filled; `finish()` for (size, sha256 hex); `close()` always.
    """

    def __init__(
        self,
        fd: int,
        *,
        chunk_bytes: int | None = None,
        buffers: int = BUFFERS,
        direct: bool = True,
    ) -> None:
        chunk_bytes = CHUNK_BYTES if chunk_bytes is None else chunk_bytes  # read at call time
        if chunk_bytes <= 0 or chunk_bytes % DIRECT_ALIGN:
            raise ValueError(f"chunk_bytes must be a positive multiple of {DIRECT_ALIGN}")
        self._fd = fd
        self._direct = direct and _set_direct(fd, enabled=True)
        self._views = [memoryview(mmap.mmap(-1, chunk_bytes)) for _ in range(buffers)]
        self._users = [0] * buffers
        self._lock = threading.Lock()
        self._free: queue.SimpleQueue[int] = queue.SimpleQueue()
        for index in range(buffers):
            self._free.put(index)
        self._hash = hashlib.sha256()
        self._hasher = _Worker("gate-sha256", self._hash_buffer, self._release)
        self._writer = _Worker("gate-write", self._write_buffer, self._release)
        self._current = self._free.get()
        self._fill = 0
        self._size = 0
        self._padded = False
        self._closed = False

    @property
    def direct(self) -> bool:
        """Whether writes currently bypass the page cache."""
        return self._direct

    def room(self) -> int:
        """Free bytes left in the current buffer (> 0 until the stream is finished)."""
        return len(self._views[self._current]) - self._fill

    def reserve(self, size: int) -> memoryview:
        """A writable view of the next `size` bytes (size <= room()); page-aligned
        buffer plus stream position, so a view is as aligned as its stream offset."""
        return self._views[self._current][self._fill : self._fill + size]

    def commit(self, size: int) -> None:
        """The `size` reserved bytes are final; hand the buffer on once it is full."""
        self._fill += size
        self._size += size
        if self.room() == 0:
            self._submit()

    def put(self, data: bytes) -> None:
        """Append bytes we already hold (the header), across buffers if needed."""
        view = memoryview(data)
        while view:
            size = min(len(view), self.room())
            self.reserve(size)[:] = view[:size]
            self.commit(size)
            view = view[size:]

    def finish(self) -> tuple[int, str]:
        """Write out the rest, wait for both threads; return (size, sha256 hex)."""
        if self._fill:
            self._submit()
        self.close()
        self._raise_worker_error()
        if self._padded:
            os.ftruncate(self._fd, self._size)
        return self._size, self._hash.hexdigest()

    def close(self) -> None:
        """Stop the threads (idempotent; on an error path the output is discarded)."""
        if not self._closed:
            self._closed = True
            self._writer.stop()
            self._hasher.stop()

    def _submit(self) -> None:
        """Queue the current buffer for both threads and take a free one."""
        index, length = self._current, self._fill
        write_length = length
        if self._direct and length % DIRECT_ALIGN:
            # Only the last buffer is partial: zero-pad it to a block, truncate later.
            write_length = length + (-length % DIRECT_ALIGN)
            self._views[index][length:write_length] = bytes(write_length - length)
            self._padded = True
        self._users[index] = 2
        self._hasher.submit(index, length)
        self._writer.submit(index, write_length)
        self._current = self._free.get()
        self._fill = 0
        self._raise_worker_error()  # e.g. a full disk: stop reading the rest

    def _raise_worker_error(self) -> None:
        for worker in (self._writer, self._hasher):
            if worker.error is not None:
                raise worker.error

    def _release(self, index: int) -> None:
        with self._lock:
            self._users[index] -= 1
            if self._users[index] == 0:
                self._free.put(index)

    def _hash_buffer(self, index: int, length: int) -> None:
        self._hash.update(self._views[index][:length])

    def _write_buffer(self, index: int, length: int) -> None:
        view = self._views[index][:length]
        while view:
            try:
                written = os.write(self._fd, view)
            except OSError as error:
                if not (self._direct and error.errno == errno.EINVAL):
                    raise
                # The filesystem accepted O_DIRECT at open but not for this write.
                self._direct = not _set_direct(self._fd, enabled=False)
                if self._direct:
                    raise
                continue
            view = view[written:]


def _set_direct(fd: int, *, enabled: bool) -> bool:
    """Turn O_DIRECT on or off for `fd`; False if the platform or filesystem refuses."""
    if not _O_DIRECT:
        return False
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    wanted = flags | _O_DIRECT if enabled else flags & ~_O_DIRECT
    with contextlib.suppress(OSError):
        fcntl.fcntl(fd, fcntl.F_SETFL, wanted)
        return True
    return False
