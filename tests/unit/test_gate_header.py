"""The defensive safetensors header parser: every check, plus property tests that
valid files round-trip and that no input makes it fail with anything but GateViolation."""

from __future__ import annotations

import contextlib
import io
import json
import pickle
import struct
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from safetensors.numpy import load, save

from sandbox.gate import DTYPE_SIZES, GateViolation, Header, parse_header

MAX_HEADER = 1 << 20
NP_DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
}


def parse(data: bytes, max_header: int = MAX_HEADER) -> Header:
    return parse_header(io.BytesIO(data), len(data), max_header_bytes=max_header)


def raw_file(header: Any, data: bytes = b"", *, length: int | None = None) -> bytes:
    """A file from a header (object or raw bytes), with an optionally forged length."""
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(text) if length is None else length) + text + data


def entry(dtype: str, shape: list[Any], begin: Any, end: Any) -> dict[str, Any]:
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


def reject(data: bytes, code: str, text: str, max_header: int = MAX_HEADER) -> GateViolation:
    with pytest.raises(GateViolation) as caught:
        parse(data, max_header)
    assert caught.value.code == code, caught.value.message
    assert text in caught.value.message
    return caught.value


# ---------------------------------------------------------------- accepted files


def test_parses_a_safetensors_numpy_file() -> None:
    data = save({"w": np.ones((2, 3), np.float32), "b": np.arange(3, dtype=np.int64)})
    header = parse(data)
    assert header.metadata is None
    by_name = {t.name: t for t in header.tensors}
    assert by_name["w"].dtype == "F32"
    assert by_name["w"].shape == (2, 3)
    assert by_name["b"].nbytes == 24
    assert header.data_start + header.data_len == len(data)


def test_metadata_is_returned_for_egress_to_judge() -> None:
    data = save({"w": np.ones(2, np.float32)}, metadata={"k": "v"})
    assert parse(data).metadata == {"k": "v"}


def test_length_whose_low_byte_is_0x80_is_not_taken_for_a_pickle() -> None:
    text = json.dumps({"w": entry("U8", [1], 0, 1)}).encode()
    text += b" " * (0x80 - len(text))
    header = parse(raw_file(text, b"\x07"))
    assert header.header_len == 0x80


def test_zero_sized_tensors_are_allowed() -> None:
    data = raw_file({"e": entry("F32", [0, 4], 0, 0), "w": entry("U8", [2], 0, 2)}, b"ab")
    assert {t.name for t in parse(data).tensors} == {"e", "w"}


# ---------------------------------------------------------------- framing


def test_file_shorter_than_8_bytes() -> None:
    reject(b"\x01\x02", "truncated", "shorter than the 8-byte header length")


def test_header_length_zero() -> None:
    reject(raw_file(b"", length=0), "header_len", "header length is 0")


def test_header_length_over_the_policy_limit() -> None:
    data = save({"w": np.ones(2, np.float32)})
    error = reject(data, "header_too_large", "gate.max_header_kb", max_header=16)
    assert "allows at most 16" in error.message


def test_header_length_past_end_of_file() -> None:
    reject(raw_file(b"{}", length=100), "header_len", "only 2 follow")


def test_header_must_start_with_brace() -> None:
    reject(raw_file(b' {"a":1}'), "header_json", "starting with '{'")


def test_header_not_utf8() -> None:
    reject(raw_file(b'{"\xff": 1}'), "header_utf8", "not valid UTF-8")


def test_header_not_json() -> None:
    reject(raw_file(b"{nope}"), "header_json", "not valid JSON")


def test_entry_value_not_an_object() -> None:
    reject(raw_file(b'{"a": 1}'), "header_entry", "must be a JSON object, not a number")


def test_header_top_level_array_is_refused() -> None:
    reject(raw_file(b"[1, 2]"), "header_json", "must be a JSON object starting with '{'")


def test_duplicate_keys() -> None:
    text = b'{"w": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}, '
    text += b'"w": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}}'
    reject(raw_file(text, b"x"), "header_duplicate", "has the key 'w' twice")


def test_nan_literal() -> None:
    reject(raw_file(b'{"w": NaN}'), "header_json", "non-JSON literal NaN")


