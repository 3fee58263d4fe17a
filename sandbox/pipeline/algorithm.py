"""The provider's algorithm package: unpacked safely, checked statically, hashed.

The contract (DESIGN.md section 4): a directory or a `.tar.gz`/`.tgz`/`.tar`
archive with `model.py` (defining `build_model(input_shape, num_classes)`),
`train.py` and optionally `algorithm.toml`.

Everything in the package is untrusted. Archives are read as a stream, member
by member, and never with `extractall`: only regular files and directories are
accepted, names are checked before anything is written, every file is created
with `O_EXCL | O_NOFOLLOW` below a destination this function created or found
empty, and the decompressed stream itself is capped (so a gzip bomb hidden in a
tar header cannot exhaust memory). Nothing from the package is imported or
executed here: `model.py` is only parsed with `ast`.
"""

from __future__ import annotations

import ast
import contextlib
import gzip
import hashlib
import os
import re
import shutil
import stat
import tarfile
import threading
import tomllib
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final

from sandbox.errors import InvalidInput, LimitExceeded, NotFound

__all__ = [
    "HYPERPARAMETERS",
    "MAX_MODEL_PY_BYTES",
    "MAX_NAME_BYTES",
    "MAX_TOML_BYTES",
    "AlgorithmPackage",
    "package_sha256",
    "remove_tree",
    "unpack_algorithm",
]

MiB: Final = 1024 * 1024
MAX_NAME_BYTES: Final = 255
MAX_TOML_BYTES: Final = 64 * 1024
MAX_MODEL_PY_BYTES: Final = 1 * MiB
# Allowed hyperparameters: name -> (type, low, high, low_inclusive).
HYPERPARAMETERS: Final[dict[str, tuple[type, float, float, bool]]] = {
    "epochs": (int, 1, 1000, True),
    "batch_size": (int, 1, 65536, True),
    "lr": (float, 0.0, 10.0, False),
}
_TOML_KEYS: Final = ("name", "version", "hyperparameters")
_MODEL_CONTRACT: Final = (
    "model.py must define build_model(input_shape, num_classes) -> torch.nn.Module"
)
_TRAIN_CONTRACT: Final = (
    "train.py is run as `python train.py`; it reads $SANDBOX_DATA/train.npz and writes "
    "$SANDBOX_OUTPUT/model.safetensors (the state_dict of build_model's module)"
)
_FORMATS: Final = "a directory, .tar.gz, .tgz or .tar archive"
_CHUNK: Final = 1 * MiB
# Decompressed bytes allowed beyond the file contents: tar headers, padding,
# long-name and pax records (generous per entry) and the end-of-archive blocks.
_PER_ENTRY_OVERHEAD: Final = 4096
_STREAM_SLACK: Final = 1 * MiB
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")
# CPython 3.11's AST constructor keeps its recursion depth in state that concurrent
# parses share (the server and the scorecard check packages in threads): CI saw
# "SystemError: AST constructor recursion depth mismatch" from two jobs at once
# (CPython gh-106905). One parse at a time; a parse takes milliseconds.
_PARSE_LOCK = threading.Lock()


@dataclass(frozen=True)
class AlgorithmPackage:
    """An unpacked, read-only algorithm package.

    `sha256` is `package_sha256(root)`: the same files always give the same hash,
    whether they came from a directory or an archive.
    """

    root: Path
    name: str
    version: str
    hyperparameters: dict[str, int | float] = field(hash=False)
    sha256: str


# --------------------------------------------------------------------------- entry point


