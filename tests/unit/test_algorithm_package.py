"""The algorithm package unpacker: safe extraction, contract checks, stable hashing."""

from __future__ import annotations

import bz2
import io
import lzma
import os
import socket
import stat
import tarfile
import tempfile
import zipfile
from collections.abc import Iterable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from sandbox.errors import InvalidInput, LimitExceeded, NotFound
from sandbox.pipeline.algorithm import (
    AlgorithmPackage,
    package_sha256,
    remove_tree,
    unpack_algorithm,
)

REPO = Path(__file__).resolve().parents[2]
MODEL_OK = b"import torch\n\ndef build_model(input_shape, num_classes):\n    return None\n"
TRAIN_OK = b"print('training')\n"
TOML_OK = (
    b'name = "demo"\nversion = "2.1"\n[hyperparameters]\nepochs = 5\nbatch_size = 32\nlr = 0.01\n'
)

# A member: (name, kind, payload). kind: file, dir, symlink, hardlink, fifo, chr, blk, or a
# raw tar type byte; payload: file bytes, or the link target.
Member = tuple[str, str, bytes | str]


def _package(**extra: bytes) -> dict[str, bytes]:
    files = {"model.py": MODEL_OK, "train.py": TRAIN_OK}
    files.update({k.replace("__", "/"): v for k, v in extra.items()})
    return files