def test_deep_nesting() -> None:
    reject(raw_file(b'{"w": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"), "header_json", "")


def test_huge_integer() -> None:
    text = b'{"w": {"dtype": "U8", "shape": [' + b"9" * 5000 + b'], "data_offsets": [0, 1]}}'
    reject(raw_file(text, b"x"), "header_json", "number too large")


@pytest.mark.parametrize(
    "payload",
    [
        pickle.dumps({"w": [1.0, 2.0]}, protocol=2),
        pickle.dumps({"w": [1.0, 2.0]}, protocol=4),
        pickle.dumps({"w": b"x" * 100}, protocol=5),
        b"PK\x03\x04" + b"\x14\x00" * 40,
    ],
    ids=["pickle2", "pickle4", "pickle5", "zip"],
)
def test_pickle_and_zip_are_recognised(payload: bytes) -> None:
    error = reject(payload, "pickle", "looks like a torch.save/pickle file")
    assert "safetensors.torch.save_file" in error.message


def test_tiny_pickle_is_recognised() -> None:
    reject(b"\x80\x04K\x01.", "pickle", "torch.save/pickle")


# ---------------------------------------------------------------- entries


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ({"dtype": "U8", "shape": [1]}, "missing: data_offsets"),
        ({**entry("U8", [1], 0, 1), "extra": 1}, "unexpected: 'extra'"),
        ([1, 2], "must be a JSON object, not an array"),
    ],
)
def test_entry_keys(value: Any, text: str) -> None:
    reject(raw_file({"w": value}, b"x"), "header_entry", text)


@pytest.mark.parametrize(
    ("shape", "offsets"),
    [
        ([True], [0, 1]),
        ([1.0], [0, 1]),
        ([-1], [0, 1]),
        (["1"], [0, 1]),
        ([1], [0, True]),
        ([1], [0.0, 1]),
        ([1], [-1, 0]),
        ([1], [0]),
        ([1], [0, 1, 1]),
        ([1], [1, 0]),
        ([1], [0, 99]),
        ([1] * 65, [0, 1]),
        ([1 << 41], [0, 1]),
        ({"a": 1}, [0, 1]),
    ],
)
def test_shape_and_offset_types_and_bounds(shape: Any, offsets: Any) -> None:
    value = {"dtype": "U8", "shape": shape, "data_offsets": offsets}
    with pytest.raises(GateViolation) as caught:
        parse(raw_file({"w": value}, b"x"))
    assert caught.value.code in {"header_entry", "header_size"}
    assert "tensor 'w'" in caught.value.message


@pytest.mark.parametrize("dtype", ["F8_E4M3", "U64", "f32", 4, None])
def test_unknown_dtype(dtype: Any) -> None:
    value = {"dtype": dtype, "shape": [1], "data_offsets": [0, 1]}
    reject(raw_file({"w": value}, b"x"), "dtype_unknown", "which the gate does not know")


def test_size_must_match_shape_and_dtype() -> None:
    error = reject(raw_file({"w": entry("F32", [2], 0, 4)}, b"xxxx"), "header_size", "8 bytes")
    assert "span 4 bytes" in error.message


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("", "empty name"),
        ("a" * 257, "257 characters"),
        ("has space", "visible ASCII"),
        ("tab\there", "visible ASCII"),
        ("caf\u00e9", "visible ASCII"),
        ("\x1b[31mred", "visible ASCII"),
    ],
)
def test_tensor_names(name: str, text: str) -> None:
    reject(raw_file({name: entry("U8", [1], 0, 1)}, b"x"), "name", text)


def test_metadata_must_map_strings_to_strings() -> None:
    header = {"__metadata__": {"k": 1}, "w": entry("U8", [1], 0, 1)}
    reject(raw_file(header, b"x"), "header_entry", "__metadata__")


# ---------------------------------------------------------------- tiling


def test_gap_between_tensors() -> None:
    header = {"a": entry("U8", [2], 0, 2), "b": entry("U8", [2], 4, 6)}
    reject(raw_file(header, b"aaXXbb"), "gap", "bytes [2, 4) of the data section belong to no")


def test_gap_at_start() -> None:
    reject(raw_file({"a": entry("U8", [2], 2, 4)}, b"XXaa"), "gap", "bytes [0, 2)")


def test_overlapping_tensors() -> None:
    header = {"a": entry("U8", [4], 0, 4), "b": entry("U8", [4], 2, 6)}
    reject(raw_file(header, b"aaaaaa"), "overlap", "tensor 'b' at [2, 6) overlaps tensor 'a'")


def test_aliased_tensors() -> None:
    header = {"a": entry("U8", [4], 0, 4), "b": entry("U8", [4], 0, 4)}
    reject(raw_file(header, b"aaaa"), "overlap", "overlaps")


def test_trailing_bytes() -> None:
    data = save({"w": np.ones(2, np.float32)}) + b"secret"
    reject(data, "trailing", "6 trailing bytes")


