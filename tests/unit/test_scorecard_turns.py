"""How many scorecard jobs compute at once, and that the turns really let them.

Under a fixed release time the scorecard ends at the last job's start plus the
delay, so every job starts at once; without one, two at a time (the cores are the
limit either way). Checked on the shipped policies and with threads standing in for
the jobs (no Docker).
"""

from __future__ import annotations

import threading
import time

from sandbox.pipeline.local import RELEASE_SLACK_SECONDS
from sandbox.policy.load import load_policy
from sandbox.redteam.membership_channel import QueuedTurns
from sandbox.redteam.scorecard import (
    PARALLEL,
    SMALL_PROBE_DELAY_BESIDE_JOBS,
    TIMING_MARGIN_SECONDS,
    parallel_jobs,
    timing_span,
)
from sandbox.redteam.weight_channels import channels_for

JOBS = len(channels_for("small")) + 1  # the weight jobs and the membership job


def test_a_held_release_starts_every_job_at_once() -> None:
    strict = load_policy("strict")
    assert strict.release.fixed_delay_seconds is not None
    assert parallel_jobs(strict, JOBS) == JOBS


def test_without_a_hold_two_jobs_compute_at_a_time() -> None:
    default = load_policy("default")
    assert default.release.fixed_delay_seconds is None
    assert parallel_jobs(default, JOBS) == PARALLEL == 2
    assert parallel_jobs(default, 1) == 1


def _started(parallel: int) -> list[str]:
    """Which of JOBS jobs are computing 0.3 s after they all asked, none giving up."""
    turns = QueuedTurns(parallel)
    running: list[str] = []
    lock = threading.Lock()
    release = threading.Event()

    def job(name: str, behind: int = 0) -> None:
        if behind:
            turns.after(behind)
        give_up = turns.job()
        with lock:
            running.append(name)
        release.wait(5)
        give_up()

    threads = [threading.Thread(target=job, args=(f"w{i}",)) for i in range(JOBS - 1)]
    threads.append(threading.Thread(target=job, args=("membership", JOBS - 1)))
    for thread in threads:
        thread.start()
    time.sleep(0.3)
    with lock:
        seen = list(running)
    release.set()
    for thread in threads:
        thread.join(5)
    assert len(running) == JOBS  # every job ran in the end
    return seen


def test_the_turns_start_every_strict_job_without_waiting_for_another() -> None:
    seen = _started(parallel_jobs(load_policy("strict"), JOBS))
    assert len(seen) == JOBS and "membership" in seen


def test_the_default_turns_hold_the_membership_job_back() -> None:
    seen = _started(parallel_jobs(load_policy("default"), JOBS))
    assert len(seen) == 2 and "membership" not in seen


def test_idle_waits_until_every_job_has_given_its_turn_up() -> None:
    """The isolation probes wait for this under a hold: no job is computing then."""
    turns = QueuedTurns(3)
    assert not turns.idle(2, timeout=0.1)  # nobody has asked yet
    first, second = turns.job(), turns.job()
    assert not turns.idle(2, timeout=0.1)  # both computing
    first()
    assert not turns.idle(2, timeout=0.1)  # one still computing
    threading.Timer(0.2, second).start()
    started = time.monotonic()
    assert turns.idle(2, timeout=5)
    assert 0.1 <= time.monotonic() - started < 4


def test_strict_timing_jobs_fit_inside_the_attack_jobs_hold() -> None:
    """The timing jobs start early enough to end by the attack jobs' release time
    (they would otherwise add their whole span to the card); without a release time
    there is nothing to time."""
    strict = load_policy("strict")
    delay = strict.release.fixed_delay_seconds
    assert delay is not None
    span = timing_span(strict, "small", beside_jobs=True)
    assert span == SMALL_PROBE_DELAY_BESIDE_JOBS + RELEASE_SLACK_SECONDS + TIMING_MARGIN_SECONDS
    assert 0 < span < delay  # start at delay - span after the attack jobs: inside the hold
    assert timing_span(strict, "full") > delay  # the full budget's probes start at once
    assert timing_span(load_policy("default"), "small") == 0.0


def test_any_idle_waits_for_the_first_job_to_give_its_turn_up() -> None:
    turns = QueuedTurns(2)
    assert not turns.any_idle(2, timeout=0.05)  # nobody has asked yet
    first, second = turns.job(), turns.job()
    assert not turns.any_idle(2, timeout=0.05)  # both computing
    first()
    assert turns.any_idle(2, timeout=1)  # one holds: a core is free
    second()
