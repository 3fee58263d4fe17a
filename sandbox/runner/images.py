"""The sandbox container images, built without an image registry.

Three layers, each skipped when it already exists:

1. base: ``sandbox-base:bookworm-<hash>``, a Debian rootfs made on the host with
   ``debootstrap --variant=minbase`` and turned into an image with ``docker import``
   (needs root; the hash covers suite, variant, package list and import changes);
2. wheelhouse: ``${XDG_CACHE_HOME:-~/.cache}/sandbox/wheelhouse/<hash>``, the
   pinned wheels of ``docker/requirements-<variant>.txt`` fetched by ``pip download``
   on the host (the containers never reach a package index);
3. runtime: ``sandbox-runtime:<variant>-<hash>``, ``docker/Dockerfile`` built on (1)
   with (2). The hash covers the Dockerfile, the requirements file, every
   ``sandbox/guest/*.py`` (name and bytes) and the base tag, so the tag changes
   exactly when the image content would.

Command line::

    python -m sandbox.runner.images build [--variant cpu|cuda] [--base IMAGE]
    python -m sandbox.runner.images tag [--variant cpu|cuda] [--base IMAGE]
    python -m sandbox.runner.images wheelhouse [--variant cpu|cuda]
    python -m sandbox.runner.images prune [--variant V ...] [--build-cache]

``build`` and ``tag`` print the runtime tag on stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
from docker.errors import APIError, DockerException, ImageNotFound

from sandbox.errors import EngineUnavailable, FailedPrecondition, InvalidInput, SandboxError

Log = Callable[[str], None]

RUNTIME_REPO = "sandbox-runtime"
BASE_REPO = "sandbox-base"

BASE_SUITE = "bookworm"
BASE_VARIANT = "minbase"
BASE_PACKAGES: tuple[str, ...] = ("python3", "python3-venv")
BASE_CHANGES: tuple[str, ...] = (
    "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LABEL sandbox.image=base",
)
# Bump when the way the rootfs is made or trimmed changes (it is part of the base tag).
BASE_RECIPE = 2
DEFAULT_MIRROR = "http://deb.debian.org/debian"
MIRROR_ENV = "SANDBOX_DEBIAN_MIRROR"
CUDA_BASE_ENV = "SANDBOX_CUDA_BASE"

# What the wheelhouse targets: the interpreter of the base image (Debian bookworm's
# python3 is 3.11; a CUDA base must provide python3.11 too) on x86_64 glibc.
PYTHON_VERSION = "3.11"
PLATFORMS: tuple[str, ...] = (
    *(f"manylinux_2_{minor}_x86_64" for minor in range(28, 4, -1)),
    "manylinux2014_x86_64",  # pip adds manylinux2010 and manylinux1 for this one
)

LABEL_KIND = "sandbox.image"
LABEL_HASH = "sandbox.content-hash"
LABEL_VARIANT = "sandbox.variant"
LABEL_BASE = "sandbox.base"
KIND_RUNTIME = "runtime"
KIND_BUILD_STAGE = "runtime-build"  # set by docker/Dockerfile on the build stage

WHEELHOUSE_MARKER = ".complete"
BUILD_TIMEOUT_S = 3600

_PACKAGE_DIR = Path(__file__).resolve().parents[1]  # .../sandbox


class ImageBuildError(FailedPrecondition):
    """An image could not be built (debootstrap, pip download or docker build failed)."""


@dataclass(frozen=True)
class Variant:
    """A runtime image flavour: which requirements file and which torch build it gets."""

    name: str
    requirements: str  # file name inside docker/
    torch_build: str  # "cpu": the torch wheel must be "+cpu"; "cuda": it must not be


VARIANTS: dict[str, Variant] = {
    "cpu": Variant("cpu", "requirements-cpu.txt", "cpu"),
    "cuda": Variant("cuda", "requirements-cuda.txt", "cuda"),
}


def get_variant(name: str) -> Variant:
    try:
        return VARIANTS[name]
    except KeyError:
        allowed = ", ".join(sorted(VARIANTS))
        raise InvalidInput(f"unknown image variant {name!r}; allowed: {allowed}") from None


@dataclass(frozen=True)
class Layout:
    """Where the image sources live (the repository by default; a copy in tests)."""

    docker_dir: Path
    guest_dir: Path

    @staticmethod
    def default() -> Layout:
        return Layout(docker_dir=_PACKAGE_DIR.parent / "docker", guest_dir=_PACKAGE_DIR / "guest")

    @property
    def dockerfile(self) -> Path:
        return self.docker_dir / "Dockerfile"

    def requirements(self, variant: Variant) -> Path:
        return self.docker_dir / variant.requirements


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _sha256(*parts: tuple[str, bytes]) -> str:
    """Hash of labelled byte strings, length-prefixed so no two inputs collide."""
    digest = hashlib.sha256()
    for label, data in parts:
        name = label.encode()
        digest.update(len(name).to_bytes(8, "big") + name)
        digest.update(len(data).to_bytes(8, "big") + data)
    return digest.hexdigest()


# --------------------------------------------------------------------------- base


def base_image_tag() -> str:
    """``sandbox-base:bookworm-<16 hex>``; the hash covers what debootstrap is asked for."""
    spec = json.dumps(
        {
            "suite": BASE_SUITE,
            "variant": BASE_VARIANT,
            "packages": sorted(BASE_PACKAGES),
            "changes": list(BASE_CHANGES),
            "recipe": BASE_RECIPE,
        },
        sort_keys=True,
    )
    return f"{BASE_REPO}:{BASE_SUITE}-{_sha256(('base', spec.encode()))[:16]}"


def resolve_base(variant: str, base: str | None = None) -> str:
    """The base image of a variant: ``base`` if given, else the variant's default.

    Both variants default to the local debootstrap base: PyPI's torch wheels carry
    their CUDA user-space libraries (nvidia-* wheels), so a CUDA image only needs the
    host driver, injected by the NVIDIA container runtime. An operator may still
    name another base (``--base`` or ``SANDBOX_CUDA_BASE`` for the cuda variant).
    """
    get_variant(variant)
    if base:
        return base
    if variant == "cuda" and os.environ.get(CUDA_BASE_ENV):
        return os.environ[CUDA_BASE_ENV]
    return base_image_tag()


def check_base_prerequisites() -> None:
    """Raise with a clear message when the base image cannot be made here."""
    if os.geteuid() != 0:
        raise ImageBuildError(
            "building the base image needs root (debootstrap, docker import); "
            "run scripts/bootstrap.sh, or this command as root"
        )
    for tool in ("debootstrap", "tar"):
        if shutil.which(tool) is None:
            raise ImageBuildError(f"{tool} is not installed; run scripts/bootstrap.sh")


def ensure_base_image(client: docker.DockerClient, log: Log = _stderr) -> str:
    """Make the debootstrap base image unless its tag exists; return the tag."""
    if _image_exists(client, base_image_tag()):
        return base_image_tag()
    with _build_lock():
        return _ensure_base_image(client, log)


def _ensure_base_image(client: docker.DockerClient, log: Log) -> str:
    tag = base_image_tag()
    if _image_exists(client, tag):
        return tag
    check_base_prerequisites()
    mirror = os.environ.get(MIRROR_ENV) or DEFAULT_MIRROR
    log(f"building base image {tag} (debootstrap {BASE_SUITE} from {mirror})")
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="base-", dir=_tmp_dir()))
    try:
        rootfs = work / "rootfs"
        _run_logged(
            [
                "debootstrap",
                f"--variant={BASE_VARIANT}",
                f"--include={','.join(BASE_PACKAGES)}",
                BASE_SUITE,
                str(rootfs),
                mirror,
            ],
            log,
            what="debootstrap",
        )
        _unmount_under(rootfs)
        _slim_rootfs(rootfs)
        tarball = work / "rootfs.tar"
        _run_logged(
            ["tar", "-C", str(rootfs), "--numeric-owner", "-cf", str(tarball), "."],
            log,
            what="tar",
        )
        repository, _, name = tag.partition(":")
        try:
            client.api.import_image(
                src=str(tarball), repository=repository, tag=name, changes=list(BASE_CHANGES)
            )
        except DockerException as error:
            raise ImageBuildError(f"docker import of {tag} failed: {error}") from error
    finally:
        _remove_tree(work, log)
    if not _image_exists(client, tag):
        raise ImageBuildError(f"docker import did not produce {tag}")
    log(f"base image {tag} ready ({time.monotonic() - started:.0f} s)")
    return tag


def _slim_rootfs(rootfs: Path) -> None:
    """Drop what the sandbox never uses: downloaded .debs, apt lists, man, info, locale."""
    for pattern in ("var/cache/apt/archives/*.deb", "var/lib/apt/lists/*"):
        for path in rootfs.glob(pattern):
            if path.is_file() or path.is_symlink():
                path.unlink()
    for name in ("man", "info", "locale"):
        path = rootfs / "usr" / "share" / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
            path.mkdir(mode=0o755)


def _mounts_under(root: Path) -> list[str]:
    prefix = str(root.resolve())
    found = []
    with open("/proc/self/mountinfo", encoding="utf-8") as mountinfo:
        for line in mountinfo:
            fields = line.split()
            point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
            if point == prefix or point.startswith(prefix + "/"):
                found.append(point)
    return found


def _unmount_under(root: Path) -> None:
    """Unmount whatever debootstrap left mounted (proc, sys, a bound /dev)."""
    if not root.exists():
        return
    for point in sorted(_mounts_under(root), key=len, reverse=True):
        subprocess.run(["umount", "--lazy", point], check=False, capture_output=True)


def _remove_tree(path: Path, log: Log) -> None:
    """Delete a scratch tree, but never through a mount point into the host's files."""
    if not path.exists():
        return
    _unmount_under(path)
    left = _mounts_under(path)
    if left:
        log(f"not removing {path}: still mounted: {', '.join(left)}")
        return
    shutil.rmtree(path, ignore_errors=True)


