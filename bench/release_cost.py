"""What the default release costs honest models: the sanitizer alone against hidden-unit
rescaling then the sanitizer, measured side by side on the same corpus models.

For each of the first `--models` honest corpus models (`bench/corpus.py`: MLPs and
CNNs on digits and breast_cancer, trained or read from its cache): capture the model
as the export step does, find its unit chains as the describe step does, and score
the holdout after `--repeats` independent draws of (a) the sanitizer at its default
k, (b) rescaling, then the sanitizer (what `check_and_sanitize` writes), (c) the same
with 22 bits for what rescaling did not change (strict), and (d) rescaling, then 20, 21
or 22 bits everywhere. Reports
the mean accuracy drop (a gain counts as no drop, as in the corpus sweep), the mean
change, the worst run, and how much of each model the chains cover.

    python -m bench.release_cost [--models 320] [--repeats 2] [--jobs 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np
import numpy.typing as npt

VARIANTS = ("sanitized", "rescaled+sanitized")
#: Extra variants: rescaled, then sanitised with more F32 bits than the default 19 (the
#: lever against a payload in bits 19-21 whose reader undoes the rescaling: lsb_pilot).
EXTRA_BITS = (20, 21, 22)
Row = dict[str, Any]


#: The variant that sanitises what rescaling did not change with 22 bits (policy
#: `checks.sanitize_bits_unrescaled`, as strict sets it), the rest with the default 19.
UNCOVERED = "rescaled+sanitized, unrescaled k=22"


def variants(extra_bits: Sequence[int]) -> tuple[str, ...]:
    return (*VARIANTS, UNCOVERED, *(f"rescaled+sanitized k={k}" for k in extra_bits))


def measure(
    config: Any,
    state: Mapping[str, npt.NDArray[np.float32]],
    repeats: int,
    extra_bits: Sequence[int] = EXTRA_BITS,
) -> Row:
    """One model: accuracy changes (points) per variant and draw, and chain coverage."""
    import torch

    from bench.corpus import build_model, load_data
    from sandbox.checks.rescale import rescale_tensors
    from sandbox.checks.sanitize import sanitize_tensors
    from sandbox.checks.tensors import RawTensor, as_float, raw_from_numpy
    from sandbox.redteam.harness import module_unit_chains

    torch.set_num_threads(1)
    data = load_data(config.dataset)
    module = build_model(config, data.input_shape, data.num_classes)
    chains = module_unit_chains(module, data.input_shape)
    x = torch.from_numpy(data.x_holdout)

    def score(tensors: Mapping[str, RawTensor]) -> float:
        weights = {
            k: torch.from_numpy(np.array(as_float(t), dtype=np.float32)) for k, t in tensors.items()
        }
        module.load_state_dict(weights, strict=True)
        with torch.no_grad():
            predicted = module(x).argmax(dim=1).numpy()
        return 100.0 * float((predicted == data.y_holdout).mean())

    raw = {name: raw_from_numpy(np.ascontiguousarray(v)) for name, v in state.items()}
    base = score(raw)
    changes: dict[str, list[float]] = {v: [] for v in variants(extra_bits)}
    for _ in range(repeats):
        changes["sanitized"].append(score(sanitize_tensors(raw)[0]) - base)
        scaled, report = rescale_tensors(raw, chains)
        changes["rescaled+sanitized"].append(score(sanitize_tensors(scaled)[0]) - base)
        coarser = {n: 22 for n in scaled if n not in report.tensors}
        mixed, _ = sanitize_tensors(scaled, per_tensor=coarser)  # as check_and_sanitize does
        changes[UNCOVERED].append(score(mixed) - base)
        for k in extra_bits:
            clean = sanitize_tensors(scaled, k)[0]
            changes[f"rescaled+sanitized k={k}"].append(score(clean) - base)
    covered = {n for c in chains for n in c.names()}
    total = sum(v.size for v in state.values())
    return {
        "arch": config.arch,
        "dataset": config.dataset,
        "changes": changes,
        "coverage": sum(state[n].size for n in covered) / total,
        "chains": len(chains),
    }


def _worker(args: tuple[Any, str, int]) -> Row:
    from bench.corpus import _worker as corpus_worker

    config, directory, repeats = args
    model = corpus_worker((config, directory))
    return measure(model.config, model.state, repeats)


def summary(rows: Sequence[Row]) -> str:
    lines = [
        "| models | variant | mean drop (pts) | mean change (pts) | worst (pts) | runs changed |",
        "|---|---|---:|---:|---:|---:|",
    ]
    groups: dict[str, list[Row]] = {"all": list(rows)}
    for row in rows:
        groups.setdefault(f"{row['dataset']} {row['arch']}", []).append(row)
    for label, group in groups.items():
        for variant in group[0]["changes"]:
            values = [c for r in group for c in r["changes"][variant]]
            lines.append(
                f"| {label} ({len(group)}) | {variant} "
                f"| {statistics.fmean(max(0.0, -c) for c in values):.3f} "
                f"| {statistics.fmean(values):+.3f} | {min(values):+.3f} "
                f"| {sum(1 for c in values if c != 0) / len(values):.3f} |"
            )
    coverage = [r["coverage"] for r in rows]
    lines.append("")
    lines.append(
        f"Parameters inside a unit chain (rescaled): mean {statistics.fmean(coverage):.4f}, "
        f"min {min(coverage):.4f}; models with no chain: "
        f"{sum(1 for r in rows if r['chains'] == 0)} of {len(rows)}"
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    from bench.corpus import cache_dir, corpus_configs

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=320)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    todo = [(c, str(cache_dir()), args.repeats) for c in corpus_configs(args.models)]
    rows: list[Row] = []
    with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        for row in pool.map(_worker, todo):
            rows.append(row)
            if len(rows) % 20 == 0:
                print(f"{len(rows)}/{len(todo)} models", file=sys.stderr, flush=True)
    print(
        f"Release cost on {len(rows)} honest corpus models, {args.repeats} draws each "
        f"({time.perf_counter() - start:.0f} s)\n"
    )
    print(summary(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
