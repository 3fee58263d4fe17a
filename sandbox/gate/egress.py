"""The egress gate: the only way a file leaves a training container.

After the provider's code ran, the host holds the container's output directory. The
gate lets out exactly one thing - `model.safetensors`, holding exactly the tensors
the declared architecture has - and writes it back out in canonical form. Everything
else the provider could use to smuggle data (extra files, links, metadata, padding,
stray bytes, tensor order, NaN payloads, subnormal payloads) is refused or erased.

Filesystem checks go through a directory file descriptor opened with O_NOFOLLOW and
relative, no-follow lookups, and the model is opened with O_NOFOLLOW|O_NONBLOCK and
re-checked with fstat, so a symlink, FIFO or device can neither redirect nor hang
the gate, even if the directory changes between the checks.
"""

from __future__ import annotations

import math
import operator
import os
import stat
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from io import FileIO
from pathlib import Path
from typing import Final

from sandbox.gate.canonical import write_canonical
from sandbox.gate.safetensors_header import DTYPE_SIZES, Header, TensorEntry, parse_header, show
from sandbox.gate.scan import Scanner, TensorStats
from sandbox.gate.violation import GateViolation
from sandbox.policy.model import GateRules

MODEL_FILENAME: Final = "model.safetensors"
#: How many offending names a message lists before summarising the rest.
MAX_NAMED: Final = 10
_MIB: Final = 1 << 20


@dataclass(frozen=True)
class TensorSpec:
    """What the declared architecture says one tensor must be."""

    dtype: str
    shape: tuple[int, ...]

    def __post_init__(self) -> None:
        # A bad spec is a platform bug, not the provider's fault: ValueError, not a violation.
        if self.dtype not in DTYPE_SIZES:
            raise ValueError(f"unknown dtype {self.dtype!r}; known: {', '.join(DTYPE_SIZES)}")
        # Accept torch.Size, lists and numpy ints, but compare as a tuple of ints.
        shape = tuple(operator.index(d) for d in self.shape)
        if any(d < 0 for d in shape):
            raise ValueError(f"shape must be non-negative, got {shape!r}")
        object.__setattr__(self, "shape", shape)

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * DTYPE_SIZES[self.dtype]


@dataclass(frozen=True)
class GateResult:
    """The canonical model the gate wrote, and what it changed on the way."""

    path: Path
    sha256: str
    size: int
    tensors: dict[str, TensorSpec]
    notes: list[str] = field(default_factory=list)


def gate_output(
    output_dir: Path, expected: Mapping[str, TensorSpec], rules: GateRules, dest: Path
) -> GateResult:
    """Check `output_dir` and write its model, canonicalised, to `dest`.

    Raises `GateViolation` (nothing is written) if anything but a well-formed
    `model.safetensors` with exactly the `expected` tensors is there, or if its
    values break `rules`.
    """
    dir_fd = _open_output_dir(output_dir)
    try:
        _check_entries(os.listdir(dir_fd))
        with _open_model(dir_fd, rules.max_model_mb * _MIB) as model:
            size = os.fstat(model.fileno()).st_size
            header = parse_header(model, size, max_header_bytes=rules.max_header_kb * 1024)
            _check_header(header, expected, rules)
            scanner = Scanner(
                zero_nonfinite=rules.nonfinite == "zero",
                flush_subnormals=rules.denormals == "flush",
            )
            written = write_canonical(
                model.fileno(),
                header.data_start,
                header.tensors,
                dest,
                scanner,
                lambda entry, stats: _check_values(entry, stats, rules),
            )
    finally:
        os.close(dir_fd)
    return GateResult(
        path=dest,
        sha256=written.sha256,
        size=written.size,
        tensors={t.name: TensorSpec(t.dtype, t.shape) for t in sorted(header.tensors, key=_name)},
        notes=_notes(written.stats, rules),
    )


def _name(entry: TensorEntry) -> str:
    return entry.name


