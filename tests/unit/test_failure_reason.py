import pytest

from sandbox.pipeline.containers import failure_reason
from sandbox.policy.load import load_policy
from sandbox.runner.base import ExitStatus, RunResult

POLICY = load_policy("default")


@pytest.mark.parametrize(
    ("status", "logs", "expected"),
    [
        (ExitStatus(0), b"", None),
        (ExitStatus(None, timed_out=True), b"", "train: killed at the wall-clock limit of 600 s"),
        (ExitStatus(137, oom_killed=True), b"", "train: ran out of memory (limit 2048 MB)"),
        (
            ExitStatus(4),
            b"noise\nSANDBOX_ERROR: train.py raised ValueError: bad\n",
            "train: train.py raised ValueError: bad",
        ),
        (ExitStatus(137), b"", "train: killed (status 137"),
        (ExitStatus(3), b"plain crash", "train: the container exited with status 3"),
        (ExitStatus(4), b"SANDBOX_ERROR: a\x1b[31mb\n", "train: a?[31mb"),
    ],
)
def test_reasons(status: ExitStatus, logs: bytes, expected: str | None) -> None:
    reason = failure_reason("train", RunResult(status, logs), POLICY)
    if expected is None:
        assert reason is None
    else:
        assert reason is not None and reason.startswith(expected)
