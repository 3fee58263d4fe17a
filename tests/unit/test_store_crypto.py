"""Datasets at rest: round trips, every tamper, the master key file."""

import hashlib
import io
import itertools
import os
import struct
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sandbox.errors import FailedPrecondition, InvalidInput, LimitExceeded
from sandbox.store.crypto import (
    KEY_BYTES,
    MAGIC,
    EncryptedInfo,
    MasterKey,
    decrypt_to,
    encrypt_stream,
)

CHUNK = 64
TAG = 16
FRAME = 16  # nonce 12 + length 4
MASTER = MasterKey(bytes(range(32)))


def seal(
    data: bytes, dataset_id: str = "ds1", master: MasterKey = MASTER, chunk: int = CHUNK
) -> tuple[bytes, EncryptedInfo]:
    out = io.BytesIO()
    info = encrypt_stream(io.BytesIO(data), out, dataset_id, master, chunk_size=chunk)
    return out.getvalue(), info


def open_(blob: bytes, dataset_id: str = "ds1", master: MasterKey = MASTER) -> bytes:
    out = io.BytesIO()
    digest = decrypt_to(io.BytesIO(blob), out, dataset_id, master)
    assert digest == hashlib.sha256(out.getvalue()).hexdigest()
    return out.getvalue()


def header_len(dataset_id: str = "ds1") -> int:
    return 43 + len(dataset_id.encode()) + KEY_BYTES + TAG


def split(blob: bytes, dataset_id: str = "ds1") -> tuple[bytes, list[bytes]]:
    """(header, [frame + ciphertext + tag for each chunk])."""
    h = header_len(dataset_id)
    header, rest, chunks = blob[:h], blob[h:], []
    while rest:
        (length,) = struct.unpack(">I", rest[12:16])
        end = FRAME + length + TAG
        chunks.append(rest[:end])
        rest = rest[end:]
    return header, chunks


def flip(blob: bytes, at: int) -> bytes:
    return blob[:at] + bytes([blob[at] ^ 0x01]) + blob[at + 1 :]


# ----------------------------------------------------------------- round trips


@pytest.mark.parametrize(
    ("size", "chunks"),
    [(0, 1), (1, 1), (CHUNK - 1, 1), (CHUNK, 1), (CHUNK + 1, 2), (3 * CHUNK, 3), (1000, 16)],
)
def test_round_trip(size: int, chunks: int) -> None:
    data = os.urandom(size)
    blob, info = seal(data)
    assert info == EncryptedInfo(size, hashlib.sha256(data).hexdigest(), chunks)
    assert len(blob) == header_len() + chunks * (FRAME + TAG) + size
    assert open_(blob) == data


def test_default_chunk_size_round_trip() -> None:
    data = os.urandom((1 << 20) + 5)
    out = io.BytesIO()
    info = encrypt_stream(io.BytesIO(data), out, "big", MASTER)
    assert info.chunks == 2
    assert open_(out.getvalue(), "big") == data


class Trickle(io.RawIOBase):
    """A pipe-like source returning at most 7 bytes per read."""

    def __init__(self, data: bytes) -> None:
        self.data = memoryview(data)

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        piece, self.data = bytes(self.data[: min(n, 7)]), self.data[min(n, 7) :]
        return piece


