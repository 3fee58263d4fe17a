"""Fixtures: a real gRPC server on port 0 with real mTLS and real SQLite, in-process.

Jobs run through a fake executor (no containers) unless a test asks for Docker.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from sandbox.client.config import load_config
from sandbox.client.connection import Client
from sandbox.server import RunningServer, start_server
from sandbox.service.platform import Limits
from sandbox.service.state import init_state
from sandbox.store import InMemoryMetadataStore, Role
from tests.api.fakes import FakeExecutor

LIMITS = Limits(max_dataset_bytes=64 << 20, max_algorithm_bytes=8 << 20)
PARTIES = [
    ("alice", Role.DATA_OWNER),
    ("carol", Role.DATA_OWNER),
    ("bob", Role.PROVIDER),
    ("pete", Role.PROVIDER),
    ("olga", Role.OPERATOR),
    ("sam", Role.SECURITY),
]


@dataclass
class Env:
    state: Path
    configs: dict[str, Path]
    server: RunningServer
    executor: FakeExecutor
    clients: dict[str, Client]

    def client(self, name: str) -> Client:
        if name not in self.clients:
            self.clients[name] = self.new_client(name)
        return self.clients[name]

    def new_client(self, name: str) -> Client:
        """A client with its own channel (its own TLS connection)."""
        config = load_config(self.configs[name])
        return Client(replace(config, address=f"127.0.0.1:{self.server.port}"), progress=False)

    def restart(self, executor: FakeExecutor | None = None) -> None:
        for client in self.clients.values():
            client.close()
        self.clients.clear()
        self.server.stop()
        self.executor = executor or FakeExecutor()
        self.server = start_server(self.state, executor=self.executor, limits=LIMITS)


@pytest.fixture(scope="session")
def initialised(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Path]]:
    root = tmp_path_factory.mktemp("pki") / "template"
    configs = init_state(root, PARTIES)
    return root, configs


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> str:
    """The metadata backend: SQLite unless a test module parametrizes it (indirect)."""
    return str(getattr(request, "param", "sqlite"))


@pytest.fixture
def env(tmp_path: Path, initialised: tuple[Path, dict[str, Path]], backend: str) -> Iterator[Env]:
    """A fresh state directory (certificates reused from one init: fast) and server."""
    import shutil

    template, configs = initialised
    state = tmp_path / "state"
    shutil.copytree(template, state)
    local = {name: state / path.relative_to(template) for name, path in configs.items()}
    executor = FakeExecutor()
    store = InMemoryMetadataStore() if backend == "memory" else None
    server = start_server(state, executor=executor, limits=LIMITS, store=store)
    environment = Env(state, local, server, executor, {})
    yield environment
    for client in environment.clients.values():
        client.close()
    environment.executor.release_block.set()  # never leave a job (and its tmpfs) running
    environment.server.platform.wait_idle(10)
    environment.server.stop()
