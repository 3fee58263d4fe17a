"""Querying gated weights through the exported graph, in a sandbox container.

Probing and the membership audit need a model's answers (logits) on inputs the
platform chooses. Those answers are computed by trusted code (sandbox.guest.query)
on the graph from step 1 - no provider Python runs - and every array that comes
back is checked here: the expected keys only, [n, classes] float32, finite.

With `reference=True` the same container first trains the platform's reference
models of the graph on the training split (sandbox.guest.reference_train) and
answers for them too, under the reserved names in REFERENCES.
"""

from __future__ import annotations

import io
import json
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from sandbox.pipeline import containers
from sandbox.pipeline.context import MB, JobContext, StepFailed, expect_only, read_small
from sandbox.runner.base import BindMount

Logits = dict[str, dict[str, npt.NDArray[np.float32]]]
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MAX_CLASSES = 100_000
#: sandbox.guest.reference_train.REFERENCES (the host does not import torch for them)
REFERENCES = ("reference1", "reference2")


def query_models(
    ctx: JobContext,
    names: Sequence[str],
    queries: Mapping[str, npt.NDArray[np.float32]],
    step: str,
    *,
    reference: Mapping[str, float | None] | None = None,
    reference_data: str = "data",
) -> Logits:
    """logits[name][key]: float32 [len(queries[key]), classes] of work/NAME.safetensors
    (and of the platform's reference models when `reference` is given: the
    algorithm's declared epochs, batch_size and lr, which the guest clips into its
    bounds; trained on the train.npz in the workspace directory `reference_data`).

    Raises StepFailed when the container fails or its output is not exactly the
    logits asked for.
    """
    _check_request(names, queries)
    ws, policy = ctx.workspace, ctx.policy
    query_bytes = sum(int(np.asarray(x, dtype=np.float32).nbytes) for x in queries.values())
    data = ws.tmpfs(f"{step}-queries", query_bytes // MB + 2)
    arrays: dict[str, Any] = {k: np.ascontiguousarray(x, np.float32) for k, x in queries.items()}
    with open(data / "queries.npz", "wb") as handle:
        np.savez(handle, **arrays)
    os.chmod(data / "queries.npz", 0o444)
    if reference is not None:
        declared = {key: reference.get(key) for key in ("epochs", "batch_size", "lr")}
        (data / "reference.json").write_text(json.dumps(declared))
        os.chmod(data / "reference.json", 0o444)
    limit_mb = policy.limits.output_mb
    out = ws.output_dir(step, limit_mb)
    mounts = [
        BindMount(ws.path / "work", "/work"),
        BindMount(data, "/data"),
        BindMount(out, "/output", False),
    ]
    if reference is not None:
        mounts.append(BindMount(ws.path / reference_data, "/train"))
    ctx.run(
        containers.guest_spec(
            policy,
            job_id=ctx.job_id,
            step=step,
            image=ctx.image,
            module="query",
            mounts=mounts,
            args=(["--reference"] if reference is not None else []) + list(names),
            gpu_device=ctx.gpu_device,
        )
    )
    expect_only(out, {"logits.npz"}, step)
    raw = read_small(out / "logits.npz", limit_mb * MB)
    return _parse(raw, [*names, *REFERENCES] if reference is not None else names, queries, step)


def _check_request(names: Sequence[str], queries: Mapping[str, npt.NDArray[np.float32]]) -> None:
    if not names or not queries:
        raise ValueError("query_models needs at least one model name and one query set")
    if set(names) & set(REFERENCES):
        raise ValueError(f"the names {REFERENCES} are reserved for the platform's references")
    for label in (*names, *queries):
        if not _NAME.match(label):
            raise ValueError(f"name {label!r} must match [A-Za-z0-9_-]{{1,64}}")


def _parse(
    raw: bytes,
    names: Sequence[str],
    queries: Mapping[str, npt.NDArray[np.float32]],
    step: str,
) -> Logits:
    expected = {f"{name}|{key}" for name in names for key in queries}
    try:
        with np.load(io.BytesIO(raw), allow_pickle=False) as data:
            found = set(data.files)
            if found != expected:
                raise StepFailed(
                    f"{step}: logits for {sorted(found)[:6]} instead of {sorted(expected)[:6]}"
                )
            arrays = {key: np.asarray(data[key]) for key in expected}
    except (ValueError, OSError, EOFError) as error:
        raise StepFailed(f"{step}: unreadable logits.npz ({error})") from error
    classes: set[int] = set()
    result: Logits = {name: {} for name in names}
    for name in names:
        for key, x in queries.items():
            logits = arrays[f"{name}|{key}"]
            if logits.ndim != 2 or logits.shape[0] != len(x) or logits.dtype != np.float32:
                raise StepFailed(
                    f"{step}: logits of {name} on {key} are {logits.dtype}{list(logits.shape)}, "
                    f"expected float32[{len(x)}, classes]"
                )
            if not np.isfinite(logits).all():
                raise StepFailed(f"{step}: logits of {name} on {key} are not all finite")
            classes.add(int(logits.shape[1]))
            result[name][key] = logits
    if len(classes) > 1 or not all(0 < c <= MAX_CLASSES for c in classes):
        raise StepFailed(f"{step}: inconsistent class counts {sorted(classes)} across logits")
    return result
