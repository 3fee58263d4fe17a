"""Under a fixed release time nothing of a job runs past it, and every outcome appears at
one of two fixed times (issue 8): the release time, or the release time plus
RELEASE_SLACK_SECONDS for a job stopped at it, however long its code wanted to run.

A fake runner stands in for Docker: each "container" runs for a scripted time per step
(honouring the wall-clock limit it is given, as `Runner.wait` must) and writes nothing,
so the job goes through the real `run_local` (prepare, the hold, the audit log, the
report) without torch or an engine. Delays are seconds, so the file runs in ~10 s.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import opacus.accountants.utils  # noqa: F401  (the budget's lazy import, 2-3 s: not in a timed job)
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from sandbox.demo import write_digits
from sandbox.dp import InMemoryBudgetLedger
from sandbox.pipeline import local
from sandbox.pipeline.context import JobContext, StepFailed
from sandbox.pipeline.report import Report
from sandbox.policy.load import load_policy
from sandbox.policy.model import Policy
from sandbox.runner.base import ContainerHandle, ContainerSpec, ExitStatus
from sandbox.runner.workspace import JobWorkspace

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "digits_mlp"


class FakeRunner:
    """Containers that 'run' `seconds[step]` (default 0) and exit with `codes[step]`."""

    name = "fake"

    def __init__(self, seconds: dict[str, float], codes: dict[str, int] | None = None) -> None:
        self.seconds = seconds
        self.codes = codes or {}
        self.specs: list[ContainerSpec] = []
        self._running: dict[str, ContainerSpec] = {}

    def start(self, spec: ContainerSpec) -> ContainerHandle:
        self.specs.append(spec)
        handle = ContainerHandle(f"c{len(self.specs)}", spec.job_id, spec.step)
        self._running[handle.id] = spec
        return handle

    def wait(self, handle: ContainerHandle, timeout_s: float) -> ExitStatus:
        wanted = self.seconds.get(handle.step, 0.0)
        time.sleep(min(wanted, timeout_s))
        if wanted > timeout_s:
            return ExitStatus(None, timed_out=True, duration_s=timeout_s)
        return ExitStatus(self.codes.get(handle.step, 0), duration_s=wanted)

    def kill(self, handle: ContainerHandle) -> None:
        self._running.pop(handle.id, None)

    def logs(self, handle: ContainerHandle, max_bytes: int) -> bytes:
        return b""

    def remove(self, handle: ContainerHandle) -> None:
        self._running.pop(handle.id, None)

    def remove_job(self, job_id: str) -> int:
        return 0

    def job_ids(self) -> set[str]:
        return set()


def _with_release(delay: int | None) -> Policy:
    policy = load_policy("strict")
    release = policy.release.model_copy(update={"fixed_delay_seconds": delay})
    return policy.model_copy(update={"release": release})


def _job(tmp_path: Path, policy: Policy, runner: FakeRunner) -> tuple[Report, float]:
    """One job through run_local; its report and how long after submission it returned."""
    base = tmp_path / f"job{len(list(tmp_path.iterdir()))}"
    base.mkdir()
    package = base / "package"
    shutil.copytree(EXAMPLE, package)
    dataset = write_digits(base / "digits.npz")
    started = time.monotonic()
    report = local.run_local(
        package,
        dataset,
        policy,
        base / "out",
        runner=runner,
        image="none",
        work_root=base / "work",
        signing_key=Ed25519PrivateKey.generate(),
        audit_path=base / "audit.jsonl",
        ledger=InMemoryBudgetLedger(),
        dataset_id="digits",
    )
    return report, time.monotonic() - started


@pytest.fixture
def ctx(tmp_path: Path) -> Iterator[JobContext]:
    policy = _with_release(3)
    with JobWorkspace(tmp_path / "work", "job") as ws:
        report = Report(job_id="job", policy={"name": policy.name, "sha256": "0" * 64})
        yield JobContext("job", policy, FakeRunner({}), "none", ws, report, lambda s, m: None)


def _spec(ctx: JobContext, step: str) -> ContainerSpec:
    from sandbox.pipeline import containers

    return containers.guest_spec(
        ctx.policy, job_id=ctx.job_id, step=step, image="none", module="export", mounts=()
    )


def test_a_container_gets_at_most_the_time_left_before_the_release_time(
    ctx: JobContext,
) -> None:
    runner = ctx.runner
    assert isinstance(runner, FakeRunner)
    ctx.run(_spec(ctx, "architecture"))  # no release time set: the policy's limit
    ctx.release_at = time.monotonic() + 2.0
    ctx.run(_spec(ctx, "train"))
    policy_limit, capped = (spec.resources.wall_seconds for spec in runner.specs)
    assert policy_limit == ctx.policy.limits.wall_seconds == 600
    assert 1.5 < capped <= 2.0
    # the rest of the limits are the policy's
    assert runner.specs[1].resources.memory_mb == ctx.policy.limits.memory_mb
    assert not ctx.overran


def test_a_container_still_running_at_the_release_time_is_stopped_then(
    ctx: JobContext,
) -> None:
    ctx.runner = FakeRunner({"train": 60.0})
    ctx.release_at = time.monotonic() + 0.5
    began = time.monotonic()
    with pytest.raises(StepFailed, match="stopped at the policy's fixed release time of 3 s"):
        ctx.run(_spec(ctx, "train"))
    assert time.monotonic() - began < 1.0
    assert ctx.overran


def test_a_step_due_after_the_release_time_does_not_start(ctx: JobContext) -> None:
    ctx.release_at = time.monotonic() - 0.1
    with pytest.raises(StepFailed, match="would have started after") as failed:
        ctx.run(_spec(ctx, "evaluate"))
    assert "later release time" in str(failed.value)  # says what to do
    assert isinstance(ctx.runner, FakeRunner) and not ctx.runner.specs
    with pytest.raises(StepFailed), ctx.timed("gate", "host-side steps too"):
        raise AssertionError("the step ran")
    with ctx.timed("release", "the release itself runs after the hold", check_release=False):
        pass


def test_an_overrun_is_rejected_at_release_plus_slack_however_late_it_would_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The export container is the job's first: it 'runs' 6 s or 60 s, past the release
    time of 4 s, and both rejections appear at 4 + 1 s (slack lowered to 1 s). The two
    jobs run side by side, as a provider's would."""
    monkeypatch.setattr(local, "RELEASE_SLACK_SECONDS", 1.0)
    policy = _with_release(4)
    runners = [FakeRunner({"export": seconds}) for seconds in (6.0, 60.0)]
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with ThreadPoolExecutor(2) as pool:
        jobs = list(
            pool.map(lambda r, d: _job(d, policy, r), runners, [tmp_path / "a", tmp_path / "b"])
        )
    for (report, _), runner in zip(jobs, runners, strict=True):
        assert report.decision == "rejected"
        # prepare (host-side, ~1-3 s) normally ends before the release time
        assert "the policy's fixed release time of 4 s" in report.reasons[0]
        assert "ask for a policy with a later release time" in report.reasons[0]
        if runner.specs:
            assert [spec.step for spec in runner.specs] == ["export"]  # nothing after it
            assert runner.specs[0].resources.wall_seconds < 4.0
    times = [took for _, took in jobs]
    assert all(5.0 <= t < 6.5 for t in times), times
    assert abs(times[0] - times[1]) < 0.5, times


