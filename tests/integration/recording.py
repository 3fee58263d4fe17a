"""A Docker runner that remembers which steps it started containers for (tests only)."""

from __future__ import annotations

from pathlib import Path

import docker

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
