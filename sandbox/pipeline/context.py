"""What the steps of one job share: the context, and how container outputs are read."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

from sandbox.pipeline import containers
from sandbox.pipeline.report import Report
from sandbox.policy.model import Policy
from sandbox.runner.base import ContainerSpec, Runner, run_container
from sandbox.runner.workspace import JobWorkspace

MB = 1024 * 1024
Progress = Callable[[str, str], None]


class StepFailed(Exception):
    """A container step failed; the job ends `rejected` with this reason."""


@dataclass
class JobContext:
    """What the steps of one job share."""

    job_id: str
    policy: Policy
    runner: Runner
    image: str
    workspace: JobWorkspace
    report: Report
    progress: Progress
    logs: list[tuple[str, bytes]] = field(default_factory=list)
    gpu_device: str | None = None
    #: time.monotonic() of the policy's fixed release time; None: no fixed release time
    release_at: float | None = None
    #: set when the job was stopped at (or would have started a step after) release_at
    overran: bool = False

    def before_release(self, step: str) -> float | None:
        """Seconds left before the fixed release time (None without one); a step that
        would start at or after it does not start: StepFailed."""
        if self.release_at is None:
            return None
        left = self.release_at - time.monotonic()
        if left <= 0:
            self.overran = True
            raise StepFailed(containers.release_overrun_reason(step, self.policy, started=False))
        return left

    def run(self, spec: ContainerSpec) -> None:
        """Run one container; record its logs for the owner; raise StepFailed on failure.

        Under a fixed release time the container's wall-clock limit is the policy's or
        the time left before the release time, whichever is less, and a container that
        would start after it does not start: nothing the job does is still running then.
        """
        left = self.before_release(spec.step)
        capped = left is not None and left < spec.resources.wall_seconds
        if capped and left is not None:
            spec = replace(spec, resources=containers.capped(spec.resources, left))
        result = run_container(self.runner, spec)
        self.logs.append((spec.step, result.logs))
        if capped and result.status.timed_out:
            self.overran = True
            raise StepFailed(containers.release_overrun_reason(spec.step, self.policy))
        reason = containers.failure_reason(spec.step, result, self.policy)
        if reason is not None:
            raise StepFailed(reason)

    @contextmanager
    def timed(self, step: str, message: str, *, check_release: bool = True) -> Iterator[None]:
        """Time a step. With `check_release` (every step but the first and the release
        itself), a step that would start after the fixed release time does not start."""
        if check_release:
            self.before_release(step)
        self.progress(step, message)
        start = time.monotonic()
        try:
            yield
        finally:
            self.report.timings[step] = round(time.monotonic() - start, 3)


def read_small(path: Path, limit: int) -> bytes:
    """Read a file a container wrote: regular file, no links, bounded size."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as handle:
        stat = os.fstat(handle.fileno())
        if not (stat.st_mode & 0o170000 == 0o100000) or stat.st_size > limit:
            raise StepFailed(
                f"{path.name} from the container is not a regular file of <= {limit} B"
            )
        return handle.read(limit + 1)[:limit]


def expect_only(directory: Path, allowed: set[str], step: str) -> None:
    found = {entry.name for entry in os.scandir(directory)}
    extra, missing = sorted(found - allowed), sorted(allowed - found)
    if extra or missing:
        raise StepFailed(f"{step}: unexpected outputs {extra[:10]}, missing {missing}")
