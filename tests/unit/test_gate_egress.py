"""The egress gate on real files: every rejection with its reason, and the canonical
output (identical bytes for equal tensors, values kept, subnormals flushed, digest)."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import pickle
import struct
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from safetensors.numpy import load_file as np_load_file
from safetensors.numpy import save_file

from sandbox.gate import MODEL_FILENAME, GateResult, GateViolation, TensorSpec, gate_output
from sandbox.gate import stream as stream_module
from sandbox.gate.stream import OutputStream
from sandbox.policy.model import GateRules

DTYPE_NAMES = {
    np.dtype(np.float64): "F64",
    np.dtype(np.float32): "F32",
    np.dtype(np.float16): "F16",
    np.dtype(np.int64): "I64",
    np.dtype(np.int32): "I32",
    np.dtype(np.uint8): "U8",
    np.dtype(np.bool_): "BOOL",
}
ALL_DTYPES = ("F32", "F16", "BF16", "F64", "I64", "I32", "BOOL")
RULES = GateRules()


def specs(arrays: dict[str, np.ndarray]) -> dict[str, TensorSpec]:
    return {name: TensorSpec(DTYPE_NAMES[a.dtype], a.shape) for name, a in arrays.items()}


def model(**extra: np.ndarray) -> dict[str, np.ndarray]:
    arrays = {
        "fc.weight": np.arange(12, dtype=np.float32).reshape(3, 4) / 7,
        "fc.bias": np.array([0.5, -1.5, 2.0], np.float32),
        "steps": np.array([3], np.int64),
    }
    arrays.update(extra)
    return arrays


@pytest.fixture
def out(tmp_path: Path) -> Path:
    path = tmp_path / "output"
    path.mkdir()
    return path


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    path = tmp_path / "released"
    path.mkdir()
    return path / MODEL_FILENAME


def write(out: Path, arrays: dict[str, np.ndarray], **kwargs: Any) -> Path:
    path = out / MODEL_FILENAME
    save_file(arrays, path, **kwargs)
    return path


def write_raw(out: Path, header: dict[str, Any], data: bytes, pad: int = 0) -> Path:
    """A hand-made file: header in the given key order and spacing, then data."""
    text = json.dumps(header, indent=pad or None).encode()
    text += b" " * (-len(text) % 8)
    path = out / MODEL_FILENAME
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)
    return path


def run_gate(
    out: Path,
    dest: Path,
    expected: dict[str, TensorSpec],
    rules: GateRules = RULES,
) -> GateResult:
    return gate_output(out, expected, rules, dest)


def rejected(
    out: Path,
    dest: Path,
    expected: dict[str, TensorSpec],
    code: str,
    text: str,
    rules: GateRules = RULES,
) -> str:
    with pytest.raises(GateViolation) as caught:
        run_gate(out, dest, expected, rules)
    assert caught.value.code == code, caught.value.message
    assert text in caught.value.message, caught.value.message
    assert list(dest.parent.iterdir()) == [], "nothing may be left behind on rejection"
    return caught.value.message


# ---------------------------------------------------------------- the directory


def test_accepts_a_plain_model(out: Path, dest: Path) -> None:
    arrays = model()
    write(out, arrays)
    result = run_gate(out, dest, specs(arrays))
    assert result.path == dest
    assert result.notes == []
    assert result.tensors == specs(arrays)
    assert list(result.tensors) == sorted(arrays)
    assert [p.name for p in dest.parent.iterdir()] == [MODEL_FILENAME]


def test_empty_output(out: Path, dest: Path) -> None:
    rejected(out, dest, specs(model()), "missing_model", "has no model.safetensors (it is empty)")


def test_wrong_file_name(out: Path, dest: Path) -> None:
    (out / "model.pt").write_bytes(b"x")
    rejected(out, dest, specs(model()), "missing_model", "(found: 'model.pt')")


def test_extra_file(out: Path, dest: Path) -> None:
    write(out, model())
    (out / "notes.txt").write_text("the labels are ...")
    rejected(out, dest, specs(model()), "extra_files", "it also has 'notes.txt'; delete")


def test_extra_files_are_listed_up_to_ten(out: Path, dest: Path) -> None:
    write(out, model())
    for i in range(13):
        (out / f"leak{i:02}").write_bytes(b"")
    message = rejected(out, dest, specs(model()), "extra_files", "'leak09' and 3 more")
    assert "leak10" not in message


def test_extra_hidden_file_and_subdirectory(out: Path, dest: Path) -> None:
    write(out, model())
    (out / ".cache").mkdir()
    (out / ".cache" / "x").write_bytes(b"x")
    rejected(out, dest, specs(model()), "extra_files", "'.cache'")


def test_weird_names_are_escaped(out: Path, dest: Path) -> None:
    write(out, model())
    (out / "a\x1b[2Jb\n").write_bytes(b"")
    message = rejected(out, dest, specs(model()), "extra_files", "'a\\x1b[2Jb\\n'")
    assert "\x1b" not in message


def test_output_dir_symlink(tmp_path: Path, dest: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    write(real, model())
    (tmp_path / "link").symlink_to(real)
    rejected(tmp_path / "link", dest, specs(model()), "output_dir", "not a link")


def test_model_is_symlink_to_another_file(out: Path, dest: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    target = write(elsewhere, model())
    (out / MODEL_FILENAME).symlink_to(target)
    rejected(out, dest, specs(model()), "symlink", "is a symbolic link; it must be a regular file")


def test_model_is_fifo(out: Path, dest: Path) -> None:
    os.mkfifo(out / MODEL_FILENAME)
    rejected(out, dest, specs(model()), "not_regular", "is a named pipe (FIFO)")


def test_model_is_directory(out: Path, dest: Path) -> None:
    (out / MODEL_FILENAME).mkdir()
    rejected(out, dest, specs(model()), "not_regular", "is a directory")


def test_model_is_hardlinked(out: Path, dest: Path, tmp_path: Path) -> None:
    path = write(out, model())
    os.link(path, tmp_path / "alias")
    rejected(out, dest, specs(model()), "hardlink", "has 2 hard links")


def test_pickle_named_model_safetensors(out: Path, dest: Path) -> None:
    (out / MODEL_FILENAME).write_bytes(pickle.dumps(model(), protocol=4))
    message = rejected(out, dest, specs(model()), "pickle", "looks like a torch.save/pickle")
    assert "safetensors.torch.save_file" in message


def test_torch_save_zip_named_model_safetensors(out: Path, dest: Path) -> None:
    torch = pytest.importorskip("torch")
    torch.save({k: torch.from_numpy(v) for k, v in model().items()}, out / MODEL_FILENAME)
    rejected(out, dest, specs(model()), "pickle", "looks like a torch.save/pickle file")


def test_oversized_file(out: Path, dest: Path) -> None:
    arrays = {"big": np.zeros(300_000, np.float32)}
    write(out, arrays)
    rules = GateRules(max_model_mb=1)
    rejected(
        out, dest, specs(arrays), "too_large", "allows at most 1 MiB (gate.max_model_mb)", rules
    )


def test_header_too_large(out: Path, dest: Path) -> None:
    arrays = {f"layer.{i}.weight": np.zeros(1, np.float32) for i in range(40)}
    write(out, arrays)
    rules = GateRules(max_header_kb=1)
    rejected(out, dest, specs(arrays), "header_too_large", "(gate.max_header_kb)", rules)


# ---------------------------------------------------------------- header vs policy


def test_metadata_is_rejected(out: Path, dest: Path) -> None:
    write(out, model(), metadata={"format": "pt"})
    rejected(
        out, dest, specs(model()), "metadata", "__metadata__ is not allowed: it is a side channel"
    )


def test_extra_tensor(out: Path, dest: Path) -> None:
    write(out, model(stash=np.zeros(4, np.float32)))
    rejected(out, dest, specs(model()), "names", "(unexpected: 'stash')")


def test_missing_tensor(out: Path, dest: Path) -> None:
    arrays = model()
    del arrays["fc.bias"]
    write(out, arrays)
    rejected(out, dest, specs(model()), "names", "(missing: 'fc.bias')")


def test_missing_and_extra_tensor(out: Path, dest: Path) -> None:
    arrays = model()
    arrays["fc.b"] = arrays.pop("fc.bias")
    write(out, arrays)
    rejected(out, dest, specs(model()), "names", "missing: 'fc.bias'; unexpected: 'fc.b'")


def test_wrong_shape(out: Path, dest: Path) -> None:
    arrays = model()
    arrays["fc.weight"] = arrays["fc.weight"].reshape(4, 3)
    write(out, arrays)
    rejected(
        out, dest, specs(model()), "spec_mismatch", "'fc.weight' has shape [4, 3], expected [3, 4]"
    )


def test_wrong_dtype(out: Path, dest: Path) -> None:
    arrays = model()
    arrays["fc.bias"] = arrays["fc.bias"].astype(np.float16)
    write(out, arrays)
    rejected(out, dest, specs(model()), "spec_mismatch", "'fc.bias' has dtype F16, expected F32")


def test_dtype_not_in_allowlist(out: Path, dest: Path) -> None:
    arrays = model()
    arrays["fc.bias"] = arrays["fc.bias"].astype(np.float64)
    write(out, arrays)
    message = rejected(out, dest, specs(arrays), "dtype_not_allowed", "for tensors 'fc.bias' (F64)")
    assert "allowed (gate.dtypes): F32, F16, BF16, I64" in message


def test_gap_in_data(out: Path, dest: Path) -> None:
    header = {"a": {"dtype": "U8", "shape": [2], "data_offsets": [0, 2]}}
    header["b"] = {"dtype": "U8", "shape": [2], "data_offsets": [3, 5]}
    write_raw(out, header, b"aa?bb")
    expected = {"a": TensorSpec("U8", (2,)), "b": TensorSpec("U8", (2,))}
    rejected(out, dest, expected, "gap", "bytes [2, 3) of the data section belong to no tensor")


def test_overlapping_data(out: Path, dest: Path) -> None:
    header = {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}
    header["b"] = {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}
    write_raw(out, header, bytes(12))
    expected = {"a": TensorSpec("F32", (2,)), "b": TensorSpec("F32", (2,))}
    rejected(out, dest, expected, "overlap", "overlaps tensor 'a'")


def test_trailing_bytes(out: Path, dest: Path) -> None:
    path = write(out, model())
    with path.open("ab") as f:
        f.write(b"label=7")
    rejected(out, dest, specs(model()), "trailing", "7 trailing bytes")


# ---------------------------------------------------------------- values


def test_nan_is_rejected_with_count(out: Path, dest: Path) -> None:
    arrays = model()
    arrays["fc.weight"][0, :3] = np.nan
    write(out, arrays)
    rejected(out, dest, specs(arrays), "nonfinite", "'fc.weight' has 3 non-finite values (3 NaN")


def test_inf_is_rejected_with_count(out: Path, dest: Path) -> None:
    arrays = model()
    arrays["fc.bias"][1] = -np.inf
    write(out, arrays)
    rejected(
        out, dest, specs(arrays), "nonfinite", "'fc.bias' has 1 non-finite values (0 NaN, 1 Inf)"
    )


def test_nan_payload_in_f16_is_rejected(out: Path, dest: Path) -> None:
    values = np.array([0x7E01, 0x3C00], np.uint16).view(np.float16)  # a NaN with a payload
    write(out, {"h": values})
    rejected(out, dest, {"h": TensorSpec("F16", (2,))}, "nonfinite", "(1 NaN, 0 Inf)")


def test_nonfinite_zeroed_when_policy_says_so(out: Path, dest: Path) -> None:
    arrays = model()
    arrays["fc.weight"][1, 1] = np.nan
    arrays["fc.bias"][0] = np.inf
    write(out, arrays)
    result = run_gate(out, dest, specs(arrays), GateRules(nonfinite="zero"))
    loaded = np_load_file(dest)
    assert loaded["fc.weight"][1, 1] == 0.0
    assert loaded["fc.bias"][0] == 0.0
    assert np.isfinite(loaded["fc.weight"]).all()
    assert result.notes == [
        "replaced 2 NaN/Inf values by 0.0 in 2 tensors ('fc.bias': 1, 'fc.weight': 1) "
        "(gate.nonfinite=zero)"
    ]


def bits_to(dtype: str, bits: list[int]) -> np.ndarray:
    width = {"F64": np.uint64, "F32": np.uint32, "F16": np.uint16}[dtype]
    floats = {"F64": np.float64, "F32": np.float32, "F16": np.float16}[dtype]
    return np.array(bits, width).view(floats)


SUBNORMALS = {
    # (smallest +subnormal, largest -subnormal, smallest +normal, -0.0)
    "F64": [0x1, 0x800FFFFFFFFFFFFF, 0x0010000000000000, 0x8000000000000000],
    "F32": [0x1, 0x807FFFFF, 0x00800000, 0x80000000],
    "F16": [0x1, 0x83FF, 0x0400, 0x8000],
}


@pytest.mark.parametrize("dtype", sorted(SUBNORMALS))
def test_subnormals_are_flushed_to_positive_zero(out: Path, dest: Path, dtype: str) -> None:
    values = bits_to(dtype, SUBNORMALS[dtype])
    write(out, {"w": values})
    rules = GateRules(dtypes=ALL_DTYPES)
    result = run_gate(out, dest, {"w": TensorSpec(dtype, (4,))}, rules)
    got = np_load_file(dest)["w"].view(f"<u{values.itemsize}")
    expected = SUBNORMALS[dtype][:]
    expected[0] = expected[1] = 0  # +0.0, sign dropped
    assert got.tolist() == expected
    assert result.notes == [
        "flushed 2 subnormal values to +0.0 in 1 tensor ('w': 2) (gate.denormals=flush)"
    ]


def test_bf16_subnormals_flushed_and_nan_rejected(out: Path, dest: Path) -> None:
    bits = [0x0001, 0x807F, 0x0080, 0x3F80]
    header = {"b": {"dtype": "BF16", "shape": [4], "data_offsets": [0, 8]}}
    write_raw(out, header, np.array(bits, "<u2").tobytes())
    expected = {"b": TensorSpec("BF16", (4,))}
    result = run_gate(out, dest, expected)
    raw = dest.read_bytes()[-8:]
    assert np.frombuffer(raw, "<u2").tolist() == [0, 0, 0x0080, 0x3F80]
    assert "flushed 2 subnormal" in result.notes[0]
    write_raw(out, header, np.array([0x7FC1, 0, 0, 0], "<u2").tobytes())
    dest.unlink()
    rejected(out, dest, expected, "nonfinite", "(1 NaN, 0 Inf)")


def test_subnormals_kept_when_policy_says_so(out: Path, dest: Path) -> None:
    values = bits_to("F32", SUBNORMALS["F32"])
    write(out, {"w": values})
    result = run_gate(out, dest, {"w": TensorSpec("F32", (4,))}, GateRules(denormals="keep"))
    assert np_load_file(dest)["w"].tobytes() == values.tobytes()
    assert result.notes == []


def test_bool_bytes_other_than_0_1(out: Path, dest: Path) -> None:
    header = {"m": {"dtype": "BOOL", "shape": [3], "data_offsets": [0, 3]}}
    write_raw(out, header, b"\x00\x01\x41")
    rules = GateRules(dtypes=ALL_DTYPES)
    rejected(
        out, dest, {"m": TensorSpec("BOOL", (3,))}, "bool_value", "1 bytes other than 0 or 1", rules
    )


def test_nonfinite_found_beyond_the_first_buffer(
    out: Path, dest: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stream_module, "CHUNK_BYTES", 8192)
    arrays = {"w": np.ones(10_000, np.float32)}
    arrays["w"][9_999] = np.nan
    write(out, arrays)
    rejected(out, dest, specs(arrays), "nonfinite", "(1 NaN, 0 Inf)")


# ---------------------------------------------------------------- canonical output


def test_canonical_bytes_identical_for_reordered_inputs(tmp_path: Path) -> None:
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    b = np.array([1, 2, 3], np.float16)
    c = np.array([7], np.int64)
    entries = {
        "c": ("I64", [1], c.tobytes()),
        "a": ("F32", [2, 3], a.tobytes()),
        "b": ("F16", [3], b.tobytes()),
    }
    digests = []
    for i, order in enumerate([["a", "b", "c"], ["c", "b", "a"], ["b", "a", "c"]]):
        out = tmp_path / f"out{i}"
        out.mkdir()
        header, data = {}, b""
        for name in order:
            dtype, shape, raw = entries[name]
            header[name] = {"data_offsets": [len(data), len(data) + len(raw)], "dtype": dtype}
            header[name]["shape"] = shape
            data += raw
        write_raw(out, header, data, pad=i)  # also vary the JSON whitespace
        result = gate_output(out, specs({"a": a, "b": b, "c": c}), RULES, tmp_path / f"m{i}")
        digests.append(result.sha256)
    files = [(tmp_path / f"m{i}").read_bytes() for i in range(3)]
    assert files[0] == files[1] == files[2]
    assert len(set(digests)) == 1
    assert files[0][8:12] == b'{"a"'


def test_canonical_layout(out: Path, dest: Path) -> None:
    arrays = {
        "z.bool": np.array([True, False, True]),
        "y.f16": np.array([1, 2, 3], np.float16),
        "b.f32": np.array([1.5], np.float32),
        "a.i64": np.array([5], np.int64),
    }
    write(out, arrays)
    rules = GateRules(dtypes=ALL_DTYPES)
    result = gate_output(out, specs(arrays), rules, dest)
    raw = dest.read_bytes()
    length = int.from_bytes(raw[:8], "little")
    assert length % 8 == 0
    text = raw[8 : 8 + length]
    assert (
        text.rstrip(b" ")
        == json.dumps(json.loads(text), separators=(",", ":"), sort_keys=True).encode()
    )
    header = json.loads(text)
    order = sorted(header, key=lambda n: header[n]["data_offsets"][0])
    assert order == ["a.i64", "b.f32", "y.f16", "z.bool"]  # by element size, then name
    for name in header:
        assert header[name]["data_offsets"][0] % arrays[name].itemsize == 0
    assert result.size == len(raw)


def test_values_preserved_and_loadable_by_torch_and_numpy(out: Path, dest: Path) -> None:
    torch = pytest.importorskip("torch")
    from safetensors.torch import load_file as torch_load_file

    rng = np.random.default_rng(0)
    arrays = {
        "w": rng.standard_normal((33, 17)).astype(np.float32),
        "h": rng.standard_normal(101).astype(np.float16),
        "n": np.arange(-5, 6, dtype=np.int64),
        "e": np.zeros((0, 3), np.float32),
    }
    write(out, arrays)
    result = run_gate(out, dest, specs(arrays))
    loaded = np_load_file(dest)
    via_torch = torch_load_file(dest)
    for name, array in arrays.items():
        assert loaded[name].dtype == array.dtype
        np.testing.assert_array_equal(loaded[name], array)
        assert torch.equal(via_torch[name], torch.from_numpy(array))
    assert result.sha256 == hashlib.sha256(dest.read_bytes()).hexdigest()
    assert result.size == dest.stat().st_size


def test_buffer_boundaries_do_not_change_the_bytes(
    out: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng(1)
    arrays = {
        "a": rng.standard_normal(5000).astype(np.float32),
        "b": rng.standard_normal(3001).astype(np.float16),
        "c": np.arange(1001, dtype=np.int64),
        "d": rng.standard_normal(7).astype(np.float16),
    }
    arrays["a"][4321] = np.float32(1e-42)
    write(out, arrays)
    big = gate_output(out, specs(arrays), RULES, tmp_path / "big")
    monkeypatch.setattr(stream_module, "CHUNK_BYTES", 4096)
    small = gate_output(out, specs(arrays), RULES, tmp_path / "small")
    assert (tmp_path / "big").read_bytes() == (tmp_path / "small").read_bytes()
    assert big.sha256 == small.sha256
    assert (
        big.notes
        == small.notes
        == ["flushed 1 subnormal values to +0.0 in 1 tensor ('a': 1) (gate.denormals=flush)"]
    )


def test_dest_is_replaced_atomically(out: Path, dest: Path) -> None:
    dest.write_bytes(b"old")
    write(out, model())
    run_gate(out, dest, specs(model()))
    assert dest.read_bytes()[:8] != b"old"
    assert [p.name for p in dest.parent.iterdir()] == [MODEL_FILENAME]


@given(
    st.dictionaries(
        st.text("abcxyz._0123456789", min_size=1, max_size=12),
        hnp.arrays(
            st.sampled_from([np.float32, np.float16, np.int64]),
            hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5),
            elements={"allow_nan": False, "allow_infinity": False, "allow_subnormal": False},
        ),
        max_size=5,
    )
)
@settings(max_examples=40, deadline=None)
def test_gate_round_trips_any_finite_model(arrays: dict[str, np.ndarray]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        out.mkdir()
        write(out, arrays)
        dest = Path(tmp) / "m"
        result = gate_output(out, specs(arrays), RULES, dest)
        loaded = np_load_file(dest)
        assert set(loaded) == set(arrays)
        for name, array in arrays.items():
            assert loaded[name].tobytes() == array.tobytes()
        assert result.sha256 == hashlib.sha256(dest.read_bytes()).hexdigest()


# ---------------------------------------------------------------- output stream


@pytest.mark.parametrize("direct", [True, False])
def test_output_stream_writes_and_hashes_every_byte(tmp_path: Path, direct: bool) -> None:
    data = os.urandom(3 * 4096 + 123)
    path = tmp_path / "s"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        stream = OutputStream(fd, chunk_bytes=4096, buffers=2, direct=direct)
        stream.put(data[:5000])
        stream.put(data[5000:])
        size, digest = stream.finish()
    finally:
        os.close(fd)
    assert path.read_bytes() == data
    assert (size, digest) == (len(data), hashlib.sha256(data).hexdigest())


def test_output_stream_falls_back_when_direct_write_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_write = os.write
    calls = []

    def refuse_first(fd: int, data: Any) -> int:
        calls.append(len(data))
        if len(calls) == 1:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_write(fd, data)

    data = os.urandom(10_000)
    path = tmp_path / "s"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        stream = OutputStream(fd, chunk_bytes=4096, direct=True)
        if not stream.direct:
            stream.close()
            pytest.skip("this filesystem has no O_DIRECT")
        monkeypatch.setattr(stream_module.os, "write", refuse_first)
        stream.put(data)
        stream.finish()
    finally:
        monkeypatch.undo()
        os.close(fd)
    assert not stream.direct
    assert path.read_bytes() == data


def test_write_error_surfaces_and_leaves_nothing(
    out: Path, dest: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_space(fd: int, data: Any) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    write(out, model())
    monkeypatch.setattr(stream_module.os, "write", no_space)
    with pytest.raises(OSError, match="No space"):
        run_gate(out, dest, specs(model()))
    monkeypatch.undo()
    assert list(dest.parent.iterdir()) == []