def _remove_stale_scratch(log: Log) -> None:
    """Remove what an interrupted build left behind (call with the build lock held)."""
    leftovers = [*_tmp_dir().iterdir(), *(cache_dir() / "wheelhouse").glob("*.partial-*")]
    for path in leftovers:
        log(f"removing leftover {path}")
        if path.is_dir() and not path.is_symlink():
            _remove_tree(path, log)
        else:
            path.unlink(missing_ok=True)


# --------------------------------------------------------------------- wheelhouse


def cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "sandbox"


def _tmp_dir() -> Path:
    path = cache_dir() / "tmp"
    path.mkdir(parents=True, exist_ok=True)
    return path


def pip_download_args(requirements: Path, dest: Path) -> list[str]:
    """The ``pip download`` command line (run with the host's interpreter)."""
    args = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--disable-pip-version-check",
        "--no-input",
        "--only-binary=:all:",
        "--python-version",
        PYTHON_VERSION,
        "--implementation",
        "cp",
    ]
    for platform in PLATFORMS:
        args += ["--platform", platform]
    return [*args, "-r", str(requirements), "-d", str(dest)]


def wheelhouse_dir(variant: str = "cpu", layout: Layout | None = None) -> Path:
    """``<cache>/wheelhouse/<16 hex>``: the hash covers the requirements and targets."""
    layout = layout or Layout.default()
    requirements = _read(layout.requirements(get_variant(variant)))
    target = json.dumps({"python": PYTHON_VERSION, "platforms": PLATFORMS}).encode()
    key = _sha256(("requirements", requirements), ("target", target))[:16]
    return cache_dir() / "wheelhouse" / key


