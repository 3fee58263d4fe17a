"""One contract, every Runner backend: the process fake and Docker (runc, runsc).

The pipeline relies only on these behaviours; a new backend (e.g. Kubernetes)
must pass the same tests.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sandbox.runner.base import BindMount, ContainerSpec, Resources, Runner, run_container
from sandbox.runner.docker_runner import DockerRunner
from sandbox.runner.process_runner import ProcessRunner
from sandbox.runner.workspace import JobWorkspace

RES = Resources(
    cpus=1, memory_mb=256, pids=64, wall_seconds=30, tmp_mb=8, nofile=64, fsize_mb=8, log_kb=4
)


@dataclass
class Backend:
    runner: Runner
    python: str
    runtime: str
    image: str = "none"


@pytest.fixture(params=["process", "runc", "runsc"])
def backend(request: pytest.FixtureRequest) -> Backend:
    if request.param == "process":
        return Backend(ProcessRunner(), sys.executable, "runc")
    client = request.getfixturevalue("docker_client")
    image = request.getfixturevalue("runtime_image")
    runner = DockerRunner(client)
    runner.check_runtime(request.param)
    return Backend(runner, "python", request.param, image)


@pytest.fixture
def workspace(tmp_path: Path) -> Iterator[JobWorkspace]:
    with JobWorkspace(tmp_path / "work", "contract") as ws:
        yield ws


def spec(backend: Backend, code: str, **kw: object) -> ContainerSpec:
    fields: dict[str, object] = {
        "job_id": "contract",
        "step": "test",
        "image": backend.image,
        "command": (backend.python, "-c", code),
        "resources": RES,
        "runtime": backend.runtime,
    }
    fields.update(kw)
    return ContainerSpec(**fields)  # type: ignore[arg-type]


def _mark_docker(request: pytest.FixtureRequest) -> None:
    if request.node.callspec.params.get("backend") != "process":
        request.applymarker(pytest.mark.docker)


@pytest.fixture(autouse=True)
def _docker_marker(request: pytest.FixtureRequest) -> None:
    _mark_docker(request)


def test_exit_code_and_logs(backend: Backend) -> None:
    result = run_container(
        backend.runner,
        spec(backend, "import sys; print('out'); sys.stderr.write('err\\n'); sys.exit(3)"),
    )
    assert result.status.exit_code == 3
    assert not result.status.ok
    assert b"out" in result.logs
    assert b"err" in result.logs


def test_success(backend: Backend) -> None:
    result = run_container(backend.runner, spec(backend, "print('fine')"))
    assert result.status.ok
    assert result.status.exit_code == 0


def test_environment_is_exactly_what_was_given(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOST_SECRET", "leak")
    code = "import os; print(sorted(k for k in os.environ if k.startswith(('HOST_', 'GIVEN'))))"
    result = run_container(backend.runner, spec(backend, code, env={"GIVEN": "1"}))
    assert b"['GIVEN']" in result.logs


def test_output_mount_is_visible_on_the_host(backend: Backend, workspace: JobWorkspace) -> None:
    out = workspace.output_dir("test", 1)
    code = "import os; open(os.environ.get('SANDBOX_OUTPUT', '/output') + '/f', 'w').write('x')"
    result = run_container(
        backend.runner, spec(backend, code, mounts=(BindMount(out, "/output", read_only=False),))
    )
    assert result.status.ok, result.logs
    assert (out / "f").read_text() == "x"


def test_wall_clock_limit_kills(backend: Backend) -> None:
    runner = backend.runner
    handle = runner.start(spec(backend, "import time; time.sleep(60)"))
    try:
        status = runner.wait(handle, timeout_s=2)
    finally:
        runner.remove(handle)
    assert status.timed_out
    assert status.exit_code is None
    assert 2 <= status.duration_s < 30


def test_kill_and_remove_job(backend: Backend) -> None:
    runner = backend.runner
    handle = runner.start(spec(backend, "import time; time.sleep(60)", job_id="contract-kill"))
    assert "contract-kill" in runner.job_ids()
    runner.kill(handle)
    status = runner.wait(handle, timeout_s=20)
    assert not status.ok
    assert runner.remove_job("contract-kill") == 1
    assert "contract-kill" not in runner.job_ids()
    runner.remove(handle)  # removing twice is harmless


def test_logs_are_bounded(backend: Backend) -> None:
    result = run_container(backend.runner, spec(backend, "print('y' * 100000)"))
    assert result.status.ok
    assert len(result.logs) <= RES.log_kb * 1024