def _open_output_dir(output_dir: Path) -> int:
    """Open the directory itself without following a link, and pin it by descriptor."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        return os.open(output_dir, flags)
    except OSError as error:
        raise GateViolation(
            f"the output directory cannot be opened as a directory ({error.strerror}); "
            "it must be a real directory, not a link",
            code="output_dir",
        ) from None


def _listed(names: Iterable[str]) -> str:
    """Up to MAX_NAMED quoted names, then how many more."""
    ordered = sorted(names)
    text = ", ".join(show(n) for n in ordered[:MAX_NAMED])
    if len(ordered) > MAX_NAMED:
        text += f" and {len(ordered) - MAX_NAMED} more"
    return text


def _check_entries(names: list[str]) -> None:
    """Exactly one entry, named model.safetensors: anything else could carry data out."""
    extra = [n for n in names if n != MODEL_FILENAME]
    if MODEL_FILENAME not in names:
        found = f" (found: {_listed(extra)})" if extra else " (it is empty)"
        raise GateViolation(
            f"the output directory has no {MODEL_FILENAME}{found}; train.py must write the "
            f"state_dict to $SANDBOX_OUTPUT/{MODEL_FILENAME} with safetensors.torch.save_file",
            code="missing_model",
        )
    if extra:
        raise GateViolation(
            f"the output directory may contain only {MODEL_FILENAME}, but it also has "
            f"{_listed(extra)}; delete those files and directories before train.py exits",
            code="extra_files",
        )


def _file_kind(mode: int) -> str | None:
    """Describe a non-regular file type, or None for a regular file."""
    kinds = (
        (stat.S_ISLNK, "a symbolic link"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a named pipe (FIFO)"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    )
    for test, description in kinds:
        if test(mode):
            return description
    return None if stat.S_ISREG(mode) else "not a regular file"


def _check_regular(st: os.stat_result, max_bytes: int) -> None:
    """Regular, single-link, within the size cap."""
    kind = _file_kind(st.st_mode)
    if kind is not None:
        raise GateViolation(
            f"{MODEL_FILENAME} is {kind}; it must be a regular file written by train.py",
            code="symlink" if stat.S_ISLNK(st.st_mode) else "not_regular",
        )
    if st.st_nlink > 1:
        raise GateViolation(
            f"{MODEL_FILENAME} has {st.st_nlink} hard links; a hard link can alias another "
            "file, so write a fresh file instead of linking one",
            code="hardlink",
        )
    if st.st_size > max_bytes:
        raise GateViolation(
            f"{MODEL_FILENAME} is {st.st_size / _MIB:.1f} MiB; the policy allows at most "
            f"{max_bytes // _MIB} MiB (gate.max_model_mb); use a smaller model",
            code="too_large",
        )


def _open_model(dir_fd: int, max_bytes: int) -> FileIO:
    """Open the model without following links or blocking, and re-check what we got."""
    try:
        before = os.stat(MODEL_FILENAME, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        raise GateViolation(
            f"{MODEL_FILENAME} disappeared while the gate was checking it", code="changed"
        ) from None
    _check_regular(before, max_bytes)
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    try:
        fd = os.open(MODEL_FILENAME, flags, dir_fd=dir_fd)
    except OSError as error:
        raise GateViolation(
            f"{MODEL_FILENAME} cannot be opened ({error.strerror}); it must be a regular file",
            code="not_regular",
        ) from None
    model = FileIO(fd, "rb", closefd=True)
    try:
        after = os.fstat(fd)
        _check_regular(after, max_bytes)
        if (after.st_dev, after.st_ino) != (before.st_dev, before.st_ino):
            raise GateViolation(
                f"{MODEL_FILENAME} was replaced while the gate was checking it",
                code="changed",
            )
    except BaseException:
        model.close()
        raise
    return model


def _check_header(header: Header, expected: Mapping[str, TensorSpec], rules: GateRules) -> None:
    """Policy and architecture checks that need only the header."""
    if header.metadata is not None:
        raise GateViolation(
            "__metadata__ is not allowed: it is a side channel; remove it "
            "(call safetensors.torch.save_file without metadata=)",
            code="metadata",
        )
    _check_names(header, expected)
    _check_dtypes_allowed(header, rules)
    _check_specs(header, expected)
    total = sum(spec.nbytes for spec in expected.values())
    if header.data_len != total:
        raise GateViolation(
            f"the data section is {header.data_len} bytes but the declared tensors need "
            f"exactly {total}",
            code="data_size",
        )


def _check_names(header: Header, expected: Mapping[str, TensorSpec]) -> None:
    names = {t.name for t in header.tensors}
    missing = set(expected) - names
    unexpected = names - set(expected)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing: {_listed(missing)}")
        if unexpected:
            parts.append(f"unexpected: {_listed(unexpected)}")
        raise GateViolation(
            "the tensors in model.safetensors must be exactly the model's state_dict ("
            + "; ".join(parts)
            + "); save model.state_dict() unchanged",
            code="names",
        )


def _check_dtypes_allowed(header: Header, rules: GateRules) -> None:
    banned = [t for t in header.tensors if t.dtype not in rules.dtypes]
    if banned:
        shown = ", ".join(
            f"{show(t.name)} ({t.dtype})" for t in sorted(banned, key=_name)[:MAX_NAMED]
        )
        raise GateViolation(
            f"dtype not allowed by the policy for tensors {shown}; allowed (gate.dtypes): "
            f"{', '.join(rules.dtypes)}; cast the model before saving",
            code="dtype_not_allowed",
        )


def _check_specs(header: Header, expected: Mapping[str, TensorSpec]) -> None:
    problems: list[str] = []
    for entry in sorted(header.tensors, key=_name):
        spec = expected[entry.name]
        if entry.dtype != spec.dtype:
            problems.append(f"{show(entry.name)} has dtype {entry.dtype}, expected {spec.dtype}")
        if entry.shape != spec.shape:
            problems.append(
                f"{show(entry.name)} has shape {list(entry.shape)}, expected {list(spec.shape)}"
            )
    if problems:
        more = f"; and {len(problems) - MAX_NAMED} more" if len(problems) > MAX_NAMED else ""
        raise GateViolation(
            "tensors do not match the declared architecture: "
            + "; ".join(problems[:MAX_NAMED])
            + more
            + "; train the model returned by build_model() without changing its parameters",
            code="spec_mismatch",
        )


def _check_values(entry: TensorEntry, stats: TensorStats, rules: GateRules) -> None:
    """Per-tensor value verdicts, applied as soon as the tensor has streamed through."""
    if stats.nonfinite and rules.nonfinite == "reject":
        raise GateViolation(
            f"tensor {show(entry.name)} has {stats.nonfinite} non-finite values "
            f"({stats.nan} NaN, {stats.inf} Inf); the policy rejects them "
            "(gate.nonfinite=reject); fix the training divergence",
            code="nonfinite",
        )
    if stats.bad_bool:
        raise GateViolation(
            f"BOOL tensor {show(entry.name)} has {stats.bad_bool} bytes other than 0 or 1",
            code="bool_value",
        )


def _notes(stats: Mapping[str, TensorStats], rules: GateRules) -> list[str]:
    """Human-readable record of every value the gate changed."""
    notes: list[str] = []
    if rules.nonfinite == "zero":
        note = _count_note(stats, lambda s: s.nonfinite, "replaced {} NaN/Inf values by 0.0")
        if note:
            notes.append(note + " (gate.nonfinite=zero)")
    if rules.denormals == "flush":
        note = _count_note(stats, lambda s: s.subnormal, "flushed {} subnormal values to +0.0")
        if note:
            notes.append(note + " (gate.denormals=flush)")
    return notes


def _count_note(
    stats: Mapping[str, TensorStats], count: Callable[[TensorStats], int], template: str
) -> str | None:
    per_tensor = {name: count(s) for name, s in sorted(stats.items()) if count(s)}
    if not per_tensor:
        return None
    shown = ", ".join(f"{show(n)}: {c}" for n, c in list(per_tensor.items())[:MAX_NAMED])
    more = f" and {len(per_tensor) - MAX_NAMED} more" if len(per_tensor) > MAX_NAMED else ""
    plural = "s" if len(per_tensor) > 1 else ""
    where = f" in {len(per_tensor)} tensor{plural} ({shown}{more})"
    return template.format(sum(per_tensor.values())) + where
