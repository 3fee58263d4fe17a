"""The production backend: a Docker runner and the current runtime image."""

from __future__ import annotations

from collections.abc import Callable

from sandbox.runner.docker_runner import DockerRunner
from sandbox.runner.images import ensure_runtime_image


def docker_backend(
    runtime: str, log: Callable[[str], None] | None = None
) -> tuple[DockerRunner, str]:
    """Connect to the engine, check it has `runtime`, and make sure the image exists."""
    runner = DockerRunner()
    runner.check_runtime(runtime)
    image = (
        ensure_runtime_image(client=runner.client, log=log)
        if log
        else ensure_runtime_image(client=runner.client)
    )
    return runner, image