# ---------------------------------------------------------------- properties

names = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=24)
# "__metadata__" is the header's reserved key: a tensor by that name is refused on its own
# (test_a_tensor_named_like_the_metadata_key_is_refused), not a round trip.
tensor_names = names.filter(lambda name: name != "__metadata__")


@st.composite
def tensors(draw: st.DrawFn) -> dict[str, np.ndarray]:
    result: dict[str, np.ndarray] = {}
    for name in draw(st.lists(tensor_names, max_size=6, unique=True)):
        dtype = NP_DTYPES[draw(st.sampled_from(sorted(NP_DTYPES)))]
        shape = draw(st.lists(st.integers(0, 4), max_size=3))
        raw = draw(st.binary(min_size=int(np.prod(shape)) * np.dtype(dtype).itemsize))
        flat = np.frombuffer(raw[: int(np.prod(shape)) * np.dtype(dtype).itemsize], np.uint8)
        values = flat.view(np.uint8 if dtype is np.bool_ else dtype).reshape(shape)
        result[name] = np.asarray((values % 2).astype(np.bool_) if dtype is np.bool_ else values)
    return result


@given(tensors(), st.none() | st.dictionaries(names, st.text(max_size=8), max_size=2))
@settings(max_examples=150, deadline=None)
def test_any_safetensors_file_round_trips(
    arrays: dict[str, np.ndarray], metadata: dict[str, str] | None
) -> None:
    # safetensors <= 0.8 writes invalid JSON for metadata without tensors
    # (safetensors/safetensors#466); the parser rightly refuses that file.
    assume(arrays or metadata is None)
    data = save(arrays, metadata=metadata)
    header = parse(data)
    assert header.metadata == metadata
    assert {t.name for t in header.tensors} == set(arrays)
    for t in header.tensors:
        array = arrays[t.name]
        assert t.shape == array.shape
        assert DTYPE_SIZES[t.dtype] == array.dtype.itemsize
        start = header.data_start + t.begin
        assert data[start : header.data_start + t.end] == array.tobytes()


def _mutate(data: bytes, kind: int, position: int, value: bytes) -> bytes:
    position %= len(data) + 1
    if kind == 0:
        return data[:position] + value + data[position + len(value) :]
    if kind == 1:
        return data[:position]
    if kind == 2:
        return data[:position] + value + data[position:]
    if kind == 3:
        return data[:position] + data[position + len(value) :]
    return struct.pack("<Q", int.from_bytes(value.ljust(8, b"\0")[:8], "little")) + data[8:]


@given(tensors(), st.integers(0, 4), st.integers(0, 1 << 16), st.binary(min_size=1, max_size=9))
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_mutations_raise_only_gate_violation(
    arrays: dict[str, np.ndarray], kind: int, position: int, value: bytes
) -> None:
    mutated = _mutate(save(arrays), kind, position, value)
    try:
        header = parse(mutated)
    except GateViolation:
        return
    # Whatever the gate accepts, the reference loader reads the same way.
    loaded = load(mutated)
    assert set(loaded) == {t.name for t in header.tensors}
    for t in header.tensors:
        assert loaded[t.name].shape == t.shape
        start = header.data_start
        assert loaded[t.name].tobytes() == mutated[start + t.begin : start + t.end]


@given(st.binary(max_size=300))
@settings(max_examples=300, deadline=None)
def test_random_bytes_raise_only_gate_violation(data: bytes) -> None:
    with contextlib.suppress(GateViolation):
        parse(data, max_header=256)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)


@given(
    st.dictionaries(
        names | st.just("__metadata__"),
        json_values
        | st.fixed_dictionaries(
            {"dtype": json_values, "shape": json_values, "data_offsets": json_values}
        ),
        max_size=4,
    ),
    st.binary(max_size=64),
)
@settings(max_examples=300, deadline=None)
def test_random_json_headers_raise_only_gate_violation(header: dict[str, Any], data: bytes) -> None:
    with contextlib.suppress(GateViolation):
        parse(raw_file(json.dumps(header).encode(), data))


@pytest.mark.parametrize("metadata", [None, {"a": "b"}])
def test_a_tensor_named_like_the_metadata_key_is_refused(metadata: dict[str, str] | None) -> None:
    """Found by the round-trip property: safetensors writes a tensor named __metadata__
    into the header's reserved key; the gate refuses the file rather than guess."""
    data = save({"__metadata__": np.zeros(1, np.float32)}, metadata=metadata)
    with pytest.raises(GateViolation, match="__metadata__"):
        parse(data)
