"""A server in its own process whose job stops (blocks) at a chosen point, to be killed.

    python -m tests.api.killable_server STATE POINT

POINT: gate | checks | decide | release-before-row | release-after-row. Prints the
port, then serves until killed.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import Any

from sandbox.server import start_server
from sandbox.store import JobState
from tests.api.fakes import FakeExecutor

FOREVER = threading.Event()


class StopAt(FakeExecutor):
    def __init__(self, step: str) -> None:
        super().__init__()
        self.step = step

    def run(self, **kwargs: Any) -> Any:
        progress = kwargs["progress"]

        def stopping(step: str, message: str) -> None:
            progress(step, message)
            if step == self.step:
                FOREVER.wait()

        return super().run(**{**kwargs, "progress": stopping})


def main(state: Path, point: str) -> None:
    executor = StopAt({"gate": "gate", "checks": "utility"}.get(point, ""))
    server = start_server(state, executor=executor)
    store: Any = server.platform.store
    transition, record_release = store.transition, store.record_release

    def blocking_transition(job_id: str, source: Any, target: Any, **kw: Any) -> Any:
        if point == "decide" and target is JobState.RELEASE:
            FOREVER.wait()  # decided, not yet released
        if point == "release-after-row" and target is JobState.DONE:
            FOREVER.wait()  # the release row exists; the job is not done
        return transition(job_id, source, target, **kw)

    def blocking_release(job_id: str, **kw: Any) -> Any:
        if point == "release-before-row":
            FOREVER.wait()
        return record_release(job_id, **kw)

    store.transition, store.record_release = blocking_transition, blocking_release
    print(server.port, flush=True)
    FOREVER.wait()


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