def unpack_algorithm(
    src: Path, dest: Path, *, max_bytes: int = 50 * MiB, max_files: int = 1000
) -> AlgorithmPackage:
    """Unpack `src` (a directory or tar archive) into `dest` and check the contract.

    `dest` must not exist yet (it is created, mode 0o700 while writing) or be an
    empty directory. On success every file under `dest` is mode 0o444 and every
    directory (`dest` included) 0o555; use `remove_tree` to delete it. On failure
    `dest` is removed again (or emptied, if it existed) and `InvalidInput` or
    `LimitExceeded` says which member or key is at fault.

    `max_bytes` caps the total size of the files, `max_files` the number of
    entries (files and directories).
    """
    src, dest = Path(src), Path(dest)
    try:
        src_st = os.stat(src)
    except FileNotFoundError:
        raise NotFound(f"algorithm {src} does not exist; pass {_FORMATS}") from None
    except OSError as e:
        raise InvalidInput(f"algorithm {src} cannot be read: {e.strerror}") from None
    if stat.S_ISDIR(src_st.st_mode) and dest.resolve().is_relative_to(src.resolve()):
        raise ValueError(f"unpack destination {dest} lies inside the source {src}")
    created = _prepare_dest(dest)
    try:
        writer = _Writer(dest, max_bytes=max_bytes, max_files=max_files)
        if stat.S_ISDIR(src_st.st_mode):
            _copy_directory(src, writer)
        elif stat.S_ISREG(src_st.st_mode):
            _unpack_archive(src, writer, max_bytes=max_bytes, max_files=max_files)
        else:
            raise InvalidInput(
                f"algorithm {src} is not a regular file or directory; pass {_FORMATS}"
            )
        stripped = _strip_single_top_dir(dest)
        _require_files(dest)
        _check_model_py(dest / "model.py")
        meta = _read_toml(dest / "algorithm.toml")
        name = meta.get("name") or _default_name(stripped, src)
        version = meta.get("version") or "0"
        hyper = meta.get("hyperparameters") or {}
        digest = package_sha256(dest)
        _make_read_only(dest)
    except BaseException:
        with contextlib.suppress(OSError):  # keep the original error
            _discard(dest, created)
        raise
    return AlgorithmPackage(
        root=dest, name=str(name), version=str(version), hyperparameters=dict(hyper), sha256=digest
    )


def _prepare_dest(dest: Path) -> bool:
    """Create `dest` (returns True) or accept it as an existing empty directory (False)."""
    try:
        os.mkdir(dest, 0o700)
    except FileExistsError:
        pass
    else:
        return True
    if not stat.S_ISDIR(os.lstat(dest).st_mode):
        raise NotADirectoryError(f"unpack destination {dest} exists and is not a directory")
    if os.listdir(dest):
        raise FileExistsError(f"unpack destination {dest} is not empty")
    os.chmod(dest, 0o700)
    return False


def _discard(dest: Path, created: bool) -> None:
    if not os.path.lexists(dest):
        return
    if created:
        remove_tree(dest)
        return
    with os.scandir(dest) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                remove_tree(Path(entry.path))
            else:
                os.unlink(entry.path)


def remove_tree(path: Path) -> None:
    """Delete a tree made read-only by `unpack_algorithm` (restores write bits first).

    Links are never followed: a link is removed, not its target.
    """
    path = Path(path)
    if not os.path.lexists(path):
        return
    if not stat.S_ISDIR(os.lstat(path).st_mode):
        os.unlink(path)
        return
    os.chmod(path, 0o700)
    for directory, dirnames, _files in os.walk(path):
        for name in dirnames:
            sub = os.path.join(directory, name)
            if stat.S_ISDIR(os.lstat(sub).st_mode):
                os.chmod(sub, 0o700)
    shutil.rmtree(path)


# --------------------------------------------------------------------------- names


def _show(name: str) -> str:
    """A member name, quoted and escaped so it is safe in a message or a log line."""
    text = ascii(name)
    return text if len(text) <= 300 else text[:300] + "...'"


