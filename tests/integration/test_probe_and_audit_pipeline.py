"""Canary-query probing and the membership audit in one real pipeline run (Docker, runc).

The example digits MLP under the default policy with both turned on:

- probing: the families are built on the host from a CSPRNG seed; the candidate's
  logits on them, their perturbed copies and the holdout come from the guest query
  container on the exported graph (no provider code), which also trains the
  platform's two reference models (`probes.reference`); the honest model passes;
- the audit: canaries are planted from the training split, the excluded half never
  reaches train.npz (the unit tests inspect the file; here the job's own counts must
  agree), the candidate's logits on all canaries come from the same query container,
  and the honest model is audited, reported and passed.

The decision is the one the weight checks alone would give. (The strict policy's
end-to-end run in test_pipeline.py covers both under gVisor.)
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
from sandbox.policy.model import MembershipRules, ProbeRules
from tests.integration.recording import EXAMPLE, RecordingRunner

pytestmark = pytest.mark.docker


def test_honest_digits_model_is_probed_audited_and_passes(
    tmp_path: Path, docker_client: docker.DockerClient, runtime_image: str
) -> None:
    digits = write_digits(tmp_path / "digits.npz")
    policy = load_policy("default").model_copy(
        update={
            "probes": ProbeRules(enabled=True, reference=True),
            "membership": MembershipRules(enabled=True, canaries=200),
        }
    )
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
    # one query container answers the probes and the canaries
    assert runner.steps == ["export", "describe", "train", "probe", "evaluate"]
    on_disk = json.loads((out / "report.json").read_text())
    assert 0.90 <= on_disk["utility"]["candidate_accuracy"] <= 1.0

    probes = on_disk["probes"]
    assert probes["queries_per_family"] == 256 and probes["reference"] is True
    # the references learned the task in the container (the example MLP gets ~0.96)
    assert all(0.9 <= a <= 1.0 for a in probes["reference_holdout_accuracy"])
    assert [f["name"] for f in probes["families"]] == list(FAMILIES)
    for family in probes["families"]:
        assert family["n"] == 256 and sum(family["confidence_histogram"]["counts"]) == 256
        # an honest model's answers under a 2% nudge barely move (two-sided: 0 would
        # mean the perturbed copy was never queried)
        assert 0.0 < family["statistics"]["sensitivity"] < 0.2
    assert sum(probes["holdout_confidence_histogram"]["counts"]) == on_disk["dataset"]["n_holdout"]
    # with references the sensitivity and divergence checks vote (calibrate.WITH_REFERENCE)
    assert [c["name"] for c in probes["checks"]] == ["probe_sensitivity", "probe_divergence"]
    assert all(c["verdict"] == "pass" for c in probes["checks"]), probes["checks"]
    # the shared query container (seconds; tens on a loaded 2-core host); the audit
    # itself is arithmetic on its logits
    assert 0 < on_disk["timings"]["probe"] < policy.limits.wall_seconds
    assert probes["seconds"] <= on_disk["timings"]["probe"]
    assert 0 <= on_disk["timings"]["membership"] < 5

    audit = on_disk["membership"]
    # the references trained on the canary-free split: the likelihood ratio scores
    assert audit["canaries"] == 200 and audit["score"] == "likelihood_ratio"
    assert 60 <= audit["included"] <= 140  # fair coins: 100 +- 5.7 sigma
    # the provider trained on the split minus exactly the excluded canaries
    assert on_disk["dataset"]["n_train"] == 1438 - (200 - audit["included"])
    # an honest 30-epoch MLP on digits barely separates members (bench/membership.py:
    # likelihood ratio AUC 0.54-0.62, bound 0.24-0.29); two-sided so a broken scorer
    # (AUC 0 or 1) fails
    assert 0.35 <= audit["auc"] <= 0.75
    assert 0.0 <= audit["epsilon_lower_bound"] <= 1.0
    assert audit["verdict"] == "pass" and audit["threshold"] == 1.0
    assert len(audit["roc"]["fpr"]) == len(audit["roc"]["tpr"]) == 101