def _write_dir(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def _tar(path: Path, members: Iterable[Member], *, gz: bool = True) -> Path:
    """Write a tar with exactly the given names (pax `path` keeps NULs, long names...)."""
    with tarfile.open(path, "w:gz" if gz else "w", format=tarfile.PAX_FORMAT) as tf:
        for name, kind, payload in members:
            info = tarfile.TarInfo(name)
            info.pax_headers = {"path": name}
            info.mode = 0o644
            data = None
            if kind == "file":
                assert isinstance(payload, bytes)
                info.size = len(payload)
                data = io.BytesIO(payload)
            elif kind == "dir":
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
            elif kind in ("symlink", "hardlink"):
                info.type = tarfile.SYMTYPE if kind == "symlink" else tarfile.LNKTYPE
                info.linkname = str(payload)
                info.pax_headers["linkpath"] = str(payload)
            elif kind in ("fifo", "chr", "blk"):
                info.type = {"fifo": tarfile.FIFOTYPE, "chr": tarfile.CHRTYPE}.get(
                    kind, tarfile.BLKTYPE
                )
                info.devmajor, info.devminor = 1, 3
            else:
                info.type = kind.encode()
            tf.addfile(info, data)
    return path


def _files_tar(path: Path, files: dict[str, bytes], prefix: str = "", **kw: bool) -> Path:
    return _tar(path, [(prefix + rel, "file", data) for rel, data in files.items()], **kw)


def _tree(root: Path) -> dict[str, bytes]:
    out = {}
    for directory, _dirs, files in os.walk(root):
        for name in files:
            path = Path(directory) / name
            out[path.relative_to(root).as_posix()] = path.read_bytes()
    return out


def _modes(root: Path) -> set[tuple[str, int]]:
    out = {("dir", stat.S_IMODE(root.lstat().st_mode))}
    for directory, dirs, files in os.walk(root):
        for name in dirs:
            out.add(("dir", stat.S_IMODE((Path(directory) / name).lstat().st_mode)))
        for name in files:
            mode = (Path(directory) / name).lstat().st_mode
            assert stat.S_ISREG(mode)
            out.add(("file", stat.S_IMODE(mode)))
    return out


# --------------------------------------------------------------------------- happy paths


def test_unpacks_a_directory(tmp_path: Path) -> None:
    files = _package(**{"algorithm.toml": TOML_OK, "lib__util.py": b"X = 1\n"})
    src = _write_dir(tmp_path / "src", files)
    pkg = unpack_algorithm(src, tmp_path / "dest")
    assert isinstance(pkg, AlgorithmPackage)
    assert pkg.root == tmp_path / "dest"
    assert pkg.name == "demo"
    assert pkg.version == "2.1"
    assert pkg.hyperparameters == {"epochs": 5, "batch_size": 32, "lr": 0.01}
    assert _tree(pkg.root) == files
    assert _modes(pkg.root) == {("dir", 0o555), ("file", 0o444)}
    assert pkg.sha256 == package_sha256(pkg.root)
    assert len(pkg.sha256) == 64


def test_the_example_package_is_valid(tmp_path: Path) -> None:
    pkg = unpack_algorithm(REPO / "examples" / "digits_mlp", tmp_path / "dest")
    assert pkg.name == "digits_mlp"
    assert pkg.hyperparameters == {"epochs": 30, "batch_size": 64, "lr": 0.003}
    assert {"model.py", "train.py", "algorithm.toml"} <= set(os.listdir(pkg.root))


def test_model_py_is_parsed_one_thread_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # CPython 3.11's AST constructor shares its recursion-depth state between threads
    # (gh-106905): two jobs checking packages at once failed CI with a SystemError
    import ast

    from sandbox.pipeline import algorithm

    held: list[bool] = []
    real_parse = ast.parse

    def parse(*args: object, **kwargs: object) -> ast.AST:
        held.append(algorithm._PARSE_LOCK.locked())
        return real_parse(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(algorithm.ast, "parse", parse)
    unpack_algorithm(REPO / "examples" / "digits_mlp", tmp_path / "dest")
    assert held == [True]


def test_same_content_same_hash_from_every_source(tmp_path: Path) -> None:
    files = _package(**{"algorithm.toml": TOML_OK, "sub__deep__a.txt": b"a"})
    src = _write_dir(tmp_path / "mypkg", files)
    from_dir = unpack_algorithm(src, tmp_path / "d1")
    tgz = _files_tar(tmp_path / "p.tgz", files, prefix="mypkg/")
    from_tgz = unpack_algorithm(tgz, tmp_path / "d2")
    tar = _files_tar(tmp_path / "p.tar", files, prefix="./", gz=False)
    from_tar = unpack_algorithm(tar, tmp_path / "d3")
    assert from_dir.sha256 == from_tgz.sha256 == from_tar.sha256
    assert _tree(from_tgz.root) == _tree(from_tar.root) == files
    changed = _write_dir(tmp_path / "other", {**files, "sub/deep/a.txt": b"b"})
    assert unpack_algorithm(changed, tmp_path / "d4").sha256 != from_dir.sha256
    renamed = _write_dir(tmp_path / "renamed", {**_package(), "algorithm.toml": TOML_OK, "b": b"a"})
    assert unpack_algorithm(renamed, tmp_path / "d5").sha256 != from_dir.sha256


def test_real_tar_of_a_directory_strips_the_top_directory(tmp_path: Path) -> None:
    src = _write_dir(tmp_path / "digits", _package(**{"pkg__x.py": b"", "digits__y.py": b""}))
    archive = tmp_path / "digits.tgz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(src, arcname="digits")
    pkg = unpack_algorithm(archive, tmp_path / "dest")
    assert sorted(os.listdir(pkg.root)) == ["digits", "model.py", "pkg", "train.py"]
    assert pkg.name == "digits"
    assert pkg.version == "0"
    assert pkg.hyperparameters == {}


def test_no_strip_when_files_sit_at_the_top(tmp_path: Path) -> None:
    archive = _tar(
        tmp_path / "p.tgz",
        [("model.py", "file", MODEL_OK), ("train.py", "file", TRAIN_OK), ("lib", "dir", "")],
    )
    pkg = unpack_algorithm(archive, tmp_path / "dest")
    assert sorted(os.listdir(pkg.root)) == ["lib", "model.py", "train.py"]
    assert pkg.name == "p"


def test_implicit_parent_directories_and_dot_entries(tmp_path: Path) -> None:
    archive = _tar(
        tmp_path / "p.tar",
        [
            (".", "dir", ""),
            ("./model.py", "file", MODEL_OK),
            ("./train.py", "file", TRAIN_OK),
            ("./a//b/c.py", "file", b"c"),
            ("./a", "dir", ""),
        ],
        gz=False,
    )
    pkg = unpack_algorithm(archive, tmp_path / "dest")
    assert (pkg.root / "a" / "b" / "c.py").read_bytes() == b"c"


def test_existing_empty_destination_is_used(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    pkg = unpack_algorithm(_write_dir(tmp_path / "src", _package()), dest)
    assert pkg.root == dest


def test_non_empty_destination_is_refused(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "x").write_text("x")
    with pytest.raises(FileExistsError, match="not empty"):
        unpack_algorithm(_write_dir(tmp_path / "src", _package()), dest)
    assert (dest / "x").read_text() == "x"


def test_destination_that_is_a_file_or_link_is_refused(tmp_path: Path) -> None:
    src = _write_dir(tmp_path / "src", _package())
    (tmp_path / "f").write_text("x")
    with pytest.raises(NotADirectoryError):
        unpack_algorithm(src, tmp_path / "f")
    (tmp_path / "target").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "target")
    with pytest.raises(NotADirectoryError):
        unpack_algorithm(src, tmp_path / "link")
    assert os.listdir(tmp_path / "target") == []


def test_missing_source(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="does not exist"):
        unpack_algorithm(tmp_path / "nope", tmp_path / "dest")


def test_remove_tree(tmp_path: Path) -> None:
    pkg = unpack_algorithm(_write_dir(tmp_path / "src", _package(a__b__c=b"x")), tmp_path / "d")
    remove_tree(pkg.root)
    assert not pkg.root.exists()
    remove_tree(pkg.root)  # already gone: nothing to do


# --------------------------------------------------------------------------- failure cleanup


def test_failure_removes_a_created_destination(tmp_path: Path) -> None:
    archive = _tar(
        tmp_path / "p.tgz",
        [("model.py", "file", MODEL_OK), ("lib/x.py", "file", b""), ("evil", "symlink", "/")],
    )
    with pytest.raises(InvalidInput, match="symbolic link"):
        unpack_algorithm(archive, tmp_path / "dest")
    assert not (tmp_path / "dest").exists()


def test_failure_empties_an_existing_destination(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    src = _write_dir(tmp_path / "src", {"train.py": TRAIN_OK, "lib/x.py": b""})
    with pytest.raises(InvalidInput, match=r"no model\.py"):
        unpack_algorithm(src, dest)
    assert dest.is_dir()
    assert os.listdir(dest) == []


# --------------------------------------------------------------------------- required files


def test_missing_model_py(tmp_path: Path) -> None:
    src = _write_dir(tmp_path / "src", {"train.py": TRAIN_OK, "other.py": b""})
    with pytest.raises(InvalidInput) as info:
        unpack_algorithm(src, tmp_path / "dest")
    msg = info.value.message
    assert "no model.py at its top level" in msg
    assert "build_model(input_shape, num_classes) -> torch.nn.Module" in msg
    assert "'other.py'" in msg
    assert "train.py" not in msg.split("holds")[0].replace("model.py", "")


def test_missing_train_py(tmp_path: Path) -> None:
    src = _write_dir(tmp_path / "src", {"model.py": MODEL_OK})
    with pytest.raises(InvalidInput, match=r"no train\.py at its top level.*python train\.py"):
        unpack_algorithm(src, tmp_path / "dest")


def test_missing_both(tmp_path: Path) -> None:
    src = _write_dir(tmp_path / "src", {"README": b""})
    with pytest.raises(InvalidInput, match=r"no model\.py.*; and no train\.py"):
        unpack_algorithm(src, tmp_path / "dest")


def test_nested_too_deep_is_explained(tmp_path: Path) -> None:
    archive = _files_tar(tmp_path / "p.tgz", _package(), prefix="a/b/")
    with pytest.raises(InvalidInput, match=r"no model\.py.*holds 'b'"):
        unpack_algorithm(archive, tmp_path / "dest")


def test_model_py_that_is_a_directory(tmp_path: Path) -> None:
    src = _write_dir(tmp_path / "src", {"train.py": TRAIN_OK, "model.py/x": b""})
    with pytest.raises(InvalidInput, match=r"model\.py is not a regular file"):
        unpack_algorithm(src, tmp_path / "dest")


# --------------------------------------------------------------------------- model.py


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        (b"import torch\n\ndef build_model(:\n", r"syntax error at line 3"),
        (b"x = 1\n  y = 2\n", r"syntax error at line 2"),
        (b"def build(input_shape, num_classes):\n    pass\n", "no top-level function build_model"),
        (b"build_model = lambda a, b: None\n", "no top-level function build_model"),
        (b"class M:\n    def build_model(self, a, b):\n        pass\n", "no top-level function"),
        (b"if True:\n    def build_model(a, b):\n        pass\n", "no top-level function"),
        (b"async def build_model(a, b):\n    pass\n", "line 1: build_model is async"),
        (b"def build_model(a):\n    pass\n", "cannot be called as"),
        (b"def build_model(a, b, c):\n    pass\n", "cannot be called as"),
        (b"def build_model(a, b, *, c):\n    pass\n", "cannot be called as"),
        (b"x = 1\ndef build_model():\n    pass\n", "line 2: build_model cannot be called"),
        (b"a = 1\x00\n", "cannot be parsed|syntax error"),
    ],
)
def test_bad_model_py(tmp_path: Path, source: bytes, expected: str) -> None:
    src = _write_dir(tmp_path / "src", {"model.py": source, "train.py": TRAIN_OK})
    with pytest.raises(InvalidInput, match=expected):
        unpack_algorithm(src, tmp_path / "dest")


@pytest.mark.parametrize(
    "source",
    [
        b"def build_model(input_shape, num_classes, hidden=128, *, depth=2):\n    pass\n",
        b"def build_model(*args):\n    pass\n",
        b"def build_model(input_shape, /, num_classes, **kw):\n    pass\n",
        b"# -*- coding: latin-1 -*-\n# caf\xe9\ndef build_model(a, b):\n    pass\n",
    ],
)
def test_good_model_py_variants(tmp_path: Path, source: bytes) -> None:
    src = _write_dir(tmp_path / "src", {"model.py": source, "train.py": TRAIN_OK})
    unpack_algorithm(src, tmp_path / "dest")


def test_model_py_is_never_executed(tmp_path: Path) -> None:
    marker = tmp_path / "executed"
    source = f"open({str(marker)!r}, 'w').close()\ndef build_model(a, b):\n    pass\n"
    src = _write_dir(tmp_path / "src", {"model.py": source.encode(), "train.py": TRAIN_OK})
    unpack_algorithm(src, tmp_path / "dest")
    assert not marker.exists()


def test_model_py_too_large(tmp_path: Path) -> None:
    big = MODEL_OK + b"#" * (1024 * 1024)
    src = _write_dir(tmp_path / "src", {"model.py": big, "train.py": TRAIN_OK})
    with pytest.raises(LimitExceeded, match=r"model\.py is \d+ bytes"):
        unpack_algorithm(src, tmp_path / "dest")


# --------------------------------------------------------------------------- algorithm.toml


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        (b'nmae = "x"\n', r"unknown key 'nmae'; allowed: name \(string\), version"),
        (b"[hyperparameters]\nepoch = 3\n", r"unknown hyperparameter 'epoch'; allowed: epochs"),
        (b"[hyperparameters]\nepochs = 0\n", r"epochs = 0 is out of range.*from 1 to 1000"),
        (b"[hyperparameters]\nepochs = 1001\n", r"epochs = 1001 is out of range"),
        (b"[hyperparameters]\nepochs = 3.0\n", r"epochs must be an integer from 1 to 1000"),
        (b"[hyperparameters]\nepochs = true\n", r"epochs must be an integer"),
        (b"[hyperparameters]\nbatch_size = 0\n", r"batch_size = 0 .*from 1 to 65536"),
        (b"[hyperparameters]\nbatch_size = 65537\n", r"batch_size = 65537 is out of range"),
        (b"[hyperparameters]\nlr = 0\n", r"lr = 0 is out of range.*in \(0, 10\]"),
        (b"[hyperparameters]\nlr = -0.1\n", r"lr = -0.1 is out of range"),
        (b"[hyperparameters]\nlr = 10.5\n", r"lr = 10.5 is out of range"),
        (b"[hyperparameters]\nlr = nan\n", r"lr = nan is out of range"),
        (b"[hyperparameters]\nlr = inf\n", r"lr = inf is out of range"),
        (b'[hyperparameters]\nlr = "0.1"\n', r"lr must be a number in \(0, 10\], got str"),
        (b"hyperparameters = 3\n", r"hyperparameters must be a table"),
        (b"name = 3\n", r"name must be a string"),
        (b"version = 1.0\n", r'version must be a string \(e.g. version = "1.0"\)'),
        (b'name = ""\n', r"name must be 1 to 100 printable characters"),
        (b'name = "a\\nb"\n', r"name must be 1 to 100 printable characters"),
        (b"name = \n", r"not valid TOML: .*line 1"),
        (b'name = "\xff"\n', r"not valid UTF-8"),
        (b"[hyperparameters.extra]\nx = 1\n", r"unknown hyperparameter 'extra'"),
    ],
)
def test_bad_algorithm_toml(tmp_path: Path, toml: bytes, expected: str) -> None:
    src = _write_dir(tmp_path / "src", _package(**{"algorithm.toml": toml}))
    with pytest.raises(InvalidInput, match=expected):
        unpack_algorithm(src, tmp_path / "dest")


