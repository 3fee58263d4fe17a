"""Shared fixtures of the Docker tests: the engine client and the runtime image.

Without a reachable engine the tests that use them skip with the reason, except
when CI=true: CI always has an engine, so there they fail instead.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import docker
import pytest

from sandbox.runner.images import ensure_runtime_image


@pytest.fixture(scope="session")
def docker_client() -> Iterator[docker.DockerClient]:
    try:
        client = docker.from_env(version="auto")
        client.ping()
    except Exception as error:  # any failure means "no usable engine here"
        reason = (
            f"no Docker engine reachable ({type(error).__name__}: {error}); "
            "start one with scripts/bootstrap.sh"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason} [CI=true: the engine is required]", pytrace=False)
        pytest.skip(reason)
    yield client
    client.close()


@pytest.fixture(scope="session")
def runtime_image(docker_client: docker.DockerClient) -> str:
    """The current CPU runtime image tag, built first if missing (minutes, once)."""
    return ensure_runtime_image("cpu", client=docker_client)