def wheelhouse_complete(path: Path) -> bool:
    """True when the marker (written last) lists files that are all there, same sizes."""
    try:
        manifest = json.loads((path / WHEELHOUSE_MARKER).read_text())
        files: dict[str, int] = manifest["files"]
        return bool(files) and all(
            (path / name).is_file() and (path / name).stat().st_size == size
            for name, size in files.items()
        )
    except (OSError, ValueError, KeyError, TypeError):
        return False


def check_wheels(names: Sequence[str], variant: str) -> None:
    """Refuse a wheelhouse with the wrong torch build (CUDA on CPU or the reverse)."""
    want = get_variant(variant).torch_build
    torch = [name for name in names if name.lower().startswith("torch-")]
    if len(torch) != 1:
        raise ImageBuildError(f"expected one torch wheel in the wheelhouse, found {torch}")
    version = torch[0].split("-")[1]
    gpu_only = sorted(n for n in names if n.lower().startswith(("nvidia_", "nvidia-", "triton-")))
    if want == "cpu" and (not version.endswith("+cpu") or gpu_only):
        raise ImageBuildError(
            f"the cpu wheelhouse got a CUDA build of torch ({torch[0]}"
            f"{', ' + ', '.join(gpu_only[:3]) if gpu_only else ''}); pin torch==X+cpu and "
            "provide the CPU wheel through pip's find-links or the PyTorch CPU index"
        )
    if want == "cuda" and "+cpu" in version:
        raise ImageBuildError(
            f"the cuda wheelhouse got the CPU build of torch ({torch[0]}); "
            "pin torch with === so a local +cpu wheel cannot match"
        )