def test_host_side_work_past_even_the_slack_is_said_to_leak(
    ctx: JobContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(local, "RELEASE_SLACK_SECONDS", 1.0)
    ctx.report.decision = "released"
    began = time.monotonic()
    local._hold_until_release_time(ctx, started=began - 10.0)  # release was 7 s ago
    assert time.monotonic() - began < 0.5  # nothing to wait for: it is already late
    assert ctx.report.decision == "rejected"
    assert "still running at the policy's fixed release time of 3 s" in ctx.report.reasons[0]
    assert "a timing leak" in ctx.report.reasons[1]


def test_a_job_that_ends_in_time_appears_at_the_release_time(ctx: JobContext) -> None:
    ctx.report.decision = "released"
    began = time.monotonic()
    local._hold_until_release_time(ctx, started=began - 2.5)  # 0.5 s before release
    assert 0.4 < time.monotonic() - began < 0.8
    assert ctx.report.decision == "released" and not ctx.report.reasons


def test_without_a_fixed_release_time_nothing_changes(tmp_path: Path) -> None:
    """The default policy: the policy's own limit, the outcome as soon as the job ends."""
    policy = load_policy("default")
    assert policy.release.fixed_delay_seconds is None
    runner = FakeRunner({"export": 0.5}, codes={"export": 1})
    report, took = _job(tmp_path, policy, runner)
    assert report.decision == "rejected"
    assert report.reasons == ["export: the container exited with status 1"]
    assert runner.specs[0].resources.wall_seconds == policy.limits.wall_seconds
    assert took < 2.5
