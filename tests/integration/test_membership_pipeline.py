"""The membership audit in a real pipeline run (Docker, runc): the example digits MLP.

Canaries are planted from the training split, the excluded half never reaches
train.npz (the unit tests inspect the file; here the job's own counts must agree),
the candidate's logits on all canaries come from the guest query container on the
exported graph, and an honest model is audited, reported and passed.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import docker
import pytest

from sandbox.demo import write_digits
from sandbox.pipeline.local import run_local
from sandbox.policy.load import load_policy
from sandbox.policy.model import MembershipRules
from sandbox.runner.base import ContainerHandle, ContainerSpec
from sandbox.runner.docker_runner import DockerRunner

pytestmark = pytest.mark.docker

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "digits_mlp"


class RecordingRunner(DockerRunner):
    def __init__(self, client: docker.DockerClient) -> None:
        super().__init__(client)
        self.steps: list[str] = []

    def start(self, spec: ContainerSpec) -> ContainerHandle:
        self.steps.append(spec.step)
        return super().start(spec)


def test_honest_digits_model_is_audited_and_passes(
    tmp_path: Path, docker_client: docker.DockerClient, runtime_image: str
) -> None:
    digits = write_digits(tmp_path / "digits.npz")
    base = load_policy("default")
    policy = base.model_copy(update={"membership": MembershipRules(enabled=True, canaries=200)})
    runner = RecordingRunner(docker_client)
    out = tmp_path / "out"
    report = run_local(
        EXAMPLE,
        digits,
        policy,
        out,
        runner=runner,
        image=runtime_image,
        work_root=tmp_path / "work",
        job_id=uuid.uuid4().hex,
    )
    assert report.decision == "released_sanitized", report.reasons
    assert runner.steps == ["export", "describe", "train", "membership", "evaluate"]

    on_disk = json.loads((out / "report.json").read_text())
    audit = on_disk["membership"]
    assert audit["canaries"] == 200 and audit["score"] == "loss"
    assert 60 <= audit["included"] <= 140  # fair coins: 100 +- 5.7 sigma
    # the provider trained on the split minus exactly the excluded canaries
    assert on_disk["dataset"]["n_train"] == 1438 - (200 - audit["included"])
    # an honest 30-epoch MLP on digits barely separates members (bench/membership.py:
    # AUC ~0.5-0.6, bound ~0); two-sided so a broken scorer (AUC 0 or 1) fails
    assert 0.35 <= audit["auc"] <= 0.75
    assert 0.0 <= audit["epsilon_lower_bound"] <= 1.0
    assert audit["verdict"] == "pass" and audit["threshold"] == 1.0
    assert len(audit["roc"]["fpr"]) == len(audit["roc"]["tpr"]) == 101
    # one query container, like the evaluate step's (seconds; tens on a loaded 2-core host)
    assert 0 < on_disk["timings"]["membership"] < policy.limits.wall_seconds
    assert 0.90 <= on_disk["utility"]["candidate_accuracy"] <= 1.0
