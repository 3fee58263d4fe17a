"""Building the containers of a job from the policy, and reading how they ended.

Everything about a container - image, limits, runtime, mounts, environment - is
decided here from the policy and the pipeline. The algorithm package supplies
files only; it cannot add a mount, a variable, a capability or a device.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import replace

from sandbox.guest import protocol
from sandbox.policy.model import Policy
from sandbox.runner.base import BindMount, ContainerSpec, Resources, RunResult

_MARKER = re.compile(rb"^" + re.escape(protocol.ERROR_MARKER.encode()) + rb"(.*)$", re.M)


def resources(policy: Policy) -> Resources:
    lim = policy.limits
    return Resources(
        cpus=lim.cpus,
        memory_mb=lim.memory_mb,
        pids=lim.pids,
        wall_seconds=float(lim.wall_seconds),
        tmp_mb=lim.tmp_mb,
        nofile=lim.nofile,
        fsize_mb=lim.fsize_mb,
        log_kb=lim.log_kb,
    )


def capped(limits: Resources, seconds_left: float) -> Resources:
    """`limits` with the wall-clock limit lowered to `seconds_left` (the time left before
    the policy's fixed release time) where that is less: the container cannot run past it."""
    return replace(limits, wall_seconds=min(limits.wall_seconds, max(0.0, seconds_left)))


def release_overrun_reason(step: str, policy: Policy, *, started: bool = True) -> str:
    """Why a job that reached its fixed release time still computing was rejected."""
    delay = policy.release.fixed_delay_seconds
    what = "was stopped at" if started else "would have started after"
    return (
        f"{step}: {what} the policy's fixed release time of {delay} s after submission, "
        "so the job was rejected (its outcome appears at a fixed time after that, whatever "
        "the job did); lower the work (epochs, data, model size) to finish well within "
        f"{delay} s, or ask for a policy with a later release time"
    )


_PATH_VARIABLES = {
    "/algorithm": "SANDBOX_ALGORITHM",
    "/data": "SANDBOX_DATA",
    "/output": "SANDBOX_OUTPUT",
    "/work": "SANDBOX_WORK",
    "/train": "SANDBOX_TRAIN",
}


def guest_env(
    policy: Policy,
    extra: Mapping[str, str] | None = None,
    mounted: Sequence[str] = tuple(_PATH_VARIABLES),
) -> dict[str, str]:
    """The complete environment of a guest: nothing from the host leaks in.

    A SANDBOX_* path variable is set only when that path is mounted, so the
    export container (no dataset) has no SANDBOX_DATA to mislead anyone.
    """
    threads = str(max(1, int(policy.limits.cpus)))
    env = {var: target for target, var in _PATH_VARIABLES.items() if target in mounted}
    env |= {
        "OMP_NUM_THREADS": threads,
        "MKL_NUM_THREADS": threads,
        "HOME": "/tmp",
        "TMPDIR": "/tmp",
    }
    env.update(extra or {})
    return env


def guest_spec(
    policy: Policy,
    *,
    job_id: str,
    step: str,
    image: str,
    module: str,
    mounts: Sequence[BindMount],
    env: Mapping[str, str] | None = None,
    args: Sequence[str] = (),
    gpu_device: str | None = None,
) -> ContainerSpec:
    """A container that runs trusted guest entrypoint `module` (e.g. 'export')."""
    return ContainerSpec(
        job_id=job_id,
        step=step,
        image=image,
        command=("python", "-P", "-m", f"sandbox.guest.{module}", *args),
        resources=resources(policy),
        runtime=policy.runtime,
        mounts=tuple(mounts),
        env=guest_env(policy, {**(env or {}), **_gpu_env(gpu_device)}, [m.target for m in mounts]),
        gpu_device=gpu_device,
    )


def _gpu_env(gpu_device: str | None) -> dict[str, str]:
    if gpu_device is None:
        return {}
    return {"NVIDIA_DRIVER_CAPABILITIES": "compute,utility"}


def failure_reason(step: str, result: RunResult, policy: Policy) -> str | None:
    """None when the container succeeded, else a sentence naming what went wrong."""
    status = result.status
    if status.timed_out:
        return f"{step}: killed at the wall-clock limit of {policy.limits.wall_seconds} s"
    if status.oom_killed:
        return f"{step}: ran out of memory (limit {policy.limits.memory_mb} MB) and was killed"
    if status.exit_code == 0:
        return None
    marked = _MARKER.findall(result.logs)
    if marked:
        text = marked[-1].decode("utf-8", "replace").strip()
        return f"{step}: {_printable(text)}"
    if status.exit_code == 137:
        return f"{step}: killed (status 137: out of memory or a resource limit)"
    return f"{step}: the container exited with status {status.exit_code}"


def _printable(text: str, limit: int = 400) -> str:
    cleaned = "".join(ch if ch.isprintable() else "?" for ch in text)
    return cleaned[:limit]
