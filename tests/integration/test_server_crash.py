"""`sandbox serve` killed with SIGKILL at several points, restarted each time.

Points: mid-upload, a job queued, a job in architecture, a job in train, mid-download;
then, with real Docker jobs held there by the test-only SANDBOX_FAILPOINT
(sandbox/service/failpoint.py), gate, checks, decide and release (before and after the
release row). After each restart: every started job ends in exactly one terminal
state, no release is recorded twice, and no container, tmpfs mount or plaintext file
is left. The clients are the real `sandbox` commands (`--json`, exit codes).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import grpc
import numpy as np
import pytest

from sandbox.api.gen.sandbox.v1 import dataset_pb2, model_pb2
from sandbox.client.config import load_config
from sandbox.client.connection import Client
from sandbox.demo import EXAMPLE_ALGORITHM, write_digits
from sandbox.service.state import init_state
from sandbox.store import JobState, Role, SqliteMetadataStore
from sandbox.store.metadata import TERMINAL

SANDBOX = Path(sys.executable).parent / "sandbox"
pytestmark = pytest.mark.docker


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    def __init__(self, state: Path, port: int, log: Path) -> None:
        self.state, self.port, self.log = state, port, log
        self.process: subprocess.Popen[bytes] | None = None
        self.failpoint = ""  # SANDBOX_FAILPOINT for the next start: "" for none

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if k != "SANDBOX_FAILPOINT"}
        if self.failpoint:
            env["SANDBOX_FAILPOINT"] = self.failpoint
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [
                    str(SANDBOX),
                    "serve",
                    "--state",
                    str(self.state),
                    "--address",
                    f"127.0.0.1:{self.port}",
                ],
                stdout=log,
                stderr=log,
                env=env,
            )
        deadline = time.monotonic() + 60
        config = load_config(self.state / "parties" / "owner" / "config.json")
        while time.monotonic() < deadline:
            try:
                with Client(config, progress=False) as client:
                    client.list_policies()
                return
            except Exception:
                assert self.process.poll() is None, self.log.read_text()[-3000:]
                time.sleep(0.2)
        raise AssertionError("server did not start")

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()


def cli(state: Path, party: str, *args: str, check: bool = True) -> Any:
    config = state / "parties" / party / "config.json"
    result = subprocess.run(
        [str(SANDBOX), *args, "--config", str(config), "--json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if check:
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)
    return result


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    port = _free_port()
    state = tmp_path / "state"
    init_state(state, [("owner", Role.DATA_OWNER), ("prov", Role.PROVIDER)], f"127.0.0.1:{port}")
    srv = Server(state, port, tmp_path / "server.log")
    srv.start()
    yield srv
    srv.stop()


def _client(state: Path, party: str) -> Client:
    return Client(load_config(state / "parties" / party / "config.json"), progress=False)


def _wait_state(state: Path, job_id: str, wanted: str, timeout_s: float = 120) -> None:
    with _client(state, "owner") as owner:
        for job in owner.watch(job_id, timeout_s=timeout_s):
            if job.state == wanted:
                return
            assert not job.terminal, (job.state, list(job.reasons))
    raise AssertionError(f"job never reached {wanted}")


def _nothing_left(state: Path, job_ids: list[str], client: docker.DockerClient) -> None:
    for job_id in job_ids:
        left = client.containers.list(all=True, filters={"label": f"sandbox.job={job_id}"})
        assert left == [], f"containers of {job_id} remain"
    with open("/proc/self/mounts") as mounts:
        assert [line for line in mounts if str(state) in line] == []
    assert list((state / "work").iterdir()) == []
    assert [p for p in (state / "blobs").iterdir() if p.name.startswith(".tmp-")] == []


def _check_terminal_once(state: Path, job_ids: list[str]) -> dict[str, Any]:
    store = SqliteMetadataStore(state / "metadata.sqlite")
    try:
        final = {}
        for job_id in job_ids:
            job = store.get_job(job_id)
            terminal = [c for c in job.history if c.to_state in TERMINAL]
            assert job.state in TERMINAL, (job_id, job.state)
            assert len(terminal) == 1, (job_id, job.history)
            final[job_id] = job
        return final
    finally:
        store.close()


def test_sigkill_at_every_point_then_restart(
    server: Server, tmp_path: Path, docker_client: docker.DockerClient, runtime_image: str
) -> None:
    state = server.state
    digits = write_digits(tmp_path / "digits.npz")

    # --- mid-upload: a large upload is cut by the kill; nothing of it remains
    big = tmp_path / "big.npz"
    rng = np.random.default_rng(0)
    with open(big, "wb") as handle:
        np.savez(
            handle,
            x=rng.standard_normal((60000, 1024), dtype=np.float32),
            y=np.zeros(60000, np.int64),
        )
    errors: list[BaseException] = []

    def upload() -> None:
        try:
            with _client(state, "owner") as owner:
                owner.upload_dataset(big, "big")
        except BaseException as error:
            errors.append(error)

    thread = threading.Thread(target=upload)
    thread.start()
    deadline = time.monotonic() + 30
    while not any((state / "work").glob("upload-*/plain/dataset.npz")):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    server.kill()
    thread.join(30)
    assert errors, "the upload should have failed with the server"
    server.start()
    _nothing_left(state, [], docker_client)
    with _client(state, "owner") as owner:
        listed = owner.datasets.ListDatasets(dataset_pb2.ListDatasetsRequest())
        assert list(listed.datasets) == []

    # --- the real commands: upload, upload, submit (pending approval)
    dataset = cli(state, "owner", "dataset", "upload", str(digits), "--name", "digits")["id"]
    algorithm = cli(state, "prov", "algorithm", "upload", str(EXAMPLE_ALGORITHM))["id"]
    queued = cli(state, "prov", "job", "submit", "--dataset", dataset, "--algorithm", algorithm)
    assert (queued["state"], queued["approval"]) == ("queued", "pending")

    # --- queued: a kill leaves the job queued; it still runs after the restart
    server.kill()
    server.start()
    assert cli(state, "owner", "job", "show", queued["id"])["state"] == "queued"
    cli(state, "owner", "job", "approve", queued["id"])

    # --- architecture: killed there, failed on restart with the reason
    _wait_state(state, queued["id"], "architecture")
    time.sleep(1.0)  # the export container is up
    server.kill()
    server.start()
    shown = cli(state, "owner", "job", "show", queued["id"])
    assert shown["state"] == "failed"
    assert shown["reasons"] == ["orchestrator restarted during architecture"]
    provider_view = cli(state, "prov", "job", "show", queued["id"])
    assert provider_view["state"] == "failed" and "reasons" not in provider_view

    # --- train: the same, with the training container running
    training = cli(state, "owner", "job", "submit", "--dataset", dataset, "--algorithm", algorithm)
    _wait_state(state, training["id"], "train")
    time.sleep(1.5)
    server.kill()
    server.start()
    shown = cli(state, "owner", "job", "show", training["id"])
    assert shown["reasons"] == ["orchestrator restarted during train"]
    _nothing_left(state, [queued["id"], training["id"]], docker_client)

    # --- a job that finishes; then a download cut by a kill
    done = cli(state, "owner", "job", "submit", "--dataset", dataset, "--algorithm", algorithm)
    watched = cli(state, "prov", "job", "watch", done["id"])
    assert watched["state"] == "done"
    assert watched["decision"] in ("released", "released_sanitized", "released_dp")
    with _client(state, "prov") as provider:
        stream = provider.models.DownloadModel(model_pb2.DownloadModelRequest(job_id=done["id"]))
        first = next(iter(stream))
        assert first.sha256
        server.kill()
        code = grpc.StatusCode.OK
        try:  # a small model may already be in flight in full; a larger one is cut
            for _ in stream:
                pass
        except grpc.RpcError as error:
            code = error.code()
        assert code in (grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE)
    server.start()
    model = tmp_path / "model.safetensors"
    downloaded = cli(state, "prov", "model", "download", done["id"], "--out", str(model))
    assert downloaded["verified"] is True
    assert downloaded["sha256"] == first.sha256
    report = cli(state, "owner", "job", "report", done["id"], "--out", str(tmp_path / "r"))
    assert 0.90 <= report["utility"]["released_accuracy"] <= 1.00
    # the release attestation verifies with the platform's key, against the model
    verified = subprocess.run(
        [
            str(SANDBOX),
            "verify",
            str(tmp_path / "r" / "attestation.json"),
            "--model",
            str(model),
            "--key",
            str(tmp_path / "r" / "platform.pem"),
            "--json",
        ],
        capture_output=True,
        text=True,
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr

    # --- every job terminal exactly once; one release; nothing left
    jobs = [queued["id"], training["id"], done["id"]]
    final = _check_terminal_once(state, jobs)
    assert [final[j].state for j in jobs] == [JobState.FAILED, JobState.FAILED, JobState.DONE]
    store = SqliteMetadataStore(state / "metadata.sqlite")
    try:
        assert store.get_release(done["id"]).model_sha256 == first.sha256
        for failed in jobs[:2]:
            with pytest.raises(Exception):
                store.get_release(failed)
    finally:
        store.close()
    _nothing_left(state, jobs, docker_client)
    assert not [p for p in Path(state / "work").rglob("*.npz")]


LINEAR_OK = Path(__file__).parent / "algorithms" / "linear_ok"
LATE_POINTS = [  # (fail point, state the job is in there, outcome after the restart)
    ("gate", "gate", ("failed", "orchestrator restarted during gate")),
    ("checks", "checks", ("failed", "orchestrator restarted during checks")),
    ("decide", "decide", ("failed", "orchestrator restarted during decide")),
    ("release-before-row", "release", ("failed", "orchestrator restarted during release")),
    ("release-after-row", "release", ("done", None)),
]


def test_sigkill_at_each_late_step_of_a_real_job(
    server: Server, tmp_path: Path, docker_client: docker.DockerClient, runtime_image: str
) -> None:
    """One server and dataset; per point a real job held there, SIGKILL, restart.

    The jobs run the tiny linear_ok algorithm (a few training steps): every step is
    real, but five jobs stay within CI's time budget.
    """
    state = server.state
    digits = str(write_digits(tmp_path / "d.npz"))
    dataset = cli(state, "owner", "dataset", "upload", digits, "--name", "d")["id"]
    algorithm = cli(state, "prov", "algorithm", "upload", str(LINEAR_OK))["id"]
    jobs: dict[str, str] = {}
    for point, at, _ in LATE_POINTS:
        server.stop()
        server.failpoint = point
        server.start()
        job = cli(state, "owner", "job", "submit", "--dataset", dataset, "--algorithm", algorithm)
        jobs[point] = job["id"]
        _wait_state(state, job["id"], at, timeout_s=240)
        time.sleep(0.5)  # the job thread is now held at the point
        server.kill()
    server.failpoint = ""
    server.start()

    final = _check_terminal_once(state, list(jobs.values()))
    store = SqliteMetadataStore(state / "metadata.sqlite")
    try:
        for point, _, (outcome, reason) in LATE_POINTS:
            job = final[jobs[point]]
            assert job.state.value == outcome, (point, job.state, job.reasons)
            if reason is not None:
                assert job.reasons == (reason,), point
                with pytest.raises(Exception):
                    store.get_release(job.id)
        kept = store.get_release(jobs["release-after-row"])
    finally:
        store.close()
    # the release written before the kill is kept, once, and downloads intact
    model = tmp_path / "model.safetensors"
    got = cli(state, "prov", "model", "download", jobs["release-after-row"], "--out", str(model))
    assert got["verified"] is True and got["sha256"] == kept.model_sha256
    _nothing_left(state, list(jobs.values()), docker_client)
    assert not [p for p in Path(state / "work").rglob("*.npz")]
    assert not [p for p in Path(state / "jobs").rglob("*.npz")]
