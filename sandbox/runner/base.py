"""The Runner protocol: how the pipeline runs one container, whatever the backend.

The pipeline builds a `ContainerSpec` (everything decided by the policy and the
pipeline, nothing by the algorithm package) and hands it to a Runner. Backends:
`DockerRunner` (production) and `ProcessRunner` (tests and the bare-metal
benchmark baseline only; it isolates nothing). A Kubernetes runner would slot in
here without touching the pipeline.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

# Labels on every container we create: clean-up and crash recovery find them.
LABEL_MANAGED = "sandbox.managed"
LABEL_JOB = "sandbox.job"
LABEL_STEP = "sandbox.step"

CONTAINER_USER = "65534:65534"  # nobody:nogroup


@dataclass(frozen=True)
class BindMount:
    """A host directory made visible in the container."""

    source: Path
    target: str
    read_only: bool = True


@dataclass(frozen=True)
class Resources:
    """Resource bounds of one container (from the policy's `limits`)."""

    cpus: float
    memory_mb: int
    pids: int
    wall_seconds: float
    tmp_mb: int
    nofile: int
    fsize_mb: int
    log_kb: int


@dataclass(frozen=True)
class ContainerSpec:
    job_id: str
    step: str
    image: str
    command: tuple[str, ...]
    resources: Resources
    runtime: Literal["runc", "runsc"] = "runc"
    mounts: tuple[BindMount, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    gpu_device: str | None = None  # one dedicated GPU (its index or UUID), or none
    workdir: str = "/tmp"


@dataclass(frozen=True)
class ContainerHandle:
    id: str
    job_id: str
    step: str


@dataclass(frozen=True)
class ExitStatus:
    exit_code: int | None  # None when killed before it exited on its own
    timed_out: bool = False
    oom_killed: bool = False
    duration_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out and not self.oom_killed


@dataclass(frozen=True)
class RunResult:
    status: ExitStatus
    logs: bytes


class Runner(Protocol):
    """Start, wait (killing at the wall-clock limit), kill, collect logs, clean up."""

    name: str

    def start(self, spec: ContainerSpec) -> ContainerHandle: ...

    def wait(self, handle: ContainerHandle, timeout_s: float) -> ExitStatus:
        """Wait for the container; past `timeout_s` kill it and report timed_out."""
        ...

    def kill(self, handle: ContainerHandle) -> None: ...

    def logs(self, handle: ContainerHandle, max_bytes: int) -> bytes:
        """Combined stdout and stderr, at most the last `max_bytes`."""
        ...

    def remove(self, handle: ContainerHandle) -> None:
        """Remove the container and what it holds; safe to call twice."""
        ...

    def remove_job(self, job_id: str) -> int:
        """Remove every container labelled with `job_id`; returns how many."""
        ...

    def job_ids(self) -> set[str]:
        """Job ids of every container this runner manages that still exists."""
        ...


def run_container(runner: Runner, spec: ContainerSpec) -> RunResult:
    """Run one container to completion; it is removed on every path."""
    handle = runner.start(spec)
    try:
        status = runner.wait(handle, spec.resources.wall_seconds)
        logs = runner.logs(handle, spec.resources.log_kb * 1024)
        return RunResult(status=status, logs=logs)
    finally:
        runner.remove(handle)
