"""Capacity abuse through the real pipeline: what the default policy lets out today.

The capacity package (Song et al., CCS 2017, section 6) trains in a runc container
on the digits training split; the weight checks and the low-bit sanitizer run as
the default policy says; the attacker then decodes from the *released* model by
queries only. Nothing in the weights is unusual and the payload lives in the
model's behaviour, so the checks pass it and the sanitizer leaves it intact: this
test pins that gap. Detecting it is the probing step's job (issue 6), whose test
owns the assertion on detection; when probing joins the default policy, the
decision asserted here changes with it.
"""

from __future__ import annotations

from pathlib import Path

import docker
import numpy as np
import pytest

from sandbox.policy.load import load_policy
from sandbox.redteam.capacity import (
    decode_capacity,
    make_capacity_package,
    mlp_logits,
    mlp_query,
    score_capacity,
)
from sandbox.redteam.harness import load_weights
from tests.integration.recording import digits_train_split, run_attack_job

pytestmark = pytest.mark.docker

WEIGHT_CHECKS_ONLY = ("probe_", "membership")  # verdicts other helpers' steps add


def test_default_policy_releases_a_capacity_abuse_model_the_attacker_reads_back(
    tmp_path: Path, docker_client: docker.DockerClient, runtime_image: str
) -> None:
    knowledge = make_capacity_package(
        tmp_path / "capacity", dataset="digits", generator="prng", n_records=20
    )
    policy = load_policy("default")
    report = run_attack_job(tmp_path, tmp_path / "capacity", policy, docker_client, runtime_image)
    # The weight checks see nothing; the sanitizer runs and changes nothing that matters.
    weight_verdicts = {
        c["name"]: c["verdict"]
        for c in report.checks
        if not c["name"].startswith(WEIGHT_CHECKS_ONLY)
    }
    assert weight_verdicts.pop("sanitizer") == "applied"
    assert weight_verdicts and set(weight_verdicts.values()) == {"pass"}, weight_verdicts
    assert report.decision == "released_sanitized", report.reasons  # today: let through
    assert 0.90 <= report.utility["released_accuracy"] <= 1.0

    train, holdout = digits_train_split(policy)
    released = load_weights(tmp_path / "out" / "model.safetensors")
    scale = float(knowledge.params["input_scale"])
    accuracy = float(np.mean(mlp_logits(released, holdout.x, scale).argmax(axis=1) == holdout.y))
    assert accuracy == pytest.approx(report.utility["released_accuracy"], abs=1e-6)  # rounded

    extraction = score_capacity(
        decode_capacity(mlp_query(released, scale), knowledge), train.x, knowledge
    )
    assert extraction.attack.bit_accuracy is not None
    assert 0.95 <= extraction.attack.bit_accuracy <= 1.0
    assert 0.9 <= extraction.attack.fraction_recovered <= 1.0
    assert extraction.attack.mean_abs_error <= 0.8
    assert extraction.control.fraction_recovered <= 0.1  # nobody else's records


def test_under_dp_always_the_attacker_reads_only_chance_from_the_release(
    tmp_path: Path, docker_client: docker.DockerClient, runtime_image: str
) -> None:
    """The residual black-box extraction when the provider's weights are replaced by the
    platform's DP-SGD model: the attacker's queries read the control's numbers."""
    knowledge = make_capacity_package(tmp_path / "capacity", n_records=20)
    base = load_policy("default")
    dp = {"mode": "always", "epsilon": 3.0, "budget_epsilon": 10.0}
    policy = base.model_copy(update={"dp": base.dp.model_copy(update=dp)})
    report = run_attack_job(tmp_path, tmp_path / "capacity", policy, docker_client, runtime_image)
    assert report.decision == "released_dp", report.reasons
    train, _ = digits_train_split(policy)
    released = load_weights(tmp_path / "out" / "model.safetensors")
    query = mlp_query(released, float(knowledge.params["input_scale"]))
    extraction = score_capacity(decode_capacity(query, knowledge), train.x, knowledge)
    assert extraction.attack.recovered == 0
    assert extraction.attack.bit_accuracy is not None
    assert extraction.control.bit_accuracy is not None
    assert abs(extraction.attack.bit_accuracy - extraction.control.bit_accuracy) <= 0.05
    assert extraction.attack.mean_abs_error >= 3.0
