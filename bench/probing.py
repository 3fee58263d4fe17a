"""Canary-query probing against black-box capacity abuse: detection at 1% FPR, and cost.

Trains capacity-abuse models at the attack's default (paper-like) strength with
the red team's own recipe (`sandbox.redteam.capacity.train_capacity_model`: the
package's augmentation, MLP and optimiser, in this process), on digits and
breast_cancer, with the paper's seeded-PRNG generator and with a held-out
generator (smooth random cosine patterns) that is not one of the probe families.
Each variant changes the training seed and the attacker's synthetic seed. For
each model it

- checks the attack works (bit accuracy of the attacker's own black-box decoder),
- probes it as the pipeline does (a fresh CSPRNG seed, the shipped calibration,
  the policy's family-wise FPR split over the checks) and records the verdicts,

and does the same for the honest twins (same recipe, no synthetic inputs) as a
sanity check of the false-positive side. The probing time for a digits model is
measured through the pipeline's own probe step (`sandbox.pipeline.probe_step`)
with the process runner (`--time`): family construction, the query guest on the
exported graph, statistics and verdicts.

    python -m bench.probing [--variants 10] [--fpr 0.01] [--time]
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.corpus import load_data
from bench.probe_corpus import probe_queries, reference_logits, statistics_from_logits
from sandbox.checks.probing.calibrate import checks_for, load_shipped, verdicts


def red_team_mlp(tensors: dict[str, Any], scale: float) -> Any:
    """The red-team package's MLP (packages/common/model.py: net.1 -> ReLU -> net.3, the
    input scale inside forward) as a torch module of the same shapes: the architecture
    the platform's references are trained on."""
    import torch
    from torch import nn

    hidden, features = np.shape(tensors["net.1.weight"])
    classes = np.shape(tensors["net.3.weight"])[0]

    class MLP(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(
                nn.Flatten(), nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, classes)
            )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x * scale)  # type: ignore[no-any-return]

    return MLP()


def probe_model(
    tensors: dict[str, Any],
    dataset: str,
    scale: float,
    fpr: float,
    *,
    reference: bool = True,
    declared: dict[str, Any] | None = None,
) -> tuple[list[str], dict[str, float]]:
    """Names of the probe checks that flag this red-team MLP (pipeline settings; with
    `reference`, as under `probes.reference: true`), and each check's score."""
    from sandbox.redteam.capacity import mlp_logits

    data = load_data(dataset)
    calibration = load_shipped(data.num_classes)
    n = calibration.queries_per_family or 256
    queries = probe_queries(data.x_train, secrets.randbits(63), n) | {"holdout": data.x_holdout}
    logits = {k: mlp_logits(tensors, x, scale).astype(np.float32) for k, x in queries.items()}
    references = (
        reference_logits(
            red_team_mlp(tensors, scale), data.x_train, data.y_train, queries, declared
        )
        if reference
        else []
    )
    stats = statistics_from_logits(logits, references)
    measured = {stat for values in stats.values() for stat in values}
    checked = [s for s in checks_for(reference) if calibration.honest.get(s) and s in measured]
    results = verdicts(stats, calibration, fpr / max(1, len(checked)), checked=checked)
    return [r.name for r in results if r.verdict == "flag"], {r.name: r.statistic for r in results}


def run_variants(variants: int, fpr: float, log: Any) -> list[dict[str, Any]]:
    from sandbox.redteam.capacity import (
        decode_capacity,
        mlp_query,
        score_capacity,
        train_capacity_model,
    )

    rows: list[dict[str, Any]] = []
    for dataset in ("digits", "breast_cancer"):
        data = load_data(dataset)
        for generator in ("prng", "heldout", "honest"):
            for v in range(variants):
                start = time.perf_counter()
                tensors, knowledge = train_capacity_model(
                    data.x_train,
                    data.y_train,
                    dataset=dataset,
                    generator="prng" if generator == "honest" else generator,
                    attack=generator != "honest",
                    seed=v,
                    synth_seed=20170 + v,
                )
                scale = float(knowledge.params["input_scale"])
                query = mlp_query(tensors, scale)
                accuracy = float(
                    (np.asarray(query(data.x_holdout)).argmax(axis=1) == data.y_holdout).mean()
                )
                bits = None
                if generator != "honest":
                    decoded = decode_capacity(query, knowledge)
                    bits = score_capacity(decoded, data.x_train, knowledge).attack.bit_accuracy
                # the package declares (algorithm.toml) the recipe its train.py uses
                declared = {k: knowledge.params[k] for k in ("epochs", "batch_size", "lr")}
                flags, scores = probe_model(tensors, dataset, scale, fpr, declared=declared)
                plain, _ = probe_model(tensors, dataset, scale, fpr, reference=False)
                rows.append(
                    {
                        "dataset": dataset,
                        "generator": generator,
                        "variant": v,
                        "accuracy": accuracy,
                        "bit_accuracy": bits,
                        "flags": flags,
                        "flags_no_reference": plain,
                        "divergence": scores["probe_divergence"],
                    }
                )
                log(
                    f"{dataset} {generator} #{v}: acc {accuracy:.3f} bits {bits} "
                    f"flags {flags}, without reference {plain}, "
                    f"divergence {scores['probe_divergence']:.2f} "
                    f"({time.perf_counter() - start:.1f} s)"
                )
    return rows


