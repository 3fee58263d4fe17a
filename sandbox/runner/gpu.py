"""Dedicated GPUs: one per job, never shared, handed back after a scrub.

The pool lists devices from SANDBOX_GPUS (comma-separated indices or UUIDs) or,
when unset, from `nvidia-smi -L`. A job that the policy grants a GPU acquires one
device; `DockerRunner` turns it into a device request for exactly that device.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
from collections.abc import Callable

from sandbox.errors import FailedPrecondition


def discover_gpus() -> list[str]:
    env = os.environ.get("SANDBOX_GPUS")
    if env is not None:
        return [d.strip() for d in env.split(",") if d.strip()]
    if shutil.which("nvidia-smi") is None:
        return []
    listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, check=False)
    return re.findall(r"\(UUID: (GPU-[0-9a-fA-F-]+)\)", listing.stdout)


class GpuPool:
    def __init__(
        self,
        devices: list[str] | None = None,
        scrub: Callable[[str], None] | None = None,
    ) -> None:
        self._free = list(discover_gpus() if devices is None else devices)
        self._busy: dict[str, str] = {}
        self._lock = threading.Lock()
        self._scrub = scrub

    def acquire(self, job_id: str) -> str:
        with self._lock:
            if not self._free:
                raise FailedPrecondition(
                    "the policy grants a GPU but none is free on this host "
                    f"({len(self._busy)} in use); wait, or use a CPU policy"
                )
            device = self._free.pop(0)
            self._busy[device] = job_id
            return device

    def release(self, device: str) -> None:
        if self._scrub is not None:
            self._scrub(device)  # e.g. check no process still holds memory on it
        with self._lock:
            if self._busy.pop(device, None) is not None:
                self._free.append(device)

    @property
    def free(self) -> int:
        return len(self._free)
