"""What runs a job's pipeline: the production one drives Docker through `run_local`.

The platform talks to an `Executor`, so tests can run the queue, the state machine
and the views with a fake that writes a model without containers.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from sandbox.pipeline.report import Report
from sandbox.policy.model import Policy
from sandbox.runner.base import Runner

Progress = Callable[[str, str], None]


class Executor(Protocol):
    def run(
        self,
        *,
        job_id: str,
        algorithm: Path,
        dataset: Path,
        policy: Policy,
        out_dir: Path,
        progress: Progress,
        gpu_device: str | None,
    ) -> Report: ...

    def stop(self, job_id: str) -> None:
        """Kill the job's containers (cancel)."""

    def reconcile(self, job_ids: set[str]) -> list[str]:
        """Remove any container left by these jobs (at start, after a crash)."""


class DockerExecutor:
    """`run_local` on Docker, with the server's signing key, audit log and work root."""

    def __init__(self, *, signing_key: Ed25519PrivateKey, audit_path: Path, work_root: Path):
        self.signing_key = signing_key
        self.audit_path = audit_path
        self.work_root = work_root
        self._backends: dict[str, tuple[Runner, str]] = {}
        self._lock = threading.Lock()

    def _backend(self, runtime: str) -> tuple[Runner, str]:
        from sandbox.runner.backend import docker_backend

        with self._lock:
            if runtime not in self._backends:
                self._backends[runtime] = docker_backend(runtime)
            return self._backends[runtime]

    def run(
        self,
        *,
        job_id: str,
        algorithm: Path,
        dataset: Path,
        policy: Policy,
        out_dir: Path,
        progress: Progress,
        gpu_device: str | None,
    ) -> Report:
        from sandbox.pipeline.local import run_local

        runner, image = self._backend(policy.runtime)
        return run_local(
            algorithm,
            dataset,
            policy,
            out_dir,
            runner=runner,
            image=image,
            work_root=self.work_root,
            progress=progress,
            gpu_device=gpu_device,
            job_id=job_id,
            signing_key=self.signing_key,
            audit_path=self.audit_path,
        )

    def stop(self, job_id: str) -> None:
        with self._lock:
            runners = [runner for runner, _ in self._backends.values()]
        for runner in runners:
            runner.remove_job(job_id)

    def reconcile(self, job_ids: set[str]) -> list[str]:
        from sandbox.runner.docker_runner import DockerRunner

        runner = DockerRunner()
        left = sorted(runner.job_ids() & job_ids)
        for job_id in left:
            runner.remove_job(job_id)
        return left
