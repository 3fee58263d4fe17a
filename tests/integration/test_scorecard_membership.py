"""The scorecard's membership channel through the real pipeline (Docker, runc).

Two jobs of the memorising package at once (about 60 s on a quiet 2-core box):

- the default policy, which has no membership audit and no DP: the provider's model is
  released sanitized and the attacker's loss-threshold inference on it separates members
  from non-members (`leaked`, which the default policy leaves open);
- the default policy with the audit on (strict's 200 canaries and threshold) and DP off:
  the audit flags the model and nothing is released (`detected`).

In both, the control (the inference on the gated candidate) shows the attack worked in
this very run, and the model still looks like a normal classifier: ~95% holdout
accuracy and no data-free weight check flags it. strict's DP path (`neutralized`) costs
a DP retraining under gVisor; `sandbox policy test --policy strict` shows it (README).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import docker
import pytest

from sandbox.policy.load import load_policy
from sandbox.policy.model import Policy
from sandbox.redteam.membership_channel import MembershipResult, run_membership_channel
from sandbox.runner.docker_runner import DockerRunner

pytestmark = pytest.mark.docker


def test_memorising_package_leaks_under_default_and_the_audit_catches_it(
    tmp_path: Path, docker_client: docker.DockerClient, runtime_image: str
) -> None:
    default = load_policy("default")
    audited = default.model_copy(update={"membership": load_policy("strict").membership})
    runner = DockerRunner(docker_client)

    def run(name: str, policy: Policy) -> MembershipResult:
        root = tmp_path / name
        root.mkdir()
        return run_membership_channel(policy, runner, runtime_image, root)

    with ThreadPoolExecutor(max_workers=2) as pool:
        open_job = pool.submit(run, "default", default)
        audited_job = pool.submit(run, "audited", audited)
        leaked, detected = open_job.result(), audited_job.result()

    for result in (leaked, detected):
        report = result.report
        # a normal-looking classifier: accurate, and no data-free weight check flags it
        assert 0.90 <= report.utility["candidate_accuracy"] <= 1.0, report.utility
        flags = [c["name"] for c in report.checks if c["verdict"] == "flag"]
        assert flags == [], flags
        # the control: the attacker's inference on the gated candidate separates members
        assert result.control is not None and result.control.leaked, result.evidence
        assert 0.85 <= result.control.auc <= 1.0
        assert 0.6 <= result.control.advantage <= 1.0

    assert leaked.outcome == "leaked", leaked.evidence
    assert leaked.report.decision == "released_sanitized"
    assert leaked.report.membership is None  # no audit in the default policy
    released = leaked.released
    assert released is not None and released.leaked
    assert 0.85 <= released.auc <= 1.0  # the sanitizer's low bits do not touch it
    assert released.members == leaked.report.dataset["n_train"]
    assert released.non_members == leaked.report.dataset["n_holdout"]
    assert "leaves membership open" in leaked.evidence

    assert detected.outcome == "detected", detected.evidence
    assert detected.report.decision == "rejected" and detected.released is None
    audit = detected.report.membership
    assert audit is not None and audit["verdict"] == "flag"
    # host runs give a bound of 1.9-2.4 (threshold 1; 200 perfect guesses certify ~3.7)
    assert 1.0 < audit["epsilon_lower_bound"] <= 3.7
    assert 0.85 <= audit["auc"] <= 1.0
    assert "membership_audit" in detected.evidence and "nothing released" in detected.evidence
