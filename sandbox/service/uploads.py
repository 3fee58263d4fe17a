"""Receiving an upload: the declared size enforced as bytes arrive, the sha256 at the end."""

from __future__ import annotations

import hashlib
import os
import queue
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from sandbox.errors import InvalidInput, LimitExceeded
from sandbox.store.metadata import check_sha256


@dataclass(frozen=True)
class UploadHeader:
    name: str
    size: int
    sha256: str


def private_file(path: Path) -> int:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    return os.open(path, flags, 0o600)


def check_declared(header: UploadHeader, limit: int) -> None:
    if header.size > limit:
        raise LimitExceeded(
            f"the upload declares {header.size} bytes, over the server's limit of {limit} bytes"
        )
    check_sha256(header.sha256, "the upload's sha256")


def receive(
    header: UploadHeader,
    chunks: Iterable[bytes],
    dest: Path,
    limit: int,
    *,
    verify_sha256: bool = True,
    tee: Callable[[bytes], None] | None = None,
) -> None:
    """Write the upload to `dest` (0600, new), handing each piece to `tee` as well.

    With `verify_sha256=False` the caller checks the digest itself (e.g. from the
    pass that encrypts it, fed by `tee`: one hash fewer)."""
    check_declared(header, limit)
    digest = hashlib.sha256()
    received = 0
    fd = private_file(dest)
    with os.fdopen(fd, "wb", buffering=0) as out:
        for chunk in chunks:
            received += len(chunk)
            if received > header.size:
                raise LimitExceeded(
                    f"the upload sent more than the {header.size} bytes it declared"
                )
            if tee is not None:
                tee(chunk)
            if verify_sha256:
                digest.update(chunk)
            out.write(chunk)
    if received < header.size:
        raise InvalidInput(
            f"the upload stopped after {received} of the {header.size} bytes it "
            "declared (the stream was cut off); send it again"
        )
    if verify_sha256:
        check_digest(header, digest.hexdigest())


def check_digest(header: UploadHeader, actual: str) -> None:
    if actual != header.sha256:
        raise InvalidInput(
            f"the upload's content has sha256 {actual}, not the declared "
            f"{header.sha256}: it was corrupted in transit; send it again"
        )


class Overlapped:
    """`consume` each piece on a worker thread while the caller receives the next.

    An upload is received (TLS, gRPC, the tmpfs write) on the RPC's thread and sealed
    (hash, AES-GCM, the blob write) here, so the two overlap on two cores instead of
    following each other; hashing, encryption and writes release the GIL. At most
    `depth` pieces wait (each at most one gRPC message), so memory stays bounded.
    The worker's first error is raised by the next `put` and by `finish`; leaving
    the `with` block always stops the worker.
    """

    def __init__(self, consume: Callable[[bytes], object], depth: int = 4) -> None:
        self._consume = consume
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="upload-seal", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (piece := self._queue.get()) is not None:
            if self._error is None:  # after an error: drain, so `put` never blocks
                try:
                    self._consume(piece)
                except BaseException as error:  # raised on the caller's thread
                    self._error = error

    def put(self, piece: bytes) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put(piece)

    def _stop(self) -> None:
        if not self._stopped:
            self._stopped = True
            self._queue.put(None)
            self._thread.join()

    def finish(self) -> None:
        """Wait until every piece was consumed; raise the worker's error if any."""
        self._stop()
        if self._error is not None:
            raise self._error

    def __enter__(self) -> Overlapped:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop()