def test_algorithm_toml_bounds_are_inclusive(tmp_path: Path) -> None:
    toml = b'name="n"\nversion="v"\n[hyperparameters]\nepochs=1000\nbatch_size=65536\nlr=10\n'
    pkg = unpack_algorithm(
        _write_dir(tmp_path / "s", _package(**{"algorithm.toml": toml})), tmp_path / "d"
    )
    assert pkg.hyperparameters == {"epochs": 1000, "batch_size": 65536, "lr": 10.0}
    assert isinstance(pkg.hyperparameters["lr"], float)


def test_algorithm_toml_too_large(tmp_path: Path) -> None:
    toml = b'name = "x"\n' + b"# padding\n" * 7000
    src = _write_dir(tmp_path / "src", _package(**{"algorithm.toml": toml}))
    with pytest.raises(
        LimitExceeded, match=r"algorithm\.toml is \d+ bytes, over the limit of 65536"
    ):
        unpack_algorithm(src, tmp_path / "dest")


# --------------------------------------------------------------------------- archive members


@pytest.mark.parametrize(
    ("member", "expected"),
    [
        (("evil", "symlink", "/etc/passwd"), r"'evil' is a symbolic link \(to '/etc/passwd'\)"),
        (("evil", "hardlink", "model.py"), r"'evil' is a hard link"),
        (("evil", "fifo", ""), r"'evil' is a named pipe"),
        (("evil", "chr", ""), r"'evil' is a device"),
        (("evil", "blk", ""), r"'evil' is a device"),
        (("evil", "V", ""), r"'evil' has tar type"),
        (("/abs/model2.py", "file", b""), r"'/abs/model2\.py' has an absolute path"),
        (("../escape.py", "file", b""), r"'\.\./escape\.py' has a '\.\.' component"),
        (("a/../../escape.py", "file", b""), r"has a '\.\.' component"),
        (("a/..", "dir", ""), r"has a '\.\.' component"),
        (("win\\evil.py", "file", b""), r"'win\\\\evil\.py' has a backslash"),
        (("nul\x00.py", "file", b""), r"'nul\\x00\.py' has a NUL byte"),
        (("new\nline.py", "file", b""), r"control character"),
        (("x" * 256, "file", b""), r"name of 256 bytes; the limit is 255"),
        (("d/" + "é" * 127, "file", b""), r"name of 256 bytes"),
        ((".", "file", b""), r"a file without a name"),
    ],
)
def test_bad_archive_member(tmp_path: Path, member: Member, expected: str) -> None:
    members = [("model.py", "file", MODEL_OK), ("train.py", "file", TRAIN_OK), member]
    archive = _tar(tmp_path / "p.tgz", members)
    (tmp_path / "work").mkdir()
    with pytest.raises(InvalidInput, match=expected):
        unpack_algorithm(archive, tmp_path / "work" / "dest")
    assert not (tmp_path / "work" / "dest").exists()
    assert not (tmp_path / "work" / "escape.py").exists()
    assert not Path("/abs").exists()


