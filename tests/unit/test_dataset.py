"""The dataset loader rejects every malformed or oversized `.npz`; the split is sound."""

from __future__ import annotations

import io
import os
import stat
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sandbox.errors import InvalidInput, LimitExceeded, NotFound
from sandbox.pipeline import dataset as dataset_mod
from sandbox.pipeline.dataset import (
    Dataset,
    check_compatible,
    load_dataset,
    split_holdout,
    write_npz,
)

MB = 1 << 20


def _arrays(n: int = 40, classes: int = 4, features: int = 5) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(n, features)).astype(np.float32)
    y = (np.arange(n) % classes).astype(np.int64)
    return x, y


def _save(path: Path, compressed: bool = False, **arrays: object) -> Path:
    with open(path, "wb") as f:
        (np.savez_compressed if compressed else np.savez)(f, **arrays)  # type: ignore[operator]
    return path


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, array, allow_pickle=True)
    return buf.getvalue()


def _zip(path: Path, members: dict[str, bytes], method: int = zipfile.ZIP_STORED) -> Path:
    with zipfile.ZipFile(path, "w", compression=method) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def _ds(y: np.ndarray, features: int = 3, num_classes: int | None = None) -> Dataset:
    x = np.arange(len(y) * features, dtype=np.float32).reshape(len(y), features)
    return Dataset(
        x=x,
        y=y.astype(np.int64),
        num_classes=num_classes if num_classes is not None else int(y.max()) + 1,
        input_shape=(features,),
    )


# --------------------------------------------------------------------------- accepted


def test_loads_a_valid_dataset(tmp_path: Path) -> None:
    x, y = _arrays()
    ds = load_dataset(_save(tmp_path / "d.npz", x=x, y=y), max_bytes=MB)
    assert ds.x.dtype == np.float32
    assert ds.y.dtype == np.int64
    assert ds.num_classes == 4
    assert ds.input_shape == (5,)
    assert len(ds) == 40
    np.testing.assert_array_equal(ds.x, x)
    np.testing.assert_array_equal(ds.y, y)


def test_loads_compressed_and_multidimensional_and_fortran_order(tmp_path: Path) -> None:
    x = np.asfortranarray(np.random.default_rng(0).random((30, 1, 4, 4), dtype=np.float32))
    y = (np.arange(30) % 3).astype(np.int64)
    ds = load_dataset(_save(tmp_path / "d.npz", compressed=True, x=x, y=y), max_bytes=MB)
    assert ds.input_shape == (1, 4, 4)
    assert ds.x.flags.c_contiguous
    np.testing.assert_array_equal(ds.x, x)


# --------------------------------------------------------------------------- the file


def test_missing_file_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="does not exist"):
        load_dataset(tmp_path / "nope.npz", max_bytes=MB)


def test_directory_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="not a regular file"):
        load_dataset(tmp_path, max_bytes=MB)


def test_file_over_the_size_limit(tmp_path: Path) -> None:
    x, y = _arrays(n=1000, features=50)
    path = _save(tmp_path / "d.npz", x=x, y=y)
    with pytest.raises(LimitExceeded, match="over the limit of 1000 bytes"):
        load_dataset(path, max_bytes=1000)


