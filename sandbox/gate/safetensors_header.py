"""Defensive parsing of a safetensors header from an untrusted file.

The file comes straight out of a container that ran the provider's code, so every
byte is hostile until proven otherwise. The parser reads at most 8 + N bytes (N is
bounded by the policy before anything is allocated), trusts no JSON library default
(duplicate keys, NaN literals, bools-as-ints, nesting depth), and proves that the
tensors' byte ranges tile the data section exactly, so that no byte of the file can
carry anything the gate has not accounted for. It never looks at tensor values.

Format: an 8-byte little-endian u64 N, N bytes of UTF-8 JSON mapping tensor name to
{"dtype", "shape", "data_offsets": [begin, end]} plus an optional "__metadata__"
str->str map, then the data section; offsets are relative to the data section.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, BinaryIO, Final

from sandbox.gate.violation import GateViolation

#: Bytes per element of every dtype the gate understands; the policy narrows this.
DTYPE_SIZES: Final[Mapping[str, int]] = MappingProxyType(
    {
        "F64": 8,
        "F32": 4,
        "F16": 2,
        "BF16": 2,
        "I64": 8,
        "I32": 4,
        "I16": 2,
        "I8": 1,
        "U8": 1,
        "BOOL": 1,
    }
)
METADATA_KEY: Final = "__metadata__"
MAX_NAME_CHARS: Final = 256
#: torch supports at most 64 dimensions; nothing legitimate goes beyond.
MAX_RANK: Final = 64
#: A single dimension larger than this cannot be a real model (2**40 elements).
MAX_DIM: Final = 1 << 40
_ENTRY_KEYS: Final = frozenset({"dtype", "shape", "data_offsets"})
_SAVE_FILE_HINT: Final = (
    "this looks like a torch.save/pickle file; write the state_dict with "
    "safetensors.torch.save_file(model.state_dict(), path)"
)
_SHOWN_CHARS: Final = 80


@dataclass(frozen=True)
class TensorEntry:
    """One tensor of the header; begin/end are offsets into the data section."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


@dataclass(frozen=True)
class Header:
    """A validated header: tensors in file order, and the raw metadata if present."""

    header_len: int
    tensors: tuple[TensorEntry, ...]
    metadata: dict[str, str] | None

    @property
    def data_start(self) -> int:
        """Absolute file offset of the data section."""
        return 8 + self.header_len

    @property
    def data_len(self) -> int:
        """Size of the data section; the tensors tile it exactly."""
        return max((t.end for t in self.tensors), default=0)


def show(name: str) -> str:
    """Quote an untrusted string for a message: ASCII-escaped and length-capped.

    Names come from the provider; escaping keeps control characters and terminal
    escapes out of logs and reports.
    """
    text = ascii(name)
    return text if len(text) <= _SHOWN_CHARS else text[: _SHOWN_CHARS - 3] + "..."


def parse_header(f: BinaryIO, file_size: int, *, max_header_bytes: int) -> Header:
    """Read and validate the header of the safetensors file `f` (read from its current
    position, normally 0) whose total size is `file_size`.

    Raises `GateViolation` naming the exact problem for anything that is not a
    well-formed, exactly-tiled safetensors file; returns only validated entries.
    """
    prefix = _read_exact(f, min(8, max(file_size, 0)))
    if file_size < 8:
        raise _violation(
            f"model.safetensors is {file_size} bytes, shorter than the 8-byte header "
            "length every safetensors file starts with",
            "truncated",
            prefix,
        )
    header_len = int.from_bytes(prefix, "little")
    _check_header_len(header_len, file_size, max_header_bytes, prefix)
    raw = _read_exact(f, header_len)
    if raw[:1] != b"{":
        raise _violation(
            "the safetensors header must be a JSON object starting with '{'", "header_json", prefix
        )
    document = _decode_json(raw)
    data_len = file_size - 8 - header_len
    tensors, metadata = _entries(document, data_len)
    _check_tiling(tensors, data_len)
    return Header(header_len=header_len, tensors=tensors, metadata=metadata)


def _read_exact(f: BinaryIO, n: int) -> bytes:
    """Read exactly n bytes; a short read means the file shrank under us."""
    parts: list[bytes] = []
    remaining = n
    while remaining > 0:
        chunk = f.read(remaining)
        if not chunk:
            raise GateViolation(
                f"model.safetensors ended {remaining} bytes early: it changed while the "
                "gate was reading it; make sure train.py has finished writing before it exits",
                code="truncated",
            )
        parts.append(chunk)
        remaining -= len(chunk)
    return b"".join(parts)


