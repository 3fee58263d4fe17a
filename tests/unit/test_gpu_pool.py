import pytest

from sandbox.errors import FailedPrecondition
from sandbox.runner.gpu import GpuPool, discover_gpus


def test_one_dedicated_gpu_per_job_and_scrub_on_release() -> None:
    scrubbed: list[str] = []
    pool = GpuPool(["0", "1"], scrub=scrubbed.append)
    a, b = pool.acquire("job-a"), pool.acquire("job-b")
    assert {a, b} == {"0", "1"}
    with pytest.raises(FailedPrecondition, match="none is free"):
        pool.acquire("job-c")
    pool.release(a)
    assert scrubbed == [a]
    assert pool.acquire("job-c") == a


def test_discovery_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SANDBOX_GPUS", "GPU-a, GPU-b")
    assert discover_gpus() == ["GPU-a", "GPU-b"]
    monkeypatch.setenv("SANDBOX_GPUS", "")
    assert discover_gpus() == []
