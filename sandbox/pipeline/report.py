"""The job report (report.json): what the data owner reads about a job.

DESIGN.md section 4 fixes its minimum: decision, reasons, checks, utility, dp,
timings. Written atomically so a crash never leaves half a report.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

Decision = Literal["released", "released_sanitized", "released_dp", "rejected"]


@dataclass
class Report:
    job_id: str
    policy: dict[str, str]
    decision: Decision = "rejected"
    reasons: list[str] = field(default_factory=list)
    algorithm: dict[str, Any] = field(default_factory=dict)
    dataset: dict[str, Any] = field(default_factory=dict)
    architecture: dict[str, Any] = field(default_factory=dict)
    gate: dict[str, Any] = field(default_factory=dict)
    checks: list[dict[str, Any]] = field(default_factory=list)
    utility: dict[str, Any] = field(default_factory=dict)
    dp: dict[str, Any] | None = None
    probes: dict[str, Any] | None = None
    model: dict[str, Any] | None = None
    timings: dict[str, float] = field(default_factory=dict)
    membership: dict[str, Any] | None = None  # the canary audit (aggregates only)
    format: int = 1

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write `data` to `path` via a temporary file, fsync and rename."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