@pytest.mark.parametrize(
    "content", [b"", b"hello world, not a zip", b"\x93NUMPY\x01\x00", b"PK\x03\x04garbage"]
)
def test_not_a_zip(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "d.npz"
    path.write_bytes(content)
    with pytest.raises(InvalidInput, match=r"not an \.npz \(zip\) archive|not a valid \.npy"):
        load_dataset(path, max_bytes=MB)


def test_plain_npy_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    path.write_bytes(_npy(np.zeros((20, 2), dtype=np.float32)))
    with pytest.raises(InvalidInput, match="not an .npz"):
        load_dataset(path, max_bytes=MB)


# --------------------------------------------------------------------------- members


def test_missing_member_is_named(tmp_path: Path) -> None:
    x, _ = _arrays()
    with pytest.raises(InvalidInput, match=r"missing y\.npy") as info:
        load_dataset(_save(tmp_path / "d.npz", x=x), max_bytes=MB)
    assert "np.savez" in info.value.message


def test_extra_member_is_named(tmp_path: Path) -> None:
    x, y = _arrays()
    with pytest.raises(InvalidInput, match=r"unexpected members 'z\.npy'"):
        load_dataset(_save(tmp_path / "d.npz", x=x, y=y, z=y), max_bytes=MB)


def test_missing_and_extra_members_are_both_named(tmp_path: Path) -> None:
    x, y = _arrays()
    with pytest.raises(InvalidInput, match=r"missing x\.npy.*unexpected members 'X\.npy'"):
        load_dataset(_save(tmp_path / "d.npz", X=x, y=y), max_bytes=MB)


def test_duplicate_members(tmp_path: Path) -> None:
    x, y = _arrays()
    path = tmp_path / "d.npz"
    with pytest.warns(UserWarning, match="Duplicate name"):
        _zip(path, {"x.npy": _npy(x), "y.npy": _npy(y)})
        with zipfile.ZipFile(path, "a") as zf:
            zf.writestr("y.npy", _npy(y))
    with pytest.raises(InvalidInput, match="duplicate members"):
        load_dataset(path, max_bytes=MB)


def test_other_compression_methods_are_rejected(tmp_path: Path) -> None:
    x, y = _arrays()
    path = _zip(tmp_path / "d.npz", {"x.npy": _npy(x), "y.npy": _npy(y)}, zipfile.ZIP_BZIP2)
    with pytest.raises(InvalidInput, match="only stored or deflate"):
        load_dataset(path, max_bytes=MB)


def _patch_central(path: Path, member: str, *, flag: int | None = None, size: int | None = None):
    """Patch a member's central-directory (and local) header fields in place."""
    data = bytearray(path.read_bytes())
    name = member.encode()
    cd = data.find(b"PK\x01\x02")
    while cd != -1:
        name_len = struct.unpack_from("<H", data, cd + 28)[0]
        if bytes(data[cd + 46 : cd + 46 + name_len]) == name:
            local = struct.unpack_from("<I", data, cd + 42)[0]
            if flag is not None:
                struct.pack_into("<H", data, cd + 8, flag)
                struct.pack_into("<H", data, local + 6, flag)
            if size is not None:
                struct.pack_into("<I", data, cd + 24, size)
                struct.pack_into("<I", data, local + 22, size)
        cd = data.find(b"PK\x01\x02", cd + 4)
    path.write_bytes(bytes(data))


def test_encrypted_member_is_rejected(tmp_path: Path) -> None:
    x, y = _arrays()
    path = _save(tmp_path / "d.npz", x=x, y=y)
    _patch_central(path, "x.npy", flag=0x1)
    with pytest.raises(InvalidInput, match="encrypted"):
        load_dataset(path, max_bytes=MB)


# --------------------------------------------------------------------------- zip bombs


def test_zip_bomb_over_the_decompressed_limit(tmp_path: Path) -> None:
    # 8 MB of zeros deflates to about 8 KB: the file is small, its content is not.
    x = np.zeros((1024 * 1024, 2), dtype=np.float32)
    y = (np.arange(1024 * 1024) % 2).astype(np.int64)
    path = _save(tmp_path / "d.npz", compressed=True, x=x, y=y)
    assert path.stat().st_size < MB
    with pytest.raises(LimitExceeded, match=r"x\.npy declares \d+ bytes uncompressed"):
        load_dataset(path, max_bytes=MB)


def test_zip_bomb_total_over_the_limit(tmp_path: Path) -> None:
    x = np.zeros((100_000, 1), dtype=np.float32)  # 400 KB
    y = np.zeros(100_000, dtype=np.int64)  # 800 KB
    path = _save(tmp_path / "d.npz", compressed=True, x=x, y=y)
    with pytest.raises(LimitExceeded, match="decompresses to"):
        load_dataset(path, max_bytes=MB)


def test_declared_size_impossible_for_deflate(tmp_path: Path) -> None:
    x, y = _arrays()
    path = _save(tmp_path / "d.npz", compressed=True, x=x, y=y)
    _patch_central(path, "x.npy", size=2**31)
    with pytest.raises(InvalidInput, match="a ratio deflate cannot reach"):
        load_dataset(path, max_bytes=2**33)


def test_stored_member_with_inconsistent_size(tmp_path: Path) -> None:
    x, y = _arrays()
    path = _save(tmp_path / "d.npz", x=x, y=y)
    _patch_central(path, "x.npy", size=10_000)
    with pytest.raises(InvalidInput, match="stored uncompressed but declares"):
        load_dataset(path, max_bytes=MB)


def test_npy_header_claiming_a_huge_shape(tmp_path: Path) -> None:
    # A header for 10**12 floats followed by 40 bytes: numpy alone would try to
    # allocate the declared shape before noticing the data is missing.
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f4", "fortran_order": False, "shape": (10**12, 1)}
    )
    x_member = header.getvalue() + b"\x00" * 40
    _, y = _arrays()
    path = _zip(tmp_path / "d.npz", {"x.npy": x_member, "y.npy": _npy(y)})
    with pytest.raises(InvalidInput, match="truncated or crafted"):
        load_dataset(path, max_bytes=MB)