def ensure_wheelhouse(
    variant: str = "cpu", *, layout: Layout | None = None, log: Log = _stderr
) -> Path:
    """Download the variant's wheels unless a complete wheelhouse exists; return its path."""
    with _build_lock():
        return _ensure_wheelhouse(variant, layout or Layout.default(), log)


def _ensure_wheelhouse(variant: str, layout: Layout, log: Log) -> Path:
    target = wheelhouse_dir(variant, layout)
    if wheelhouse_complete(target):
        return target
    requirements = layout.requirements(get_variant(variant))
    log(f"downloading the {variant} wheelhouse into {target}")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f"{target.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    try:
        _run_logged(pip_download_args(requirements, partial), log, what="pip download")
        names = sorted(p.name for p in partial.iterdir() if p.name.endswith(".whl"))
        check_wheels(names, variant)
        manifest = {
            "variant": variant,
            "requirements": requirements.read_text(),
            "files": {name: (partial / name).stat().st_size for name in names},
        }
        (partial / WHEELHOUSE_MARKER).write_text(json.dumps(manifest, indent=2) + "\n")
        shutil.rmtree(target, ignore_errors=True)
        partial.rename(target)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    total = sum((target / n).stat().st_size for n in names) / 2**20
    log(f"wheelhouse ready: {len(names)} wheels, {total:.0f} MiB")
    return target


# ------------------------------------------------------------------------ runtime


@dataclass(frozen=True)
class ImageInputs:
    """Everything that goes into a runtime image, read once (hashed = what is built)."""

    variant: Variant
    base: str
    dockerfile: bytes
    requirements: bytes
    guest: tuple[tuple[str, bytes], ...]  # (file name, bytes), sorted by name

    @property
    def content_hash(self) -> str:
        parts = [
            ("variant", self.variant.name.encode()),
            ("base", self.base.encode()),
            ("docker/Dockerfile", self.dockerfile),
            (f"docker/{self.variant.requirements}", self.requirements),
        ]
        parts += [(f"sandbox/guest/{name}", data) for name, data in self.guest]
        return _sha256(*parts)[:16]

    @property
    def tag(self) -> str:
        return f"{RUNTIME_REPO}:{self.variant.name}-{self.content_hash}"

    @property
    def labels(self) -> dict[str, str]:
        return {
            LABEL_KIND: KIND_RUNTIME,
            LABEL_HASH: self.content_hash,
            LABEL_VARIANT: self.variant.name,
            LABEL_BASE: self.base,
        }


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise FailedPrecondition(f"missing image source file {path}") from None


def load_inputs(
    variant: str = "cpu", base: str | None = None, layout: Layout | None = None
) -> ImageInputs:
    layout = layout or Layout.default()
    spec = get_variant(variant)
    guest = tuple(
        (path.name, path.read_bytes())
        for path in sorted(layout.guest_dir.glob("*.py"))
        if path.is_file()
    )
    return ImageInputs(
        variant=spec,
        base=resolve_base(variant, base),
        dockerfile=_read(layout.dockerfile),
        requirements=_read(layout.requirements(spec)),
        guest=guest,
    )


def runtime_image_tag(
    variant: str = "cpu", base: str | None = None, layout: Layout | None = None
) -> str:
    """``sandbox-runtime:<variant>-<16 hex>`` for the current sources (no Docker needed)."""
    return load_inputs(variant, base, layout).tag


