"""Capacity abuse (Song et al., CCS 2017, section 6): accuracy cost and black-box extraction.

For each dataset (digits; breast_cancer as the tabular set), each generator of the
attacker's synthetic inputs (`prng` as the paper, `heldout` band-limited cosine
fields) and each strength (records carried: n_records), over a few seeds: generate
the package, run its train.py on the pipeline's training split (host subprocess,
one thread: our own attack code), and next to the honest package trained the same
way report

- holdout accuracy of the attacked and of the honest model (the paper's claim: the
  task is barely affected);
- what the attacker gets by querying the model only (`decode_capacity` over the
  numpy MLP): bit accuracy, records recovered (MAE below 10% of the value range)
  and mean absolute error, and the control: the same decoding scored against
  records the attack did not carry (what a data-shaped guess gets).

Markdown on stdout, progress on stderr.

    python -m bench.capacity [--seeds 1] [--jobs 2] [--quick] [--json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from datetime import date
from pathlib import Path
from typing import Any

Row = dict[str, Any]
Job = tuple[str, str | None, int, int]  # dataset, generator (None: honest), n_records, seed

SWEEP = {"digits": (10, 20, 40, 80), "breast_cancer": (5, 10, 20, 40)}
QUICK = {"digits": (20,), "breast_cancer": (5,)}
GENERATORS = ("prng", "heldout")


def run_one(job: Job) -> Row:
    """Train one package (attacked or honest) and score it (runs in a worker process)."""
    import numpy as np

    from bench.corpus import load_data
    from sandbox.redteam.attacks import make_package
    from sandbox.redteam.capacity import (
        decode_capacity,
        make_capacity_package,
        mlp_logits,
        mlp_query,
        n_queries,
        score_capacity,
    )
    from sandbox.redteam.harness import load_weights, run_train

    dataset, generator, n_records, seed = job
    data = load_data(dataset)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"capacity-{dataset}-") as tmp:
        package = Path(tmp) / "pkg"
        knowledge = make_capacity_package(
            package,
            dataset=dataset,
            generator=generator or "prng",
            n_records=n_records,
            seed=seed,
        )
        if generator is None:  # the honest twin: same schema and recipe, no payload
            params = knowledge.params
            package = Path(tmp) / "honest"
            make_package(
                "honest",
                package,
                input_shape=knowledge.input_shape,
                seed=seed,
                input_scale=params["input_scale"],
            )
        tensors = load_weights(run_train(package, data.x_train, data.y_train, Path(tmp) / "run"))
    scale = float(knowledge.params["input_scale"])
    logits = mlp_logits(tensors, data.x_holdout, scale)
    accuracy = float(np.mean(logits.argmax(axis=1) == data.y_holdout))
    extraction = score_capacity(
        decode_capacity(mlp_query(tensors, scale), knowledge), data.x_train, knowledge
    )
    return {
        "dataset": dataset,
        "generator": generator,
        "n_records": n_records,
        "seed": seed,
        "queries": n_queries(knowledge),
        "accuracy": accuracy,
        "extraction": extraction.to_dict(),
        "seconds": round(time.perf_counter() - start, 2),
    }


def jobs_for(seeds: int, quick: bool) -> list[Job]:
    sweep = QUICK if quick else SWEEP
    jobs: list[Job] = []
    for dataset, strengths in sweep.items():
        for seed in range(seeds):
            jobs.append((dataset, None, max(strengths), seed))  # honest: n only sets the schema
            for generator in GENERATORS:
                for n in strengths:
                    jobs.append((dataset, generator, n, seed))
    return jobs


def _mean(values: Sequence[float | None]) -> float | None:
    usable = [v for v in values if v is not None]
    return statistics.fmean(usable) if usable else None


def summarise(rows: Sequence[Row]) -> list[Row]:
    groups: dict[tuple[str, str | None, int], list[Row]] = {}
    for row in rows:
        key = (row["dataset"], row["generator"], row["n_records"])
        groups.setdefault(key, []).append(row)
    honest = {
        dataset: _mean(
            [r["accuracy"] for r in rows if r["dataset"] == dataset and not r["generator"]]
        )
        for dataset in {r["dataset"] for r in rows}
    }
    out = []
    for (dataset, generator, n), group in sorted(
        groups.items(), key=lambda kv: (kv[0][0], kv[0][1] or "", kv[0][2])
    ):
        if generator is None:
            continue

        def mean(part: str, field: str, g: list[Row] = group) -> float | None:
            return _mean([r["extraction"][part][field] for r in g])

        accuracy = _mean([r["accuracy"] for r in group])
        out.append(
            {
                "dataset": dataset,
                "generator": generator,
                "n_records": n,
                "runs": len(group),
                "queries": group[0]["queries"],
                "accuracy": accuracy,
                "honest_accuracy": honest.get(dataset),
                "bit_accuracy": mean("attack", "bit_accuracy"),
                "recovered": mean("attack", "fraction_recovered"),
                "mae": mean("attack", "mean_abs_error"),
                "control_bit_accuracy": mean("control", "bit_accuracy"),
                "control_recovered": mean("control", "fraction_recovered"),
            }
        )
    return out


def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def markdown(summary: Sequence[Row]) -> str:
    header = [
        "dataset",
        "generator",
        "records",
        "queries",
        "acc",
        "honest acc",
        "bit acc",
        "recovered",
        "MAE",
        "control bit acc",
        "control recovered",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for s in summary:
        cells = [
            s["dataset"],
            s["generator"],
            str(s["n_records"]),
            str(s["queries"]),
            _fmt(s["accuracy"], ".4f"),
            _fmt(s["honest_accuracy"], ".4f"),
            _fmt(s["bit_accuracy"], ".3f"),
            _fmt(s["recovered"], ".0%"),
            _fmt(s["mae"], ".2f"),
            _fmt(s["control_bit_accuracy"], ".3f"),
            _fmt(s["control_recovered"], ".0%"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="one strength per dataset")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    jobs = jobs_for(args.seeds, args.quick)
    start = time.perf_counter()
    rows: list[Row] = []
    with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        for row in pool.map(run_one, jobs):
            rows.append(row)
            print(
                f"{len(rows)}/{len(jobs)} {row['dataset']} {row['generator'] or 'honest'} "
                f"n={row['n_records']} seed {row['seed']}: acc {row['accuracy']:.4f} "
                f"({row['seconds']} s)",
                file=sys.stderr,
                flush=True,
            )
    summary = summarise(rows)
    text = (
        f"Capacity abuse ({args.seeds} seed(s), 30 epochs, synthetic inputs repeated 4x; "
        f"{date.today().isoformat()}, {platform.machine()} {platform.node() or 'host'}, "
        f"{time.perf_counter() - start:.0f} s)\n\n" + markdown(summary)
    )
    if args.json:
        print(json.dumps({"runs": rows, "summary": summary, "markdown": text}))
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
