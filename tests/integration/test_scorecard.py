"""The red-team scorecard against the shipped policies, on the real engine."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sandbox.policy.load import load_policy
from sandbox.redteam.scorecard import SMUGGLING, run_scorecard
from sandbox.runner.docker_runner import DockerRunner

pytestmark = pytest.mark.docker

ISOLATION = {
    "network-escape",
    "write-outside-output",
    "privilege-escalation",
    "fork-bomb",
    "memory-bomb",
    "disk-fill",
    "endless-loop",
}


@pytest.mark.parametrize("name", ["default", "strict"])
def test_every_escape_and_smuggling_attempt_is_blocked(
    name: str, docker_client: object, runtime_image: str, tmp_path: Path
) -> None:
    policy = load_policy(name)
    card = run_scorecard(
        policy, DockerRunner(docker_client), runtime_image, work_root=tmp_path / "work"
    )
    outcomes = {entry.name: entry.outcome for entry in card.results}
    assert ISOLATION | set(SMUGGLING) <= set(outcomes)
    for attempt in ISOLATION | set(SMUGGLING) | {"file-size", "logs"}:
        assert outcomes[attempt] == "blocked", [e for e in card.results if e.name == attempt]
    assert outcomes["exit-status"] == "neutralized"
    # Honest about what is open: default releases at once; under strict's fixed release
    # time two jobs whose train.py overruns it by different amounts are stopped and
    # their rejections appear at the same time (measured: the evidence has the numbers).
    timing = next(e for e in card.results if e.name == "timing")
    assert timing.outcome == ("neutralized" if name == "strict" else "leaked"), timing
    assert ("outcomes " in timing.evidence) == (name == "strict"), timing
    assert all(entry.evidence for entry in card.results)
    assert not list((tmp_path / "work").iterdir())


CLI = (sys.executable, "-m", "sandbox.cli")


def test_cli_json_shape(docker_client: object, runtime_image: str) -> None:
    result = subprocess.run(
        # The weight channels run in test_scorecard_weights.py; here the CLI's shape.
        [*CLI, "policy", "test", "--policy", "default", "--json", "--no-weights"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    card = json.loads(result.stdout)
    assert card["policy"] == "default"
    assert {"name", "channel", "outcome", "evidence"} <= set(card["results"][0])
    assert {r["outcome"] for r in card["results"]} <= {
        "blocked",
        "neutralized",
        "detected",
        "leaked",
    }