def write_context(inputs: ImageInputs, wheelhouse: Path, context: Path) -> None:
    """Fill an empty directory with the docker build context.

    ``Dockerfile``, ``requirements.txt``, ``wheels/*.whl`` (hard links when possible)
    and ``trusted/sandbox/{__init__.py,guest/*.py}``; modes 0644/0755.
    """

    def put(relative: str, data: bytes) -> None:
        path = context / relative
        path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        path.write_bytes(data)
        path.chmod(0o644)

    put("Dockerfile", inputs.dockerfile)
    put("requirements.txt", inputs.requirements)
    put("trusted/sandbox/__init__.py", b"")
    for name, data in inputs.guest:
        put(f"trusted/sandbox/guest/{name}", data)
    wheels = context / "wheels"
    wheels.mkdir(mode=0o755)
    for wheel in sorted(wheelhouse.glob("*.whl")):
        try:
            os.link(wheel, wheels / wheel.name)
        except OSError:
            shutil.copyfile(wheel, wheels / wheel.name)
    for directory in (context, *(p for p in context.rglob("*") if p.is_dir())):
        directory.chmod(0o755)


def connect() -> docker.DockerClient:
    """A client for the local engine, negotiating the API version (newer SDK, older daemon)."""
    try:
        client = docker.from_env(version="auto")
        client.ping()
    except DockerException as error:
        raise EngineUnavailable(
            f"cannot reach the Docker engine ({error}); start it with scripts/bootstrap.sh"
        ) from error
    return client


def _image_exists(client: docker.DockerClient, tag: str) -> bool:
    try:
        client.images.get(tag)
    except ImageNotFound:
        return False
    return True


def _is_current(client: docker.DockerClient, inputs: ImageInputs) -> bool:
    try:
        image = client.images.get(inputs.tag)
    except ImageNotFound:
        return False
    return image.labels.get(LABEL_HASH) == inputs.content_hash


@contextlib.contextmanager
def _build_lock() -> Iterator[None]:
    """One image build at a time on this host (bootstrap and tests may race)."""
    cache_dir().mkdir(parents=True, exist_ok=True)
    with open(cache_dir() / "images.lock", "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_runtime_image(
    variant: str = "cpu",
    client: docker.DockerClient | None = None,
    log: Log = _stderr,
    *,
    base: str | None = None,
    layout: Layout | None = None,
) -> str:
    """Return the runtime tag for the current sources, building it only when missing.

    Builds the debootstrap base and the wheelhouse first when they are needed and
    missing. Existing ``sandbox-runtime:*`` tags are never removed (see ``prune``).
    """
    layout = layout or Layout.default()
    inputs = load_inputs(variant, base, layout)
    client = client or connect()
    if _is_current(client, inputs):
        return inputs.tag
    with _build_lock():
        if _is_current(client, inputs):  # built by whoever held the lock
            return inputs.tag
        started = time.monotonic()
        _remove_stale_scratch(log)
        if inputs.base == base_image_tag():
            _ensure_base_image(client, log)
        elif not _image_exists(client, inputs.base):
            raise FailedPrecondition(
                f"base image {inputs.base} not found; import it first (see docker/README.md)"
            )
        wheelhouse = _ensure_wheelhouse(variant, layout, log)
        with tempfile.TemporaryDirectory(prefix="context-", dir=_tmp_dir()) as context:
            write_context(inputs, wheelhouse, Path(context))
            _docker_build(client, Path(context), inputs, log)
        log(f"built {inputs.tag} in {time.monotonic() - started:.0f} s")
    return inputs.tag


def _docker_build(
    client: docker.DockerClient, context: Path, inputs: ImageInputs, log: Log
) -> None:
    log(f"building {inputs.tag} from {inputs.base}")
    recent: deque[str] = deque(maxlen=40)
    try:
        stream = client.api.build(
            path=str(context),
            tag=inputs.tag,
            buildargs={"BASE": inputs.base},
            labels=inputs.labels,
            rm=True,
            forcerm=True,
            pull=False,
            decode=True,
            timeout=BUILD_TIMEOUT_S,
        )
        for event in stream:
            for line in _event_lines(event):
                recent.append(line)
                log(line)
            if "error" in event:
                tail = "\n".join(recent)
                raise ImageBuildError(
                    f"docker build of {inputs.tag} failed: {str(event['error']).strip()}\n{tail}"
                )
    except DockerException as error:
        raise ImageBuildError(f"docker build of {inputs.tag} failed: {error}") from error
    if not _is_current(client, inputs):
        raise ImageBuildError(f"docker build finished but {inputs.tag} is missing")


def _event_lines(event: dict[str, Any]) -> list[str]:
    text = event.get("stream") or event.get("status") or ""
    return [line.rstrip() for line in str(text).splitlines() if line.strip()]


