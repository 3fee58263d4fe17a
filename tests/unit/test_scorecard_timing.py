"""The timing entry says what each shipped policy's release rule leaves open.

Without a fixed release time the outcome follows the job's end: `leaked`. With one the
entry is measured: jobs whose train.py overruns the release time by different amounts
(the scorecard's overrun probes) must all be stopped and rejected, and their outcomes
must appear at the same time (within TIMING_TOLERANCE_S); otherwise `leaked`.
"""

from __future__ import annotations

from pathlib import Path

from sandbox.pipeline.local import RELEASE_SLACK_SECONDS
from sandbox.policy.load import load_policy
from sandbox.redteam.scorecard import (
    SMALL_PROBE_DELAY,
    SMALL_PROBE_DELAY_BESIDE_JOBS,
    TIMING_TOLERANCE_S,
    TimingProbe,
    _sleeping_package,
    _timing,
    probe_delay,
)
from sandbox.redteam.weight_channels import job_time

STOPPED = (
    "train: was stopped at the policy's fixed release time of 60 s after submission, so the "
    "job was rejected"
)


def _probe(
    sleep_s: float, seconds: float, decision: str = "rejected", reason: str = STOPPED
) -> TimingProbe:
    return TimingProbe(sleep_s, seconds, decision, reason)


def test_default_releases_at_once_and_says_so() -> None:
    default = load_policy("default")
    entry = _timing(default)
    assert entry.outcome == "leaked"
    assert "as soon as the job ends" in entry.evidence
    assert probe_delay(default, "small") is None  # nothing to measure, no jobs started


def test_overrun_outcomes_at_one_fixed_time_are_neutralized() -> None:
    strict = load_policy("strict")
    delay = probe_delay(strict, "small")
    assert delay == SMALL_PROBE_DELAY == 60
    assert probe_delay(strict, "small", beside_jobs=True) == SMALL_PROBE_DELAY_BESIDE_JOBS
    assert probe_delay(strict, "full") == strict.release.fixed_delay_seconds == 240
    entry = _timing(strict, [_probe(120, 90.4), _probe(300, 91.1)], 60)
    assert entry.outcome == "neutralized", entry.evidence
    for number in ("120 s and 300 s", "90.4 s and 91.1 s", "spread 0.7 s", "60 s release"):
        assert number in entry.evidence, entry.evidence
    assert "rejected in train" in entry.evidence
    assert f"release + {RELEASE_SLACK_SECONDS:.0f} s slack" in entry.evidence
    assert "lowered from the policy's 240 s" in entry.evidence


def test_outcome_times_that_follow_the_sleep_leak() -> None:
    """What the pipeline did before issue 8: each rejection appeared when the job ended."""
    strict = load_policy("strict")
    entry = _timing(strict, [_probe(8, 29.9), _probe(20, 42.0)], 5)
    assert entry.outcome == "leaked"
    assert "29.9 s and 42.0 s" in entry.evidence and "follows what the job did" in entry.evidence
    just_over = _timing(strict, [_probe(120, 90.0), _probe(300, 90.0 + TIMING_TOLERANCE_S + 0.1)])
    assert just_over.outcome == "leaked"


def test_a_probe_that_was_not_stopped_for_the_release_time_leaks() -> None:
    strict = load_policy("strict")
    released = _timing(strict, [_probe(120, 90.0), _probe(300, 90.5, "released", "ok")], 60)
    assert released.outcome == "leaked"
    other = _timing(strict, [_probe(120, 90.0), _probe(300, 90.5, reason="export: status 1")], 60)
    assert other.outcome == "leaked"
    assert _timing(strict, []).outcome == "leaked"  # unmeasured is not neutralized


def test_the_probe_package_sleeps_before_training(tmp_path: Path) -> None:
    _sleeping_package(tmp_path / "package", 120.0)
    train = (tmp_path / "package" / "train.py").read_text()
    assert train.startswith("import time\ntime.sleep(120.0)")
    assert (tmp_path / "package" / "algorithm.toml").is_file()


def test_a_held_jobs_evidence_gives_its_computing_time() -> None:
    """The margin to the release time, which a busier host eats into."""
    assert job_time(240.4, 165.2) == "job 240 s, 165 s of it computing before the hold"
    assert job_time(31.0) == "job 31 s"  # released at once: no hold


def test_a_probe_stopped_before_its_delay_ran_proves_nothing() -> None:
    """On a busy host a probe can reach its release time still in the architecture step:
    its train.py never slept, so equal outcome times say nothing about the channel."""
    strict = load_policy("strict")
    early = STOPPED.replace("train:", "describe:", 1)
    entry = _timing(strict, [_probe(120, 90.1, reason=early), _probe(300, 90.1)], 60)
    assert entry.outcome == "leaked"
    assert "rejected in describe" in entry.evidence
    assert "not shown: a probe was stopped before train.py's delay ran" in entry.evidence
