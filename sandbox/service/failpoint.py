"""Test-only fault injection: pause every job at one named point of the pipeline.

The crash tests SIGKILL a real server (real Docker jobs) while a job is at a given
step, then restart it and check the reconciliation. Timing a kill from outside is
unreliable for the short steps (gate, checks, decide, release), so the server can be
told to stop a job there and wait, forever, for the kill:

    SANDBOX_FAILPOINT=decide sandbox serve ...

It is read once, from the server process's own environment, when the server starts
(`start_server`): no RPC, client, certificate or policy can set or change it, and
production servers never set it. A server started with it logs a warning, and a job
that reaches the point logs another, so it cannot go unnoticed. Unset, every
`pause_at` is a no-op.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from sandbox.errors import FailedPrecondition

ENV: Final = "SANDBOX_FAILPOINT"
# after the job entered the state (gate, checks, decide, release); release-before-row:
# in release, before the release row is written; release-after-row: written, not done
POINTS: Final = ("gate", "checks", "decide", "release-before-row", "release-after-row")

log = logging.getLogger("sandbox.service.failpoint")


@dataclass(frozen=True)
class FailPoint:
    point: str | None = None

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] = os.environ) -> FailPoint:
        point = environ.get(ENV, "")
        if not point:
            return cls()
        if point not in POINTS:
            raise FailedPrecondition(
                f"{ENV}={point!r} is not a fail point ({', '.join(POINTS)}); it is for "
                f"crash tests only: unset it to run a server"
            )
        log.warning("%s=%s: every job pauses at %s (crash tests only)", ENV, point, point)
        return cls(point)

    def pause_at(self, point: str) -> None:
        """Block the calling job thread forever if `point` is the configured one."""
        if self.point is not None and point == self.point:
            log.warning("fail point %s reached: this job pauses until the server is killed", point)
            threading.Event().wait()