def _split_name(name: str, *, what: str) -> list[str]:
    """Validate a member name and return its path components ([] for the root itself)."""
    shown = _show(name)
    if "\x00" in name:
        raise InvalidInput(f"{what} {shown} has a NUL byte in its name; rename it")
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in name):
        raise InvalidInput(f"{what} {shown} has a control character in its name; rename it")
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInput(
            f"{what} {shown} has a name that is not valid UTF-8; rename it"
        ) from None
    if len(encoded) > MAX_NAME_BYTES:
        raise InvalidInput(
            f"{what} {shown} has a name of {len(encoded)} bytes; the limit is {MAX_NAME_BYTES}"
        )
    if "\\" in name:
        raise InvalidInput(
            f"{what} {shown} has a backslash in its name; use '/' as the only separator"
        )
    if name.startswith("/"):
        raise InvalidInput(
            f"{what} {shown} has an absolute path; archive members must be relative "
            "(e.g. tar czf pkg.tgz -C DIR .)"
        )
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in name.split("/"):
        raise InvalidInput(f"{what} {shown} has a '..' component; it would escape the package")
    return parts


# --------------------------------------------------------------------------- writing


class _Writer:
    """Creates the unpacked tree below `root`, enforcing the caps and never following links."""

    def __init__(self, root: Path, *, max_bytes: int, max_files: int) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self.max_files = max_files
        self.entries = 0
        self.total = 0
        self.kinds: dict[tuple[str, ...], str] = {(): "dir"}

    def count(self, shown: str) -> None:
        self.entries += 1
        if self.entries > self.max_files:
            raise LimitExceeded(
                f"the package has more than {self.max_files} entries (at member {shown}); "
                "remove files the algorithm does not need"
            )

    def reserve(self, size: int, shown: str) -> None:
        if size < 0:
            raise InvalidInput(f"member {shown} declares a negative size {size}")
        self.total += size
        if self.total > self.max_bytes:
            raise LimitExceeded(
                f"the package's files exceed {self.max_bytes} bytes (at member {shown}); "
                "remove data or checkpoints the algorithm does not need"
            )

    def _parent(self, parts: list[str], shown: str) -> None:
        for i in range(1, len(parts)):
            key = tuple(parts[:i])
            kind = self.kinds.get(key)
            if kind == "file":
                raise InvalidInput(
                    f"member {shown} is inside {_show('/'.join(key))}, which is a file"
                )
            if kind is None:
                os.mkdir(self.root.joinpath(*key), 0o700)
                self.kinds[key] = "dir"

    def mkdir(self, parts: list[str], shown: str) -> None:
        key = tuple(parts)
        kind = self.kinds.get(key)
        if kind == "dir":
            return
        if kind == "file":
            raise InvalidInput(f"member {shown} is both a file and a directory")
        self._parent(parts, shown)
        os.mkdir(self.root.joinpath(*parts), 0o700)
        self.kinds[key] = "dir"

    def write(self, parts: list[str], shown: str, size: int, source: IO[bytes]) -> None:
        key = tuple(parts)
        if not parts:
            raise InvalidInput(f"member {shown} is a file without a name")
        if key in self.kinds:
            raise InvalidInput(f"member {shown} appears more than once; each path must be unique")
        self.reserve(size, shown)
        self._parent(parts, shown)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
        fd = os.open(self.root.joinpath(*parts), flags, 0o600)
        self.kinds[key] = "file"
        written = 0
        with os.fdopen(fd, "wb") as out:
            while True:
                chunk = source.read(min(_CHUNK, size - written + 1))
                if not chunk:
                    break
                written += len(chunk)
                if written > size:
                    raise InvalidInput(
                        f"member {shown} grew while it was being copied; copy a stable tree"
                    )
                out.write(chunk)
        if written != size:
            raise InvalidInput(
                f"member {shown} holds {written} bytes but declares {size} (truncated archive?)"
            )


# --------------------------------------------------------------------------- directory source


