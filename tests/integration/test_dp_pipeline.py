"""Forced DP retraining through the whole pipeline, and the privacy budget around it."""

from __future__ import annotations

import json
from pathlib import Path

import docker
import pytest

from sandbox.audit import default_public_key, verify_attestation
from sandbox.demo import EXAMPLE_ALGORITHM, write_digits
from sandbox.dp import SqliteBudgetLedger
from sandbox.errors import LimitExceeded
from sandbox.pipeline.local import run_local
from sandbox.policy.load import load_policy
from sandbox.policy.model import Policy
from sandbox.redteam.attacks import decode, make_package
from sandbox.redteam.harness import load_weights
from sandbox.redteam.metrics import score
from sandbox.runner.base import LABEL_JOB
from sandbox.runner.docker_runner import DockerRunner
from tests.integration.recording import digits_train_split, run_attack_job

pytestmark = pytest.mark.docker


def dp_policy(mode: str = "always", **dp: object) -> Policy:
    base = load_policy("default")
    fields = {"mode": mode, "epsilon": 3.0, "budget_epsilon": 4.0, **dp}
    return base.model_copy(update={"dp": base.dp.model_copy(update=fields)})


def test_dp_always_releases_the_platforms_model_and_charges_the_budget(
    tmp_path: Path, docker_client: docker.DockerClient, runtime_image: str
) -> None:
    digits = write_digits(tmp_path / "digits.npz")
    ledger = SqliteBudgetLedger(tmp_path / "ledger.db")
    runner = DockerRunner(docker_client)
    policy = dp_policy()
    report = run_local(
        EXAMPLE_ALGORITHM,
        digits,
        policy,
        tmp_path / "out",
        runner=runner,
        image=runtime_image,
        work_root=tmp_path / "work",
        ledger=ledger,
        dataset_id="digits",
    )
    assert report.decision == "released_dp", report.reasons
    assert report.model is not None and report.model["source"] == "dp"
    assert report.dp is not None
    assert 2.9 <= report.dp["epsilon"] <= 3.0
    assert report.dp["delta"] == policy.dp.delta
    # The DP model is useful, but it is not the provider's (two-sided bounds).
    assert 0.80 <= report.utility["dp_accuracy"] <= 1.0
    assert report.utility["released_accuracy"] == report.utility["dp_accuracy"]
    # The budget was charged, and the attestation carries the epsilon.
    assert ledger.budget("digits").remaining_epsilon <= 4.0 - 2.9
    statement = verify_attestation(
        json.loads((tmp_path / "out" / "attestation.json").read_text()),
        default_public_key(),
        tmp_path / "out" / "model.safetensors",
    )
    assert statement.ok, statement.summary()
    predicate = statement.statement["predicate"]  # type: ignore[index]
    assert predicate["dp"]["epsilon"] == report.dp["epsilon"]

    # A second job would overspend: refused before any container, with what is left.
    with pytest.raises(LimitExceeded, match="remain"):
        run_local(
            EXAMPLE_ALGORITHM,
            digits,
            policy,
            tmp_path / "out2",
            runner=runner,
            image=runtime_image,
            work_root=tmp_path / "work",
            ledger=ledger,
            dataset_id="digits",
        )
    second = json.loads((tmp_path / "out2" / "report.json").read_text())
    assert second["decision"] == "rejected"
    assert "remain" in second["reasons"][0]
    assert ledger.budget("digits").remaining_epsilon <= 4.0 - 2.9  # nothing more was spent
    leftovers = docker_client.containers.list(
        all=True, filters={"label": f"{LABEL_JOB}={report.job_id}"}
    )
    assert leftovers == []
    ledger.close()


def test_flagged_model_is_replaced_by_a_dp_model_on_suspicion(
    tmp_path: Path, docker_client: docker.DockerClient, runtime_image: str
) -> None:
    """An honest linear classifier's weights are class templates: the data-aware checks
    flag it. Under dp: on_suspicion the provider's weights are discarded, not released."""
    digits = write_digits(tmp_path / "digits.npz")
    base = dp_policy("on_suspicion", budget_epsilon=10.0)
    policy = base.model_copy(
        update={"checks": base.checks.model_copy(update={"data_checks": True})}
    )
    ledger = SqliteBudgetLedger(tmp_path / "ledger.db")
    algorithm = Path(__file__).parent / "algorithms" / "linear_ok"
    report = run_local(
        algorithm,
        digits,
        policy,
        tmp_path / "out",
        runner=DockerRunner(docker_client),
        image=runtime_image,
        work_root=tmp_path / "work",
        ledger=ledger,
        dataset_id="digits",
    )
    flagged = [c["name"] for c in report.checks if c["verdict"] == "flag"]
    assert flagged, report.checks
    assert report.decision == "released_dp", report.reasons
    assert any("flagged" in reason for reason in report.reasons)
    assert report.model is not None and report.model["source"] == "dp"
    assert ledger.budget("digits").remaining_epsilon <= 10.0 - 2.9
    ledger.close()


@pytest.mark.parametrize("attack", ["sign", "lsb"])
def test_white_box_attacks_under_dp_always_leave_extraction_at_chance(
    tmp_path: Path, docker_client: docker.DockerClient, runtime_image: str, attack: str
) -> None:
    """The attacker's own decoder, run on what is released under dp: always, recovers
    nothing: the provider's weights are discarded before release."""
    package = tmp_path / attack
    knowledge = make_package(attack, package)
    policy = dp_policy("always", budget_epsilon=10.0)
    report = run_attack_job(tmp_path, package, policy, docker_client, runtime_image)
    assert report.decision == "released_dp", report.reasons
    train, _ = digits_train_split(policy)
    released = load_weights(tmp_path / "out" / "model.safetensors")
    extraction = score(decode(released, knowledge), train.x, knowledge)
    assert extraction.recovered == 0
    assert extraction.bit_accuracy is not None
    assert 0.45 <= extraction.bit_accuracy <= 0.55