def test_non_utf8_member_name(tmp_path: Path) -> None:
    archive = tmp_path / "p.tar"
    with tarfile.open(archive, "w", format=tarfile.USTAR_FORMAT, encoding="latin-1") as tf:
        info = tarfile.TarInfo("caf\xe9.py")
        tf.addfile(info, io.BytesIO(b""))
    with pytest.raises(InvalidInput, match="not valid UTF-8"):
        unpack_algorithm(archive, tmp_path / "dest")


def test_gnu_sparse_member_is_rejected(tmp_path: Path) -> None:
    archive = _tar(tmp_path / "p.tar", [("sparse.bin", "S", "")], gz=False)
    with pytest.raises(InvalidInput, match="sparse file|tar type"):
        unpack_algorithm(archive, tmp_path / "dest")


@pytest.mark.parametrize(
    ("members", "expected"),
    [
        ([("a.py", "file", b"1"), ("a.py", "file", b"2")], r"'a\.py' appears more than once"),
        ([("a", "file", b"1"), ("a", "dir", "")], r"'a' is both a file and a directory"),
        ([("a", "dir", ""), ("a", "file", b"")], r"'a' appears more than once"),
        (
            [("a", "file", b"1"), ("a/b.py", "file", b"")],
            r"'a/b\.py' is inside 'a', which is a file",
        ),
    ],
)
def test_conflicting_members(tmp_path: Path, members: list[Member], expected: str) -> None:
    archive = _tar(tmp_path / "p.tgz", [*members, ("model.py", "file", MODEL_OK)])
    with pytest.raises(InvalidInput, match=expected):
        unpack_algorithm(archive, tmp_path / "dest")