def _copy_directory(src: Path, writer: _Writer) -> None:
    stack: list[tuple[Path, list[str]]] = [(src, [])]
    while stack:
        directory, prefix = stack.pop()
        entries: list[os.DirEntry[str]] = []
        with os.scandir(directory) as it:
            for entry in it:  # count while listing: a huge directory fails early
                entries.append(entry)
                if writer.entries + len(entries) > writer.max_files:
                    raise LimitExceeded(
                        f"the package has more than {writer.max_files} entries (in directory "
                        f"{_show('/'.join(prefix) or '.')}); remove files the algorithm does "
                        "not need"
                    )
        entries.sort(key=lambda e: e.name)
        for entry in entries:
            rel = "/".join([*prefix, entry.name])
            shown = _show(rel)
            parts = _split_name(rel, what="file")
            writer.count(shown)
            st = entry.stat(follow_symlinks=False)
            if stat.S_ISLNK(st.st_mode):
                raise InvalidInput(
                    f"file {shown} is a symbolic link; links are not allowed in a package "
                    "(copy the target in instead)"
                )
            if stat.S_ISDIR(st.st_mode):
                writer.mkdir(parts, shown)
                stack.append((Path(entry.path), parts))
            elif stat.S_ISREG(st.st_mode):
                _copy_file(Path(entry.path), parts, shown, st.st_size, writer)
            else:
                raise InvalidInput(
                    f"file {shown} is a {_kind_of_mode(st.st_mode)}; only regular files and "
                    "directories are allowed in a package"
                )