def train_mlp(
    dataset: str, *, noise: int = 0, hidden: int = 64, epochs: int = 60, seed: int = 0
) -> Any:
    """A one-hidden-layer MLP on `dataset`'s pipeline split, plus `noise` uniform-noise
    inputs over the training range with arbitrary (seeded random) labels: capacity
    abuse in its plainest form when noise > 0. Full-batch Adam, one thread; seconds."""
    import torch
    from torch import nn

    torch.set_num_threads(1)
    data = load_data(dataset)
    x, y = data.x_train, data.y_train
    if noise:
        rng = np.random.default_rng(seed + 1)
        low, high = x.min(axis=0), x.max(axis=0)
        synthetic = (low + rng.random((noise, x.shape[1])) * (high - low)).astype(np.float32)
        x = np.concatenate([x, synthetic])
        y = np.concatenate([y, rng.integers(data.num_classes, size=noise)])
    scale = 1 / 16 if dataset == "digits" else 1.0
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Flatten(), nn.Linear(x.shape[1], hidden), nn.ReLU(), nn.Linear(hidden, data.num_classes)
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    xt, yt = torch.from_numpy(x * np.float32(scale)), torch.from_numpy(y)
    for _ in range(epochs):
        loss = nn.functional.cross_entropy(model(xt), yt)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    class Scaled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = model

        def forward(self, inputs: torch.Tensor) -> torch.Tensor:
            return self.net(inputs * scale)  # type: ignore[no-any-return]

    return Scaled().eval()


def export_into(work: Path, module: Any, input_shape: tuple[int, ...]) -> None:
    """work/model.pt2 (batch dimension dynamic) and work/candidate.safetensors."""
    import torch
    from safetensors.torch import save_file

    batch = torch.export.Dim("batch", min=1, max=65536)
    program = torch.export.export(
        module, (torch.zeros(2, *input_shape),), dynamic_shapes=({0: batch},)
    )
    torch.export.save(program, str(work / "model.pt2"))
    state = {k: v.detach().contiguous() for k, v in module.state_dict().items()}
    save_file(state, str(work / "candidate.safetensors"))


def run_probe_step(
    module: Any,
    dataset: str,
    root: Path,
    *,
    seed: int | None = None,
    declared: dict[str, Any] | None = None,
    **rules: Any,
) -> tuple[Any, Any]:
    """The pipeline's probe step on `module` with the process runner: (outcomes, report)."""
    from sandbox.pipeline.context import JobContext
    from sandbox.pipeline.dataset import Dataset, write_npz
    from sandbox.pipeline.probe_step import probe
    from sandbox.pipeline.report import Report
    from sandbox.policy.model import Policy, ProbeRules
    from sandbox.runner.process_runner import ProcessRunner
    from sandbox.runner.workspace import JobWorkspace

    data = load_data(dataset)
    shape = data.input_shape
    train = Dataset(data.x_train, data.y_train, data.num_classes, shape)
    test = Dataset(data.x_holdout, data.y_holdout, data.num_classes, shape)
    policy = Policy(name="probe-bench", probes=ProbeRules(enabled=True, **rules))
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    with JobWorkspace(root, "probe-bench") as ws:
        export_into(ws.tmpfs("work", 16), module, shape)
        write_npz(train, ws.tmpfs("data", 16) / "train.npz")
        report = Report(job_id="probe-bench", policy={})
        ctx = JobContext(
            "probe-bench", policy, ProcessRunner(), "none", ws, report, lambda s, m: None
        )
        outcomes = probe(ctx, train, test, seed=seed, declared=declared)
    return outcomes, report


def time_probe_step(log: Any, *, reference: bool) -> float:
    """Seconds of the pipeline's probe step on a digits model (process runner)."""
    with tempfile.TemporaryDirectory() as tmp:
        _, report = run_probe_step(train_mlp("digits"), "digits", Path(tmp), reference=reference)
    seconds = float(report.probes["seconds"])
    log(f"probe step on a digits model (reference {reference}): {seconds:.2f} s")
    return seconds


def table(rows: Sequence[dict[str, Any]], fpr: float) -> str:
    lines = [
        f"| dataset | generator | models | holdout acc | attack bit acc | flagged @{fpr:g} FPR, "
        "with reference | without | divergence score |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["dataset"], row["generator"]), []).append(row)
    for (dataset, generator), group in groups.items():
        flagged = sum(1 for r in group if r["flags"])
        plain = sum(1 for r in group if r["flags_no_reference"])
        bits = [r["bit_accuracy"] for r in group if r["bit_accuracy"] is not None]
        bit_text = f"{np.mean(bits):.3f}" if bits else "-"
        lines.append(
            f"| {dataset} | {generator} | {len(group)} | "
            f"{np.mean([r['accuracy'] for r in group]):.3f} | {bit_text} | "
            f"{flagged}/{len(group)} ({flagged / len(group):.0%}) | "
            f"{plain}/{len(group)} ({plain / len(group):.0%}) | "
            f"{min(r['divergence'] for r in group):.1f}-{max(r['divergence'] for r in group):.1f} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", type=int, default=10, help="models per cell")
    parser.add_argument("--fpr", type=float, default=0.01, help="family-wise FPR")
    parser.add_argument("--time", action="store_true", help="also time the probe step")
    args = parser.parse_args(argv)

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    rows = run_variants(args.variants, args.fpr, log)
    print(table(rows, args.fpr))
    if args.time:
        for reference in (False, True):
            seconds = time_probe_step(log, reference=reference)
            print(
                f"probe step, digits model (process runner), reference {reference}: {seconds:.2f} s"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
