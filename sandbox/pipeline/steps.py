"""The container steps of one job: prepare, architecture, train, gate, evaluate.

Each step reads from and writes to the job's private workspace and records what
the owner's report needs; a failing container raises StepFailed with a reason.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from sandbox.checks.step import ChecksSettings, check_and_sanitize
from sandbox.gate import TensorSpec, gate_output
from sandbox.pipeline import containers, membership_step
from sandbox.pipeline.algorithm import AlgorithmPackage, unpack_algorithm
from sandbox.pipeline.architecture import Architecture, parse_architecture
from sandbox.pipeline.context import MB, JobContext, StepFailed, expect_only, read_small
from sandbox.pipeline.dataset import (
    Dataset,
    check_compatible,
    load_dataset,
    split_holdout,
    write_npz,
)
from sandbox.pipeline.membership_step import PlantedCanaries
from sandbox.policy.decide import CheckOutcome
from sandbox.policy.model import Policy
from sandbox.runner.base import BindMount

#: workspace directory of the canary-free training split (probe references, when
#: canaries are planted); without canaries the references train on data/
CANARY_FREE = "reference-data"


def reference_data(policy: Policy, canaries: PlantedCanaries | None) -> str | None:
    """The workspace directory the probe's references train on: the canary-free split
    when canaries are planted (so the audit can use them), else data/; None when no
    references run."""
    if not (policy.probes.enabled and policy.probes.reference):
        return None
    return CANARY_FREE if canaries is not None else "data"


def prepare(
    ctx: JobContext, algorithm: Path, dataset: Path, holdout: Path | None
) -> tuple[AlgorithmPackage, Dataset, Dataset, PlantedCanaries | None]:
    """Load and split the data; the training split written to data/ lacks held-back canaries."""
    policy = ctx.policy
    full = load_dataset(dataset, max_bytes=policy.max_dataset_mb * MB)
    if holdout is None:
        train, test = split_holdout(full, policy.holdout_fraction, policy.holdout_seed)
        source = f"split ({policy.holdout_fraction:.2f}, seed {policy.holdout_seed})"
    else:
        train, test = full, load_dataset(holdout, max_bytes=policy.max_dataset_mb * MB)
        check_compatible(test, train)
        source = "file"
    split = train  # before the canaries are taken out
    train, canaries = membership_step.plant(ctx, split)
    ws = ctx.workspace
    data_mb = train.x.nbytes // MB + train.y.nbytes // MB + 2
    write_npz(train, ws.tmpfs("data", data_mb) / "train.npz")
    canary_free = reference_data(policy, canaries) == CANARY_FREE
    if canaries is not None and canaries.clean is not None and canary_free:
        # the probe's references train on the split without ANY canary, so they can
        # serve the membership audit's likelihood ratio as well
        clean = Dataset(
            np.ascontiguousarray(split.x[canaries.clean]),
            np.ascontiguousarray(split.y[canaries.clean]),
            split.num_classes,
            split.input_shape,
        )
        write_npz(clean, ws.tmpfs(CANARY_FREE, data_mb) / "train.npz")
    test_mb = test.x.nbytes // MB + test.y.nbytes // MB + 2
    write_npz(test, ws.tmpfs("holdout", test_mb) / "holdout.npz")
    package = unpack_algorithm(algorithm, ws.tmpfs("algorithm", 64) / "pkg")
    ws.tmpfs("work", policy.limits.output_mb * 4 + 64)
    ctx.report.algorithm = {
        "name": package.name,
        "version": package.version,
        "sha256": package.sha256,
    }
    ctx.report.dataset = {
        "n_train": len(train.y),
        "n_holdout": len(test.y),
        "num_classes": train.num_classes,
        "input_shape": list(train.input_shape),
        "holdout": source,
    }
    return package, train, test, canaries


def architecture(ctx: JobContext, package: AlgorithmPackage, train: Dataset) -> Architecture:
    """Step 1: export in a container without data, describe in one without provider code."""
    ws, policy = ctx.workspace, ctx.policy
    shape_env = {
        "SANDBOX_INPUT_SHAPE": json.dumps(list(train.input_shape)),
        "SANDBOX_NUM_CLASSES": str(train.num_classes),
    }
    out = ws.output_dir("export", policy.limits.output_mb * 2 + 16)
    ctx.run(
        containers.guest_spec(
            policy,
            job_id=ctx.job_id,
            step="export",
            image=ctx.image,
            module="export",
            mounts=[BindMount(package.root, "/algorithm"), BindMount(out, "/output", False)],
            env=shape_env,
        )
    )
    expect_only(out, {"model.pt2", "init.safetensors"}, "export")
    work = ws.path / "work"
    program = read_small(out / "model.pt2", policy.limits.output_mb * 2 * MB)
    (work / "model.pt2").write_bytes(program)
    os.chmod(work / "model.pt2", 0o444)

    described = ws.output_dir("describe", 8)
    ctx.run(
        containers.guest_spec(
            policy,
            job_id=ctx.job_id,
            step="describe",
            image=ctx.image,
            module="describe",
            mounts=[BindMount(work, "/work"), BindMount(described, "/output", False)],
            env=shape_env,
        )
    )
    expect_only(described, {"arch.json"}, "describe")
    arch = parse_architecture(
        read_small(described / "arch.json", 4 * MB),
        input_shape=train.input_shape,
        num_classes=train.num_classes,
        rules=policy.architecture,
    )
    ctx.report.architecture = arch.summary()
    return arch


def train(ctx: JobContext, package: AlgorithmPackage) -> Path:
    """Step 2: the provider's train.py with the training split, read-only."""
    ws, policy = ctx.workspace, ctx.policy
    out = ws.output_dir("train", policy.limits.output_mb)
    ctx.run(
        containers.guest_spec(
            policy,
            job_id=ctx.job_id,
            step="train",
            image=ctx.image,
            module="train",
            mounts=[
                BindMount(package.root, "/algorithm"),
                BindMount(ws.path / "data", "/data"),
                BindMount(out, "/output", False),
            ],
            gpu_device=ctx.gpu_device,
        )
    )
    return out