def test_duplicate_directories_are_fine(tmp_path: Path) -> None:
    members: list[Member] = [("lib", "dir", ""), ("lib/", "dir", ""), ("lib/x.py", "file", b"")]
    archive = _tar(tmp_path / "p.tgz", [*members, *_as_members(_package())])
    unpack_algorithm(archive, tmp_path / "dest")


def _as_members(files: dict[str, bytes]) -> list[Member]:
    return [(name, "file", data) for name, data in files.items()]


# --------------------------------------------------------------------------- caps


def test_too_many_entries(tmp_path: Path) -> None:
    files = _package(**{f"f{i}": b"" for i in range(5)})
    archive = _files_tar(tmp_path / "p.tgz", files)
    with pytest.raises(LimitExceeded, match=r"more than 4 entries \(at member 'f2'\)"):
        unpack_algorithm(archive, tmp_path / "dest", max_files=4)
    src = _write_dir(tmp_path / "src", files)
    with pytest.raises(LimitExceeded, match="more than 4 entries"):
        unpack_algorithm(src, tmp_path / "dest", max_files=4)


def test_total_size_over_the_limit(tmp_path: Path) -> None:
    files = _package(**{"data.bin": b"\x00" * 5000})
    archive = _files_tar(tmp_path / "p.tgz", files)
    with pytest.raises(LimitExceeded, match=r"exceed 4096 bytes \(at member 'data\.bin'\)"):
        unpack_algorithm(archive, tmp_path / "dest", max_bytes=4096)
    src = _write_dir(tmp_path / "src", files)
    with pytest.raises(LimitExceeded, match="exceed 4096 bytes"):
        unpack_algorithm(src, tmp_path / "dest", max_bytes=4096)


