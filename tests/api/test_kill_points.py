"""SIGKILL the server with a job stopped at gate, checks, decide and release (before and
after the release row is written), restart, and check each job ends exactly once and
no release is recorded twice. No Docker: a fake executor stands in for the containers.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from sandbox.client.config import load_config
from sandbox.client.connection import Client
from sandbox.demo import EXAMPLE_ALGORITHM, write_digits
from sandbox.errors import NotFound
from sandbox.server import start_server
from sandbox.store import JobState
from sandbox.store.metadata import TERMINAL
from tests.api.fakes import FakeExecutor

ROOT = Path(__file__).resolve().parents[2]


def _client(configs: dict[str, Path], party: str, port: int) -> Client:
    config = replace(load_config(configs[party]), address=f"127.0.0.1:{port}")
    return Client(config, progress=False)


@pytest.mark.parametrize(
    ("point", "state_at_kill", "outcome"),
    [
        ("gate", "gate", ("failed", "orchestrator restarted during gate")),
        ("checks", "checks", ("failed", "orchestrator restarted during checks")),
        ("decide", "decide", ("failed", "orchestrator restarted during decide")),
        ("release-before-row", "release", ("failed", "orchestrator restarted during release")),
        ("release-after-row", "release", ("done", None)),
    ],
)
def test_kill_at_a_point_then_restart(
    point: str,
    state_at_kill: str,
    outcome: tuple[str, str | None],
    tmp_path: Path,
    initialised: tuple[Path, dict[str, Path]],
) -> None:
    template, configs = initialised
    state = tmp_path / "state"
    shutil.copytree(template, state)
    configs = {name: state / path.relative_to(template) for name, path in configs.items()}
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.api.killable_server", str(state), point],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        port = int(process.stdout.readline())
        with _client(configs, "alice", port) as alice, _client(configs, "bob", port) as bob:
            dataset = alice.upload_dataset(write_digits(tmp_path / "d.npz"), "d").id
            algorithm = bob.upload_algorithm(EXAMPLE_ALGORITHM).id
            job = alice.submit(dataset, algorithm, "default").id
            deadline = time.monotonic() + 30
            while alice.get_job(job).state != state_at_kill:
                assert time.monotonic() < deadline, alice.get_job(job)
                time.sleep(0.05)
            time.sleep(0.3)  # the worker is now blocked at the point
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(10)
    if point in ("gate", "checks"):  # the killed job's plaintext is still there
        assert list((state / "work").iterdir())
    else:  # from decide on, the job's plaintext is already gone
        assert list((state / "work").iterdir()) == []

    server = start_server(state, executor=FakeExecutor())
    try:
        store = server.platform.store
        final = store.get_job(job)
        assert final.state.value == outcome[0]
        if outcome[1] is not None:
            assert final.reasons == (outcome[1],)
        assert [c.to_state for c in final.history if c.to_state in TERMINAL] == [final.state]
        if final.state is JobState.DONE:
            assert store.get_release(job).job_id == job  # the one release, kept
        else:
            with pytest.raises(NotFound):
                store.get_release(job)
        assert list((state / "work").iterdir()) == []
        with open("/proc/self/mounts") as mounts:
            assert not [line for line in mounts if str(state) in line]
    finally:
        server.stop()


def test_the_fail_point_comes_only_from_the_server_environment() -> None:
    """Unset: no pause. An unknown point refuses to start. No RPC or policy can set it
    (Platform takes it only as a constructor argument, from `start_server`)."""
    from sandbox.errors import FailedPrecondition
    from sandbox.service.failpoint import ENV, FailPoint

    assert FailPoint.from_environment({}).point is None
    FailPoint.from_environment({}).pause_at("decide")  # returns at once
    assert FailPoint.from_environment({ENV: "decide"}).point == "decide"
    FailPoint("decide").pause_at("gate")  # another point: returns at once
    with pytest.raises(FailedPrecondition, match="not a fail point"):
        FailPoint.from_environment({ENV: "everything"})