def test_bad_npy_header(tmp_path: Path) -> None:
    _, y = _arrays()
    path = _zip(tmp_path / "d.npz", {"x.npy": b"not an npy file at all", "y.npy": _npy(y)})
    with pytest.raises(InvalidInput, match=r"x\.npy is not a valid \.npy array"):
        load_dataset(path, max_bytes=MB)


def test_unsupported_npy_version(tmp_path: Path) -> None:
    x, y = _arrays()
    raw = bytearray(_npy(x))
    raw[6] = 9  # major version
    path = _zip(tmp_path / "d.npz", {"x.npy": bytes(raw), "y.npy": _npy(y)})
    with pytest.raises(InvalidInput, match="version"):
        load_dataset(path, max_bytes=MB)


# --------------------------------------------------------------------------- pickles and dtypes


def test_pickled_object_array(tmp_path: Path) -> None:
    _, y = _arrays()
    x = np.empty((40, 1), dtype=object)
    x[:, 0] = [{"a": i} for i in range(40)]
    path = tmp_path / "d.npz"
    with open(path, "wb") as f:
        np.savez(f, x=x, y=y)
    with pytest.raises(
        InvalidInput, match="holds pickled objects; save plain arrays with np.savez"
    ):
        load_dataset(path, max_bytes=MB)


@pytest.mark.parametrize(
    ("name", "dtype", "expected"),
    [
        ("x", np.float64, r"x has dtype float64.*x\.astype\(np\.float32\)"),
        ("x", np.float16, r"x has dtype float16"),
        ("x", np.int64, r"x has dtype int64"),
        ("x", ">f4", r"x has dtype float32 \(big-endian\)"),
        ("y", np.int32, r"y has dtype int32.*y\.astype\(np\.int64\)"),
        ("y", np.float32, r"y has dtype float32"),
        ("y", np.uint8, r"y has dtype uint8"),
        ("y", ">i8", r"y has dtype int64 \(big-endian\)"),
    ],
)
def test_wrong_dtypes(tmp_path: Path, name: str, dtype: object, expected: str) -> None:
    x, y = _arrays()
    arrays = {"x": x, "y": y}
    arrays[name] = arrays[name].astype(dtype)  # type: ignore[call-overload]
    with pytest.raises(InvalidInput, match=expected):
        load_dataset(_save(tmp_path / "d.npz", **arrays), max_bytes=MB)


def test_structured_dtype_is_rejected(tmp_path: Path) -> None:
    _, y = _arrays()
    x = np.zeros((40, 2), dtype=[("a", "<f4"), ("b", "<f4")])
    with pytest.raises(InvalidInput, match="x has dtype"):
        load_dataset(_save(tmp_path / "d.npz", x=x, y=y), max_bytes=MB)


