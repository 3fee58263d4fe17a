"""Bad uploads end with a status naming the problem and leave nothing behind."""

from __future__ import annotations

import hashlib
import io
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from sandbox.api.gen.sandbox.v1 import algorithm_pb2, common_pb2, dataset_pb2
from sandbox.demo import EXAMPLE_ALGORITHM, write_digits
from sandbox.errors import InvalidInput, LimitExceeded
from sandbox.store import SqliteMetadataStore
from tests.api.conftest import Env


def _digits(tmp_path: Path) -> bytes:
    return write_digits(tmp_path / "digits.npz").read_bytes()


def _requests(
    data: bytes,
    *,
    size: int | None = None,
    sha256: str | None = None,
    cut: int | None = None,
    kind: type = dataset_pb2.UploadDatasetRequest,
) -> Iterator[object]:
    header = common_pb2.UploadHeader(
        name="upload",
        size=len(data) if size is None else size,
        sha256=sha256 or hashlib.sha256(data).hexdigest(),
    )
    yield kind(header=header)
    body = data if cut is None else data[:cut]
    for start in range(0, len(body), 65536):
        yield kind(chunk=body[start : start + 65536])


def _upload(env: Env, requests: Iterator[object]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        env.client("alice").datasets.UploadDataset(requests, timeout=30)
    return caught.value


def _assert_nothing_left(env: Env) -> None:
    blobs = [p for p in (env.state / "blobs").rglob("*") if p.is_file()]
    assert blobs == [], blobs
    assert [p.name for p in (env.state / "work").iterdir()] == []
    store = SqliteMetadataStore(env.state / "metadata.sqlite")
    try:
        assert store.list_datasets().items == ()
        assert store.list_algorithms().items == ()
    finally:
        store.close()


def test_a_good_upload_is_stored_encrypted(env: Env, tmp_path: Path) -> None:
    data = _digits(tmp_path)
    dataset = env.client("alice").upload_dataset(tmp_path / "digits.npz", "digits")
    assert dataset.sha256 == hashlib.sha256(data).hexdigest()
    assert (dataset.num_classes, list(dataset.input_shape)) == (10, [64])
    (blob,) = [p for p in (env.state / "blobs").rglob("*") if p.is_file()]
    stored = blob.read_bytes()
    assert data[:4] not in stored[:64] and data[1000:1032] not in stored  # ciphertext only
    assert [p.name for p in (env.state / "work").iterdir()] == []


def test_declared_size_over_the_limit_is_resource_exhausted(env: Env, tmp_path: Path) -> None:
    error = _upload(env, _requests(b"x" * 10, size=1 << 40))
    assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "over the server's limit" in error.details()
    _assert_nothing_left(env)


def test_more_bytes_than_declared_is_resource_exhausted(env: Env, tmp_path: Path) -> None:
    data = _digits(tmp_path)
    error = _upload(env, _requests(data, size=1000))
    assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "more than the 1000 bytes it declared" in error.details()
    _assert_nothing_left(env)


def test_wrong_sha256_is_invalid_argument(env: Env, tmp_path: Path) -> None:
    error = _upload(env, _requests(_digits(tmp_path), sha256="0" * 64))
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "sha256" in error.details() and "corrupted in transit" in error.details()
    _assert_nothing_left(env)


def test_a_stream_cut_off_half_way_is_invalid_argument(env: Env, tmp_path: Path) -> None:
    data = _digits(tmp_path)
    error = _upload(env, _requests(data, cut=len(data) // 2))
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert f"stopped after {len(data) // 2} of the {len(data)} bytes" in error.details()
    _assert_nothing_left(env)


def test_a_client_that_dies_mid_upload_leaves_nothing(env: Env, tmp_path: Path) -> None:
    data = _digits(tmp_path)

    def dying() -> Iterator[object]:
        yield from _requests(data, cut=len(data) // 2)
        raise RuntimeError("client crashed")

    with pytest.raises(grpc.RpcError):
        env.client("alice").datasets.UploadDataset(dying(), timeout=30)
    env.server.platform.wait_idle(5)
    import time

    for _ in range(50):  # the server notices the cancellation asynchronously
        if not list((env.state / "work").iterdir()):
            break
        time.sleep(0.1)
    _assert_nothing_left(env)


def test_no_header_is_invalid_argument(env: Env) -> None:
    error = _upload(env, iter([dataset_pb2.UploadDatasetRequest(chunk=b"abc")]))
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "header" in error.details()


def _npz(**arrays: object) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # type: ignore[arg-type]
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        (b"not a zip at all" * 10, "zip"),
        (_npz(x=np.array([{"a": 1}] * 4, dtype=object), y=np.zeros(4, np.int64)), "pickle"),
        (_npz(x=np.zeros((4, 3), np.float32)), "y"),
        (_npz(x=np.zeros((4, 3), np.float64), y=np.zeros(4, np.int64)), "float32"),
    ],
    ids=["not-npz", "pickled", "missing-y", "wrong-dtype"],
)
def test_malformed_datasets_are_invalid_argument(env: Env, data: bytes, needle: str) -> None:
    error = _upload(env, _requests(data))
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert needle in error.details().lower(), error.details()
    assert str(env.state) not in error.details()  # no server paths in messages
    _assert_nothing_left(env)


def _tar(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, content in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def test_an_algorithm_with_path_traversal_is_invalid_argument(env: Env) -> None:
    good = {p.name: p.read_bytes() for p in EXAMPLE_ALGORITHM.iterdir() if p.is_file()}
    data = _tar({**good, "../../etc/evil": b"x"})
    with pytest.raises(grpc.RpcError) as caught:
        env.client("bob").algorithms.UploadAlgorithm(
            _requests(data, kind=algorithm_pb2.UploadAlgorithmRequest), timeout=30
        )
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert ".." in caught.value.details()
    assert str(env.state) not in caught.value.details()
    _assert_nothing_left(env)


def test_an_algorithm_upload_round_trips(env: Env) -> None:
    algorithm = env.client("bob").upload_algorithm(EXAMPLE_ALGORITHM)
    assert algorithm.provider == "bob"
    assert algorithm.name == "digits_mlp"


def test_client_errors_carry_catalog_exit_codes(env: Env, tmp_path: Path) -> None:
    path = tmp_path / "bad.npz"
    path.write_bytes(b"not a zip" * 20)
    with pytest.raises(InvalidInput) as caught:
        env.client("alice").upload_dataset(path, "bad")
    assert caught.value.exit_code == 2
    huge = tmp_path / "huge.npz"
    with open(huge, "wb") as handle:
        handle.truncate(65 << 20)  # sparse: over the test server's 64 MiB limit
    with pytest.raises(LimitExceeded) as limit:
        env.client("alice").upload_dataset(huge, "huge")
    assert limit.value.exit_code == 3


def test_list_calls_paginate(env: Env, tmp_path: Path) -> None:
    import shutil

    from sandbox.api.gen.sandbox.v1 import algorithm_pb2 as alg

    bob = env.client("bob")
    uploaded = set()
    for version in ("1", "2", "3"):
        package = tmp_path / f"v{version}"
        shutil.copytree(EXAMPLE_ALGORITHM, package, ignore=shutil.ignore_patterns("__pycache__"))
        toml = package / "algorithm.toml"
        toml.write_text(
            "\n".join(
                f'version = "{version}"' if line.startswith("version") else line
                for line in toml.read_text().splitlines()
            )
        )
        uploaded.add(bob.upload_algorithm(package).id)
    first = bob.algorithms.ListAlgorithms(alg.ListAlgorithmsRequest(page_size=2))
    assert len(first.algorithms) == 2 and first.next_page_token
    second = bob.algorithms.ListAlgorithms(
        alg.ListAlgorithmsRequest(page_size=2, page_token=first.next_page_token)
    )
    assert len(second.algorithms) == 1 and second.next_page_token == ""
    assert {a.id for a in (*first.algorithms, *second.algorithms)} == uploaded
    assert (
        list(env.client("pete").algorithms.ListAlgorithms(alg.ListAlgorithmsRequest()).algorithms)
        == []
    )
    with pytest.raises(grpc.RpcError) as caught:
        bob.algorithms.ListAlgorithms(alg.ListAlgorithmsRequest(page_token="garbage"))
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as caught:
        bob.algorithms.ListAlgorithms(alg.ListAlgorithmsRequest(page_size=100000))
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT


def test_concurrent_uploads_are_bounded(env: Env, tmp_path: Path) -> None:
    """Each upload holds its declared size in memory (tmpfs): only so many at once."""
    import threading

    limit = env.server.platform.limits.max_concurrent_uploads
    data = _digits(tmp_path)
    gate = threading.Event()

    def stalled() -> Iterator[object]:
        requests = _requests(data)
        yield next(requests)
        gate.wait(30)  # hold the upload open
        yield from requests

    clients = [env.new_client("alice") for _ in range(limit)]
    futures = [c.datasets.UploadDataset.future(stalled(), timeout=60) for c in clients]
    deadline = time.monotonic() + 10
    while len(list((env.state / "work").glob("upload-*"))) < limit:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    error = _upload(env, _requests(data))
    assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "uploads already" in error.details()
    gate.set()
    assert all(f.result().num_classes == 10 for f in futures)
    for client in clients:
        client.close()
    env.client("alice").upload_dataset(tmp_path / "digits.npz", "after")  # slots are free again


def test_overlapped_sealing_surfaces_the_workers_error_and_always_stops() -> None:
    """The sealing thread's first error reaches the receiving thread, which stops."""
    import threading

    from sandbox.service.uploads import Overlapped

    seen: list[bytes] = []

    def consume(piece: bytes) -> None:
        if piece == b"bad":
            raise LimitExceeded("too big")
        seen.append(piece)

    with pytest.raises(LimitExceeded, match="too big"), Overlapped(consume, depth=1) as worker:
        for piece in (b"a", b"bad", *([b"late"] * 50)):  # more than the queue holds
            worker.put(piece)
        worker.finish()
    assert seen == [b"a"]
    with Overlapped(seen.append) as worker:
        worker.put(b"b")
        worker.finish()
    assert seen == [b"a", b"b"]
    assert not [t for t in threading.enumerate() if t.name == "upload-seal"]
