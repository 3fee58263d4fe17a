"""Content-addressed blobs: atomic puts, limits, digests, crash leftovers, concurrency."""

import fcntl
import hashlib
import io
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from sandbox.errors import FailedPrecondition, InvalidInput, LimitExceeded, NotFound
from sandbox.store.blobs import TEMP_PREFIX, BlobRef, BlobStore


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def temps(root: Path) -> list[str]:
    return [p.name for p in root.iterdir() if p.name.startswith(TEMP_PREFIX)]


@pytest.fixture
def store(tmp_path: Path) -> BlobStore:
    return BlobStore(tmp_path / "blobs")


def test_put_open_round_trip_and_layout(store: BlobStore) -> None:
    data = os.urandom(3 * (1 << 20) + 17)  # several read blocks
    ref = store.put_stream(io.BytesIO(data), max_bytes=len(data))
    digest = sha(data)
    assert ref == BlobRef(digest, len(data))
    assert files_under(store.root) == [f"{digest[:2]}/{digest[2:]}"]
    with store.open(digest) as f:
        assert f.read() == data
    assert store.exists(digest)
    assert store.size(digest) == len(data)
    assert store.verify(digest)
    assert temps(store.root) == []


def test_files_are_private(store: BlobStore) -> None:
    ref = store.put_stream(io.BytesIO(b"secret"), max_bytes=10)
    path = store.root / ref.sha256[:2] / ref.sha256[2:]
    assert (path.stat().st_mode & 0o777) == 0o600
    assert (path.parent.stat().st_mode & 0o777) == 0o700
    assert (store.root.stat().st_mode & 0o777) == 0o700


def test_empty_blob(store: BlobStore) -> None:
    ref = store.put_stream(io.BytesIO(b""), max_bytes=0)
    assert ref == BlobRef(sha(b""), 0)
    with store.open(ref.sha256) as f:
        assert f.read() == b""


def test_over_the_limit_is_refused_and_leaves_nothing(store: BlobStore) -> None:
    with pytest.raises(LimitExceeded, match="larger than the limit of 1000 bytes"):
        store.put_stream(io.BytesIO(bytes(1001)), max_bytes=1000)
    assert files_under(store.root) == []
    assert store.put_stream(io.BytesIO(bytes(1000)), max_bytes=1000).size == 1000


def test_limit_stops_reading_early(store: BlobStore) -> None:
    class Endless(io.RawIOBase):
        reads = 0

        def readable(self) -> bool:
            return True

        def read(self, n: int = -1) -> bytes:
            self.reads += 1
            return bytes(n)

    src = Endless()
    with pytest.raises(LimitExceeded):
        store.put_stream(src, max_bytes=3 << 20)  # type: ignore[arg-type]
    assert src.reads <= 5


def test_digest_mismatch_is_refused_and_leaves_nothing(store: BlobStore) -> None:
    wrong = sha(b"other")
    with pytest.raises(InvalidInput, match=f"not the expected {wrong}.*send it again"):
        store.put_stream(io.BytesIO(b"data"), max_bytes=100, expected_sha256=wrong)
    assert files_under(store.root) == []


def test_expected_digest_match_is_accepted(store: BlobStore) -> None:
    ref = store.put_stream(io.BytesIO(b"data"), max_bytes=100, expected_sha256=sha(b"data"))
    assert ref.sha256 == sha(b"data")


def test_failing_source_leaves_nothing(store: BlobStore) -> None:
    class Broken(io.RawIOBase):
        def readable(self) -> bool:
            return True

        def read(self, n: int = -1) -> bytes:
            raise ConnectionResetError("client went away")

    with pytest.raises(ConnectionResetError):
        store.put_stream(Broken(), max_bytes=100)  # type: ignore[arg-type]
    assert files_under(store.root) == []


def test_put_is_idempotent(store: BlobStore) -> None:
    first = store.put_stream(io.BytesIO(b"same"), max_bytes=10)
    second = store.put_stream(io.BytesIO(b"same"), max_bytes=10)
    assert first == second
    assert len(files_under(store.root)) == 1


def test_concurrent_puts_of_the_same_content(store: BlobStore) -> None:
    data = os.urandom(2 << 20)
    refs: list[BlobRef] = []
    errors: list[BaseException] = []

    def put() -> None:
        try:
            refs.append(store.put_stream(io.BytesIO(data), max_bytes=len(data)))
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=put) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert set(refs) == {BlobRef(sha(data), len(data))}
    assert files_under(store.root) == [f"{sha(data)[:2]}/{sha(data)[2:]}"]
    with store.open(sha(data)) as f:
        assert f.read() == data


