"""Per-job private directories on the host, and their clean-up on every path.

Layout of one job (the job directory is 0700, owned by the orchestrator):

    <root>/<job_id>/owner.json     which process owns the job (for crash sweeps)
    <root>/<job_id>/plain/         tmpfs: plaintext inputs (dataset split, package)
    <root>/<job_id>/out-<step>/    tmpfs, size-capped, owned by the container user:
                                   the only place a container can write to disk

Size-capped tmpfs mounts need root. Without root the workspace refuses to start
unless SANDBOX_ALLOW_UNCAPPED_OUTPUT=1 (then outputs are plain directories bounded
only by the fsize ulimit and the gate; never use that in production).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
from pathlib import Path

from sandbox.errors import EngineUnavailable

CONTAINER_UID = 65534


def default_root() -> Path:
    env = os.environ.get("SANDBOX_WORKDIR")
    if env:
        return Path(env)
    if os.geteuid() == 0:
        return Path("/var/lib/sandbox/work")
    return Path.home() / ".cache" / "sandbox" / "work"


def _mounted(path: Path) -> bool:
    target = str(path.resolve())
    with open("/proc/self/mounts", encoding="utf-8") as mounts:
        return any(line.split()[1] == target for line in mounts)


def _mounts_under(path: Path) -> list[str]:
    prefix = str(path.resolve()).rstrip("/") + "/"
    with open("/proc/self/mounts", encoding="utf-8") as mounts:
        found = [line.split()[1] for line in mounts]
    return sorted((m for m in found if m.startswith(prefix)), key=len, reverse=True)


def _unmount(target: str) -> None:
    result = subprocess.run(["umount", target], capture_output=True, check=False)
    if result.returncode != 0:
        subprocess.run(["umount", "-l", target], capture_output=True, check=False)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class JobWorkspace:
    """The private host directories of one job. Use as a context manager."""

    def __init__(self, root: Path, job_id: str) -> None:
        self.root = root
        self.job_id = job_id
        self.path = root / job_id
        self.can_mount = os.geteuid() == 0
        if not self.can_mount and os.environ.get("SANDBOX_ALLOW_UNCAPPED_OUTPUT") != "1":
            raise EngineUnavailable(
                "size-capped tmpfs outputs need root; run the orchestrator as root "
                "(it drives Docker, which is root-equivalent anyway)"
            )

    def __enter__(self) -> JobWorkspace:
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path.mkdir(mode=0o700)
        (self.path / "owner.json").write_text(json.dumps({"pid": os.getpid()}))
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def tmpfs(self, name: str, size_mb: int, *, owner_uid: int = 0, mode: int = 0o755) -> Path:
        """A new size-capped tmpfs directory `name` inside the job directory."""
        target = self.path / name
        target.mkdir(mode=0o700)
        if self.can_mount:
            options = (
                f"size={size_mb}m,mode={mode:o},uid={owner_uid},gid={owner_uid},nosuid,nodev,noexec"
            )
            result = subprocess.run(
                ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)],
                capture_output=True,
                text=True,
                check=False,
            )
            if result.returncode != 0:
                raise EngineUnavailable(
                    f"cannot mount a tmpfs at {target}: {result.stderr.strip()}"
                )
        else:
            os.chmod(target, mode)
            with contextlib.suppress(PermissionError):
                os.chown(target, owner_uid, owner_uid)
        return target

    def output_dir(self, step: str, size_mb: int) -> Path:
        """Where step `step`'s container may write: its own tmpfs, owned by the container user."""
        return self.tmpfs(f"out-{step}", size_mb, owner_uid=CONTAINER_UID, mode=0o700)

    def close(self) -> None:
        remove_job_dir(self.path)


def remove_job_dir(path: Path) -> None:
    """Unmount everything below `path` and delete it; safe to call twice."""
    if not path.exists():
        return
    for target in _mounts_under(path):
        _unmount(target)
    if _mounted(path):
        _unmount(str(path))
    shutil.rmtree(path, ignore_errors=True)


def sweep_stale(root: Path) -> list[str]:
    """Remove the workspaces of jobs whose owning process is gone (after a crash)."""
    swept: list[str] = []
    if not root.is_dir():
        return swept
    for job_dir in root.iterdir():
        owner = job_dir / "owner.json"
        try:
            pid = int(json.loads(owner.read_text())["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            pid = -1
        if pid > 0 and pid != os.getpid() and _pid_alive(pid):
            continue
        if pid == os.getpid():
            continue
        remove_job_dir(job_dir)
        swept.append(job_dir.name)
    return swept