# --------------------------------------------------------------------------- shapes and values


def test_x_must_have_two_dimensions(tmp_path: Path) -> None:
    _, y = _arrays()
    x = np.zeros(40, dtype=np.float32)
    with pytest.raises(InvalidInput, match=r"x has shape \(40,\).*at least 2 dimensions"):
        load_dataset(_save(tmp_path / "d.npz", x=x, y=y), max_bytes=MB)


def test_y_must_be_one_dimensional(tmp_path: Path) -> None:
    x, y = _arrays()
    with pytest.raises(InvalidInput, match=r"y has shape \(40, 1\).*1-D"):
        load_dataset(_save(tmp_path / "d.npz", x=x, y=y.reshape(-1, 1)), max_bytes=MB)


def test_lengths_must_match(tmp_path: Path) -> None:
    x, y = _arrays()
    with pytest.raises(InvalidInput, match="x has 40 examples but y has 39 labels"):
        load_dataset(_save(tmp_path / "d.npz", x=x, y=y[:39]), max_bytes=MB)


def test_too_few_examples(tmp_path: Path) -> None:
    x, y = _arrays(n=9, classes=2)
    with pytest.raises(InvalidInput, match="has 9 examples; at least 10"):
        load_dataset(_save(tmp_path / "d.npz", x=x, y=y), max_bytes=MB)


def test_empty_examples(tmp_path: Path) -> None:
    _, y = _arrays()
    x = np.zeros((40, 0), dtype=np.float32)
    with pytest.raises(InvalidInput, match="holds no values"):
        load_dataset(_save(tmp_path / "d.npz", x=x, y=y), max_bytes=MB)


def test_example_cap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dataset_mod, "MAX_EXAMPLES", 30)
    x, y = _arrays()
    with pytest.raises(LimitExceeded, match="40 examples, over the limit of 30"):
        load_dataset(_save(tmp_path / "d.npz", x=x, y=y), max_bytes=MB)


def test_feature_cap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dataset_mod, "MAX_FEATURES", 11)
    _, y = _arrays()
    x = np.zeros((40, 3, 4), dtype=np.float32)
    with pytest.raises(LimitExceeded, match=r"12 values \(shape \(3, 4\)\), over the limit of 11"):
        load_dataset(_save(tmp_path / "d.npz", x=x, y=y), max_bytes=MB)


def test_default_caps() -> None:
    assert dataset_mod.MAX_EXAMPLES == 10_000_000
    assert dataset_mod.MAX_FEATURES == 1_000_000
    assert dataset_mod.MIN_EXAMPLES == 10


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_x(tmp_path: Path, bad: float) -> None:
    x, y = _arrays()
    x[7, 2] = bad
    with pytest.raises(InvalidInput, match="1 non-finite values.*example 7"):
        load_dataset(_save(tmp_path / "d.npz", x=x, y=y), max_bytes=MB)


def test_negative_label(tmp_path: Path) -> None:
    x, y = _arrays()
    y[3] = -1
    with pytest.raises(InvalidInput, match="negative label -1"):
        load_dataset(_save(tmp_path / "d.npz", x=x, y=y), max_bytes=MB)


def test_single_class(tmp_path: Path) -> None:
    x, _ = _arrays()
    with pytest.raises(InvalidInput, match="single class"):
        load_dataset(_save(tmp_path / "d.npz", x=x, y=np.zeros(40, np.int64)), max_bytes=MB)


def test_huge_label(tmp_path: Path) -> None:
    x, y = _arrays()
    y[0] = 2**62  # would make bincount allocate exabytes
    with pytest.raises(InvalidInput, match=f"label {2**62} with only 40 examples"):
        load_dataset(_save(tmp_path / "d.npz", x=x, y=y), max_bytes=MB)


def test_label_gap(tmp_path: Path) -> None:
    x, y = _arrays()
    y[y == 2] = 3  # classes 0, 1, 3: class 2 is empty
    with pytest.raises(InvalidInput, match=r"class 2: 0.*no gaps"):
        load_dataset(_save(tmp_path / "d.npz", x=x, y=y), max_bytes=MB)


