"""Content-addressed blobs: `root/ab/cdef...` named by the sha256 of their bytes.

A put streams into a temp file directly under `root` (same filesystem, so the final
rename is atomic), hashing and counting as it goes, then fsyncs the file, renames it
into its fan-out directory and fsyncs that directory. A reader therefore sees either
no blob or the complete one, also after a crash. Putting the same bytes twice is
harmless: the second rename replaces the file with identical content.

Temp files are named `.tmp-<random>` and held under an exclusive flock(2) for their
whole life. The kernel drops the lock when the writer dies, so `sweep_temp()` can
tell an orphan of a crashed process (lock free: removed) from a put in flight (lock
held: left alone), without guessing from ages. A put re-checks after locking that
its temp file was not swept between creating and locking it.

Files are 0600 and directories 0700: blobs hold encrypted datasets, algorithms and
models, and only the server's user reads them. Digests are validated (64 lowercase
hex digits) before they touch a path, so a name can never escape `root`.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import re
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Final

from sandbox.errors import FailedPrecondition, InvalidInput, LimitExceeded, NotFound

TEMP_PREFIX: Final = ".tmp-"
READ_BYTES: Final = 1 << 20
_DIGEST: Final = re.compile(r"[0-9a-f]{64}")
_OPEN_FLAGS: Final = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True)
class BlobRef:
    """A stored blob: the sha256 (hex) of its bytes and its size in bytes."""

    sha256: str
    size: int


def check_digest(sha256: str, what: str = "blob digest") -> str:
    """Return `sha256` if it is 64 lowercase hex digits, else raise InvalidInput."""
    if not isinstance(sha256, str) or not _DIGEST.fullmatch(sha256):
        raise InvalidInput(
            f"{what} {sha256!r} is not a sha256: give 64 lowercase hexadecimal digits"
        )
    return sha256


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class BlobStore:
    """Immutable blobs under `root`, addressed by sha256."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = os.stat(self.root, follow_symlinks=False)
        if not stat.S_ISDIR(info.st_mode):
            raise FailedPrecondition(
                f"blob store root {self.root} is not a directory (a symbolic link or a file); "
                "point the server at a real directory"
            )

    def _path(self, sha256: str) -> Path:
        check_digest(sha256)
        return self.root / sha256[:2] / sha256[2:]

    def _new_temp(self) -> tuple[int, Path]:
        """Create, lock and return a fresh temp file that no sweep has removed."""
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        while True:
            path = self.root / f"{TEMP_PREFIX}{secrets.token_hex(8)}"
            fd = os.open(path, flags, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # a sweep holds it and is about to remove it
                os.close(fd)
                continue
            try:
                same = os.stat(path, follow_symlinks=False).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                return fd, path
            os.close(fd)  # swept between create and lock: its name is gone, try another

    def put_stream(
        self, src: BinaryIO, *, max_bytes: int, expected_sha256: str | None = None
    ) -> BlobRef:
        """Store everything `src` yields; at most `max_bytes`, optionally of a known digest.

        Raises LimitExceeded past `max_bytes` and InvalidInput when the content's digest
        is not `expected_sha256`; in both cases nothing is left behind.
        """
        if expected_sha256 is not None:
            check_digest(expected_sha256, "expected sha256")
        with self.writer(max_bytes=max_bytes) as writer:
            while data := src.read(READ_BYTES):
                writer.write(data)
            return writer.commit(expected_sha256)

    def writer(self, *, max_bytes: int) -> BlobWriter:
        """A blob written piece by piece (e.g. by an encryptor): `write`, then `commit`.

        Leaving the `with` block without a commit removes the temp file.
        """
        if max_bytes < 0:
            raise InvalidInput(f"max_bytes must be >= 0, got {max_bytes}")
        return BlobWriter(self, max_bytes)

    def open(self, sha256: str) -> BinaryIO:
        """Open the blob for reading (binary); NotFound if it is not stored."""
        try:
            fd = os.open(self._path(sha256), _OPEN_FLAGS)
        except FileNotFoundError:
            raise NotFound(f"no blob with sha256 {sha256} is stored") from None
        return os.fdopen(fd, "rb")

    def exists(self, sha256: str) -> bool:
        return self._path(sha256).is_file()

    def size(self, sha256: str) -> int:
        try:
            return os.stat(self._path(sha256), follow_symlinks=False).st_size
        except FileNotFoundError:
            raise NotFound(f"no blob with sha256 {sha256} is stored") from None

    def verify(self, sha256: str) -> bool:
        """Re-hash a stored blob: True if its bytes still match its name (scrubbing)."""
        digest = hashlib.sha256()
        with self.open(sha256) as f:
            while data := f.read(READ_BYTES):
                digest.update(data)
        return digest.hexdigest() == sha256

    def delete(self, sha256: str) -> bool:
        """Remove the blob; True if it existed. Callers own reference counting."""
        path = self._path(sha256)
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        _fsync_dir(path.parent)
        return True

    def sweep_temp(self) -> list[str]:
        """Remove temp files whose writer died (unlocked); return their names."""
        removed: list[str] = []
        for entry in os.scandir(self.root):
            if not entry.name.startswith(TEMP_PREFIX):
                continue
            try:
                fd = os.open(entry.path, _OPEN_FLAGS | os.O_NONBLOCK)
            except FileNotFoundError:
                continue  # its put just finished or failed
            except OSError as error:
                if error.errno != errno.ELOOP:
                    raise
                os.unlink(entry.path)  # a symlink: never ours
                removed.append(entry.name)
                continue
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # a live put owns it
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
                    removed.append(entry.name)
            finally:
                os.close(fd)
        if removed:
            _fsync_dir(self.root)
        return sorted(removed)


class BlobWriter:
    """One blob being written into a locked temp file; see `BlobStore.writer`."""

    def __init__(self, store: BlobStore, max_bytes: int) -> None:
        self._store = store
        self._max = max_bytes
        self._fd, self._temp = store._new_temp()
        self._digest = hashlib.sha256()
        self.size = 0
        self._open = True

    def write(self, data: bytes | bytearray | memoryview) -> int:
        if not self._open:
            raise ValueError("write to a committed or aborted blob")
        self.size += len(data)
        if self.size > self._max:
            raise LimitExceeded(
                f"blob is larger than the limit of {self._max} bytes; send a smaller "
                "file or raise the limit in the server configuration"
            )
        self._digest.update(data)
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]
        return len(data)

    def commit(self, expected_sha256: str | None = None) -> BlobRef:
        """fsync, rename into place, fsync the directories; the blob now exists."""
        try:
            sha256 = self._digest.hexdigest()
            if expected_sha256 is not None and sha256 != expected_sha256:
                raise InvalidInput(
                    f"blob content has sha256 {sha256}, not the expected {expected_sha256}: "
                    "it was corrupted or changed in transit; send it again"
                )
            os.fsync(self._fd)
            final = self._store._path(sha256)
            created_dir = False
            try:
                final.parent.mkdir(mode=0o700)
                created_dir = True
            except FileExistsError:
                pass
            os.replace(self._temp, final)
        except BaseException:
            self.abort()
            raise
        self._open = False
        os.close(self._fd)
        _fsync_dir(final.parent)
        if created_dir:
            _fsync_dir(self._store.root)
        return BlobRef(sha256=sha256, size=self.size)

    def abort(self) -> None:
        if self._open:
            self._open = False
            with contextlib.suppress(FileNotFoundError):
                self._temp.unlink()
            os.close(self._fd)

    def __enter__(self) -> BlobWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.abort()