def _run_logged(command: list[str], log: Log, *, what: str) -> None:
    """Run a command, forwarding its output line by line; raise with the tail on failure."""
    recent: deque[str] = deque(maxlen=30)
    try:
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace"
        )
    except OSError as error:
        raise ImageBuildError(f"{what} could not start: {error}") from error
    assert process.stdout is not None
    with process:
        for raw in process.stdout:
            line = raw.rstrip()
            if line:
                recent.append(line)
                log(f"  {line}")
    if process.returncode != 0:
        tail = "\n".join(recent)
        raise ImageBuildError(f"{what} failed (exit {process.returncode}):\n{tail}")


# -------------------------------------------------------------------------- prune


def prune_runtime_images(
    keep_variants: Sequence[str] = tuple(VARIANTS),
    client: docker.DockerClient | None = None,
    log: Log = _stderr,
    *,
    layout: Layout | None = None,
    repository: str = RUNTIME_REPO,
    bases: bool = True,
    build_cache: bool = False,
) -> list[str]:
    """Remove ``sandbox-runtime:*`` tags other than the current tag of each kept variant.

    With ``bases``, also removes the debootstrap base tags (``sandbox-base:bookworm-``
    and 16 hex digits, never an operator's base) that are not current and that no
    remaining runtime image was built on. With ``build_cache``, also removes the
    dangling build-stage images (the next build then reinstalls the wheels).
    Images that a container still uses are kept and reported. Returns the tags removed.
    """
    current = {runtime_image_tag(v, layout=layout) for v in keep_variants}
    keep = {f"{repository}:{tag.split(':', 1)[1]}" for tag in current}
    client = client or connect()
    removed: list[str] = []

    def remove(tag: str) -> None:
        try:
            client.images.remove(tag)
        except APIError as error:
            log(f"kept {tag}: {error.explanation or error}")
            return
        removed.append(tag)
        log(f"removed {tag}")

    for image in client.images.list(name=repository):
        for tag in image.tags:
            if tag.startswith(f"{repository}:") and tag not in keep:
                remove(tag)
    if bases:
        in_use = {base_image_tag()} | {
            image.labels.get(LABEL_BASE, "") for image in client.images.list(name=RUNTIME_REPO)
        }
        ours = re.compile(rf"{re.escape(BASE_REPO)}:{re.escape(BASE_SUITE)}-[0-9a-f]{{16}}")
        for image in client.images.list(name=BASE_REPO):
            for tag in image.tags:
                if ours.fullmatch(tag) and tag not in in_use:
                    remove(tag)
    if build_cache:
        with contextlib.suppress(APIError):
            client.images.prune(
                filters={"dangling": True, "label": f"{LABEL_KIND}={KIND_BUILD_STAGE}"}
            )
    return removed


# ---------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sandbox.runner.images", description="Build the sandbox images."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text in (
        ("build", "build the runtime image unless it exists; print its tag"),
        ("tag", "print the runtime tag of the current sources (no Docker needed)"),
        ("wheelhouse", "download the wheelhouse unless complete; print its directory"),
    ):
        command = commands.add_parser(name, help=text)
        command.add_argument("--variant", choices=sorted(VARIANTS), default="cpu")
        if name != "wheelhouse":
            command.add_argument("--base", help="base image (default: the variant's default)")
    prune = commands.add_parser("prune", help="remove runtime tags other than the current ones")
    prune.add_argument(
        "--build-cache",
        action="store_true",
        help="also remove the build-stage images (the next build reinstalls the wheels)",
    )
    prune.add_argument(
        "--variant",
        dest="variants",
        action="append",
        choices=sorted(VARIANTS),
        help="variants whose current tag to keep (repeatable; default: all)",
    )
    args = parser.parse_args(argv)
    try:
        if args.command == "build":
            print(ensure_runtime_image(args.variant, base=args.base))
        elif args.command == "tag":
            print(runtime_image_tag(args.variant, args.base))
        elif args.command == "wheelhouse":
            print(ensure_wheelhouse(args.variant))
        else:
            prune_runtime_images(args.variants or tuple(VARIANTS), build_cache=args.build_cache)
    except SandboxError as error:
        print(f"error: {error.message}", file=sys.stderr)
        return error.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
