"""Datasets at rest: AES-256-GCM in authenticated chunks, one data key per dataset.

File format (version 1), all integers big-endian::

    header  magic "SBXDSET\\0" (8) | version u16 | chunk_size u32 | master key id (8)
            | nonce prefix (8) | wrap nonce (12) | dataset id length u8 | dataset id
            | wrapped data key (48 = 32 key + 16 GCM tag)
    chunk*  nonce (12) | plaintext length u32 | ciphertext | GCM tag (16)

Every chunk but the last holds exactly `chunk_size` plaintext bytes; the last one
holds 0..chunk_size (0 only when the dataset is empty, which is still one chunk).

Key wrapping - AES-256-GCM, not AES-KW (RFC 3394). The data key is encrypted under
a wrap key derived from the master key, with every header byte before it (magic,
version, chunk size, key id, nonce prefix, wrap nonce, dataset id) as associated
data. Unwrapping therefore authenticates the whole header before a single chunk is
read: a flipped header byte, or a header moved to another dataset id, fails with
"header modified" instead of surfacing later as a confusing chunk error. AES-KW has
no associated data, so the same wrapped key would unwrap under any header and
binding would rest on the chunks alone. The wrap nonce is random (96 bits); NIST
SP 800-38D allows 2**32 random-nonce encryptions per key, i.e. four billion
datasets per master key.

Chunk nonces - 8 random bytes per file, then the chunk index as a 32-bit counter.
The data key is fresh for every file, so the counter alone already makes nonces
unique; the random prefix is defence in depth should a data key ever be reused, and
it identifies the file a chunk came from. Each chunk frame repeats its nonce in
clear. That copy is never trusted - decryption always uses the nonce computed from
the header and the chunk's position, and a frame whose copy differs is refused - but
it lets the error say *what* happened: a chunk from another file (prefix differs)
or a chunk out of place (counter differs). 2**32 chunks is 4 PiB at 1 MiB chunks.

Chunk associated data binds the dataset id, the chunk index and a final-chunk flag.
The reader learns "final" from the end of the file, so dropping the last chunks
(the new last chunk was written as non-final) and appending after the final chunk
both fail authentication; on a failure the reader retries with the flag inverted
only to name the attack precisely.

Streaming: both directions hold at most two chunks in memory whatever the size.
`decrypt_to` writes each chunk's plaintext only after that chunk authenticated, but
a stream can still turn out bad at a later chunk: treat `dst` as untrusted (delete
it) unless `decrypt_to` returned.

Master key: a file of 32 random bytes, created 0600 with O_EXCL and never
overwritten. It is refused when group or others can read or write it, when another
user owns it, or when it is a link or not a regular file. Sub-keys (the wrap key,
the key id) come from HKDF-SHA256 with distinct labels, so the same master key can
later serve other purposes without key reuse across them.
"""

from __future__ import annotations

import hashlib
import os
import stat
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Final, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from sandbox.errors import FailedPrecondition, InvalidInput, LimitExceeded

MAGIC: Final = b"SBXDSET\x00"
FORMAT_VERSION: Final = 1
KEY_BYTES: Final = 32
DEFAULT_CHUNK_SIZE: Final = 1 << 20
MIN_CHUNK_SIZE: Final = 16
MAX_CHUNK_SIZE: Final = 64 << 20
MAX_CHUNKS: Final = 1 << 32
MAX_DATASET_ID_BYTES: Final = 255

_TAG: Final = 16
_NONCE: Final = 12
_PREFIX: Final = 8
_KEY_ID: Final = 8
_WRAPPED: Final = KEY_BYTES + _TAG
# magic, version, chunk size, key id, nonce prefix, wrap nonce, dataset id length
_FIXED: Final = struct.Struct(">8sHI8s8s12sB")
_FRAME: Final = struct.Struct(">12sI")  # nonce, plaintext length
_CHUNK_AAD_LABEL: Final = b"SBXCHNK1"
_WRAP_INFO: Final = b"sandbox/store/dataset-key-wrap/v1"
_KEY_ID_INFO: Final = b"sandbox/store/master-key-id/v1"