def gate(ctx: JobContext, out: Path, arch: Architecture, name: str = "candidate") -> Path:
    """Step 3: only the declared model leaves, canonically re-serialised into work/NAME."""
    dest = ctx.workspace.path / "work" / f"{name}.safetensors"
    expected: dict[str, TensorSpec] = dict(arch.tensors)
    result = gate_output(out, expected, ctx.policy.gate, dest)
    os.chmod(dest, 0o444)  # trusted containers (evaluate) read it as the container user
    if name == "candidate":
        ctx.report.gate = {"verdict": "pass", "notes": list(result.notes)}
    return dest


def evaluate(ctx: JobContext, test: Dataset, names: list[str], step: str) -> dict[str, float]:
    """Holdout accuracy of work/NAME.safetensors for each name, by trusted code on the graph."""
    ws, policy = ctx.workspace, ctx.policy
    out = ws.output_dir(step, 1)
    ctx.run(
        containers.guest_spec(
            policy,
            job_id=ctx.job_id,
            step=step,
            image=ctx.image,
            module="evaluate",
            mounts=[
                BindMount(ws.path / "work", "/work"),
                BindMount(ws.path / "holdout", "/data"),
                BindMount(out, "/output", False),
            ],
            args=names,
        )
    )
    expect_only(out, {"metrics.json"}, step)
    accuracies: dict[str, float] = {}
    try:
        results = json.loads(read_small(out / "metrics.json", 65536))["results"]
        for name in names:
            correct, n = results[name]["correct"], results[name]["n"]
            if not (isinstance(correct, int) and isinstance(n, int)):
                raise TypeError("counts are not integers")
            if not (n == len(test.y) and 0 <= correct <= n):
                raise StepFailed(f"{step}: metrics do not match the holdout")
            accuracies[name] = correct / n
    except (ValueError, KeyError, TypeError) as error:
        raise StepFailed(f"{step}: malformed metrics ({error})") from error
    return accuracies


def weight_checks(
    ctx: JobContext, candidate: Path, train: Dataset, arch: Architecture
) -> tuple[tuple[CheckOutcome, ...], Path | None]:
    """Step 4, weight side: the policy's checks on the gated candidate, then the sanitizer.

    Runs on the host with numpy over the canonical file the gate wrote (no provider
    code); the data-aware checks use the training split, which only the platform has.
    """
    rules = ctx.policy.checks
    sanitized = ctx.workspace.path / "work" / "sanitized.safetensors" if rules.sanitize else None
    settings = ChecksSettings(
        enabled=tuple(rules.enabled),
        # Family-wise: the policy's rate bounds an honest model being flagged by ANY check;
        # the checks' thresholds are calibrated together on the honest corpus.
        fpr=rules.fpr,
        check_fpr={str(name): rate for name, rate in rules.check_fpr.items()},
        sanitize=rules.sanitize,
        sanitize_bits={str(k): v for k, v in rules.sanitize_bits.items()}
        if rules.sanitize_bits
        else None,
        data_checks=rules.data_checks,
        rescale=rules.rescale_units,
        unrescaled_bits={str(k): v for k, v in rules.sanitize_bits_unrescaled.items()}
        if rules.sanitize_bits_unrescaled
        else None,
    )
    outcome = check_and_sanitize(
        candidate,
        sanitized,
        train.x,
        settings,
        num_classes=train.num_classes,
        unit_chains=arch.unit_chains,
    )
    if sanitized is not None:
        os.chmod(sanitized, 0o444)
    ctx.report.checks = outcome.report_entries()
    verdicts = tuple(
        CheckOutcome(r.name, "flag" if r.verdict == "flag" else "pass", r.explanation)
        for r in outcome.results
    )
    return verdicts, sanitized
