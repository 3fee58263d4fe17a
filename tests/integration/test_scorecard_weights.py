"""The scorecard's weight channels against the default policy, through the real pipeline.

Each of Song et al.'s attacks (10 epochs, the small budget) runs as a whole job on
Docker; the attacker's decoder reads what was released. The control (the same
decoder on the gated candidate, never released) proves each attack carried the
records in this very run, so `detected` and `neutralized` are the policy's doing,
not a broken attack.

Three channels, three jobs at once (about 120 s at load 9 on the 2-core box): one
neutralized (encrypted LSB), one detected (sign), one that the default policy leaves
open (capacity abuse: no weight check sees it, the sanitizer keeps the behaviour, and
default runs no probes). Raw LSB and correlated value take the sign path here (flagged
by a data-free check, rejected); their flags are pinned by the unit tests of
sandbox/redteam and their outcomes are in the README's scorecard.
"""

from __future__ import annotations

import docker
import pytest

from sandbox.policy.load import load_policy
from sandbox.redteam.weight_channels import CHANNELS, start_weight_channels
from sandbox.runner.base import LABEL_JOB
from sandbox.runner.docker_runner import DockerRunner

pytestmark = pytest.mark.docker


def test_weight_channels_under_the_default_policy(
    docker_client: docker.DockerClient, runtime_image: str
) -> None:
    policy = load_policy("default")
    wanted = {"lsb-encrypted", "sign-encoding", "capacity-abuse"}
    channels = [c for c in CHANNELS if c.name in wanted]
    wait = start_weight_channels(
        policy, DockerRunner(docker_client), runtime_image, channels=channels, parallel=3
    )
    results = {r.channel.name: r for r in wait()}
    assert set(results) == wanted

    for name, result in results.items():
        control = result.control
        assert control is not None and control.leaked, (name, result.evidence)
        assert result.evidence
    # The attacks work: near-exact bits for LSB, most sign bits, correlated records.
    control = results["lsb-encrypted"].control
    assert control is not None and control.observed > 0.99
    assert control.records >= 200
    sign = results["sign-encoding"].control
    assert sign is not None and 0.8 <= sign.observed <= 1.0
    capacity = results["capacity-abuse"].control
    assert capacity is not None and 0.9 <= capacity.observed <= 1.0

    flagged = {
        name: {c["name"] for c in r.report.checks if c["verdict"] == "flag"}
        for name, r in results.items()
    }
    # Encrypted LSB looks like noise to every check; the sanitizer destroys it.
    encrypted = results["lsb-encrypted"]
    assert encrypted.outcome == "neutralized", encrypted.evidence
    assert encrypted.report.decision == "released_sanitized"
    assert encrypted.extraction is not None and not encrypted.extraction.leaked
    assert abs(encrypted.extraction.observed - 0.5) <= 0.01
    assert encrypted.extraction.recovered == 0
    # The regularisers leave sign structure the data-free checks see (default runs
    # no data-aware check and never DP): rejected, nothing released.
    assert results["sign-encoding"].outcome == "detected"
    assert "sign_balance" in flagged["sign-encoding"]
    assert results["sign-encoding"].report.decision == "rejected"
    # Capacity abuse leaves through behaviour: released (sanitized) and read back.
    leaked = results["capacity-abuse"]
    assert leaked.outcome == "leaked", leaked.evidence
    assert leaked.report.decision == "released_sanitized"
    assert flagged["capacity-abuse"] == set()
    assert leaked.extraction is not None and 0.9 <= leaked.extraction.observed <= 1.0
    assert leaked.extraction.recovered >= 15  # of 20 records

    jobs = {r.report.job_id for r in results.values()}
    left = [c for c in docker_client.containers.list(all=True) if c.labels.get(LABEL_JOB) in jobs]
    assert left == []


def test_lsb_above_the_sanitizers_bits_under_the_default_policy(
    docker_client: docker.DockerClient, runtime_image: str
) -> None:
    """Payload bits 19-21, which the sanitizer keeps: the stock decoder is at chance in
    the released model because the pipeline rescaled the hidden units first (the
    describe step found the chain in the exported graph); the adaptive attacker's
    pilot weights undo the rescaling and still read most bits back (the known gap in
    the README), though hardly a record comes back whole."""
    policy = load_policy("default")
    wanted = {"lsb-above-sanitizer", "lsb-pilot"}
    channels = [c for c in CHANNELS if c.name in wanted]
    wait = start_weight_channels(
        policy, DockerRunner(docker_client), runtime_image, channels=channels, parallel=2
    )
    results = {r.channel.name: r for r in wait()}
    assert set(results) == wanted
    for name, result in results.items():
        control = result.control
        assert control is not None and control.observed > 0.99, (name, result.evidence)
        assert result.report.decision == "released_sanitized", (name, result.evidence)
        assert {c["name"] for c in result.report.checks if c["verdict"] == "flag"} == set()
        sanitizer = next(c for c in result.report.checks if c["name"] == "sanitizer")
        assert sanitizer["details"]["rescale"]["units_rescaled"] == 128
    above = results["lsb-above-sanitizer"]
    assert above.outcome == "neutralized", above.evidence
    assert above.extraction is not None and abs(above.extraction.observed - 0.5) <= 0.01
    assert above.extraction.recovered == 0
    pilot = results["lsb-pilot"]
    assert pilot.outcome == "leaked", pilot.evidence
    assert pilot.extraction is not None and 0.7 <= pilot.extraction.observed <= 0.9
    assert pilot.extraction.recovered <= 2  # of about 45 (measured: 0)
