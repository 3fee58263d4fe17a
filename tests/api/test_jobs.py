"""Jobs through the API with a fake executor: approvals, the queue, cancel, crashes,
quotas, restarts, and what each party sees."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import grpc
import pytest

from sandbox.demo import EXAMPLE_ALGORITHM, write_digits
from sandbox.errors import (
    FailedPrecondition,
    LimitExceeded,
    NotFound,
    PermissionDenied,
    VerificationFailed,
)
from sandbox.store import JobState, SqliteMetadataStore
from tests.api.conftest import Env
from tests.api.fakes import FakeExecutor

# The same behaviour on both metadata backends (the in-memory one is the tests' fake).
pytestmark = pytest.mark.parametrize("backend", ["sqlite", "memory"], indirect=True)


def _setup(
    env: Env, tmp_path: Path, owner: str = "alice", provider: str = "bob"
) -> tuple[str, str]:
    path = tmp_path / f"{owner}.npz"
    if not path.exists():
        write_digits(path)
    dataset = env.client(owner).upload_dataset(path, "digits")
    algorithm = env.client(provider).upload_algorithm(EXAMPLE_ALGORITHM)
    return dataset.id, algorithm.id


def _finished(env: Env, party: str, job_id: str) -> object:
    return env.client(party).wait(job_id, timeout_s=30)


def test_a_job_waits_for_approval_then_releases(env: Env, tmp_path: Path) -> None:
    dataset, algorithm = _setup(env, tmp_path)
    job = env.client("bob").submit(dataset, algorithm, "default")
    assert (job.state, job.approval) == ("queued", "pending")
    time.sleep(1.2)  # the scheduler has looked at least once
    assert env.client("alice").get_job(job.id).state == "queued"
    assert env.executor.seen_inputs == []
    env.client("alice").approve(job.id)
    final = _finished(env, "bob", job.id)
    assert (final.state, final.decision) == ("done", "released")  # type: ignore[attr-defined]
    download = env.client("bob").download_model(job.id, tmp_path / "m.safetensors")
    assert download["verified"]
    release = env.client("alice").release(job.id)
    assert hashlib.sha256((tmp_path / "m.safetensors").read_bytes()).hexdigest() == (
        release.model_sha256
    )
    history = [h.to_state for h in env.client("alice").get_job(job.id).history]
    assert history == [
        "queued",
        "architecture",
        "train",
        "gate",
        "checks",
        "decide",
        "release",
        "done",
    ]
    # the job's plaintext inputs are gone
    assert [p.name for p in (env.state / "work").iterdir()] == []


def test_the_owner_submitting_approves_implicitly(env: Env, tmp_path: Path) -> None:
    dataset, algorithm = _setup(env, tmp_path)
    job = env.client("alice").submit(dataset, algorithm, "default")
    assert job.approval == "approved"
    assert _finished(env, "alice", job.id).decision == "released"  # type: ignore[attr-defined]


def test_provider_sees_only_state_and_decision(env: Env, tmp_path: Path) -> None:
    env.executor.mode = "rejected"
    dataset, algorithm = _setup(env, tmp_path)
    job = env.client("alice").submit(dataset, algorithm, "default")
    states = [j.state for j in env.client("bob").watch(job.id, timeout_s=30)]
    assert [j.id for j in env.client("bob").list_jobs().jobs] == [job.id]  # owner-submitted
    assert set(states) <= {"queued", "running", "done"}
    seen = env.client("bob").get_job(job.id)
    assert (seen.state, seen.decision) == ("done", "rejected")
    assert list(seen.reasons) == [] and list(seen.history) == []
    report = env.client("bob").report(job.id)
    text = report.SerializeToString()
    assert b"secret row 17" not in text  # no reasons quoting container output, no logs
    assert b"timings" not in text and b"exit code" not in text
    assert json.loads(report.report_json) == {"decision": "rejected", "job_id": job.id}
    with pytest.raises(NotFound):
        env.client("bob").download_model(job.id, tmp_path / "m")


def test_owner_sees_the_full_report_and_logs(env: Env, tmp_path: Path) -> None:
    env.executor.mode = "rejected"
    dataset, algorithm = _setup(env, tmp_path)
    job = env.client("alice").submit(dataset, algorithm, "default")
    _finished(env, "alice", job.id)
    seen = env.client("alice").get_job(job.id)
    assert "secret row 17" in seen.reasons[0]
    report = env.client("alice").report(job.id)
    assert b"secret row 17" in report.logs
    assert json.loads(report.report_json)["timings"] == {"train": 1.5}


def test_other_parties_see_nothing(env: Env, tmp_path: Path) -> None:
    dataset, algorithm = _setup(env, tmp_path)
    job = env.client("alice").submit(dataset, algorithm, "default")
    _finished(env, "alice", job.id)
    for party in ("carol", "pete"):  # another owner, another provider
        with pytest.raises(NotFound):
            env.client(party).get_job(job.id)
        with pytest.raises(NotFound):
            env.client(party).download_model(job.id, tmp_path / "x")
        assert list(env.client(party).list_jobs().jobs) == []
    with pytest.raises(PermissionDenied):  # the operator sees metadata, not reports or models
        env.client("olga").report(job.id)
    assert env.client("olga").get_job(job.id).state == "done"
    carol_ds = env.client("carol").datasets
    from sandbox.api.gen.sandbox.v1 import dataset_pb2

    with pytest.raises(grpc.RpcError) as caught:
        carol_ds.GetDataset(dataset_pb2.GetDatasetRequest(id=dataset))
    assert caught.value.code() is grpc.StatusCode.NOT_FOUND
    listed = carol_ds.ListDatasets(dataset_pb2.ListDatasetsRequest())
    assert list(listed.datasets) == []
    with pytest.raises(NotFound):  # pete cannot run bob's algorithm
        env.client("pete").submit(dataset, algorithm, "default")
    with pytest.raises(NotFound):  # carol cannot use alice's data
        env.client("carol").submit(dataset, algorithm, "default")


def test_deny_cancels_and_nothing_runs(env: Env, tmp_path: Path) -> None:
    dataset, algorithm = _setup(env, tmp_path)
    job = env.client("bob").submit(dataset, algorithm, "default")
    denied = env.client("alice").approve(job.id, deny=True)
    assert (denied.state, denied.approval) == ("cancelled", "denied")
    with pytest.raises(FailedPrecondition):
        env.client("alice").approve(job.id)
    assert env.executor.seen_inputs == []


def test_cancel_a_running_job(env: Env, tmp_path: Path) -> None:
    env.executor.mode = "block"
    dataset, algorithm = _setup(env, tmp_path)
    job = env.client("alice").submit(dataset, algorithm, "default")
    for seen in env.client("alice").watch(job.id, timeout_s=30):
        if seen.state == "train":
            break
    with pytest.raises(PermissionDenied):  # bob did not submit it
        env.client("bob").cancel(job.id)
    cancelled = env.client("alice").cancel(job.id)
    assert cancelled.state == "cancelled"
    assert env.executor.stopped == [job.id]
    assert env.server.platform.wait_idle(10)
    final = env.client("alice").get_job(job.id)
    assert final.state == "cancelled" and final.decision == ""
    assert [p.name for p in (env.state / "work").iterdir()] == []
    with pytest.raises(FailedPrecondition):
        env.client("alice").cancel(job.id)


def test_an_internal_error_fails_the_job_without_detail(env: Env, tmp_path: Path) -> None:
    env.executor.mode = "crash"
    dataset, algorithm = _setup(env, tmp_path)
    job = env.client("alice").submit(dataset, algorithm, "default")
    _finished(env, "alice", job.id)
    seen = env.client("alice").get_job(job.id)
    assert seen.state == "failed"
    assert list(seen.reasons) == ["the job stopped on an internal error"]
    assert b"/secret/path" not in seen.SerializeToString()
    assert env.client("bob").get_job(job.id).state == "failed"


def test_quota_bounds_jobs_per_provider(env: Env, tmp_path: Path) -> None:
    dataset, algorithm = _setup(env, tmp_path)
    policy = env.server.platform.policy("strict")
    limit = policy.quotas.jobs_per_provider_per_day
    for _ in range(limit):
        env.client("bob").submit(dataset, algorithm, "strict")
    with pytest.raises(LimitExceeded) as caught:
        env.client("bob").submit(dataset, algorithm, "strict")
    assert "quota" in caught.value.message and caught.value.exit_code == 3


def test_policies_are_names_never_paths(env: Env, tmp_path: Path) -> None:
    dataset, algorithm = _setup(env, tmp_path)
    with pytest.raises(NotFound):
        env.client("bob").submit(dataset, algorithm, "/etc/passwd")
    assert "default" in env.client("sam").list_policies()


def test_download_checks_the_release_record(env: Env, tmp_path: Path) -> None:
    dataset, algorithm = _setup(env, tmp_path)
    job = env.client("alice").submit(dataset, algorithm, "default")
    _finished(env, "alice", job.id)
    release = env.client("bob").release(job.id)
    blob = env.state / "blobs" / release.model_sha256[:2] / release.model_sha256[2:]
    blob.chmod(0o600)
    data = bytearray(blob.read_bytes())
    data[10] ^= 1
    blob.write_bytes(bytes(data))
    with pytest.raises(VerificationFailed):
        env.client("bob").download_model(job.id, tmp_path / "m.safetensors")
    assert not (tmp_path / "m.safetensors").exists()


def test_restart_fails_started_jobs_and_keeps_queued_ones(
    env: Env, tmp_path: Path, backend: str
) -> None:
    if backend == "memory":
        pytest.skip("a restart needs the durable store")
    dataset, algorithm = _setup(env, tmp_path)
    queued = env.client("bob").submit(dataset, algorithm, "default")  # awaits approval
    env.server.stop()
    store = SqliteMetadataStore(env.state / "metadata.sqlite")
    from sandbox.store import new_id

    started = new_id("job")
    store.create_job(
        id=started,
        dataset_id=dataset,
        algorithm_id=algorithm,
        submitter="alice",
        policy_name="default",
        policy_sha256="0" * 64,
        approval_required=False,
    )
    store.transition(started, JobState.QUEUED, JobState.ARCHITECTURE)
    store.transition(started, JobState.ARCHITECTURE, JobState.TRAIN)
    leftover = env.state / "work" / f"{started}-in"
    leftover.mkdir(parents=True)
    (leftover / "owner.json").write_text('{"pid": 999999}')
    (leftover / "dataset.npz").write_bytes(b"plaintext")
    store.close()
    env.restart()
    failed = env.client("alice").get_job(started)
    assert failed.state == "failed"
    assert list(failed.reasons) == ["orchestrator restarted during train"]
    assert env.executor.reconciled == [{started, queued.id}]
    assert not leftover.exists()
    assert env.client("alice").get_job(queued.id).state == "queued"
    env.client("alice").approve(queued.id)
    assert _finished(env, "alice", queued.id).decision == "released"  # type: ignore[attr-defined]


def test_a_release_is_recorded_once(env: Env, tmp_path: Path) -> None:
    dataset, algorithm = _setup(env, tmp_path)
    job = env.client("alice").submit(dataset, algorithm, "default")
    _finished(env, "alice", job.id)
    with pytest.raises(FailedPrecondition):
        env.server.platform.store.record_release(job.id, model_sha256="1" * 64)


def test_watch_streams_each_state_to_the_owner(env: Env, tmp_path: Path) -> None:
    dataset, algorithm = _setup(env, tmp_path)
    job = env.client("alice").submit(dataset, algorithm, "default")
    states = [j.state for j in env.client("alice").watch(job.id, timeout_s=30)]
    assert states[-1] == "done"
    assert states == sorted(set(states), key=states.index)  # each state once, in order
    _ = FakeExecutor


def test_actions_are_audited_and_the_log_verifies(env: Env, tmp_path: Path) -> None:
    from sandbox.api.gen.sandbox.v1 import audit_pb2
    from sandbox.audit import load_public_key, verify_log

    dataset, algorithm = _setup(env, tmp_path)
    job = env.client("bob").submit(dataset, algorithm, "default")
    env.client("alice").approve(job.id)
    _finished(env, "bob", job.id)
    env.client("bob").download_model(job.id, tmp_path / "m.safetensors")
    entries = [
        json.loads(e.json)
        for e in env.client("sam").audit.ReadAuditLog(audit_pb2.ReadAuditLogRequest())
    ]
    kinds = [(e["kind"], e["actor"]) for e in entries if e["kind"] != "checkpoint"]
    assert kinds == [
        ("upload", "data_owner:alice"),
        ("upload", "provider:bob"),
        ("job_step", "provider:bob"),
        ("approval", "data_owner:alice"),
        ("download", "provider:bob"),
    ]
    env.server.stop()  # closes the log with a signed checkpoint
    result = verify_log(env.state / "audit.jsonl", load_public_key(env.state / "signing.pub"))
    assert result.ok, result.summary()


def test_a_preapproved_algorithm_does_not_wait(env: Env, tmp_path: Path) -> None:
    dataset, algorithm = _setup(env, tmp_path)
    with pytest.raises(PermissionDenied):  # only owners pre-approve
        env.client("bob").preapprove(dataset, algorithm)
    with pytest.raises(NotFound):  # and only on their own datasets
        env.client("carol").preapprove(dataset, algorithm)
    env.client("alice").preapprove(dataset, algorithm)
    job = env.client("bob").submit(dataset, algorithm, "default")
    assert job.approval == "approved"
    assert _finished(env, "bob", job.id).decision == "released"  # type: ignore[attr-defined]
    other = env.client("pete").upload_algorithm(EXAMPLE_ALGORITHM)
    assert env.client("pete").submit(dataset, other.id, "default").approval == "pending"


def test_a_gpu_policy_gets_one_dedicated_gpu_per_job(env: Env, tmp_path: Path) -> None:
    from sandbox.runner.gpu import GpuPool

    env.server.platform.gpu_pool = GpuPool(["GPU-a"])
    env.server.platform.cpu_slots = 2
    env.executor.mode = "block"
    dataset, algorithm = _setup(env, tmp_path)
    first = env.client("alice").submit(dataset, algorithm, "gpu")
    second = env.client("alice").submit(dataset, algorithm, "gpu")
    _wait = env.client("alice").watch(first.id, timeout_s=30)
    for seen in _wait:
        if seen.state == "train":
            break
    time.sleep(1.5)  # the scheduler has had its chance to start the second job
    assert env.client("alice").get_job(second.id).state == "queued"  # waits for the GPU
    assert env.executor.devices == ["GPU-a"]
    env.executor.release_block.set()  # the first job ends; the GPU goes to the second
    _finished(env, "alice", first.id)
    _finished(env, "alice", second.id)
    assert env.executor.devices == ["GPU-a", "GPU-a"]
    assert env.server.platform.gpu_pool.free == 1


def test_stopping_the_server_fails_running_jobs_cleanly(
    env: Env, tmp_path: Path, backend: str
) -> None:
    env.executor.mode = "block"
    dataset, algorithm = _setup(env, tmp_path)
    job = env.client("alice").submit(dataset, algorithm, "default")
    for seen in env.client("alice").watch(job.id, timeout_s=30):
        if seen.state == "train":
            break
    store = env.server.platform.store
    env.server.stop()
    assert env.executor.stopped == [job.id]
    if backend == "sqlite":
        store = SqliteMetadataStore(env.state / "metadata.sqlite")
    final = store.get_job(job.id)
    assert (final.state, final.reasons) == (
        JobState.FAILED,
        ("orchestrator stopped during train",),
    )
    assert final.decision is None
    assert [p.name for p in (env.state / "work").iterdir()] == []
    with open("/proc/self/mounts") as mounts:
        assert not [line for line in mounts if str(env.state) in line]


def test_list_policies_paginates(env: Env) -> None:
    """Like every list call: pages of page_size, opaque tokens, bad input refused."""
    from sandbox.api.gen.sandbox.v1 import policy_pb2

    sam = env.client("sam")
    everything = sam.list_policies()  # follows the pages
    assert everything == sorted(everything) and {"default", "strict"} <= set(everything)
    pages: list[list[str]] = []
    token = ""
    while True:
        response = sam.policies.ListPolicies(
            policy_pb2.ListPoliciesRequest(page_size=1, page_token=token)
        )
        pages.append(list(response.names))
        token = response.next_page_token
        if not token:
            break
    assert all(len(page) == 1 for page in pages) and len(pages) == len(everything)
    assert [name for page in pages for name in page] == everything
    one_page = sam.policies.ListPolicies(policy_pb2.ListPoliciesRequest())
    assert list(one_page.names) == everything and one_page.next_page_token == ""
    for bad in (
        policy_pb2.ListPoliciesRequest(page_token="garbage"),
        policy_pb2.ListPoliciesRequest(page_size=100000),
    ):
        with pytest.raises(grpc.RpcError) as caught:
            sam.policies.ListPolicies(bad)
        assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
