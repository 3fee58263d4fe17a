"""Red-team scorecard: the weight checks and the sanitizer against Song et al.'s attacks.

For every dataset (digits; breast_cancer, its records carried as q8 bytes over -3..3
SD), every attack of `sandbox.redteam` and every strength of its sweep (k for the
LSB attacks, lambda for the regulariser attacks), over a few seeds: generate the
package for the dataset's public schema, run its train.py on the pipeline's
training split (host subprocess, one thread: this is our own attack code), then

- detection: which checks flag the model at the calibrated thresholds (family-wise
  1% by default, as the pipeline calibrates them: all nine checks together flag at
  most 1% of honest models), and the rate at which any check flags it;
- extraction: what the attacker's decoder gets out of the weights: as trained, after
  the sanitizer alone at its default k, and from what the default policy releases
  (the hidden units the describe step finds rescaled by secret factors, then
  sanitised; bit accuracy: 0.5 is chance; records recovered: MAE below 10% of the
  pixel range on digits, 0.25 SD on breast_cancer);
- utility: holdout accuracy of the attack model next to the honest package's.

It also reports the accuracy cost of sanitising honest models (from the corpus
sweep in calibration.json) and the throughput of the low-bit scan and the sanitizer.
Markdown on stdout, progress on stderr.

    python -m bench.attacks [--dataset digits|breast_cancer|all] [--seeds 2] [--epochs 30]
                            [--jobs 2] [--quick | --paper] [--attacks a,b] [--json]
                            [--throughput-mb 256]

`--paper` runs only each attack's default strength (the paper's: correlated value
lambda 3, sign lambda 30, LSB k 16) with `--seeds` seeds each, to resolve a
detection rate (20 seeds: 19 of 20 is 95%).

The checks' thresholds are the shipped calibration's for the model's calibration
group, as the pipeline picks it: the honest corpus's models with the dataset's
number of classes (10: digits, 2: breast_cancer) when the model's size lies within
that group's range, else the pooled corpus.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

Row = dict[str, Any]
#: (attack, strength, seed, epochs, fpr, dataset)
Job = tuple[str, float | None, int, int, float, str]
DATASETS = ("digits", "breast_cancer")


def run_one(job: Job) -> Row:
    """Train one attack package and score it (runs in a worker process)."""
    from bench.corpus import load_data
    from sandbox.checks.battery import run_checks
    from sandbox.checks.sanitize import DEFAULT_BITS, sanitize_arrays
    from sandbox.redteam.attacks import ATTACKS, decode, make_package
    from sandbox.redteam.harness import (
        load_weights,
        mlp_accuracy,
        package_unit_chains,
        released_arrays,
        run_train,
    )
    from sandbox.redteam.metrics import score

    name, strength, seed, epochs, fpr, dataset = job
    attack = ATTACKS[name]
    overrides: dict[str, Any] = {"seed": seed, "epochs": epochs}
    if attack.strength is not None and strength is not None:
        overrides[attack.strength] = strength
    data = load_data(dataset)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"redteam-{name}-") as tmp:
        knowledge = make_package(name, Path(tmp) / "pkg", dataset=dataset, **overrides)
        path = run_train(Path(tmp) / "pkg", data.x_train, data.y_train, Path(tmp))
        tensors = load_weights(path)
        chains = package_unit_chains(Path(tmp) / "pkg", data.input_shape, data.num_classes)
    scale = float(knowledge.params["input_scale"])
    results = run_checks(tensors, data.x_train, fpr=fpr, num_classes=data.num_classes)
    clean = sanitize_arrays(tensors)
    released = released_arrays(tensors, chains)
    before = score(decode(tensors, knowledge), data.x_train, knowledge)
    after = score(decode(clean, knowledge), data.x_train, knowledge)
    final = score(decode(released, knowledge), data.x_train, knowledge)
    return {
        "dataset": dataset,
        "attack": name,
        "strength": strength,
        "seed": seed,
        "accuracy": mlp_accuracy(tensors, data.x_holdout, data.y_holdout, scale),
        "sanitized_accuracy": mlp_accuracy(clean, data.x_holdout, data.y_holdout, scale),
        "released_accuracy": mlp_accuracy(released, data.x_holdout, data.y_holdout, scale),
        "units_rescaled": sum(c.units for c in chains),
        "flagged": [r.name for r in results if r.verdict == "flag"],
        "calibration_group": results[0].details.get("calibration_group") if results else None,
        "statistics": {r.name: r.statistic for r in results},
        "before": before.to_dict(),
        "after": after.to_dict(),
        "released": final.to_dict(),
        "sanitize_bits": DEFAULT_BITS["F32"],
        "seconds": round(time.perf_counter() - start, 2),
    }


#: Attacks read through queries, not weights: bench/capacity.py and bench/probing.py measure them.
BLACK_BOX = frozenset({"capacity"})


def jobs_for(
    seeds: int,
    epochs: int,
    fpr: float,
    defaults_only: bool,
    datasets: Sequence[str] = DATASETS,
    attacks: Sequence[str] | None = None,
) -> list[Job]:
    """Every (attack, strength, seed) to run: each attack's sweep, or with
    `defaults_only` its default strength alone; `attacks` narrows the attacks."""
    from sandbox.redteam.attacks import ATTACKS

    unknown = sorted(set(attacks or ()) - set(ATTACKS) | set(attacks or ()) & BLACK_BOX)
    if unknown:
        known = ", ".join(n for n in ATTACKS if n not in BLACK_BOX)
        raise ValueError(f"unknown or black-box attacks {unknown}; weight attacks: {known}")
    jobs: list[Job] = []
    for dataset in datasets:
        for name, attack in ATTACKS.items():
            if name in BLACK_BOX or (attacks is not None and name not in attacks):
                continue
            if attack.strength is None:
                values: Sequence[float | None] = [None]
            elif defaults_only:
                values = [float(attack.defaults[attack.strength])]
            else:
                values = list(attack.sweep)
            for value in values:
                for seed in range(seeds):
                    jobs.append((name, value, seed, epochs, fpr, dataset))
    return jobs


def _mean(values: Sequence[float | None]) -> float | None:
    usable = [v for v in values if v is not None]
    return statistics.fmean(usable) if usable else None


def _fmt(value: float | None, spec: str = ".3f") -> str:
    return "n/a" if value is None else format(value, spec)


def summarise(rows: Sequence[Row]) -> list[Row]:
    """One row per (dataset, attack, strength): means over seeds and the detection rate."""
    groups: dict[tuple[str, str, float | None], list[Row]] = {}
    for row in rows:
        groups.setdefault((row["dataset"], row["attack"], row["strength"]), []).append(row)
    out = []
    for (dataset, name, strength), group in groups.items():
        honest = _mean(
            [r["accuracy"] for r in rows if r["attack"] == "honest" and r["dataset"] == dataset]
        )
        counts: dict[str, int] = {}
        for r in group:
            for check in r["flagged"]:
                counts[check] = counts.get(check, 0) + 1
        out.append(
            {
                "dataset": dataset,
                "attack": name,
                "strength": strength,
                "runs": len(group),
                "detection_rate": sum(1 for r in group if r["flagged"]) / len(group),
                "calibration_group": ", ".join(
                    sorted({str(r.get("calibration_group") or "all") for r in group})
                ),
                "flagged_by": {k: v / len(group) for k, v in sorted(counts.items())},
                "accuracy": _mean([r["accuracy"] for r in group]),
                "honest_accuracy": honest,
                "sanitized_accuracy": _mean([r["sanitized_accuracy"] for r in group]),
                "bit_accuracy": _mean([r["before"]["bit_accuracy"] for r in group]),
                "records": _mean([r["before"]["records"] for r in group]),
                "recovered": _mean([r["before"]["fraction_recovered"] for r in group]),
                "mae": _mean([r["before"]["mean_abs_error"] for r in group]),
                "bit_accuracy_sanitized": _mean([r["after"]["bit_accuracy"] for r in group]),
                "recovered_sanitized": _mean([r["after"]["fraction_recovered"] for r in group]),
                "released_accuracy": _mean([r["released_accuracy"] for r in group]),
                "bit_accuracy_released": _mean([r["released"]["bit_accuracy"] for r in group]),
                "recovered_released": _mean([r["released"]["fraction_recovered"] for r in group]),
            }
        )
    return out


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)
    ]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |"
    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    body = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in rows
    ]
    return "\n".join([line, rule, *body])


def attack_table(summary: Sequence[Row], sanitize_bits: int) -> str:
    header = [
        "attack",
        "dataset",
        "strength",
        "runs",
        "thresholds",
        "detected",
        "flagged by",
        "acc",
        "honest acc",
        "records",
        "bit acc",
        "recovered",
        "MAE",
        f"bit acc, sanitizer k={sanitize_bits} only",
        "released acc",
        "bit acc released",
        "recovered released",
    ]
    rows = []
    for s in summary:
        flagged = ", ".join(f"{k} {v:.0%}" for k, v in s["flagged_by"].items()) or "-"
        rows.append(
            [
                s["attack"],
                s["dataset"],
                _fmt(s["strength"], "g"),
                str(s["runs"]),
                str(s.get("calibration_group", "all")),
                f"{s['detection_rate']:.0%}",
                flagged,
                _fmt(s["accuracy"], ".4f"),
                _fmt(s["honest_accuracy"], ".4f"),
                _fmt(s.get("records"), ".0f"),
                _fmt(s["bit_accuracy"]),
                _fmt(s["recovered"], ".2f"),
                _fmt(s.get("mae"), ".3f"),
                _fmt(s["bit_accuracy_sanitized"]),
                _fmt(s["released_accuracy"], ".4f"),
                _fmt(s["bit_accuracy_released"]),
                _fmt(s["recovered_released"], ".2f"),
            ]
        )
    return markdown_table(header, rows)


def honest_cost_table() -> str:
    """The sanitizer's accuracy cost on the honest corpus, from calibration.json."""
    from sandbox.checks.calibrate import load_calibration
    from sandbox.checks.sanitize import DEFAULT_BITS

    sweep = load_calibration().get("sanitizer", {})
    rows = []
    for dtype in ("F32", "F16", "BF16"):
        entry = sweep.get(dtype)
        if not entry:
            continue
        k = DEFAULT_BITS[dtype]
        row = entry["by_bits"].get(str(k))
        if row is None:
            continue
        rows.append(
            [
                dtype,
                str(k),
                str(sweep.get("models", "?")),
                f"{row['mean_change_points']:+.3f}",
                f"{row['mean_drop_points']:.3f}",
                f"{row['worst_change_points']:+.3f}",
                f"{row['runs_changed']:.3f}",
            ]
        )
    header = [
        "dtype",
        "default k",
        "models",
        "mean change (pts)",
        "mean drop",
        "worst",
        "runs changed",
    ]
    return markdown_table(header, rows)


