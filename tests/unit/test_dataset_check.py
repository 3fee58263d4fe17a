"""`check_dataset` (the server's upload validator) agrees with `load_dataset` on every file.

Every loader test of test_dataset.py runs again here with `load_dataset` replaced by a
twin that runs both functions and asserts the same verdict: the same error class and
message for a bad file, the same example count, classes and input shape for a good
one. The tests below cover what only the block-wise reader does: data offsets from
the local headers, members that overlap or run past their end, CRC-32, non-finite
values past the first block, and that memory does not grow with x.
"""

from __future__ import annotations

import inspect
import struct
import tracemalloc
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sandbox.errors import InvalidInput, SandboxError
from sandbox.pipeline import dataset as dataset_mod
from sandbox.pipeline.dataset import DatasetInfo, check_dataset, load_dataset
from tests.unit import test_dataset as loader_tests

MB = 1 << 20


def _both(path: Path, *, max_bytes: int) -> Any:
    """`load_dataset`, after asserting that `check_dataset` reaches the same verdict."""
    try:
        ds = load_dataset(path, max_bytes=max_bytes)
    except SandboxError as error:
        expected = error
    else:
        info = check_dataset(path, max_bytes=max_bytes)
        assert info == DatasetInfo(len(ds), ds.num_classes, ds.input_shape)
        return ds
    with pytest.raises(type(expected)) as checked:
        check_dataset(path, max_bytes=max_bytes)
    assert checked.value.message == expected.message
    raise expected


@pytest.fixture(autouse=True)
def _load_twice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loader_tests, "load_dataset", _both)


_LOADER_TESTS = [
    name
    for name, test in vars(loader_tests).items()
    if name.startswith("test_") and "load_dataset(" in inspect.getsource(test)
]
for _name in _LOADER_TESTS:
    globals()[f"{_name}_agrees"] = getattr(loader_tests, _name)


def test_the_loader_tests_are_rerun() -> None:
    assert len(_LOADER_TESTS) >= 35, _LOADER_TESTS


# --------------------------------------------------------------------------- helpers


def _arrays(n: int = 40, features: int = 5) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(2)
    x = rng.normal(size=(n, features)).astype(np.float32)
    y = (np.arange(n) % 4).astype(np.int64)
    return x, y


def _save(path: Path, compressed: bool = False, **arrays: np.ndarray) -> Path:
    with open(path, "wb") as f:
        (np.savez_compressed if compressed else np.savez)(f, **arrays)  # type: ignore[operator]
    return path


def _array_offset(path: Path, member: str) -> int:
    """Where the array's data starts in the file: local header, name, extra, .npy header."""
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(member)
        with zf.open(info) as m:
            np.lib.format.read_magic(m)
            np.lib.format.read_array_header_1_0(m)
            npy_header = m.tell()
    raw = path.read_bytes()
    name_len, extra_len = struct.unpack_from("<HH", raw, info.header_offset + 26)
    return info.header_offset + 30 + name_len + extra_len + npy_header


def _patch_local_extra(path: Path, member: str, extra_len: int) -> None:
    """Claim a longer extra field in the member's local header: its data moves later."""
    with zipfile.ZipFile(path) as zf:
        offset = zf.getinfo(member).header_offset
    raw = bytearray(path.read_bytes())
    struct.pack_into("<H", raw, offset + 28, extra_len)
    path.write_bytes(bytes(raw))