def _hkdf(key: bytes, info: bytes, length: int) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info).derive(key)


class MasterKey:
    """The key that wraps every dataset's data key. Its bytes never appear in repr()."""

    __slots__ = ("_key_id", "_wrap")

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise InvalidInput(
                f"a master key is {KEY_BYTES} bytes, got {len(key)}; "
                "create one with MasterKey.create(path)"
            )
        self._wrap = AESGCM(_hkdf(key, _WRAP_INFO, KEY_BYTES))
        self._key_id = _hkdf(key, _KEY_ID_INFO, _KEY_ID)

    @classmethod
    def generate(cls) -> MasterKey:
        """A fresh random key held only in memory (tests, ephemeral demos)."""
        return cls(os.urandom(KEY_BYTES))

    @classmethod
    def create(cls, path: str | os.PathLike[str]) -> MasterKey:
        """Write a new random key to `path` (0600, O_EXCL: never replaces a file)."""
        path = Path(path)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        key = os.urandom(KEY_BYTES)
        try:
            fd = os.open(path, flags, 0o600)
        except FileExistsError:
            raise FailedPrecondition(
                f"master key file {path} already exists; refusing to overwrite it (every "
                "dataset encrypted under it would become unreadable). Load it instead, or "
                "move it away first if you really mean to start over"
            ) from None
        except FileNotFoundError:
            raise FailedPrecondition(
                f"cannot create master key file {path}: its directory does not exist; "
                "create the directory (mode 0700) first"
            ) from None
        try:
            view = memoryview(key)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise
        os.close(fd)
        _fsync_dir(path.parent)
        return cls(key)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> MasterKey:
        """Read the key at `path`, refusing a file others could read, write or swap."""
        path = Path(path)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        except FileNotFoundError:
            raise FailedPrecondition(
                f"master key file {path} does not exist; create one with `sandbox init`"
            ) from None
        except OSError as error:
            raise FailedPrecondition(
                f"cannot open master key file {path} ({error.strerror}); it must be a "
                "regular file, not a symbolic link"
            ) from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise FailedPrecondition(
                    f"master key file {path} is not a regular file; point the server at "
                    "the 32-byte key file"
                )
            if info.st_uid != os.geteuid():
                raise FailedPrecondition(
                    f"master key file {path} is owned by uid {info.st_uid}, not by this "
                    f"process's uid {os.geteuid()}; chown it to the server's user"
                )
            mode = stat.S_IMODE(info.st_mode)
            if mode & 0o077:
                raise FailedPrecondition(
                    f"master key file {path} has mode {mode:04o}: group or others can "
                    f"access it; run `chmod 600 {path}`"
                )
            data = os.read(fd, KEY_BYTES + 1)
        finally:
            os.close(fd)
        if len(data) != KEY_BYTES:
            raise FailedPrecondition(
                f"master key file {path} holds {len(data)} bytes, a master key is exactly "
                f"{KEY_BYTES}; restore the right file from backup"
            )
        return cls(data)

    @property
    def key_id(self) -> str:
        """A public fingerprint (hex) naming the key in headers and messages."""
        return self._key_id.hex()

    def __repr__(self) -> str:
        return f"MasterKey(key_id={self.key_id})"


@dataclass(frozen=True)
class EncryptedInfo:
    """What `encrypt_stream` wrote: plaintext size and digest, number of chunks."""

    size: int
    sha256_plaintext: str
    chunks: int


@dataclass(frozen=True)
class _Header:
    chunk_size: int
    key_id: bytes
    nonce_prefix: bytes
    wrap_nonce: bytes
    dataset_id: bytes
    wrapped_key: bytes

    def authenticated_bytes(self) -> bytes:
        fixed = _FIXED.pack(
            MAGIC,
            FORMAT_VERSION,
            self.chunk_size,
            self.key_id,
            self.nonce_prefix,
            self.wrap_nonce,
            len(self.dataset_id),
        )
        return fixed + self.dataset_id


