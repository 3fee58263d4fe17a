"""Can a payload in the mantissa bits above the sanitizer's (k = 20-22) be detected?

The sanitizer randomises the low 19 mantissa bits of every F32 weight; an encrypted LSB
payload with k = 20-22 keeps bits 19..k-1. A test of those planes would look for what
honest weights have there and a payload removes: for zero-mean unimodal weights |w|'s
density falls inside each binade, so in each cell of (exponent, higher mantissa bits)
values with bit b = 0 outnumber those with b = 1, and a payload that randomises bit b
equalises them. Per model, z_b = sum over cells of (n0 - n1) / sqrt(n) over its F32
values (tensors of 64 values or more).

This prints z_19, z_20, z_21 for honest corpus models (trained or read from the
corpus cache, as `bench/corpus.py` does), the honest example package and encrypted-LSB
packages at k = 20 and 22 (README, weight checks: it does not separate k = 20).

Then what does erase those bits, measured on the same attack packages (an MLP: linear,
ReLU, linear): rescaling each hidden unit by a random factor c in [1, 2) (its input
weights and bias times c, its output weights divided by c; relu(c z) = c relu(z), so the
function is kept up to float rounding) before the sanitizer - what the pipeline now
releases (`sandbox/checks/rescale.py`, with the unit chains the describe step finds).

    python -m bench.high_planes [--honest 90] [--attack-seeds 4] [--jobs 2]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

PLANES = (19, 20, 21)


def z_plane(tensors: Mapping[str, npt.ArrayLike], bit: int) -> float:
    """z of bit `bit` (19-21) against its higher mantissa bits and exponent (see above)."""
    total = count = 0.0
    for values in tensors.values():
        a = np.ascontiguousarray(np.asarray(values, dtype=np.float32).ravel())
        if a.size < 64:
            continue
        u = a.view(np.uint32)
        exponent = (u >> 23) & 0xFF
        u = u[(exponent > 0) & (exponent < 255)]  # normal numbers only
        higher = ((u >> 19) & 0xF) >> (bit - 18)  # the top mantissa bits above `bit`
        cell = ((u >> 23) & 0xFF).astype(np.int64) * 16 + higher.astype(np.int64)
        ones = np.bincount(cell, weights=((u >> bit) & 1).astype(np.float64), minlength=4096)
        n = np.bincount(cell, minlength=4096)
        total += float((n - 2 * ones).sum())
        count += float(n.sum())
    return total / np.sqrt(count) if count else float("nan")


def planes(tensors: Mapping[str, npt.ArrayLike]) -> list[float]:
    return [round(z_plane(tensors, bit), 2) for bit in PLANES]


def _package_weights(name: str, dataset: str, seed: int, **params: int) -> dict[str, npt.NDArray]:
    from bench.corpus import load_data
    from sandbox.redteam.attacks import make_package
    from sandbox.redteam.harness import load_weights, run_train

    data = load_data(dataset)
    with tempfile.TemporaryDirectory(prefix="high-planes-") as tmp:
        make_package(name, Path(tmp) / "pkg", dataset=dataset, seed=seed, epochs=30, **params)
        path = run_train(Path(tmp) / "pkg", data.x_train, data.y_train, Path(tmp))
        return load_weights(path)


def rescaling_rows(seeds: int) -> list[str]:
    """Accuracy and the decoder's bit accuracy: sanitised, and rescaled then sanitised."""
    from bench.corpus import load_data
    from sandbox.checks.sanitize import sanitize_arrays
    from sandbox.redteam.attacks import decode, make_package
    from sandbox.redteam.harness import (
        load_weights,
        mlp_accuracy,
        package_unit_chains,
        released_arrays,
        run_train,
    )
    from sandbox.redteam.metrics import score

    rows = []
    for dataset in ("digits", "breast_cancer"):
        data = load_data(dataset)
        for k in (20, 22):
            for seed in range(seeds):
                with tempfile.TemporaryDirectory(prefix="high-planes-") as tmp:
                    pkg = Path(tmp) / "pkg"
                    knowledge = make_package(
                        "lsb_encrypted", pkg, dataset=dataset, seed=seed, epochs=30, k=k
                    )
                    weights = load_weights(run_train(pkg, data.x_train, data.y_train, Path(tmp)))
                    chains = package_unit_chains(pkg, data.input_shape, data.num_classes)
                scale = float(knowledge.params["input_scale"])
                variants = {
                    "trained": weights,
                    "sanitized": sanitize_arrays(weights),
                    "rescaled+sanitized": released_arrays(weights, chains),
                }
                cells = []
                for label, tensors in variants.items():
                    acc = mlp_accuracy(tensors, data.x_holdout, data.y_holdout, scale)
                    bits = score(decode(tensors, knowledge), data.x_train, knowledge).bit_accuracy
                    cells.append(f"{label}: accuracy {acc:.4f}, bit accuracy {bits:.4f}")
                rows.append(f"| {dataset} | k={k} | {seed} | " + " | ".join(cells) + " |")
    return rows


def _summary(label: str, rows: Sequence[list[float]]) -> str:
    z = np.array(rows)
    cells = [
        f"z{bit} min {z[:, i].min():.2f} median {np.median(z[:, i]):.2f} max {z[:, i].max():.2f}"
        for i, bit in enumerate(PLANES)
    ]
    return f"| {label} | {len(rows)} | " + " | ".join(cells) + " |"


def main(argv: Sequence[str] | None = None) -> int:
    from bench.corpus import corpus_configs, load_corpus

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--honest", type=int, default=90, help="honest corpus models")
    parser.add_argument("--attack-seeds", type=int, default=4)
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args(argv)

    honest: dict[str, list[list[float]]] = {}
    for model in load_corpus(corpus_configs(args.honest), jobs=args.jobs):
        honest.setdefault(model.config.dataset, []).append(planes(model.state))
    print("| models | n | bit 19 | bit 20 | bit 21 |\n| --- | ---: | --- | --- | --- |")
    for dataset in ("digits", "breast_cancer"):
        print(_summary(f"honest corpus, {dataset}", honest.get(dataset, [])))
        seeds = range(args.attack_seeds)
        example = [planes(_package_weights("honest", dataset, s)) for s in seeds]
        print(_summary(f"honest example package, {dataset}", example))
        for k in (20, 22):
            rows = [planes(_package_weights("lsb_encrypted", dataset, s, k=k)) for s in seeds]
            print(_summary(f"encrypted LSB k={k}, {dataset}", rows))
    print("\n| dataset | payload | seed | trained | sanitized | rescaled, then sanitized |")
    print("| --- | --- | ---: | --- | --- | --- |")
    for row in rescaling_rows(args.attack_seeds):
        print(row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