def _without_loading(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count calls of the loading path (np.load of whole arrays)."""
    calls: list[int] = []
    real: Callable[..., Any] = dataset_mod._load_arrays

    def counted(*args: Any) -> Any:
        calls.append(1)
        return real(*args)

    monkeypatch.setattr(dataset_mod, "_load_arrays", counted)
    return calls


# --------------------------------------------------------------------------- the paths


def test_stored_members_are_checked_without_loading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loads = _without_loading(monkeypatch)
    x, y = _arrays()
    path = _save(tmp_path / "d.npz", x=x, y=y)
    assert check_dataset(path, max_bytes=MB) == DatasetInfo(40, 4, (5,))
    assert loads == []


def test_deflated_members_are_loaded_and_checked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loads = _without_loading(monkeypatch)
    x, y = _arrays()
    x[11, 0] = np.nan
    path = _save(tmp_path / "d.npz", compressed=True, x=x, y=y)
    with pytest.raises(InvalidInput, match="1 non-finite values.*example 11"):
        check_dataset(path, max_bytes=MB)
    assert loads == [1]


def test_an_array_at_an_odd_offset_is_read_exactly(tmp_path: Path) -> None:
    x, y = _arrays(n=64, features=7)
    x[63, 6] = np.inf  # the very last value
    path = _save(tmp_path / "d.npz", x=x, y=y)
    assert _array_offset(path, "x.npy") % 2 == 1  # np.savez's zip64 extra: unaligned data
    with pytest.raises(InvalidInput, match="1 non-finite values.*example 63"):
        check_dataset(path, max_bytes=MB)
    x[63, 6] = 0.0
    assert check_dataset(_save(path, x=x, y=y), max_bytes=MB) == DatasetInfo(64, 4, (7,))


@pytest.mark.parametrize("fortran", [False, True])
def test_non_finite_values_in_later_blocks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fortran: bool
) -> None:
    """Blocks of 64 bytes: the count and the first row span blocks, in either order."""
    monkeypatch.setattr(dataset_mod, "_BLOCK", 64)
    x, y = _arrays(n=50, features=6)
    x[40, 5] = np.nan
    x[33, 0] = -np.inf
    x[49, 1] = np.nan
    if fortran:
        x = np.asfortranarray(x)
    path = _save(tmp_path / "d.npz", x=x, y=y)
    message = "3 non-finite values (NaN or infinity), the first in example 33"
    with pytest.raises(InvalidInput, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_dataset(path, max_bytes=MB)
    with pytest.raises(InvalidInput, match="the first in example 33"):
        load_dataset(path, max_bytes=MB)


def test_a_corrupted_byte_fails_the_crc(tmp_path: Path) -> None:
    x, y = _arrays()
    path = _save(tmp_path / "d.npz", x=x, y=y)
    raw = bytearray(path.read_bytes())
    raw[_array_offset(path, "x.npy") + 17] ^= 0x01  # still a finite float
    path.write_bytes(bytes(raw))
    with pytest.raises(InvalidInput, match=r"Bad CRC-32 for file 'x\.npy'"):
        check_dataset(path, max_bytes=MB)
    with pytest.raises(InvalidInput, match=r"Bad CRC-32 for file 'x\.npy'"):
        load_dataset(path, max_bytes=MB)


def _offsets(path: Path) -> dict[str, int]:
    """`_member_offsets` alone: on these files zipfile's reading of the .npy headers
    (which `check_dataset` does first) happens to fail too, on the moved bytes."""
    with open(path, "rb") as f, zipfile.ZipFile(path) as zf:
        members = {
            name: dataset_mod._Member(zf.getinfo(name), (), False, 0) for name in zf.namelist()
        }
        return dataset_mod._member_offsets(f, zf, members, path)


def test_member_offsets_of_a_good_file(tmp_path: Path) -> None:
    x, y = _arrays()
    path = _save(tmp_path / "d.npz", x=x, y=y)
    offsets = _offsets(path)
    assert offsets["x.npy"] + 128 == _array_offset(path, "x.npy")
    assert offsets["y.npy"] + 128 == _array_offset(path, "y.npy")


def test_a_member_running_past_the_data_is_rejected(tmp_path: Path) -> None:
    """y (the last member) claims a long extra field: its bytes would run into the
    central directory and past the end of the file."""
    x, y = _arrays()
    path = _save(tmp_path / "d.npz", x=x, y=y)
    _patch_local_extra(path, "y.npy", 60_000)
    with pytest.raises(InvalidInput, match="y.npy runs past the end.*truncated or crafted"):
        _offsets(path)
    with pytest.raises(InvalidInput):
        check_dataset(path, max_bytes=MB)


def test_overlapping_members_are_rejected(tmp_path: Path) -> None:
    """x's data moved into y's local header: both would read shared bytes."""
    x, y = _arrays()
    path = _save(tmp_path / "d.npz", x=x, y=y)
    _patch_local_extra(path, "x.npy", 200)
    with pytest.raises(InvalidInput, match="members overlap"):
        _offsets(path)
    with pytest.raises(InvalidInput):
        check_dataset(path, max_bytes=MB)


def test_a_local_header_naming_another_member_is_rejected(tmp_path: Path) -> None:
    x, y = _arrays()
    path = _save(tmp_path / "d.npz", x=x, y=y)
    with zipfile.ZipFile(path) as zf:
        offset = zf.getinfo("y.npy").header_offset
    raw = bytearray(path.read_bytes())
    raw[offset + 30 : offset + 35] = b"z.npy"
    path.write_bytes(bytes(raw))
    with pytest.raises(InvalidInput, match="local header of y.npy"):
        _offsets(path)
    with pytest.raises(InvalidInput):  # zipfile's own check, reading the .npy header
        check_dataset(path, max_bytes=MB)


def test_a_file_cut_short_is_rejected(tmp_path: Path) -> None:
    """A read that ends early is an error (the file shrank after its checks), and a file
    cut inside x loses its central directory."""
    x, y = _arrays()
    path = _save(tmp_path / "d.npz", x=x, y=y)
    size = path.stat().st_size
    with open(path, "rb") as f, pytest.raises(InvalidInput, match="the file ends early"):
        list(dataset_mod._blocks(f, size - 8, 64, path))
    path.write_bytes(path.read_bytes()[: _array_offset(path, "x.npy") + 100])
    with pytest.raises(InvalidInput, match=r"not an \.npz"):
        check_dataset(path, max_bytes=MB)


@pytest.mark.parametrize("flag", [0x20, 0x40])
def test_zip_features_numpy_cannot_read_are_rejected(tmp_path: Path, flag: int) -> None:
    x, y = _arrays()
    path = _save(tmp_path / "d.npz", x=x, y=y)
    loader_tests._patch_central(path, "x.npy", flag=flag)
    for check in (check_dataset, load_dataset):
        with pytest.raises(InvalidInput, match="zip features numpy cannot read"):
            check(path, max_bytes=MB)


def test_memory_does_not_grow_with_x(tmp_path: Path) -> None:
    """A 16 MB x is checked with about one block (1 MiB) of numpy memory; loading
    it takes the whole array."""
    x = np.random.default_rng(0).normal(size=(4096, 1024)).astype(np.float32)
    y = (np.arange(4096) % 4).astype(np.int64)
    path = _save(tmp_path / "d.npz", x=x, y=y)
    del x
    peaks = {}
    for check in (check_dataset, load_dataset):
        tracemalloc.start()
        result = check(path, max_bytes=64 * MB)
        peaks[check.__name__] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        del result
    assert peaks["check_dataset"] < 3 * MB, peaks
    assert peaks["load_dataset"] > 16 * MB, peaks


def test_npy_header_bytes_count_in_the_crc(tmp_path: Path) -> None:
    """The CRC covers the whole member, .npy header included (as zipfile's does)."""
    x, y = _arrays()
    path = _save(tmp_path / "d.npz", x=x, y=y)
    raw = bytearray(path.read_bytes())
    padding = raw.index(b" \n", raw.index(b"'descr'"))  # the last space of x's header
    raw[padding] = ord("\t")  # still a valid header, another byte: the CRC must notice
    path.write_bytes(bytes(raw))
    with pytest.raises(InvalidInput, match=r"Bad CRC-32 for file 'x\.npy'"):
        check_dataset(path, max_bytes=MB)