def test_short_reads_from_the_source_still_give_full_chunks() -> None:
    data = os.urandom(5 * CHUNK + 3)
    out = io.BytesIO()
    info = encrypt_stream(Trickle(data), out, "ds1", MASTER, chunk_size=CHUNK)  # type: ignore[arg-type]
    assert info.chunks == 6
    assert open_(out.getvalue()) == data


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.binary(max_size=600),
    chunk=st.integers(16, 200),
    dataset_id=st.text(min_size=1, max_size=40).filter(lambda s: len(s.encode()) <= 255),
)
def test_round_trip_property(data: bytes, chunk: int, dataset_id: str) -> None:
    blob, info = seal(data, dataset_id, chunk=chunk)
    assert info.size == len(data)
    assert info.chunks == max(1, -(-len(data) // chunk))
    assert open_(blob, dataset_id) == data


@settings(max_examples=40, deadline=None)
@given(data=st.binary(min_size=0, max_size=300), where=st.floats(0, 1), bit=st.integers(0, 7))
def test_any_single_bit_flip_anywhere_is_detected(data: bytes, where: float, bit: int) -> None:
    blob, _ = seal(data, chunk=32)
    at = min(int(where * len(blob)), len(blob) - 1)
    tampered = blob[:at] + bytes([blob[at] ^ (1 << bit)]) + blob[at + 1 :]
    with pytest.raises((InvalidInput, FailedPrecondition)):
        open_(tampered)


def test_ciphertext_does_not_contain_plaintext_and_differs_per_encryption() -> None:
    data = b"secret-record-" * 20
    one, _ = seal(data)
    two, _ = seal(data)
    assert b"secret-record" not in one
    assert one != two  # fresh data key, nonce prefix and wrap nonce each time


def test_memory_stays_constant_for_large_inputs() -> None:
    class Zeros(io.RawIOBase):
        def __init__(self, n: int) -> None:
            self.left = n

        def readable(self) -> bool:
            return True

        def read(self, n: int = -1) -> bytes:
            n = min(n, self.left)
            self.left -= n
            return bytes(n)

    class Sink(io.RawIOBase):
        def __init__(self) -> None:
            self.n = 0

        def writable(self) -> bool:
            return True

        def write(self, b: Any) -> int:
            self.n += len(b)
            return len(b)

    size = 48 << 20
    tracemalloc.start()
    sink = Sink()
    encrypt_stream(Zeros(size), sink, "big", MASTER)  # type: ignore[arg-type]
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert sink.n > size
    assert peak < 8 << 20  # a few 1 MiB chunks, not 48 MiB


# ----------------------------------------------------------------- tampering


def test_flipped_byte_in_a_chunk_is_detected() -> None:
    blob, _ = seal(os.urandom(3 * CHUNK))
    header, chunks = split(blob)
    at = len(header) + len(chunks[0]) + FRAME + 5  # inside chunk 1's ciphertext
    with pytest.raises(InvalidInput, match="chunk 1 failed authentication: its bytes were"):
        open_(flip(blob, at))


def test_flipped_tag_is_detected() -> None:
    blob, _ = seal(os.urandom(2 * CHUNK))
    with pytest.raises(InvalidInput, match="chunk 1 failed authentication"):
        open_(flip(blob, len(blob) - 1))


@pytest.mark.parametrize("at", range(header_len()))
def test_every_header_byte_is_authenticated(at: int) -> None:
    blob, _ = seal(b"payload" * 20)
    with pytest.raises((InvalidInput, FailedPrecondition)) as caught:
        open_(flip(blob, at))
    message = str(caught.value)
    if at < 8:
        assert "magic" in message
    elif at < 10:
        assert "format version" in message
    elif 14 <= at < 22:
        assert "master key" in message  # the key id
    elif 42 <= at < 46:
        assert "dataset id" in message or "swapped" in message or "truncated" in message
    else:
        assert "header" in message


def test_header_tamper_names_the_header() -> None:
    blob, _ = seal(b"x" * 100)
    with pytest.raises(InvalidInput, match="header failed authentication: it was modified"):
        open_(flip(blob, 12))  # chunk size field


def test_dropped_last_chunk_is_detected_as_truncation() -> None:
    blob, _ = seal(os.urandom(3 * CHUNK + 10))
    header, chunks = split(blob)
    dropped = header + b"".join(chunks[:-1])
    with pytest.raises(InvalidInput, match="truncated: it ends after chunk 2.*dropped"):
        open_(dropped)


def test_dropped_last_chunks_of_an_exact_multiple_are_detected() -> None:
    blob, _ = seal(os.urandom(4 * CHUNK))
    header, chunks = split(blob)
    with pytest.raises(InvalidInput, match="truncated: it ends after chunk 1"):
        open_(header + b"".join(chunks[:2]))


def test_all_chunks_dropped_is_detected() -> None:
    blob, _ = seal(b"abc")
    header, _ = split(blob)
    with pytest.raises(InvalidInput, match="ends after its header, no chunks"):
        open_(header)


@pytest.mark.parametrize("cut", [1, FRAME - 1, FRAME + 3, FRAME + CHUNK + TAG - 1])
def test_truncated_mid_chunk_is_detected(cut: int) -> None:
    blob, _ = seal(os.urandom(2 * CHUNK))
    header, chunks = split(blob)
    cut_blob = header + chunks[0] + chunks[1][:cut]
    with pytest.raises(InvalidInput, match="truncated"):
        open_(cut_blob)


def test_truncated_inside_the_header_is_detected() -> None:
    blob, _ = seal(b"abc")
    for cut in (0, 4, 20, header_len() - 1):
        with pytest.raises(InvalidInput, match="magic|truncated inside its header"):
            open_(blob[:cut])


def test_reordered_chunks_are_detected() -> None:
    blob, _ = seal(os.urandom(4 * CHUNK))
    header, c = split(blob)
    with pytest.raises(InvalidInput, match="position 1 holds chunk 2: chunks were reordered"):
        open_(header + c[0] + c[2] + c[1] + c[3])


def test_dropped_middle_chunk_is_detected() -> None:
    blob, _ = seal(os.urandom(4 * CHUNK))
    header, c = split(blob)
    with pytest.raises(InvalidInput, match="position 2 holds chunk 3"):
        open_(header + c[0] + c[1] + c[3])


def test_duplicated_chunk_is_detected() -> None:
    blob, _ = seal(os.urandom(3 * CHUNK))
    header, c = split(blob)
    with pytest.raises(InvalidInput, match="position 2 holds chunk 1"):
        open_(header + c[0] + c[1] + c[1] + c[2])


def test_reordered_chunk_with_forged_nonce_copy_still_fails() -> None:
    """The clear nonce copy is only a hint: rewriting it cannot make a moved chunk pass."""
    blob, _ = seal(os.urandom(3 * CHUNK))
    header, c = split(blob)
    moved = c[0][:8] + c[1][8:12] + c[2][12:]  # chunk 2, its counter rewritten to say 1
    with pytest.raises(InvalidInput, match="chunk 1 failed authentication"):
        open_(header + c[0] + moved + c[1])


def test_chunk_from_another_dataset_is_detected() -> None:
    mine, _ = seal(os.urandom(3 * CHUNK), "ds1")
    theirs, _ = seal(os.urandom(3 * CHUNK), "ds2")
    header, c = split(mine)
    _, other = split(theirs, "ds2")
    with pytest.raises(InvalidInput, match="chunk 1 comes from another encrypted file"):
        open_(header + c[0] + other[1] + c[2])


def test_chunk_from_another_upload_of_the_same_dataset_is_detected() -> None:
    data = os.urandom(3 * CHUNK)
    first, _ = seal(data)
    second, _ = seal(data)
    header, c = split(first)
    _, d = split(second)
    with pytest.raises(InvalidInput, match="chunk 2 comes from another encrypted file"):
        open_(header + c[0] + c[1] + d[2])


def test_file_of_another_dataset_id_is_detected() -> None:
    blob, _ = seal(b"theirs" * 30, "ds2")
    with pytest.raises(InvalidInput, match=r"written for dataset 'ds2'.*swapped between datasets"):
        open_(blob, "ds1")


def test_header_rewritten_to_claim_another_dataset_id_fails() -> None:
    blob, _ = seal(b"theirs" * 30, "ds2")
    forged = blob.replace(b"ds2", b"ds1", 1)
    with pytest.raises(InvalidInput, match="header failed authentication"):
        open_(forged, "ds1")


def test_wrong_master_key_is_detected() -> None:
    blob, _ = seal(b"data" * 30)
    with pytest.raises(FailedPrecondition, match="encrypted under master key .* loaded master"):
        open_(blob, master=MasterKey.generate())


def test_appended_data_after_the_final_chunk_is_detected() -> None:
    blob, _ = seal(os.urandom(2 * CHUNK + 5))
    header, c = split(blob)
    with pytest.raises(InvalidInput, match="written as the last chunk but data follows"):
        open_(blob + c[0])


def test_appended_garbage_is_detected() -> None:
    blob, _ = seal(os.urandom(CHUNK))
    with pytest.raises(InvalidInput, match="truncated inside the frame|last chunk but data"):
        open_(blob + b"junk")


def test_oversized_chunk_length_is_refused_before_reading() -> None:
    blob, _ = seal(os.urandom(CHUNK))
    h = header_len()
    forged = blob[: h + 12] + struct.pack(">I", 1 << 30) + blob[h + 16 :]
    with pytest.raises(InvalidInput, match="declares 1073741824 bytes, more than the chunk size"):
        open_(forged)


def test_not_an_encrypted_file() -> None:
    with pytest.raises(InvalidInput, match="not an encrypted dataset file"):
        open_(b"PK\x03\x04 a zip file")


def test_unknown_version_is_named() -> None:
    blob, _ = seal(b"abc")
    forged = MAGIC + struct.pack(">H", 2) + blob[10:]
    with pytest.raises(InvalidInput, match="format version 2; this code reads version 1"):
        open_(forged)


# ----------------------------------------------------------------- limits and arguments


def test_max_bytes_is_enforced_while_streaming() -> None:
    with pytest.raises(LimitExceeded, match="larger than the limit of 100 bytes"):
        encrypt_stream(io.BytesIO(bytes(101)), io.BytesIO(), "ds", MASTER, max_bytes=100)
    out = io.BytesIO()
    encrypt_stream(io.BytesIO(bytes(100)), out, "ds", MASTER, max_bytes=100, chunk_size=CHUNK)
    assert open_(out.getvalue(), "ds") == bytes(100)


@pytest.mark.parametrize("dataset_id", ["", "x" * 256, "é" * 128])
def test_bad_dataset_ids_are_refused(dataset_id: str) -> None:
    with pytest.raises(InvalidInput, match="dataset id"):
        seal(b"abc", dataset_id)


@pytest.mark.parametrize("chunk", [0, 15, (64 << 20) + 1])
def test_bad_chunk_sizes_are_refused(chunk: int) -> None:
    with pytest.raises(InvalidInput, match="chunk size"):
        seal(b"abc", chunk=chunk)


# ----------------------------------------------------------------- master key file


def test_master_key_create_and_load(tmp_path: Path) -> None:
    path = tmp_path / "master.key"
    created = MasterKey.create(path)
    assert (path.stat().st_mode & 0o777) == 0o600
    assert path.stat().st_size == 32
    loaded = MasterKey.load(path)
    assert loaded.key_id == created.key_id
    blob, _ = seal(b"abc", master=created)
    assert open_(blob, master=loaded) == b"abc"
    assert path.read_bytes().hex() not in repr(loaded)


def test_master_key_is_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "master.key"
    MasterKey.create(path)
    before = path.read_bytes()
    with pytest.raises(FailedPrecondition, match="already exists; refusing to overwrite"):
        MasterKey.create(path)
    assert path.read_bytes() == before


def test_master_key_create_does_not_follow_a_symlink(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    (tmp_path / "master.key").symlink_to(target)
    with pytest.raises(FailedPrecondition, match="already exists"):
        MasterKey.create(tmp_path / "master.key")
    assert not target.exists()


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620, 0o602, 0o644])
def test_master_key_readable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "master.key"
    MasterKey.create(path)
    path.chmod(mode)
    with pytest.raises(FailedPrecondition, match=f"mode {mode:04o}.*chmod 600"):
        MasterKey.load(path)


def test_master_key_symlink_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "real.key"
    MasterKey.create(real)
    (tmp_path / "link.key").symlink_to(real)
    with pytest.raises(FailedPrecondition, match="not a symbolic link"):
        MasterKey.load(tmp_path / "link.key")


def test_master_key_of_wrong_size_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "master.key"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"short")
    os.close(fd)
    with pytest.raises(FailedPrecondition, match="holds 5 bytes"):
        MasterKey.load(path)