def _copy_file(path: Path, parts: list[str], shown: str, size: int, writer: _Writer) -> None:
    flags = os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0) | os.O_NONBLOCK
    try:
        fd = os.open(path, flags)
    except OSError as e:
        raise InvalidInput(f"file {shown} cannot be read: {e.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_size != size:
            raise InvalidInput(
                f"file {shown} changed while it was being copied; copy a stable tree"
            )
        writer.write(parts, shown, size, f)


def _kind_of_mode(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "named pipe (fifo)"
    if stat.S_ISCHR(mode):
        return "character device"
    if stat.S_ISBLK(mode):
        return "block device"
    if stat.S_ISSOCK(mode):
        return "socket"
    return "special file"


# --------------------------------------------------------------------------- archive source


class _BoundedReader:
    """A read-only stream that fails once more than `limit` bytes have been read.

    Read errors of the underlying (possibly gzip) stream become `InvalidInput`.
    """

    def __init__(self, raw: IO[bytes], limit: int, src: Path) -> None:
        self._raw = raw
        self._limit = limit
        self._read = 0
        self._src = src

    def read(self, size: int = -1) -> bytes:
        want = self._limit - self._read + 1 if size is None or size < 0 else size
        want = min(want, self._limit - self._read + 1)
        try:
            data = self._raw.read(want)
        except (OSError, EOFError, zlib.error) as e:
            raise InvalidInput(f"archive {self._src} is corrupt: {e}") from None
        self._read += len(data)
        if self._read > self._limit:
            raise LimitExceeded(
                f"archive {self._src} decompresses to more than {self._limit} bytes "
                "(headers and contents); shrink the package"
            )
        return data


def _sniff(src: Path, head: bytes) -> str:
    if head[:2] == b"\x1f\x8b":
        return "gz"
    if head[:4] == b"PK\x03\x04":
        raise InvalidInput(f"algorithm {src} is a zip file; pass {_FORMATS}")
    if head[:3] == b"BZh":
        raise InvalidInput(f"algorithm {src} is bzip2-compressed; pass {_FORMATS}")
    if head[:6] == b"\xfd7zXZ\x00":
        raise InvalidInput(f"algorithm {src} is xz-compressed; pass {_FORMATS}")
    return "tar"


def _unpack_archive(src: Path, writer: _Writer, *, max_bytes: int, max_files: int) -> None:
    budget = max_bytes + _PER_ENTRY_OVERHEAD * (max_files + 2) + _STREAM_SLACK
    fd = os.open(src, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as raw:
        st = os.fstat(raw.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise InvalidInput(f"algorithm {src} is not a regular file; pass {_FORMATS}")
        if st.st_size > budget:
            raise LimitExceeded(
                f"archive {src} is {st.st_size} bytes, over the limit of {budget} bytes; "
                "shrink the package"
            )
        kind = _sniff(src, raw.read(8))
        raw.seek(0)
        stream: IO[bytes] = (
            gzip.GzipFile(fileobj=raw, mode="rb") if kind == "gz" else raw  # type: ignore[assignment]
        )
        bounded = _BoundedReader(stream, budget, src)
        try:
            tar = tarfile.open(fileobj=bounded, mode="r|")  # type: ignore[call-overload]  # noqa: SIM115
        except tarfile.TarError as e:
            raise InvalidInput(
                f"algorithm {src} is not a valid tar archive ({e}); pass {_FORMATS}"
            ) from None
        try:
            for member in _members(tar, src):
                _unpack_member(tar, member, writer)
        except tarfile.TarError as e:  # raised while reading a member's data
            raise InvalidInput(f"archive {src} is corrupt ({e}); pass {_FORMATS}") from None
        finally:
            tar.close()


def _members(tar: tarfile.TarFile, src: Path) -> Iterator[tarfile.TarInfo]:
    while True:
        try:
            member = tar.next()
        except tarfile.TarError as e:
            raise InvalidInput(f"archive {src} is corrupt ({e}); pass {_FORMATS}") from None
        if member is None:
            return
        yield member


def _unpack_member(tar: tarfile.TarFile, member: tarfile.TarInfo, writer: _Writer) -> None:
    shown = _show(member.name)
    writer.count(shown)
    if member.issym():
        raise InvalidInput(
            f"member {shown} is a symbolic link (to {_show(member.linkname)}); links are not "
            "allowed in a package"
        )
    if member.islnk():
        raise InvalidInput(
            f"member {shown} is a hard link (to {_show(member.linkname)}); links are not "
            "allowed in a package"
        )
    if member.ischr() or member.isblk():
        raise InvalidInput(f"member {shown} is a device; only files and directories are allowed")
    if member.isfifo():
        raise InvalidInput(
            f"member {shown} is a named pipe (fifo); only files and directories are allowed"
        )
    if member.issparse():
        raise InvalidInput(f"member {shown} is a sparse file; archive it without --sparse")
    if not (member.isreg() or member.isdir()):
        raise InvalidInput(
            f"member {shown} has tar type {member.type!r}; only regular files and directories "
            "are allowed"
        )
    parts = _split_name(member.name, what="member")
    if member.isdir():
        if parts:
            writer.mkdir(parts, shown)
        return
    source = tar.extractfile(member)
    if source is None:  # pragma: no cover - isreg() members always have data
        raise InvalidInput(f"member {shown} has no data")
    with source:
        writer.write(parts, shown, member.size, source)


# --------------------------------------------------------------------------- layout


def _strip_single_top_dir(dest: Path) -> str | None:
    """If everything sits under one top-level directory, move its content up.

    Returns the stripped directory's name (a default package name), else None.
    """
    entries = os.listdir(dest)
    if len(entries) != 1:
        return None
    top = entries[0]
    if not stat.S_ISDIR(os.lstat(dest / top).st_mode):
        return None
    inner = os.listdir(dest / top)
    tmp_name = ".unpack-" + os.urandom(8).hex()
    while tmp_name in inner:  # pragma: no cover - 64 random bits
        tmp_name = ".unpack-" + os.urandom(8).hex()
    os.rename(dest / top, dest / tmp_name)
    for child in inner:
        os.rename(dest / tmp_name / child, dest / child)
    os.rmdir(dest / tmp_name)
    return top


def _require_files(root: Path) -> None:
    missing: list[str] = []
    for name, contract in (("model.py", _MODEL_CONTRACT), ("train.py", _TRAIN_CONTRACT)):
        path = root / name
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            missing.append(f"no {name} at its top level ({contract})")
            continue
        if not stat.S_ISREG(st.st_mode):
            missing.append(f"{name} is not a regular file ({contract})")
    if missing:
        present = sorted(os.listdir(root))
        shown = ", ".join(_show(p) for p in present[:20]) or "nothing"
        more = f" and {len(present) - 20} more" if len(present) > 20 else ""
        raise InvalidInput(
            f"the algorithm package has {'; and '.join(missing)}; its top level holds "
            f"{shown}{more}"
        )


def _check_model_py(path: Path) -> None:
    size = os.lstat(path).st_size
    if size > MAX_MODEL_PY_BYTES:
        raise LimitExceeded(
            f"model.py is {size} bytes, over the limit of {MAX_MODEL_PY_BYTES}; keep weights "
            f"and data out of the source ({_MODEL_CONTRACT})"
        )
    source = path.read_bytes()
    try:
        with _PARSE_LOCK:
            tree = ast.parse(source, filename="model.py")
    except SyntaxError as e:
        where = f"line {e.lineno}" + (f", column {e.offset}" if e.offset else "")
        raise InvalidInput(
            f"model.py has a syntax error at {where}: {e.msg}; fix it ({_MODEL_CONTRACT})"
        ) from None
    except (ValueError, RecursionError, MemoryError) as e:
        raise InvalidInput(f"model.py cannot be parsed ({type(e).__name__}: {e})") from None
    funcs = [
        node
        for node in tree.body
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == "build_model"
    ]
    if not funcs:
        raise InvalidInput(f"model.py has no top-level function build_model; {_MODEL_CONTRACT}")
    func = funcs[-1]
    if isinstance(func, ast.AsyncFunctionDef):
        raise InvalidInput(
            f"model.py line {func.lineno}: build_model is async; it must be a plain function; "
            f"{_MODEL_CONTRACT}"
        )
    args = func.args
    positional = len(args.posonlyargs) + len(args.args)
    required = positional - len(args.defaults)
    required_kw = [
        a.arg for a, d in zip(args.kwonlyargs, args.kw_defaults, strict=True) if d is None
    ]
    if (positional < 2 and args.vararg is None) or required > 2 or required_kw:
        raise InvalidInput(
            f"model.py line {func.lineno}: build_model cannot be called as "
            f"build_model(input_shape, num_classes); {_MODEL_CONTRACT}"
        )


# --------------------------------------------------------------------------- algorithm.toml


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return {}
    if not stat.S_ISREG(st.st_mode):
        raise InvalidInput("algorithm.toml is not a regular file")
    if st.st_size > MAX_TOML_BYTES:
        raise LimitExceeded(
            f"algorithm.toml is {st.st_size} bytes, over the limit of {MAX_TOML_BYTES}"
        )
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInput("algorithm.toml is not valid UTF-8") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise InvalidInput(f"algorithm.toml is not valid TOML: {e}") from None
    except RecursionError:
        raise InvalidInput("algorithm.toml is nested too deeply") from None
    allowed = "name (string), version (string) and a [hyperparameters] table"
    for key in data:
        if key not in _TOML_KEYS:
            raise InvalidInput(f"algorithm.toml has unknown key {_show(key)}; allowed: {allowed}")
    out: dict[str, Any] = {}
    for key in ("name", "version"):
        if key in data:
            out[key] = _check_label(key, data[key])
    if "hyperparameters" in data:
        out["hyperparameters"] = _check_hyperparameters(data["hyperparameters"])
    return out


def _check_label(key: str, value: object) -> str:
    if not isinstance(value, str):
        raise InvalidInput(
            f'algorithm.toml: {key} must be a string (e.g. {key} = "1.0"), '
            f"got {type(value).__name__}"
        )
    if not 1 <= len(value) <= 100 or not value.isprintable():
        raise InvalidInput(
            f"algorithm.toml: {key} must be 1 to 100 printable characters, got {_show(value)}"
        )
    return value


def _check_hyperparameters(table: object) -> dict[str, int | float]:
    if not isinstance(table, dict):
        raise InvalidInput(
            "algorithm.toml: hyperparameters must be a table ([hyperparameters] followed by "
            "epochs = ..., batch_size = ..., lr = ...)"
        )
    out: dict[str, int | float] = {}
    for key, value in table.items():
        spec = HYPERPARAMETERS.get(key)
        if spec is None:
            raise InvalidInput(
                f"algorithm.toml: unknown hyperparameter {_show(key)}; allowed: "
                + ", ".join(f"{k} ({_range(k)})" for k in HYPERPARAMETERS)
            )
        kind, low, high, low_inclusive = spec
        if isinstance(value, bool):
            ok = False
        elif kind is int:
            ok = isinstance(value, int)
        else:
            ok = isinstance(value, int | float)
        if not ok:
            raise InvalidInput(
                f"algorithm.toml: hyperparameters.{key} must be {_range(key)}, "
                f"got {type(value).__name__} {value!r}"
            )
        number = value if kind is int else float(value)
        above = number >= low if low_inclusive else number > low
        if not (above and number <= high):  # NaN fails both comparisons
            raise InvalidInput(
                f"algorithm.toml: hyperparameters.{key} = {value!r} is out of range; "
                f"it must be {_range(key)}"
            )
        out[key] = number
    return out


def _range(key: str) -> str:
    kind, low, high, low_inclusive = HYPERPARAMETERS[key]
    if kind is int:
        return f"an integer from {int(low)} to {int(high)}"
    return f"a number in {'[' if low_inclusive else '('}{low:g}, {high:g}]"


def _default_name(stripped: str | None, src: Path) -> str:
    base = stripped or src.name
    for suffix in (".tar.gz", ".tgz", ".tar"):
        if base.endswith(suffix):
            base = base[: -len(suffix)]
            break
    cleaned = _SAFE_NAME.sub("_", base).strip("._-")[:64]
    return cleaned or "algorithm"


# --------------------------------------------------------------------------- hashing


def package_sha256(root: Path) -> str:
    """Content hash of a tree: sha256 over its files sorted by relative path.

    Each file contributes its UTF-8 relative path (with '/') and its bytes, each
    prefixed by its length, so the encoding is unambiguous. Directories, modes and
    times do not count.
    """
    files: list[tuple[bytes, Path]] = []
    stack: list[tuple[Path, str]] = [(Path(root), "")]
    while stack:
        directory, prefix = stack.pop()
        with os.scandir(directory) as it:
            for entry in it:
                rel = f"{prefix}{entry.name}"
                if entry.is_dir(follow_symlinks=False):
                    stack.append((Path(entry.path), rel + "/"))
                elif entry.is_file(follow_symlinks=False):
                    files.append((rel.encode("utf-8", "surrogateescape"), Path(entry.path)))
                else:
                    raise InvalidInput(f"{_show(rel)} is neither a file nor a directory")
    h = hashlib.sha256(b"sandbox-algorithm-package-v1\x00")
    for rel_bytes, path in sorted(files):
        h.update(len(rel_bytes).to_bytes(8, "big"))
        h.update(rel_bytes)
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
        with os.fdopen(fd, "rb") as f:
            h.update(os.fstat(f.fileno()).st_size.to_bytes(8, "big"))
            while chunk := f.read(_CHUNK):
                h.update(chunk)
    return h.hexdigest()


def _make_read_only(root: Path) -> None:
    """Files 0o444, directories 0o555, bottom-up. The tree holds no links (we made it)."""
    for directory, dirnames, filenames in os.walk(root, topdown=False):
        for name, mode in [(n, 0o444) for n in filenames] + [(n, 0o555) for n in dirnames]:
            path = os.path.join(directory, name)
            if stat.S_ISLNK(os.lstat(path).st_mode):  # pragma: no cover - never created
                raise InvalidInput(f"{_show(name)} is a link")
            os.chmod(path, mode)
    os.chmod(root, 0o555)  # noqa: S103