def test_class_with_one_example(tmp_path: Path) -> None:
    x, y = _arrays()
    y[:] = 0
    y[20:] = 1
    y[5] = 2
    with pytest.raises(InvalidInput, match=r"at least 2 examples.*class 2: 1"):
        load_dataset(_save(tmp_path / "d.npz", x=x, y=y), max_bytes=MB)


def test_dataset_construction_is_checked() -> None:
    y = np.array([0, 1] * 5, dtype=np.int64)
    x = np.zeros((10, 2), dtype=np.float32)
    with pytest.raises(InvalidInput, match="float32"):
        Dataset(x=x.astype(np.float64), y=y, num_classes=2, input_shape=(2,))  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="input_shape"):
        Dataset(x=x, y=y, num_classes=2, input_shape=(3,))
    with pytest.raises(InvalidInput, match=r"x \[n, \.\.\.\] and y \[n\]"):
        Dataset(x=x, y=y[:9], num_classes=2, input_shape=(2,))
    with pytest.raises(InvalidInput, match="num_classes"):
        Dataset(x=x, y=y, num_classes=1, input_shape=(2,))


# --------------------------------------------------------------------------- split


def _expected_holdout(count: int, fraction: float) -> int:
    return min(max(round(fraction * count), 1), count - 1)


def test_split_is_stratified_disjoint_and_complete() -> None:
    counts = [50, 2, 3, 17, 100]
    y = np.repeat(np.arange(len(counts)), counts)
    ds = _ds(np.random.default_rng(3).permutation(y))
    train, holdout = split_holdout(ds, 0.2, seed=7)
    for c, n_c in enumerate(counts):
        assert (holdout.y == c).sum() == _expected_holdout(n_c, 0.2)
        assert (train.y == c).sum() == n_c - _expected_holdout(n_c, 0.2)
    ids_train, ids_hold = set(train.x[:, 0].tolist()), set(holdout.x[:, 0].tolist())
    assert not ids_train & ids_hold
    assert ids_train | ids_hold == set(ds.x[:, 0].tolist())
    assert train.num_classes == holdout.num_classes == ds.num_classes == 5
    assert set(train.y.tolist()) == set(holdout.y.tolist()) == set(range(5))
    # Rows keep their pairing of x and y.
    lookup = {float(row[0]): int(label) for row, label in zip(ds.x, ds.y, strict=True)}
    for side in (train, holdout):
        assert all(lookup[float(r[0])] == int(lbl) for r, lbl in zip(side.x, side.y, strict=True))


def test_split_is_deterministic_for_a_seed() -> None:
    ds = _ds(np.arange(200) % 4)
    a = split_holdout(ds, 0.25, seed=11)
    b = split_holdout(ds, 0.25, seed=11)
    np.testing.assert_array_equal(a.holdout.x, b.holdout.x)
    np.testing.assert_array_equal(a.train.x, b.train.x)
    c = split_holdout(ds, 0.25, seed=12)
    assert not np.array_equal(a.holdout.x, c.holdout.x)
    assert a.train is a[0]
    assert a.holdout is a[1]


def test_split_named_fields() -> None:
    ds = _ds(np.arange(40) % 2)
    split = split_holdout(ds, 0.1, 0)
    assert len(split.train) == 36
    assert len(split.holdout) == 4


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5, float("nan"), "0.2", True])
def test_split_rejects_bad_fraction(fraction: object) -> None:
    with pytest.raises(InvalidInput, match="fraction"):
        split_holdout(_ds(np.arange(20) % 2), fraction, 0)  # type: ignore[arg-type]


@pytest.mark.parametrize("seed", [-1, 1.5, "0", True])
def test_split_rejects_bad_seed(seed: object) -> None:
    with pytest.raises(InvalidInput, match="seed"):
        split_holdout(_ds(np.arange(20) % 2), 0.2, seed)  # type: ignore[arg-type]


