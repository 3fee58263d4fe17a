"""Image tags, variants and build contexts: fast, no Docker engine needed."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest

from sandbox.errors import FailedPrecondition, InvalidInput
from sandbox.runner import images
from sandbox.runner.images import Layout

REPO = Path(__file__).resolve().parents[2]
TAG_RE = re.compile(r"^sandbox-runtime:(cpu|cuda)-[0-9a-f]{16}$")


@pytest.fixture
def layout(tmp_path: Path) -> Layout:
    """A copy of the image sources, free to edit."""
    docker_dir = tmp_path / "docker"
    guest_dir = tmp_path / "sandbox" / "guest"
    docker_dir.mkdir()
    guest_dir.mkdir(parents=True)
    for name in ("Dockerfile", "requirements-cpu.txt", "requirements-cuda.txt"):
        shutil.copy(REPO / "docker" / name, docker_dir / name)
    (guest_dir / "__init__.py").write_text('"""Trusted guest code."""\n')
    (guest_dir / "train.py").write_text("print('train')\n")
    return Layout(docker_dir=docker_dir, guest_dir=guest_dir)


@pytest.fixture(autouse=True)
def _no_cuda_base_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(images.CUDA_BASE_ENV, raising=False)


def tag(layout: Layout, variant: str = "cpu", base: str | None = None) -> str:
    return images.runtime_image_tag(variant, base, layout)


# ---------------------------------------------------------------- tag hashing


def test_tag_format_and_stability(layout: Layout) -> None:
    first = tag(layout)
    assert TAG_RE.match(first)
    assert first.startswith("sandbox-runtime:cpu-")
    assert tag(layout) == first
    assert TAG_RE.match(tag(layout, "cuda"))


def test_repository_tag_is_well_formed() -> None:
    assert TAG_RE.match(images.runtime_image_tag())
    assert images.runtime_image_tag() == images.runtime_image_tag("cpu")


def test_tag_ignores_mtime_and_non_python_files(layout: Layout) -> None:
    before = tag(layout)
    (layout.guest_dir / "train.py").touch()
    (layout.guest_dir / "notes.md").write_text("not code\n")
    (layout.guest_dir / "__pycache__").mkdir()
    (layout.guest_dir / "__pycache__" / "train.cpython-311.pyc").write_bytes(b"\0")
    (layout.docker_dir / "README.md").write_text("docs\n")
    assert tag(layout) == before


@pytest.mark.parametrize(
    "edit",
    [
        lambda lay: (lay.guest_dir / "train.py").write_text("print('changed')\n"),
        lambda lay: (lay.guest_dir / "export.py").write_text("x = 1\n"),
        lambda lay: (lay.guest_dir / "train.py").rename(lay.guest_dir / "fit.py"),
        lambda lay: (lay.guest_dir / "train.py").unlink(),
        lambda lay: (lay.docker_dir / "Dockerfile").write_text(
            (lay.docker_dir / "Dockerfile").read_text() + "# edit\n"
        ),
        lambda lay: (lay.docker_dir / "requirements-cpu.txt").write_text("torch==9\n"),
    ],
    ids=["guest-edit", "guest-new", "guest-rename", "guest-delete", "dockerfile", "requirements"],
)
def test_tag_changes_with_content(layout: Layout, edit: object) -> None:
    before = tag(layout)
    edit(layout)  # type: ignore[operator]
    after = tag(layout)
    assert after != before
    assert TAG_RE.match(after)


def test_tag_changes_with_base_and_variant(layout: Layout) -> None:
    default = tag(layout)
    assert tag(layout, base=images.base_image_tag()) == default
    assert tag(layout, base="other-base:1") != default
    assert tag(layout, "cuda") != default


def test_cpu_tag_ignores_the_cuda_requirements(layout: Layout) -> None:
    before = tag(layout)
    (layout.docker_dir / "requirements-cuda.txt").write_text("torch===2.14.0\n")
    assert tag(layout) == before


def test_hash_is_not_ambiguous_across_file_boundaries(layout: Layout) -> None:
    (layout.guest_dir / "a.py").write_text("xy")
    (layout.guest_dir / "b.py").write_text("z")
    first = tag(layout)
    (layout.guest_dir / "a.py").write_text("x")
    (layout.guest_dir / "b.py").write_text("yz")
    assert tag(layout) != first


def test_missing_dockerfile_is_a_clear_error(layout: Layout) -> None:
    (layout.docker_dir / "Dockerfile").unlink()
    with pytest.raises(FailedPrecondition, match="Dockerfile"):
        tag(layout)


# ------------------------------------------------------------------ variants


def test_variant_selects_requirements_and_base(layout: Layout) -> None:
    cpu = images.load_inputs("cpu", layout=layout)
    cuda = images.load_inputs("cuda", layout=layout)
    assert cpu.requirements == (layout.docker_dir / "requirements-cpu.txt").read_bytes()
    assert cuda.requirements == (layout.docker_dir / "requirements-cuda.txt").read_bytes()
    assert cpu.base == images.base_image_tag()
    assert cuda.base == images.base_image_tag()  # PyPI torch wheels carry the CUDA libs
    assert images.wheelhouse_dir("cpu", layout) != images.wheelhouse_dir("cuda", layout)


def test_base_override_and_cuda_env(layout: Layout, monkeypatch: pytest.MonkeyPatch) -> None:
    assert images.load_inputs("cuda", "ops/cuda-py311:1", layout).base == "ops/cuda-py311:1"
    monkeypatch.setenv(images.CUDA_BASE_ENV, "ops/cuda-env:2")
    assert images.resolve_base("cuda") == "ops/cuda-env:2"
    assert images.resolve_base("cpu") == images.base_image_tag()  # env is for cuda only
    assert images.resolve_base("cuda", "explicit:3") == "explicit:3"


def test_unknown_variant_names_the_allowed_ones(layout: Layout) -> None:
    with pytest.raises(InvalidInput, match="cpu, cuda"):
        images.runtime_image_tag("rocm", layout=layout)


def test_cli_tag_prints_the_tag(capsys: pytest.CaptureFixture[str]) -> None:
    assert images.main(["tag", "--variant", "cuda", "--base", "b:1"]) == 0
    assert capsys.readouterr().out.strip() == images.runtime_image_tag("cuda", "b:1")


# ------------------------------------------------------ repository sources


def _pins(name: str) -> dict[str, str]:
    pins = {}
    for raw in (REPO / "docker" / name).read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            match = re.fullmatch(r"([A-Za-z0-9_.-]+)(===?)(\S+)", line)
            assert match, f"{name}: not an exact pin: {line!r}"
            pins[match.group(1).lower()] = match.group(2) + match.group(3)
    return pins


def test_requirements_are_exact_pins() -> None:
    cpu, cuda = _pins("requirements-cpu.txt"), _pins("requirements-cuda.txt")
    assert cpu["torch"] == "==2.13.0+cpu"
    assert cuda["torch"] == "===2.13.0"  # a local +cpu wheel cannot match ===
    for name in ("numpy", "safetensors"):
        assert cpu[name] == cuda[name]
    assert cpu["safetensors"] == "==0.8.0"
    assert not [n for n in cpu if n.startswith(("nvidia", "triton", "cuda"))]


def test_dockerfile_default_base_is_the_debootstrap_base() -> None:
    dockerfile = (REPO / "docker" / "Dockerfile").read_text()
    match = re.search(r"^ARG BASE=(\S+)$", dockerfile, re.MULTILINE)
    assert match, "docker/Dockerfile must declare ARG BASE=<default>"
    assert match.group(1) == images.base_image_tag()
    assert "ENTRYPOINT" not in dockerfile
    assert re.search(r"^USER 65534:65534$", dockerfile, re.MULTILINE)


def test_base_tag_is_stable_and_well_formed() -> None:
    assert re.fullmatch(r"sandbox-base:bookworm-[0-9a-f]{16}", images.base_image_tag())
    assert images.base_image_tag() == images.base_image_tag()


# ----------------------------------------------------------- build context


def test_build_context_contents(layout: Layout, tmp_path: Path) -> None:
    (layout.guest_dir / "notes.md").write_text("not copied\n")
    (layout.guest_dir / "sub").mkdir()
    (layout.guest_dir / "sub" / "deep.py").write_text("not copied\n")
    wheelhouse = tmp_path / "wheelhouse"
    wheelhouse.mkdir()
    for name in ("torch-2.13.0+cpu-cp311-cp311-linux_x86_64.whl", "numpy-2.4.6-x.whl"):
        (wheelhouse / name).write_bytes(b"wheel")
    (wheelhouse / images.WHEELHOUSE_MARKER).write_text("{}")
    context = tmp_path / "context"
    context.mkdir()
    inputs = images.load_inputs("cpu", layout=layout)

    images.write_context(inputs, wheelhouse, context)

    files = sorted(str(p.relative_to(context)) for p in context.rglob("*") if p.is_file())
    assert files == [
        "Dockerfile",
        "requirements.txt",
        "trusted/sandbox/__init__.py",
        "trusted/sandbox/guest/__init__.py",
        "trusted/sandbox/guest/train.py",
        "wheels/numpy-2.4.6-x.whl",
        "wheels/torch-2.13.0+cpu-cp311-cp311-linux_x86_64.whl",
    ]
    assert (context / "trusted/sandbox/__init__.py").read_bytes() == b""
    assert (context / "trusted/sandbox/guest/train.py").read_bytes() == (
        layout.guest_dir / "train.py"
    ).read_bytes()
    assert (context / "Dockerfile").read_bytes() == layout.dockerfile.read_bytes()
    assert (context / "requirements.txt").read_bytes() == (
        layout.docker_dir / "requirements-cpu.txt"
    ).read_bytes()
    assert (context / "trusted/sandbox/guest/train.py").stat().st_mode & 0o777 == 0o644
    assert (context / "trusted/sandbox/guest").stat().st_mode & 0o777 == 0o755


def test_context_holds_the_bytes_that_were_hashed(layout: Layout, tmp_path: Path) -> None:
    inputs = images.load_inputs("cpu", layout=layout)
    (layout.guest_dir / "train.py").write_text("edited after hashing\n")
    context = tmp_path / "context"
    context.mkdir()
    empty = tmp_path / "empty"
    empty.mkdir()
    images.write_context(inputs, empty, context)
    assert (context / "trusted/sandbox/guest/train.py").read_text() == "print('train')\n"


# --------------------------------------------------------------- wheelhouse


def test_wheelhouse_dir_follows_xdg_and_requirements(
    layout: Layout, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    path = images.wheelhouse_dir("cpu", layout)
    assert path.parent == tmp_path / "xdg" / "sandbox" / "wheelhouse"
    assert re.fullmatch(r"[0-9a-f]{16}", path.name)
    (layout.docker_dir / "Dockerfile").write_text("FROM x\n")  # not part of the key
    assert images.wheelhouse_dir("cpu", layout) == path
    (layout.docker_dir / "requirements-cpu.txt").write_text("numpy==2.4.6\n")
    assert images.wheelhouse_dir("cpu", layout) != path


def test_wheelhouse_marker(tmp_path: Path) -> None:
    assert not images.wheelhouse_complete(tmp_path)
    (tmp_path / "a.whl").write_bytes(b"abc")
    marker = tmp_path / images.WHEELHOUSE_MARKER
    marker.write_text(json.dumps({"files": {"a.whl": 3}}))
    assert images.wheelhouse_complete(tmp_path)
    (tmp_path / "a.whl").write_bytes(b"ab")  # truncated
    assert not images.wheelhouse_complete(tmp_path)
    marker.write_text(json.dumps({"files": {"a.whl": 2, "b.whl": 1}}))  # one missing
    assert not images.wheelhouse_complete(tmp_path)
    marker.write_text("not json")
    assert not images.wheelhouse_complete(tmp_path)


def test_pip_download_args(tmp_path: Path) -> None:
    args = images.pip_download_args(tmp_path / "req.txt", tmp_path / "out")
    assert args[1:4] == ["-m", "pip", "download"]
    assert "--only-binary=:all:" in args
    assert args[args.index("--python-version") + 1] == "3.11"
    assert args[args.index("--implementation") + 1] == "cp"
    platforms = {args[i + 1] for i, a in enumerate(args) if a == "--platform"}
    assert {"manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"} <= platforms
    assert args[-4:] == ["-r", str(tmp_path / "req.txt"), "-d", str(tmp_path / "out")]


CPU_TORCH = "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl"
CUDA_TORCH = "torch-2.13.0-cp311-cp311-manylinux_2_28_x86_64.whl"


def test_check_wheels_accepts_the_right_torch() -> None:
    images.check_wheels([CPU_TORCH, "numpy-2.4.6-cp311-cp311-x.whl"], "cpu")
    images.check_wheels([CUDA_TORCH, "nvidia_cublas-13.1.1.3-py3-none-x.whl"], "cuda")


@pytest.mark.parametrize(
    ("names", "variant", "message"),
    [
        ([CUDA_TORCH], "cpu", "CUDA build"),
        ([CPU_TORCH, "nvidia_nccl_cu13-2.29.7-py3-none-x.whl"], "cpu", "CUDA build"),
        ([CPU_TORCH], "cuda", "CPU build"),
        (["numpy-2.4.6-cp311-cp311-x.whl"], "cpu", "one torch wheel"),
    ],
)
def test_check_wheels_refuses_the_wrong_torch(names: list[str], variant: str, message: str) -> None:
    with pytest.raises(images.ImageBuildError, match=message):
        images.check_wheels(names, variant)


# -------------------------------------------------------------------- base


def test_base_prerequisites(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(images.ImageBuildError, match=r"root.*scripts/bootstrap\.sh"):
        images.check_base_prerequisites()
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(shutil, "which", lambda tool: None)
    with pytest.raises(images.ImageBuildError, match=r"debootstrap.*scripts/bootstrap\.sh"):
        images.check_base_prerequisites()