def _encode_id(dataset_id: str) -> bytes:
    if not isinstance(dataset_id, str) or not dataset_id:
        raise InvalidInput("dataset id must be a non-empty string")
    encoded = dataset_id.encode("utf-8")
    if len(encoded) > MAX_DATASET_ID_BYTES:
        raise InvalidInput(
            f"dataset id is {len(encoded)} bytes in UTF-8, at most {MAX_DATASET_ID_BYTES} fit "
            "in the file header; use a shorter id"
        )
    return encoded


def _chunk_aad(dataset_id: bytes, index: int, final: bool) -> bytes:
    return b"".join(
        (
            _CHUNK_AAD_LABEL,
            len(dataset_id).to_bytes(1, "big"),
            dataset_id,
            index.to_bytes(4, "big"),
            b"\x01" if final else b"\x00",
        )
    )


def _read_full(src: BinaryIO, size: int) -> bytes:
    """Read `size` bytes, or fewer only at end of stream (pipes return short reads)."""
    data = src.read(size)
    if len(data) == size or not data:
        return data
    parts = [data]
    have = len(data)
    while have < size:
        more = src.read(size - have)
        if not more:
            break
        parts.append(more)
        have += len(more)
    return b"".join(parts)


class _Writable(Protocol):
    def write(self, data: bytes, /) -> object: ...


class DatasetSealer:
    """Encrypt a dataset pushed piece by piece (`write`, then `close`) into `dst`.

    The same format as `encrypt_stream`, for bytes that arrive in pieces of any size
    (an upload's messages): they are cut into `chunk_size` chunks here. A full chunk
    is held back until more bytes arrive or `close` says it was the last, because its
    associated data records whether it is final. It holds at most one chunk plus the
    piece being written, whatever the dataset's size.
    """

    def __init__(
        self,
        dst: _Writable,
        dataset_id: str,
        master: MasterKey,
        *,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        max_bytes: int | None = None,
    ) -> None:
        self._id = _encode_id(dataset_id)
        self._name = dataset_id
        if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
            raise InvalidInput(
                f"chunk size {chunk_size} is outside [{MIN_CHUNK_SIZE}, {MAX_CHUNK_SIZE}] bytes"
            )
        data_key = os.urandom(KEY_BYTES)
        self._header = _Header(
            chunk_size=chunk_size,
            key_id=master._key_id,
            nonce_prefix=os.urandom(_PREFIX),
            wrap_nonce=os.urandom(_NONCE),
            dataset_id=self._id,
            wrapped_key=b"",
        )
        authenticated = self._header.authenticated_bytes()
        dst.write(authenticated)
        dst.write(master._wrap.encrypt(self._header.wrap_nonce, data_key, authenticated))
        self._dst = dst
        self._aead = AESGCM(data_key)
        self._chunk = chunk_size
        self._max = max_bytes
        self._digest = hashlib.sha256()
        self._size = 0
        self._index = 0
        self._held: bytes | None = None  # a full chunk: final or not is not known yet
        self._partial = bytearray()  # fewer than chunk_size bytes
        self._closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closed:
            raise ValueError("write to a closed DatasetSealer")
        self._size += len(data)
        if self._max is not None and self._size > self._max:
            raise LimitExceeded(
                f"dataset {self._name!r} is larger than the limit of {self._max} bytes; "
                "upload a smaller dataset or raise the limit in the server configuration"
            )
        view = memoryview(data)
        if not self._partial and len(view) == self._chunk and isinstance(data, bytes):
            self._full(data)  # the common case: one message, one chunk, no copy
            return
        while view:
            take = min(self._chunk - len(self._partial), len(view))
            self._partial += view[:take]
            view = view[take:]
            if len(self._partial) == self._chunk:
                self._full(bytes(self._partial))
                self._partial.clear()

    def _full(self, chunk: bytes) -> None:
        if self._held is not None:
            self._seal(self._held, final=False)
        self._held = chunk

    def _seal(self, chunk: bytes | bytearray, *, final: bool) -> None:
        if self._index >= MAX_CHUNKS:
            raise LimitExceeded(
                f"dataset {self._name!r} needs more than {MAX_CHUNKS} chunks of "
                f"{self._chunk} bytes; use a larger chunk size"
            )
        nonce = self._header.nonce_prefix + self._index.to_bytes(4, "big")
        self._digest.update(chunk)
        self._dst.write(_FRAME.pack(nonce, len(chunk)))
        self._dst.write(self._aead.encrypt(nonce, chunk, _chunk_aad(self._id, self._index, final)))
        self._index += 1

    def close(self) -> EncryptedInfo:
        """Seal what is left (the final chunk: an empty one for an empty dataset)."""
        if self._closed:
            raise ValueError("DatasetSealer closed twice")
        self._closed = True
        if self._held is not None and not self._partial:
            self._seal(self._held, final=True)
        else:
            if self._held is not None:
                self._seal(self._held, final=False)
            self._seal(self._partial, final=True)
        self._held = None
        self._partial = bytearray()
        return EncryptedInfo(
            size=self._size, sha256_plaintext=self._digest.hexdigest(), chunks=self._index
        )