def test_split_needs_two_examples_per_class() -> None:
    y = np.array([0] * 10 + [1] * 10 + [2])
    with pytest.raises(InvalidInput, match="class 2 has 1 examples"):
        split_holdout(_ds(y), 0.2, 0)


@settings(max_examples=60, deadline=None)
@given(
    counts=st.lists(st.integers(min_value=2, max_value=60), min_size=2, max_size=8),
    fraction=st.floats(min_value=0.01, max_value=0.99),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_split_properties(counts: list[int], fraction: float, seed: int) -> None:
    y = np.repeat(np.arange(len(counts)), counts)
    ds = _ds(np.random.default_rng(seed).permutation(y))
    train, holdout = split_holdout(ds, fraction, seed)
    assert len(train) + len(holdout) == len(ds)
    assert not set(train.x[:, 0].tolist()) & set(holdout.x[:, 0].tolist())
    for c, n_c in enumerate(counts):
        k = int((holdout.y == c).sum())
        assert k == _expected_holdout(n_c, fraction)
        assert 1 <= k <= n_c - 1
    assert train.num_classes == holdout.num_classes == len(counts)


# --------------------------------------------------------------------------- compatibility


def test_check_compatible_accepts_and_adopts_num_classes() -> None:
    train = _ds(np.arange(40) % 5)
    holdout = _ds(np.arange(12) % 3)
    out = check_compatible(holdout, train)
    assert out.num_classes == 5
    np.testing.assert_array_equal(out.y, holdout.y)


def test_check_compatible_shape_mismatch() -> None:
    train = _ds(np.arange(40) % 5, features=3)
    holdout = _ds(np.arange(12) % 3, features=4)
    with pytest.raises(InvalidInput, match=r"shape \(4,\).*have \(3,\)"):
        check_compatible(holdout, train)


def test_check_compatible_label_out_of_range() -> None:
    train = _ds(np.arange(40) % 3)
    holdout = _ds(np.arange(12) % 4)
    with pytest.raises(InvalidInput, match="label 3 but the training data has only 3 classes"):
        check_compatible(holdout, train)


# --------------------------------------------------------------------------- writing


def test_write_npz_round_trip_and_mode(tmp_path: Path) -> None:
    x, y = _arrays()
    ds = load_dataset(_save(tmp_path / "d.npz", x=x, y=y), max_bytes=MB)
    out = tmp_path / "out" / "train.npz"
    out.parent.mkdir()
    write_npz(ds, out)
    assert stat.S_IMODE(out.stat().st_mode) == 0o444
    assert os.listdir(out.parent) == ["train.npz"]
    with zipfile.ZipFile(out) as zf:
        assert sorted(zf.namelist()) == ["x.npy", "y.npy"]
        assert all(i.compress_type == zipfile.ZIP_STORED for i in zf.infolist())
    again = load_dataset(out, max_bytes=MB)
    np.testing.assert_array_equal(again.x, ds.x)
    np.testing.assert_array_equal(again.y, ds.y)


def test_write_npz_replaces_without_following_links(tmp_path: Path) -> None:
    x, y = _arrays()
    ds = load_dataset(_save(tmp_path / "d.npz", x=x, y=y), max_bytes=MB)
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    link = tmp_path / "train.npz"
    link.symlink_to(victim)
    write_npz(ds, link)
    assert victim.read_text() == "keep me"
    assert not link.is_symlink()
    write_npz(ds, link)  # an existing read-only file is replaced too
    assert load_dataset(link, max_bytes=MB).num_classes == 4


def test_a_non_finite_value_past_the_first_block_is_found() -> None:
    """The finiteness check runs in blocks; the last value of a large x still counts."""
    from sandbox.pipeline.dataset import _all_finite

    x = np.zeros((3000, 1000), np.float32)
    assert _all_finite(x)
    x[-1, -1] = np.inf
    assert not _all_finite(x)
    x[-1, -1] = 0.0
    x[1048, 576] = np.nan  # element 1 << 20 exactly: the first of the second block
    assert not _all_finite(x)