def throughput(mb: int) -> dict[str, float]:
    """GB/s of the low-bit scan and of the sanitizer (in place) on an F32 tensor."""
    from sandbox.checks.lowbits import low_bits_stats
    from sandbox.checks.sanitize import DEFAULT_BITS, KeyStream, sanitize_bits_inplace

    n = mb * (1 << 20) // 4
    values = np.random.default_rng(0).normal(0, 0.05, n).astype(np.float32)
    bits = values.view(np.uint32)
    stream = KeyStream()
    low_bits_stats(values[: 1 << 20])  # warm-up
    timings: dict[str, list[float]] = {"scan": [], "sanitize": []}
    for _ in range(3):
        start = time.perf_counter()
        low_bits_stats(values)
        timings["scan"].append(time.perf_counter() - start)
        start = time.perf_counter()
        sanitize_bits_inplace(bits, "F32", DEFAULT_BITS["F32"], stream)
        timings["sanitize"].append(time.perf_counter() - start)
    return {k: round(values.nbytes / statistics.median(v) / 1e9, 3) for k, v in timings.items()}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dataset",
        choices=[*DATASETS, "all"],
        default="all",
        help="the schema the attacks target (default: all)",
    )
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--fpr", type=float, default=0.01, help="family-wise, as the pipeline")
    modes = parser.add_mutually_exclusive_group()
    modes.add_argument("--quick", action="store_true", help="default strengths, one seed")
    modes.add_argument("--paper", action="store_true", help="default strengths, --seeds each")
    parser.add_argument("--attacks", default=None, help="comma-separated subset (default: all)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--throughput-mb", type=int, default=256, help="0 skips it")
    args = parser.parse_args(argv)
    from sandbox.checks.sanitize import DEFAULT_BITS

    seeds = 1 if args.quick else args.seeds
    datasets = DATASETS if args.dataset == "all" else (args.dataset,)
    chosen = args.attacks.split(",") if args.attacks else None
    try:
        jobs = jobs_for(seeds, args.epochs, args.fpr, args.quick or args.paper, datasets, chosen)
    except ValueError as error:
        parser.error(str(error))
    start = time.perf_counter()
    rows: list[Row] = []
    with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        for row in pool.map(run_one, jobs):
            rows.append(row)
            print(
                f"{len(rows)}/{len(jobs)} {row['dataset']} {row['attack']} {row['strength']} "
                f"seed {row['seed']}: "
                f"flagged {row['flagged'] or '-'} ({row['seconds']} s)",
                file=sys.stderr,
                flush=True,
            )
    summary = summarise(rows)
    speed = throughput(args.throughput_mb) if args.throughput_mb else {}
    text = "\n\n".join(
        [
            f"Attacks on {', '.join(datasets)} ({args.epochs} epochs, {seeds} seed(s), "
            f"checks at a family-wise FPR of "
            f"{args.fpr:g}, sanitizer k={DEFAULT_BITS['F32']}; "
            f"{time.perf_counter() - start:.0f} s)",
            attack_table(summary, DEFAULT_BITS["F32"]),
            "Sanitizer cost on the honest corpus (holdout accuracy, percentage points):",
            honest_cost_table(),
            (
                f"Throughput on {args.throughput_mb} MB of F32: low-bit scan "
                f"{speed['scan']} GB/s, sanitizer {speed['sanitize']} GB/s"
                if speed
                else ""
            ),
        ]
    )
    if args.json:
        print(json.dumps({"runs": rows, "summary": summary, "throughput": speed, "markdown": text}))
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