def test_missing_master_key_and_directory(tmp_path: Path) -> None:
    with pytest.raises(FailedPrecondition, match="does not exist"):
        MasterKey.load(tmp_path / "nope.key")
    with pytest.raises(FailedPrecondition, match="directory does not exist"):
        MasterKey.create(tmp_path / "nodir" / "master.key")


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_master_key_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "master.key"
    MasterKey.create(path)
    os.chown(path, 65534, 65534)
    with pytest.raises(FailedPrecondition, match="owned by uid 65534"):
        MasterKey.load(path)


def test_master_key_of_wrong_length_in_memory_is_refused() -> None:
    with pytest.raises(InvalidInput, match="32 bytes"):
        MasterKey(b"\x00" * 16)


@settings(max_examples=60, deadline=None)
@given(
    data=st.binary(max_size=5 * CHUNK + 7),
    cuts=st.lists(st.integers(min_value=0, max_value=5 * CHUNK + 7), max_size=8),
)
def test_sealer_cuts_pieces_of_any_size_into_the_same_chunks(data: bytes, cuts: list[int]) -> None:
    """An upload's messages have any sizes: the chunks (and so every frame, every length
    and every final flag) are those of encrypting the whole file in one stream."""
    from sandbox.store.crypto import DatasetSealer

    out = io.BytesIO()
    sealer = DatasetSealer(out, "ds1", MASTER, chunk_size=CHUNK)
    bounds = sorted({0, len(data), *(c for c in cuts if c <= len(data))})
    for start, end in itertools.pairwise(bounds):
        sealer.write(data[start:end])
    info = sealer.close()
    blob = out.getvalue()
    assert open_(blob) == data
    assert info.size == len(data) and info.sha256_plaintext == hashlib.sha256(data).hexdigest()
    expected_chunks = max(1, -(-len(data) // CHUNK))
    assert info.chunks == expected_chunks and len(split(blob)[1]) == expected_chunks

    def lengths(sealed: bytes) -> list[int]:
        return [struct.unpack(">I", c[12:16])[0] for c in split(sealed)[1]]

    assert lengths(blob) == lengths(seal(data)[0])
    assert lengths(blob) == [len(c) - FRAME - TAG for c in split(blob)[1]]


def test_sealer_refuses_more_than_max_bytes_and_writes_after_close() -> None:
    from sandbox.store.crypto import DatasetSealer

    sealer = DatasetSealer(io.BytesIO(), "ds1", MASTER, chunk_size=CHUNK, max_bytes=100)
    sealer.write(b"x" * 100)
    with pytest.raises(LimitExceeded, match="larger than the limit of 100 bytes"):
        sealer.write(b"y")
    done = DatasetSealer(io.BytesIO(), "ds1", MASTER, chunk_size=CHUNK)
    done.close()
    with pytest.raises(ValueError):
        done.write(b"late")
