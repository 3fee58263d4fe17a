"""Suite-wide rules: in CI, a Docker or browser test may never be skipped."""

import os
import tempfile

import pytest


def pytest_configure(config: pytest.Config) -> None:
    # The platform's signing key and audit log live in $SANDBOX_HOME: never let a
    # test run touch an operator's real ones.
    os.environ["SANDBOX_HOME"] = tempfile.mkdtemp(prefix="sandbox-test-home-")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    config.stash[_DOCKER_COUNT] = sum(1 for item in items if item.get_closest_marker("docker"))


_DOCKER_COUNT = pytest.StashKey[int]()
_SKIPPED_DOCKER = pytest.StashKey[list[str]]()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    outcome = yield
    report = outcome.get_result()
    if report.skipped and (item.get_closest_marker("docker") or item.get_closest_marker("browser")):
        item.config.stash.setdefault(_SKIPPED_DOCKER, []).append(item.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    skipped = session.config.stash.get(_SKIPPED_DOCKER, [])
    if os.environ.get("CI") == "true" and skipped:
        session.exitstatus = 1
        print(
            f"\nCI=true but {len(skipped)} Docker or browser test(s) were skipped: CI always "
            "has an engine and Chromium (scripts/test.sh installs it)"
        )