def encrypt_stream(
    src: BinaryIO,
    dst: _Writable,
    dataset_id: str,
    master: MasterKey,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    max_bytes: int | None = None,
) -> EncryptedInfo:
    """Encrypt `src` into `dst` for `dataset_id` under a fresh data key wrapped by `master`.

    Raises LimitExceeded when `src` is longer than `max_bytes` (`dst` then holds a
    partial file the caller must delete).
    """
    sealer = DatasetSealer(dst, dataset_id, master, chunk_size=chunk_size, max_bytes=max_bytes)
    while data := _read_full(src, chunk_size):
        sealer.write(data)
    return sealer.close()


def _read_header(src: BinaryIO, where: str) -> _Header:
    fixed = _read_full(src, _FIXED.size)
    if len(fixed) < len(MAGIC) or not fixed.startswith(MAGIC):
        raise InvalidInput(
            f"{where} does not start with the encrypted-dataset magic {MAGIC!r}: it is not "
            "an encrypted dataset file, or its first bytes were modified"
        )
    if len(fixed) < _FIXED.size:
        raise InvalidInput(f"{where} was truncated inside its header ({len(fixed)} bytes)")
    _, version, chunk_size, key_id, prefix, wrap_nonce, id_len = _FIXED.unpack(fixed)
    if version != FORMAT_VERSION:
        raise InvalidInput(
            f"{where} has format version {version}; this code reads version {FORMAT_VERSION}. "
            "Upgrade the sandbox, or the header was modified"
        )
    rest = _read_full(src, id_len + _WRAPPED)
    if len(rest) < id_len + _WRAPPED:
        raise InvalidInput(f"{where} was truncated inside its header")
    return _Header(
        chunk_size=chunk_size,
        key_id=key_id,
        nonce_prefix=prefix,
        wrap_nonce=wrap_nonce,
        dataset_id=rest[:id_len],
        wrapped_key=rest[id_len:],
    )