def test_readers_keep_a_consistent_file_while_the_same_blob_is_put_again(
    store: BlobStore,
) -> None:
    data = os.urandom(100_000)
    ref = store.put_stream(io.BytesIO(data), max_bytes=len(data))
    with store.open(ref.sha256) as f:
        head = f.read(10)
        store.put_stream(io.BytesIO(data), max_bytes=len(data))
        assert head + f.read() == data


@pytest.mark.parametrize("bad", ["", "ab", "../" + "a" * 61, "A" * 64, "g" * 64, "a" * 65])
def test_bad_digests_never_touch_paths(store: BlobStore, bad: str) -> None:
    for call in (store.open, store.exists, store.delete, store.size):
        with pytest.raises(InvalidInput, match="64 lowercase hexadecimal"):
            call(bad)
    with pytest.raises(InvalidInput):
        store.put_stream(io.BytesIO(b"x"), max_bytes=1, expected_sha256=bad)


def test_missing_blob(store: BlobStore) -> None:
    missing = sha(b"never stored")
    assert not store.exists(missing)
    with pytest.raises(NotFound, match="no blob with sha256"):
        store.open(missing)
    with pytest.raises(NotFound):
        store.size(missing)
    assert store.delete(missing) is False


def test_delete(store: BlobStore) -> None:
    ref = store.put_stream(io.BytesIO(b"gone"), max_bytes=10)
    assert store.delete(ref.sha256) is True
    assert not store.exists(ref.sha256)


def test_verify_detects_corruption_at_rest(store: BlobStore) -> None:
    ref = store.put_stream(io.BytesIO(b"original"), max_bytes=10)
    path = store.root / ref.sha256[:2] / ref.sha256[2:]
    path.write_bytes(b"tampered")
    assert store.verify(ref.sha256) is False


def test_sweep_removes_orphans_but_not_puts_in_flight(store: BlobStore) -> None:
    orphan = store.root / f"{TEMP_PREFIX}deadbeef"
    orphan.write_bytes(b"half a blob")
    live = store.root / f"{TEMP_PREFIX}cafe"
    live.write_bytes(b"being written")
    fd = os.open(live, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)  # what a put in flight holds
    try:
        assert store.sweep_temp() == [orphan.name]
        assert live.exists()
    finally:
        os.close(fd)
    assert store.sweep_temp() == [live.name]
    assert temps(store.root) == []


def test_sweep_leaves_blobs_and_other_files_alone(store: BlobStore) -> None:
    ref = store.put_stream(io.BytesIO(b"keep"), max_bytes=10)
    (store.root / "README").write_text("operator notes")
    assert store.sweep_temp() == []
    assert store.exists(ref.sha256)
    assert (store.root / "README").exists()


_CRASH = """
import io, os, sys
from sandbox.store.blobs import BlobStore

class DiesMidway(io.RawIOBase):
    calls = 0
    def readable(self):
        return True
    def read(self, n=-1):
        self.calls += 1
        if self.calls == 3:
            os._exit(9)  # the process dies: no cleanup runs
        return b"x" * n

BlobStore(sys.argv[1]).put_stream(DiesMidway(), max_bytes=1 << 30)
"""


def test_crash_mid_put_leaves_a_temp_that_sweep_removes(store: BlobStore) -> None:
    repo = Path(__file__).resolve().parents[2]
    result = subprocess.run([sys.executable, "-c", _CRASH, str(store.root)], check=False, cwd=repo)
    assert result.returncode == 9
    leftovers = temps(store.root)
    assert len(leftovers) == 1
    assert (store.root / leftovers[0]).stat().st_size == 2 << 20
    assert store.sweep_temp() == leftovers
    assert files_under(store.root) == []


def test_put_survives_a_sweep_running_alongside(store: BlobStore) -> None:
    data = os.urandom(1 << 20)
    stop = threading.Event()

    def sweeper() -> None:
        while not stop.is_set():
            store.sweep_temp()

    thread = threading.Thread(target=sweeper)
    thread.start()
    try:
        for i in range(30):
            payload = data + bytes([i])
            ref = store.put_stream(io.BytesIO(payload), max_bytes=len(payload))
            assert store.verify(ref.sha256)
    finally:
        stop.set()
        thread.join()


def test_root_must_be_a_directory(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(FailedPrecondition, match="not a directory"):
        BlobStore(tmp_path / "link")