def test_gzip_bomb_in_a_pax_header(tmp_path: Path) -> None:
    # tarfile reads a pax header whole before yielding its member: the stream cap
    # stops a header of many megabytes (which gzip shrinks to a few KB).
    archive = tmp_path / "p.tgz"
    with tarfile.open(archive, "w:gz", format=tarfile.PAX_FORMAT) as tf:
        info = tarfile.TarInfo("model.py")
        info.pax_headers = {"comment": "A" * (4 * 1024 * 1024)}
        tf.addfile(info, io.BytesIO(b""))
    assert archive.stat().st_size < 64 * 1024
    with pytest.raises(LimitExceeded, match="decompresses to more than"):
        unpack_algorithm(archive, tmp_path / "dest", max_bytes=64 * 1024, max_files=4)


def test_archive_file_over_the_limit(tmp_path: Path) -> None:
    archive = tmp_path / "p.tar"
    archive.write_bytes(os.urandom(2 * 1024 * 1024))
    with pytest.raises(LimitExceeded, match=r"archive .* is \d+ bytes, over the limit"):
        unpack_algorithm(archive, tmp_path / "dest", max_bytes=1024, max_files=4)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"", "not a valid tar archive|corrupt"),
        (b"this is not an archive" * 40, "not a valid tar archive|corrupt"),
        (bz2.compress(b"x" * 100), "bzip2"),
        (lzma.compress(b"x" * 100), "xz"),
        (b"\x1f\x8b\x08\x00garbage-after-gzip-magic", "corrupt|not a valid tar"),
    ],
)
def test_not_an_archive(tmp_path: Path, content: bytes, expected: str) -> None:
    path = tmp_path / "p.tgz"
    path.write_bytes(content)
    with pytest.raises(InvalidInput, match=expected):
        unpack_algorithm(path, tmp_path / "dest")