def decrypt_to(src: BinaryIO, dst: BinaryIO, dataset_id: str, master: MasterKey) -> str:
    """Decrypt `src` (written for `dataset_id`) into `dst`; return the plaintext sha256.

    Any modification, truncation, reordering or substitution raises InvalidInput
    naming what was detected; a file sealed under another master key raises
    FailedPrecondition. On any error `dst` may hold a prefix of the plaintext.
    """
    encoded_id = _encode_id(dataset_id)
    where = f"encrypted dataset {dataset_id!r}"
    header = _read_header(src, where)
    if header.dataset_id != encoded_id:
        claimed = header.dataset_id.decode("utf-8", errors="replace")
        raise InvalidInput(
            f"{where}: the file was written for dataset {claimed!r}: files were swapped "
            "between datasets (or the header was modified)"
        )
    if header.key_id != master._key_id:
        raise FailedPrecondition(
            f"{where} was encrypted under master key {header.key_id.hex()}, but the loaded "
            f"master key is {master.key_id} (or the header's key id was modified); start the "
            "server with the master key the dataset was stored under"
        )
    try:
        data_key = master._wrap.decrypt(
            header.wrap_nonce, header.wrapped_key, header.authenticated_bytes()
        )
    except InvalidTag:
        raise InvalidInput(
            f"{where}: the file header failed authentication: it was modified "
            "(chunk size, nonce prefix or wrapped key)"
        ) from None
    if not MIN_CHUNK_SIZE <= header.chunk_size <= MAX_CHUNK_SIZE:  # authenticated, so ours
        raise InvalidInput(f"{where}: chunk size {header.chunk_size} is out of range")

    aead = AESGCM(data_key)
    digest = hashlib.sha256()
    frame = _read_full(src, _FRAME.size)
    if not frame:
        raise InvalidInput(f"{where} was truncated: the file ends after its header, no chunks")
    index = 0
    while True:
        if len(frame) < _FRAME.size:
            raise InvalidInput(f"{where} was truncated inside the frame of chunk {index}")
        nonce_copy, length = _FRAME.unpack(frame)
        if length > header.chunk_size:
            raise InvalidInput(
                f"{where}: chunk {index} declares {length} bytes, more than the chunk size "
                f"{header.chunk_size}: its frame was modified"
            )
        body = _read_full(src, length + _TAG)
        if len(body) < length + _TAG:
            raise InvalidInput(
                f"{where} was truncated in the middle of chunk {index} "
                f"({len(body)} of {length + _TAG} bytes present)"
            )
        frame = _read_full(src, _FRAME.size)
        final = not frame
        nonce = header.nonce_prefix + index.to_bytes(4, "big")
        if nonce_copy != nonce:
            if nonce_copy[:_PREFIX] != header.nonce_prefix:
                raise InvalidInput(
                    f"{where}: chunk {index} comes from another encrypted file (another "
                    "dataset or another upload), or its nonce was modified"
                )
            found = int.from_bytes(nonce_copy[_PREFIX:], "big")
            raise InvalidInput(
                f"{where}: position {index} holds chunk {found}: chunks were reordered, "
                "duplicated or dropped"
            )
        try:
            plaintext = aead.decrypt(nonce, body, _chunk_aad(encoded_id, index, final))
        except InvalidTag:
            raise _diagnose(aead, nonce, body, encoded_id, index, final, where) from None
        if not final and length != header.chunk_size:  # the writer never does this
            raise InvalidInput(f"{where}: chunk {index} is short but not the last one")
        digest.update(plaintext)
        dst.write(plaintext)
        if final:
            return digest.hexdigest()
        index += 1
        if index >= MAX_CHUNKS:
            raise InvalidInput(f"{where} has more than {MAX_CHUNKS} chunks: data was appended")


def _diagnose(
    aead: AESGCM, nonce: bytes, body: bytes, dataset_id: bytes, index: int, final: bool, where: str
) -> InvalidInput:
    """Name why chunk `index` failed: only the final flag differs, or its bytes changed."""
    try:
        aead.decrypt(nonce, body, _chunk_aad(dataset_id, index, not final))
    except InvalidTag:
        return InvalidInput(
            f"{where}: chunk {index} failed authentication: its bytes were modified or cut " "short"
        )
    if final:
        return InvalidInput(
            f"{where} was truncated: it ends after chunk {index}, which was not written as "
            "the last chunk, so the chunks after it were dropped"
        )
    return InvalidInput(
        f"{where}: chunk {index} was written as the last chunk but data follows it: "
        "data was appended"
    )


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
