"""Shared pieces of the Docker tests: a runner that remembers which steps it started
containers for, one job on the digits sample data, and the split that job trains on."""

from __future__ import annotations

from pathlib import Path

import docker

from sandbox.demo import sample_dataset, write_digits
from sandbox.dp import SqliteBudgetLedger
from sandbox.pipeline.dataset import Dataset, split_holdout
from sandbox.pipeline.local import run_local
from sandbox.pipeline.report import Report
from sandbox.policy.model import Policy
from sandbox.runner.base import ContainerHandle, ContainerSpec
from sandbox.runner.docker_runner import DockerRunner

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "digits_mlp"


class RecordingRunner(DockerRunner):
    """The production runner, remembering which steps it started containers for."""

    def __init__(self, client: docker.DockerClient) -> None:
        super().__init__(client)
        self.steps: list[str] = []

    def start(self, spec: ContainerSpec) -> ContainerHandle:
        self.steps.append(spec.step)
        return super().start(spec)


def run_attack_job(
    tmp_path: Path,
    package: Path,
    policy: Policy,
    docker_client: docker.DockerClient,
    image: str,
) -> Report:
    """`package` through `run_local` on the digits sample data under `policy`: the
    production Docker runner, a work root, out/ and a SQLite privacy ledger (dataset id
    "digits") under `tmp_path`."""
    ledger = SqliteBudgetLedger(tmp_path / "ledger.db")
    try:
        return run_local(
            package,
            write_digits(tmp_path / "digits.npz"),
            policy,
            tmp_path / "out",
            runner=DockerRunner(docker_client),
            image=image,
            work_root=tmp_path / "work",
            ledger=ledger,
            dataset_id="digits",
        )
    finally:
        ledger.close()


def digits_train_split(policy: Policy) -> tuple[Dataset, Dataset]:
    """The digits (train, holdout) split a job under `policy` makes (before any canaries
    are held back): the attacker's scoring truth."""
    x, y = sample_dataset("digits")
    return split_holdout(
        Dataset(x=x, y=y, num_classes=10, input_shape=(64,)),
        policy.holdout_fraction,
        policy.holdout_seed,
    )
