"""Canary-query probing in a real pipeline run (Docker, runc): the example digits MLP.

The probe families are built on the host from a CSPRNG seed, the candidate's
logits on them, their perturbed copies and the holdout come from the guest query
container on the exported graph (no provider code), and the honest example model
is probed, reported and passed; the decision is the one the weight checks alone
would give.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import docker
import pytest

from sandbox.checks.probing.families import FAMILIES
from sandbox.demo import write_digits
from sandbox.pipeline.local import run_local
from sandbox.policy.load import load_policy
from sandbox.policy.model import ProbeRules
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


def test_honest_digits_model_is_probed_and_passes(
    tmp_path: Path, docker_client: docker.DockerClient, runtime_image: str
) -> None:
    digits = write_digits(tmp_path / "digits.npz")
    base = load_policy("default")
    policy = base.model_copy(update={"probes": ProbeRules(enabled=True)})
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
    assert runner.steps == ["export", "describe", "train", "probe", "evaluate"]

    on_disk = json.loads((out / "report.json").read_text())
    probes = on_disk["probes"]
    assert probes["queries_per_family"] == 256 and probes["reference"] is False
    assert [f["name"] for f in probes["families"]] == list(FAMILIES)
    for family in probes["families"]:
        assert family["n"] == 256 and sum(family["confidence_histogram"]["counts"]) == 256
        # an honest model's answers under a 2% nudge barely move (two-sided: 0 would
        # mean the perturbed copy was never queried)
        assert 0.0 < family["statistics"]["sensitivity"] < 0.2
    assert sum(probes["holdout_confidence_histogram"]["counts"]) == on_disk["dataset"]["n_holdout"]
    assert [c["name"] for c in probes["checks"]] == [
        "probe_instability",
        "probe_sensitivity",
        "probe_confidence_gap",
    ]
    assert all(c["verdict"] == "pass" for c in probes["checks"]), probes["checks"]
    # one query container (seconds; tens on a loaded 2-core host)
    assert 0 < on_disk["timings"]["probe"] < policy.limits.wall_seconds
    assert probes["seconds"] <= on_disk["timings"]["probe"]
    print(f"probe step: {on_disk['timings']['probe']:.2f} s")
