"""The timing entry says what each shipped policy's release rule leaves open.

Without a fixed release time the outcome follows the job's end. With one, outcomes of
jobs that end in time appear exactly then, but a job still running is rejected only
when it ends (sandbox/pipeline/local.py), so a job that overruns on purpose still
shows how long it ran: the entry must not call that neutralized.
"""

from __future__ import annotations

from sandbox.policy.load import load_policy
from sandbox.redteam.scorecard import _timing
from sandbox.redteam.weight_channels import job_time


def test_default_releases_at_once_and_says_so() -> None:
    entry = _timing(load_policy("default"))
    assert entry.outcome == "leaked"
    assert "as soon as the job ends" in entry.evidence


def test_a_fixed_release_time_still_leaks_through_a_job_that_overruns() -> None:
    strict = load_policy("strict")
    entry = _timing(strict)
    assert entry.outcome == "leaked"
    assert f"exactly {strict.release.fixed_delay_seconds} s" in entry.evidence
    assert "overruns on purpose" in entry.evidence
    assert f"{strict.limits.wall_seconds} s wall-clock limit" in entry.evidence
    assert "about 9 bits per job" in entry.evidence  # log2(600 s) at 1 s resolution


def test_a_held_jobs_evidence_gives_its_computing_time() -> None:
    """The margin to the release time, which a busier host eats into."""
    assert job_time(240.4, 165.2) == "job 240 s, 165 s of it computing before the hold"
    assert job_time(31.0) == "job 31 s"  # released at once: no hold