def _sniff_foreign(prefix: bytes) -> str | None:
    """Recognise the usual wrong formats so the message can say what to do instead."""
    if prefix[:1] == b"\x80" and prefix[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return _SAVE_FILE_HINT
    if prefix[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return _SAVE_FILE_HINT
    return None


def _violation(message: str, code: str, prefix: bytes) -> GateViolation:
    """A structural error; if the bytes look like pickle/zip, say that instead."""
    hint = _sniff_foreign(prefix)
    if hint is not None:
        return GateViolation(f"model.safetensors is not a safetensors file: {hint}", code="pickle")
    return GateViolation(message, code=code)


def _check_header_len(
    header_len: int, file_size: int, max_header_bytes: int, prefix: bytes
) -> None:
    """Bound N before allocating anything for it."""
    if header_len == 0:
        raise _violation(
            "the safetensors header length is 0; the header is missing", "header_len", prefix
        )
    if header_len > max_header_bytes:
        raise _violation(
            f"the safetensors header is {header_len} bytes; the policy allows at most "
            f"{max_header_bytes} (gate.max_header_kb); store fewer tensors or raise the limit",
            "header_too_large",
            prefix,
        )
    if header_len > file_size - 8:
        raise _violation(
            f"the safetensors header claims {header_len} bytes but only {file_size - 8} follow "
            "the length field; the file is truncated or not safetensors",
            "header_len",
            prefix,
        )


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """object_pairs_hook: JSON allows duplicate keys, which would let two readers disagree."""
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise GateViolation(
                f"the safetensors header has the key {show(key)} twice; every tensor name "
                "must appear once",
                code="header_duplicate",
            )
        result[key] = value
    return result


def _reject_constant(name: str) -> Any:
    """parse_constant: NaN/Infinity are not JSON, whatever Python's json accepts."""
    raise GateViolation(
        f"the safetensors header contains the non-JSON literal {name}", code="header_json"
    )


def _decode_json(raw: bytes) -> object:
    """Decode the header bytes as strict UTF-8 JSON."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise GateViolation(
            f"the safetensors header is not valid UTF-8 (at byte {error.start})", code="header_utf8"
        ) from None
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_reject_constant)
    except RecursionError:
        raise GateViolation(
            "the safetensors header JSON is nested too deeply", code="header_json"
        ) from None
    except json.JSONDecodeError as error:
        raise GateViolation(
            f"the safetensors header is not valid JSON: {error.msg} at character {error.pos}",
            code="header_json",
        ) from None
    except ValueError:
        # Python refuses integers with more than 4300 digits: no real header has one.
        raise GateViolation(
            "the safetensors header contains a number too large to be an offset or a dimension",
            code="header_json",
        ) from None


def _entries(
    document: object, data_len: int
) -> tuple[tuple[TensorEntry, ...], dict[str, str] | None]:
    """Validate the decoded JSON object entry by entry."""
    if not isinstance(document, dict):
        raise GateViolation(
            f"the safetensors header must be a JSON object, not {_json_type(document)}",
            code="header_json",
        )
    metadata: dict[str, str] | None = None
    tensors: list[TensorEntry] = []
    for name, value in document.items():
        if name == METADATA_KEY:
            metadata = _metadata(value)
        else:
            tensors.append(_entry(name, value, data_len))
    return tuple(tensors), metadata


def _metadata(value: object) -> dict[str, str]:
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise GateViolation(
            "__metadata__ in the safetensors header must map strings to strings",
            code="header_entry",
        )
    return dict(value)


def _check_name(name: str) -> None:
    """Names end up in reports, logs and state_dict keys: keep them plain."""
    if not name:
        raise GateViolation("a tensor in the safetensors header has an empty name", code="name")
    if len(name) > MAX_NAME_CHARS:
        raise GateViolation(
            f"tensor name {show(name)} is {len(name)} characters; at most {MAX_NAME_CHARS} "
            "are allowed",
            code="name",
        )
    if not all("!" <= c <= "~" for c in name):
        raise GateViolation(
            f"tensor name {show(name)} contains characters other than visible ASCII "
            "(no spaces, control or non-ASCII characters); rename the parameter",
            code="name",
        )


def _entry(name: str, value: object, data_len: int) -> TensorEntry:
    """Validate one tensor entry's keys, types, bounds and size."""
    _check_name(name)
    if not isinstance(value, dict):
        raise GateViolation(
            f"the header entry of tensor {show(name)} must be a JSON object, "
            f"not {_json_type(value)}",
            code="header_entry",
        )
    keys = set(value)
    if keys != _ENTRY_KEYS:
        missing = ", ".join(sorted(_ENTRY_KEYS - keys)) or "none"
        extra = ", ".join(show(k) for k in sorted(keys - _ENTRY_KEYS)) or "none"
        raise GateViolation(
            f"the header entry of tensor {show(name)} must have exactly the keys dtype, shape "
            f"and data_offsets (missing: {missing}; unexpected: {extra})",
            code="header_entry",
        )
    dtype = _dtype(name, value["dtype"])
    shape = _int_list(name, "shape", value["shape"], MAX_DIM, max_len=MAX_RANK)
    offsets = _int_list(name, "data_offsets", value["data_offsets"], data_len, max_len=2)
    if len(offsets) != 2 or offsets[0] > offsets[1]:
        raise GateViolation(
            f"data_offsets of tensor {show(name)} must be [begin, end] with begin <= end "
            f"inside the {data_len}-byte data section, got {list(offsets)}",
            code="header_entry",
        )
    begin, end = offsets
    expected = math.prod(shape) * DTYPE_SIZES[dtype]
    if end - begin != expected:
        raise GateViolation(
            f"tensor {show(name)} has shape {list(shape)} of {dtype} = {expected} bytes but its "
            f"data_offsets span {end - begin} bytes",
            code="header_size",
        )
    return TensorEntry(name=name, dtype=dtype, shape=shape, begin=begin, end=end)


def _dtype(name: str, value: object) -> str:
    if not isinstance(value, str) or value not in DTYPE_SIZES:
        shown = show(value) if isinstance(value, str) else _json_type(value)
        raise GateViolation(
            f"tensor {show(name)} has dtype {shown}, which the gate does not know; "
            f"known dtypes: {', '.join(DTYPE_SIZES)}",
            code="dtype_unknown",
        )
    return value


def _int_list(name: str, key: str, value: object, bound: int, *, max_len: int) -> tuple[int, ...]:
    """A JSON list of plain ints in [0, bound]: bools and floats are refused."""
    if not isinstance(value, list) or len(value) > max_len:
        raise GateViolation(
            f"{key} of tensor {show(name)} must be a list of at most {max_len} integers",
            code="header_entry",
        )
    for item in value:
        if type(item) is not int or not 0 <= item <= bound:
            raise GateViolation(
                f"{key} of tensor {show(name)} must hold integers between 0 and {bound}, "
                f"got {_describe(item)}",
                code="header_entry",
            )
    return tuple(value)


def _check_tiling(tensors: tuple[TensorEntry, ...], data_len: int) -> None:
    """Tensor byte ranges, sorted, must cover [0, data_len) with no gap and no overlap.

    Any uncovered byte could carry data the gate never inspects; overlaps make two
    tensors alias; trailing bytes are a free side channel.
    """
    position = 0
    previous: TensorEntry | None = None
    for entry in sorted(tensors, key=lambda t: (t.begin, t.end)):
        if entry.begin > position:
            raise GateViolation(
                f"bytes [{position}, {entry.begin}) of the data section belong to no tensor "
                f"(gap before {show(entry.name)}); tensors must be stored back to back",
                code="gap",
            )
        if entry.begin < position and previous is not None:
            raise GateViolation(
                f"tensor {show(entry.name)} at [{entry.begin}, {entry.end}) overlaps tensor "
                f"{show(previous.name)} at [{previous.begin}, {previous.end})",
                code="overlap",
            )
        position = entry.end
        previous = entry
    if position != data_len:
        raise GateViolation(
            f"model.safetensors has {data_len - position} trailing bytes after the last "
            "tensor's data; the file must end where the last tensor ends",
            code="trailing",
        )


def _json_type(value: object) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    if isinstance(value, int | float) and not isinstance(value, bool):
        return "a number"
    return names.get(type(value), type(value).__name__)


def _describe(item: object) -> str:
    if type(item) is int:
        return str(item) if abs(item) < 10**20 else "a huge integer"
    return _json_type(item)
