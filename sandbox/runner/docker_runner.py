"""The Docker backend of the Runner protocol.

All container settings are derived here from the `ContainerSpec` (which the
pipeline built from the policy): nothing in an algorithm package can change
them. `container_options` is a pure function so that the exact hardening is
unit-tested without an engine.
"""

from __future__ import annotations

import time
from typing import Any

import docker
import docker.errors
import requests.exceptions
from docker.types import DeviceRequest, LogConfig, Mount, Ulimit

from sandbox.errors import EngineUnavailable
from sandbox.runner.base import (
    CONTAINER_USER,
    LABEL_JOB,
    LABEL_MANAGED,
    LABEL_STEP,
    ContainerHandle,
    ContainerSpec,
    ExitStatus,
)

DOCKER_SOCKET_PATHS = ("/var/run/docker.sock", "/run/docker.sock")
MB = 1024 * 1024
# gVisor's Sentry runs as host threads in the container's pids cgroup (about 44
# before the first guest instruction, measured with runsc 20221219); the policy's
# `pids` bounds the guest's own processes, so runsc gets this much on top.
RUNSC_THREAD_HEADROOM = 64


def container_options(spec: ContainerSpec) -> dict[str, Any]:
    """The keyword arguments of `containers.create` for `spec`: the hardening, in one place."""
    for mount in spec.mounts:
        if str(mount.source).rstrip("/") in DOCKER_SOCKET_PATHS or mount.source.name.endswith(
            ".sock"
        ):
            raise ValueError(f"refusing to mount a socket into a sandbox: {mount.source}")
    res = spec.resources
    options: dict[str, Any] = {
        "image": spec.image,
        "command": list(spec.command),
        "user": CONTAINER_USER,
        "environment": dict(spec.env),
        "working_dir": spec.workdir,
        "hostname": "sandbox",
        "labels": {LABEL_MANAGED: "1", LABEL_JOB: spec.job_id, LABEL_STEP: spec.step},
        "runtime": spec.runtime,
        # No network at all: only a loopback interface, no routes, no DNS.
        "network_mode": "none",
        # Immutable root; the only writable places are size-capped tmpfs mounts.
        "read_only": True,
        "tmpfs": {"/tmp": f"rw,nosuid,nodev,noexec,size={res.tmp_mb}m,mode=1777"},
        "mounts": [
            Mount(target=m.target, source=str(m.source), type="bind", read_only=m.read_only)
            for m in spec.mounts
        ],
        # No privileges: no capabilities, no setuid escalation, Docker's default
        # seccomp profile (never 'unconfined'), no privileged mode, own namespaces.
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges:true"],
        "privileged": False,
        "ipc_mode": "private",
        "pids_limit": res.pids + (RUNSC_THREAD_HEADROOM if spec.runtime == "runsc" else 0),
        "mem_limit": res.memory_mb * MB,
        "memswap_limit": res.memory_mb * MB,  # swap equal to memory: no swap
        "oom_kill_disable": False,
        "nano_cpus": int(res.cpus * 1e9),
        "shm_size": 64 * MB,
        "ulimits": [
            Ulimit(name="nofile", soft=res.nofile, hard=res.nofile),
            Ulimit(name="fsize", soft=res.fsize_mb * MB, hard=res.fsize_mb * MB),
            Ulimit(name="core", soft=0, hard=0),
        ],
        "log_config": LogConfig(
            type=LogConfig.types.JSON, config={"max-size": f"{res.log_kb}k", "max-file": "1"}
        ),
        "stdin_open": False,
        "tty": False,
        "detach": True,
    }
    if spec.gpu_device is not None:
        # Exactly one dedicated GPU, named explicitly: never `count=-1` (all GPUs).
        options["device_requests"] = [
            DeviceRequest(driver="nvidia", device_ids=[spec.gpu_device], capabilities=[["gpu"]])
        ]
    return options


def connect(timeout_s: float = 10.0) -> docker.DockerClient:
    """A client for the local engine, or a clear error saying how to get one."""
    try:
        client = docker.from_env(version="auto", timeout=int(max(timeout_s, 1)))
        client.ping()
    except (docker.errors.DockerException, requests.exceptions.RequestException) as error:
        raise EngineUnavailable(
            f"no Docker engine answers ({type(error).__name__}); "
            "run scripts/bootstrap.sh to install and start one"
        ) from error
    return client


class DockerRunner:
    name = "docker"

    def __init__(self, client: docker.DockerClient | None = None) -> None:
        self.client = client or connect()
        self._started: dict[str, float] = {}

    def check_runtime(self, runtime: str) -> None:
        runtimes = self.client.info().get("Runtimes", {})
        if runtime not in runtimes:
            raise EngineUnavailable(
                f"the Docker engine has no '{runtime}' runtime (it has: "
                f"{', '.join(sorted(runtimes))}); run scripts/bootstrap.sh to register gVisor"
            )

    def start(self, spec: ContainerSpec) -> ContainerHandle:
        options = container_options(spec)
        try:
            container = self.client.containers.create(**options)
        except docker.errors.ImageNotFound as error:
            raise EngineUnavailable(
                f"the sandbox image {spec.image} is missing; run scripts/bootstrap.sh"
            ) from error
        handle = ContainerHandle(id=str(container.id), job_id=spec.job_id, step=spec.step)
        try:
            container.start()
        except BaseException:
            self.remove(handle)
            raise
        self._started[handle.id] = time.monotonic()
        return handle

    def wait(self, handle: ContainerHandle, timeout_s: float) -> ExitStatus:
        container = self.client.containers.get(handle.id)
        started = self._started.get(handle.id, time.monotonic())
        remaining = max(0.0, timeout_s - (time.monotonic() - started))
        timed_out = False
        try:
            result = container.wait(timeout=max(remaining, 0.001))
            exit_code: int | None = int(result.get("StatusCode", -1))
        except (requests.exceptions.ReadTimeout, requests.exceptions.ConnectionError):
            timed_out = True
            self.kill(handle)
            container.wait(timeout=30)
            exit_code = None
        container.reload()
        state = container.attrs.get("State", {})
        return ExitStatus(
            exit_code=exit_code,
            timed_out=timed_out,
            oom_killed=bool(state.get("OOMKilled", False)),
            duration_s=time.monotonic() - started,
        )

    def kill(self, handle: ContainerHandle) -> None:
        try:
            self.client.containers.get(handle.id).kill()
        except docker.errors.NotFound:
            return
        except docker.errors.APIError as error:
            if "is not running" not in str(error):
                raise

    def logs(self, handle: ContainerHandle, max_bytes: int) -> bytes:
        try:
            data: bytes = self.client.containers.get(handle.id).logs(stdout=True, stderr=True)
        except docker.errors.NotFound:
            return b""
        return data[-max_bytes:]

    def remove(self, handle: ContainerHandle) -> None:
        self._started.pop(handle.id, None)
        try:
            self.client.containers.get(handle.id).remove(force=True, v=True)
        except docker.errors.NotFound:
            return

    def _managed(self, job_id: str | None = None) -> list[Any]:
        label = f"{LABEL_JOB}={job_id}" if job_id else f"{LABEL_MANAGED}=1"
        return list(self.client.containers.list(all=True, filters={"label": label}))

    def remove_job(self, job_id: str) -> int:
        removed = 0
        for container in self._managed(job_id):
            try:
                container.remove(force=True, v=True)
                removed += 1
            except docker.errors.NotFound:
                continue
        return removed

    def job_ids(self) -> set[str]:
        return {c.labels.get(LABEL_JOB, "") for c in self._managed()} - {""}