def test_zip_is_not_accepted(tmp_path: Path) -> None:
    path = tmp_path / "p.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("model.py", MODEL_OK)
    with pytest.raises(InvalidInput, match="is a zip file"):
        unpack_algorithm(path, tmp_path / "dest")


def test_truncated_archive(tmp_path: Path) -> None:
    full = _files_tar(tmp_path / "p.tar", _package(**{"big": os.urandom(50_000)}), gz=False)
    full.write_bytes(full.read_bytes()[:30_000])
    with pytest.raises(InvalidInput):
        unpack_algorithm(full, tmp_path / "dest")
    assert not (tmp_path / "dest").exists()


# --------------------------------------------------------------------------- directory sources


def test_directory_with_symlink(tmp_path: Path) -> None:
    src = _write_dir(tmp_path / "src", _package())
    (src / "link.py").symlink_to(src / "model.py")
    with pytest.raises(InvalidInput, match=r"'link\.py' is a symbolic link"):
        unpack_algorithm(src, tmp_path / "dest")


def test_directory_with_symlinked_directory(tmp_path: Path) -> None:
    src = _write_dir(tmp_path / "src", _package())
    (tmp_path / "secret").mkdir()
    (tmp_path / "secret" / "key").write_text("k")
    (src / "sub").mkdir()
    (src / "sub" / "escape").symlink_to(tmp_path / "secret")
    with pytest.raises(InvalidInput, match=r"'sub/escape' is a symbolic link"):
        unpack_algorithm(src, tmp_path / "dest")


def test_directory_with_fifo_and_socket(tmp_path: Path) -> None:
    src = _write_dir(tmp_path / "src", _package())
    os.mkfifo(src / "pipe")
    with pytest.raises(InvalidInput, match=r"'pipe' is a named pipe"):
        unpack_algorithm(src, tmp_path / "dest")
    os.unlink(src / "pipe")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(src / "sock"))
        with pytest.raises(InvalidInput, match=r"'sock' is a socket"):
            unpack_algorithm(src, tmp_path / "dest")


def test_directory_with_bad_names(tmp_path: Path) -> None:
    src = _write_dir(tmp_path / "src", _package())
    (src / "a\\b.py").write_text("")
    with pytest.raises(InvalidInput, match="backslash"):
        unpack_algorithm(src, tmp_path / "dest")
    os.unlink(src / "a\\b.py")
    with open(os.path.join(os.fsencode(src), b"bad\xff.py"), "wb"):
        pass
    with pytest.raises(InvalidInput, match="not valid UTF-8"):
        unpack_algorithm(src, tmp_path / "dest")


def test_destination_inside_the_source_is_refused(tmp_path: Path) -> None:
    src = _write_dir(tmp_path / "src", _package())
    with pytest.raises(ValueError, match="inside the source"):
        unpack_algorithm(src, src / "out")
    assert not (src / "out").exists()


def test_symlinked_source_root_is_followed(tmp_path: Path) -> None:
    real = _write_dir(tmp_path / "real", _package())
    (tmp_path / "alias").symlink_to(real)
    pkg = unpack_algorithm(tmp_path / "alias", tmp_path / "dest")
    assert _tree(pkg.root) == _package()


