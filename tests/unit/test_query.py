"""Querying gated weights through the exported graph (sandbox.pipeline.query, guest.query).

The guest runs as a host process here (ProcessRunner); the Docker path is covered
by the pipeline integration tests that probe and audit. What is pinned down: the
logits equal the module's own, several models and query sets come back under
their names, and anything else a container might write is refused.
"""

from __future__ import annotations

import io
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from sandbox.pipeline.context import JobContext, StepFailed
from sandbox.pipeline.query import _parse, query_models
from sandbox.pipeline.report import Report
from sandbox.policy.model import Policy
from sandbox.runner.process_runner import ProcessRunner
from sandbox.runner.workspace import JobWorkspace


def _mlp(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)).eval()


@pytest.fixture
def ctx(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[JobContext]:
    # The guest command is `python -P -m sandbox.guest.query`: run this interpreter.
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    with JobWorkspace(tmp_path / "jobs", "query-test") as ws:
        work = ws.tmpfs("work", 8)
        batch = torch.export.Dim("batch", min=1, max=65536)
        program = torch.export.export(
            _mlp(0), (torch.zeros(2, 2, 3),), dynamic_shapes=({0: batch},)
        )
        torch.export.save(program, str(work / "model.pt2"))
        for name, seed in (("candidate", 1), ("sanitized", 2)):
            save_file(_mlp(seed).state_dict(), str(work / f"{name}.safetensors"))
        yield JobContext(
            "query-test",
            Policy(name="test"),
            ProcessRunner(),
            "none",
            ws,
            Report(job_id="query-test", policy={}),
            lambda step, message: None,
        )


def test_logits_equal_the_modules_own(ctx: JobContext) -> None:
    rng = np.random.default_rng(0)
    queries = {
        "noise": rng.uniform(0, 1, (700, 2, 3)).astype(np.float32),  # > one guest batch
        "one": rng.normal(size=(1, 2, 3)).astype(np.float32),
    }
    logits = query_models(ctx, ["candidate", "sanitized"], queries, "probe")
    assert set(logits) == {"candidate", "sanitized"}
    for name, seed in (("candidate", 1), ("sanitized", 2)):
        model = _mlp(seed)
        for key, x in queries.items():
            with torch.no_grad():
                expected = model(torch.from_numpy(x)).numpy()
            assert logits[name][key].shape == (len(x), 3)
            assert logits[name][key].dtype == np.float32
            np.testing.assert_allclose(logits[name][key], expected, rtol=1e-5, atol=1e-5)
    assert any(step == "probe" for step, _ in ctx.logs)


def test_names_must_be_plain(ctx: JobContext) -> None:
    x = np.zeros((1, 2, 3), np.float32)
    with pytest.raises(ValueError, match="must match"):
        query_models(ctx, ["../candidate"], {"noise": x}, "probe")
    with pytest.raises(ValueError, match="must match"):
        query_models(ctx, ["candidate"], {"a|b": x}, "probe")
    with pytest.raises(ValueError, match="at least one"):
        query_models(ctx, [], {"noise": x}, "probe")


def test_a_missing_weight_file_fails_the_step(ctx: JobContext) -> None:
    with pytest.raises(StepFailed, match="probe"):
        query_models(ctx, ["nonexistent"], {"noise": np.zeros((2, 2, 3), np.float32)}, "probe")


def _npz(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # type: ignore[arg-type]
    return buffer.getvalue()


QUERIES = {"noise": np.zeros((4, 6), np.float32)}


@pytest.mark.parametrize(
    ("arrays", "problem"),
    [
        ({}, "instead of"),
        (
            {"m|noise": np.zeros((4, 3), np.float32), "m|extra": np.zeros((4, 3), np.float32)},
            "instead of",
        ),
        ({"m|noise": np.zeros((3, 3), np.float32)}, "expected float32"),
        ({"m|noise": np.zeros((4, 3), np.float64)}, "expected float32"),
        ({"m|noise": np.zeros((4,), np.float32)}, "expected float32"),
        ({"m|noise": np.full((4, 3), np.nan, np.float32)}, "not all finite"),
        ({"m|noise": np.zeros((4, 0), np.float32)}, "class counts"),
    ],
)
def test_the_host_refuses_anything_but_the_logits_asked_for(
    arrays: dict[str, np.ndarray], problem: str
) -> None:
    with pytest.raises(StepFailed, match=problem):
        _parse(_npz(**arrays), ["m"], QUERIES, "probe")


def test_pickled_or_garbage_output_is_refused() -> None:
    with pytest.raises(StepFailed, match="unreadable"):
        _parse(b"not an npz", ["m"], QUERIES, "probe")
    pickled = _npz(**{"m|noise": np.array([object()], dtype=object)})
    with pytest.raises(StepFailed):
        _parse(pickled, ["m"], QUERIES, "probe")
