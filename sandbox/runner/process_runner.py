"""A Runner that runs commands as plain host processes. IT ISOLATES NOTHING.

For unit/contract tests and for the benchmark's bare-metal baseline only: the
pipeline never picks it by itself and no CLI flag selects it. Mount targets are
made available to guest code through the SANDBOX_* environment variables.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from sandbox.runner.base import ContainerHandle, ContainerSpec, ExitStatus

_TARGET_ENV = {
    "/algorithm": "SANDBOX_ALGORITHM",
    "/data": "SANDBOX_DATA",
    "/output": "SANDBOX_OUTPUT",
    "/work": "SANDBOX_WORK",
    "/train": "SANDBOX_TRAIN",
}


@dataclass
class _Process:
    popen: subprocess.Popen[bytes]
    log: IO[bytes]
    started: float
    job_id: str
    tmp: tempfile.TemporaryDirectory[str]


class ProcessRunner:
    name = "process"

    def __init__(self, python_path: str | None = None) -> None:
        self._procs: dict[str, _Process] = {}
        self._count = 0
        self._python_path = python_path

    def start(self, spec: ContainerSpec) -> ContainerHandle:
        tmp = tempfile.TemporaryDirectory(prefix="sandbox-proc-")
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": tmp.name,
            "TMPDIR": tmp.name,
        }
        env.update(spec.env)
        if self._python_path:
            env["PYTHONPATH"] = self._python_path
        for mount in spec.mounts:
            if mount.target in _TARGET_ENV:
                env[_TARGET_ENV[mount.target]] = str(mount.source)
        log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in remove()
        popen = subprocess.Popen(
            list(spec.command),
            env=env,
            cwd=tmp.name,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        self._count += 1
        handle = ContainerHandle(id=f"proc-{self._count}", job_id=spec.job_id, step=spec.step)
        self._procs[handle.id] = _Process(popen, log, time.monotonic(), spec.job_id, tmp)
        return handle

    def wait(self, handle: ContainerHandle, timeout_s: float) -> ExitStatus:
        proc = self._procs[handle.id]
        remaining = max(0.001, timeout_s - (time.monotonic() - proc.started))
        try:
            code: int | None = proc.popen.wait(timeout=remaining)
            timed_out = False
        except subprocess.TimeoutExpired:
            self.kill(handle)
            proc.popen.wait()
            code, timed_out = None, True
        if code is not None and code < 0:  # killed by a signal, as Docker reports 128+n
            code = 128 - code
        return ExitStatus(code, timed_out, False, time.monotonic() - proc.started)

    def kill(self, handle: ContainerHandle) -> None:
        proc = self._procs.get(handle.id)
        if proc and proc.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.popen.pid, signal.SIGKILL)

    def logs(self, handle: ContainerHandle, max_bytes: int) -> bytes:
        proc = self._procs.get(handle.id)
        if proc is None:
            return b""
        proc.log.seek(0)
        return proc.log.read()[-max_bytes:]

    def remove(self, handle: ContainerHandle) -> None:
        proc = self._procs.pop(handle.id, None)
        if proc is None:
            return
        if proc.popen.poll() is None:
            os.killpg(proc.popen.pid, signal.SIGKILL)
            proc.popen.wait()
        proc.log.close()
        proc.tmp.cleanup()

    def remove_job(self, job_id: str) -> int:
        ids = [h for h, p in self._procs.items() if p.job_id == job_id]
        for handle_id in ids:
            self.remove(ContainerHandle(handle_id, job_id, ""))
        return len(ids)

    def job_ids(self) -> set[str]:
        return {p.job_id for p in self._procs.values()}


def repo_python_path() -> str:
    """PYTHONPATH that makes `sandbox.guest` importable for host processes."""
    return str(Path(__file__).resolve().parents[2])