# --------------------------------------------------------------------------- property: tar safety

_COMPONENTS = st.sampled_from(
    ["a", "b", "model.py", "train.py", "..", ".", "", "c\\d", "n\x00ul", "x" * 120, "é"]
)
_PREFIXES = st.sampled_from(["", "", "", "./", "/", "ABS/", "pkg/"])
_KINDS = st.sampled_from(["file", "file", "file", "dir", "symlink", "hardlink", "fifo", "chr"])
_TARGETS = st.sampled_from(["../outside", "/etc/passwd", "ABS/target", "a", "model.py", "."])
_ANY_MEMBER = st.tuples(_PREFIXES, st.lists(_COMPONENTS, min_size=1, max_size=4), _KINDS, _TARGETS)
_GOOD_MEMBER = st.tuples(
    st.sampled_from(["", "./", "pkg/"]),
    st.tuples(
        st.lists(st.sampled_from(["lib", "é", "data"]), max_size=2),
        st.sampled_from(["f.py", "g.py", "h.txt", "k.bin", "m.py"]),
    ).map(lambda t: [*t[0], t[1]]),
    st.just("file"),
    st.just(""),
) | st.tuples(
    st.sampled_from(["", "./", "pkg/"]),
    st.lists(st.sampled_from(["lib", "é", "data"]), min_size=1, max_size=2),
    st.just("dir"),
    st.just(""),
)
_MEMBERS = st.lists(st.one_of(_GOOD_MEMBER, _GOOD_MEMBER, _ANY_MEMBER), max_size=8)


def _is_bad(name: str, kind: str) -> bool:
    parts = name.split("/")
    return (
        kind not in ("file", "dir")
        or name.startswith("/")
        or ".." in parts
        or "\\" in name
        or "\x00" in name
        or len(name.encode()) > 255
        or (kind == "file" and not [p for p in parts if p not in ("", ".")])
    )


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=_MEMBERS, gz=st.booleans(), add_contract=st.sampled_from([True, True, False]))
def test_tar_unpacking_never_escapes(
    spec: list[tuple[str, list[str], str, str]], gz: bool, add_contract: bool
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        # dest sits five levels deep so that any '..' chain lands somewhere we watch.
        work = root / "l1" / "l2" / "l3" / "l4" / "work"
        work.mkdir(parents=True)
        dest = work / "dest"
        absolute = str(root / "abs")
        members: list[Member] = []
        for prefix, components, kind, target in spec:
            name = (prefix + "/".join(components)).replace("ABS", absolute)
            payload: bytes | str = target.replace("ABS", absolute)
            if kind == "file":
                payload = MODEL_OK if name.endswith("model.py") else b"data"
            members.append((name, kind, payload))
        if add_contract:
            members += [("model.py", "file", MODEL_OK), ("train.py", "file", TRAIN_OK)]
        archive = _tar(root / "pkg.tar", members, gz=gz)

        try:
            pkg = unpack_algorithm(archive, dest)
        except InvalidInput:
            outcome = "invalid"
        else:
            outcome = "ok"
            assert pkg.root == dest
            assert _modes(dest) <= {("dir", 0o555), ("file", 0o444)}  # no links, no specials

        bad = any(_is_bad(name, kind) for name, kind, _ in members)
        event(f"{outcome} ({'with' if bad else 'no'} bad members)")
        if bad:
            assert outcome == "invalid"
        if outcome == "invalid":
            assert not dest.exists()
        # Nothing anywhere but the archive and the destination.
        assert sorted(os.listdir(root)) == ["l1", "pkg.tar"]
        for level, child in [
            (root / "l1", "l2"),
            (root / "l1" / "l2", "l3"),
            (root / "l1" / "l2" / "l3", "l4"),
            (root / "l1" / "l2" / "l3" / "l4", "work"),
        ]:
            assert os.listdir(level) == [child]
        assert os.listdir(work) == (["dest"] if outcome == "ok" else [])
        if outcome == "ok":
            remove_tree(dest)
