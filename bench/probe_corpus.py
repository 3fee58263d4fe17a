"""Calibrate canary-query probing on the honest corpus (bench/corpus.py's models).

For every honest corpus model it builds the probe families with a fresh seed (as
the pipeline does with a CSPRNG seed, so the thresholds hold whatever the seed),
computes the model's logits on them and on a perturbed copy on the host (torch,
the corpus's own module; the pipeline gets the same logits from the exported
graph in a sandbox), trains the platform's two reference models of the same
architecture with the probe container's own code (`sandbox.guest.reference_train`)
and gets theirs, reduces them to per-family statistics and writes
`sandbox/checks/probing/calibration.json`: per-family normalizers, every honest
model's score per check, and the false-positive rate of each check measured on a
held-out half of the corpus (calibrate on one half, count on the other).

    python -m bench.probe_corpus [--models 320] [--n 256] [--jobs 2] [--no-write]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from bench.corpus import (
    CorpusModel,
    ModelConfig,
    build_model,
    cache_dir,
    corpus_configs,
    load_corpus,
    load_data,
)
from sandbox.checks.calibrate import FPR_TABLE
from sandbox.checks.probing.calibrate import (
    CHECKED,
    WITH_REFERENCE,
    WITHOUT_REFERENCE,
    ProbeCalibration,
    group_key,
    holdout_fpr,
)
from sandbox.checks.probing.families import FAMILIES, build_families, input_domain, perturb
from sandbox.checks.probing.stats import family_statistics, reference_statistics

DEFAULT_OUT = (
    Path(__file__).resolve().parents[1] / "sandbox" / "checks" / "probing" / "calibration.json"
)
DEFAULT_N = 256
SEED_BASE = 0x5EED_0000


def host_logits(
    config: ModelConfig,
    state: Mapping[str, npt.NDArray[np.generic]],
    queries: Mapping[str, npt.NDArray[np.float32]],
) -> dict[str, npt.NDArray[np.float32]]:
    """Logits of the corpus module with `state` on each query set (host torch, 1 thread)."""
    import torch

    torch.set_num_threads(1)
    data = load_data(config.dataset)
    model = build_model(config, data.input_shape, data.num_classes)
    model.load_state_dict(
        {k: torch.from_numpy(np.asarray(v, dtype=np.float32)) for k, v in state.items()}
    )
    model.eval()
    with torch.no_grad():
        return {k: model(torch.from_numpy(x)).numpy() for k, x in queries.items()}


def reference_logits(
    module: Any,
    x_train: npt.NDArray[np.float32],
    y_train: npt.NDArray[np.int64],
    queries: Mapping[str, npt.NDArray[np.float32]],
    declared: Mapping[str, float | None] | None = None,
) -> list[dict[str, npt.NDArray[np.float32]]]:
    """The platform's references of `module`'s architecture, trained as the probe
    container trains them (sandbox.guest.reference_train: platform initialisation
    from OS randomness, the plain recipe from the `declared` epochs, batch_size and
    lr), and their logits on each query set."""
    import torch
    from torch.func import functional_call

    from sandbox.guest.dp_train import make_generator, platform_init
    from sandbox.guest.reference_train import REFERENCES, Recipe, train

    torch.set_num_threads(1)
    cpu = torch.device("cpu")
    shapes = {name: (p.shape, p.dtype) for name, p in module.named_parameters()}
    x, y = torch.from_numpy(x_train), torch.from_numpy(y_train)
    declared = declared or {}
    recipe = Recipe.declared(declared.get("epochs"), declared.get("batch_size"), declared.get("lr"))
    answers = []
    for _ in REFERENCES:
        initial = platform_init(shapes, make_generator(cpu), cpu)
        params = train(module, initial, x, y, recipe, generator=make_generator(cpu)).params
        with torch.no_grad():
            answers.append(
                {
                    k: functional_call(module, params, (torch.from_numpy(q),)).numpy()
                    for k, q in queries.items()
                }
            )
    return answers


def probe_queries(
    x_train: npt.NDArray[np.float32], seed: int, n: int, names: Sequence[str] | None = None
) -> dict[str, npt.NDArray[np.float32]]:
    """The pipeline's query sets: each family as FAMILY and its perturbed copy as FAMILY-p."""
    domain = input_domain(x_train)
    families = build_families(domain, seed=seed, n=n, names=names)
    queries: dict[str, npt.NDArray[np.float32]] = {}
    for i, (name, x) in enumerate(families.items()):
        queries[name] = x
        queries[f"{name}-p"] = perturb(domain, x, seed=(seed, i))
    return queries


def statistics_from_logits(
    logits: Mapping[str, npt.NDArray[np.float32]],
    references: Sequence[Mapping[str, npt.NDArray[np.float32]]] = (),
) -> dict[str, dict[str, float]]:
    """The probe step's per-family statistics (with `references`: also the reference
    statistics, as under `probes.reference`); `logits` must hold "holdout"."""
    families = [k for k in logits if not k.endswith("-p") and f"{k}-p" in logits]
    holdout = logits["holdout"]
    stats = {f: family_statistics(logits[f], logits[f"{f}-p"], holdout) for f in families}
    if references:
        for f in families:
            stats[f] |= reference_statistics(
                logits[f], holdout, [r[f] for r in references], [r["holdout"] for r in references]
            )
    return stats


def model_row(model: CorpusModel, index: int, n: int) -> dict[str, dict[str, float]]:
    data = load_data(model.config.dataset)
    queries = probe_queries(data.x_train, SEED_BASE + index, n) | {"holdout": data.x_holdout}
    module = build_model(model.config, data.input_shape, data.num_classes)
    # an honest provider declares the hyperparameters it trains with
    declared = {
        "epochs": model.config.epochs,
        "batch_size": model.config.batch_size,
        "lr": model.config.lr,
    }
    references = reference_logits(module, data.x_train, data.y_train, queries, declared)
    return statistics_from_logits(host_logits(model.config, model.state, queries), references)


def _row_worker(args: tuple[ModelConfig, str, int, int]) -> dict[str, dict[str, float]]:
    from bench.corpus import _worker

    config, directory, index, n = args
    return model_row(_worker((config, directory)), index, n)


def corpus_rows(
    n_models: int, n: int, jobs: int, directory: Path, log: Any
) -> tuple[list[CorpusModel], list[dict[str, dict[str, float]]]]:
    configs = corpus_configs(n_models)
    models = load_corpus(configs, directory=directory, jobs=jobs, log=log)
    start = time.perf_counter()
    work = [(m.config, str(directory), i, n) for i, m in enumerate(models)]
    if jobs <= 1:
        rows = [_row_worker(w) for w in work]
    else:
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            rows = list(pool.map(_row_worker, work))
    log(f"probe statistics: {len(rows)} models ({time.perf_counter() - start:.0f} s)")
    return models, rows


def calibration_document(
    models: Sequence[CorpusModel], rows: Sequence[Mapping[str, Mapping[str, float]]], n: int
) -> dict[str, Any]:
    datasets: dict[str, int] = {}
    members: dict[str, list[int]] = {"all": list(range(len(models)))}
    for i, m in enumerate(models):
        datasets[m.config.dataset] = datasets.get(m.config.dataset, 0) + 1
        key = group_key(load_data(m.config.dataset).num_classes)
        members.setdefault(key, []).append(i)
    groups: dict[str, Any] = {}
    for key, indices in members.items():
        group_rows = [rows[i] for i in indices]
        calibration = ProbeCalibration.fit(group_rows, queries_per_family=n)
        groups[key] = {
            "models": len(indices),
            **calibration.to_json(),
            # each check alone, and "any" of the checks a job with references runs
            "holdout_fpr": holdout_fpr(group_rows, FPR_TABLE, CHECKED)
            | {"any": holdout_fpr(group_rows, FPR_TABLE, WITH_REFERENCE)["any"]},
            "holdout_fpr_no_reference": holdout_fpr(group_rows, FPR_TABLE, WITHOUT_REFERENCE),
        }
    return {
        "format": 1,
        "generated_by": "python -m bench.probe_corpus",
        "corpus": {"models": len(models), "datasets": datasets},
        "families": list(FAMILIES),
        "queries_per_family": n,
        "groups": groups,
    }


def markdown(document: Mapping[str, Any]) -> str:
    lines = [
        f"Probe calibration: {document['corpus']['models']} honest models "
        f"{document['corpus']['datasets']}, {document['queries_per_family']} queries per family",
        "",
        "| group | models | check | held-out FPR @1% | @5% |",
        "|---|---:|---|---:|---:|",
    ]
    for key, group in document["groups"].items():
        fpr = group["holdout_fpr"]
        for name in CHECKED:
            if name in fpr:
                lines.append(
                    f"| {key} | {group['models']} | probe_{name} | {fpr[name]['0.01']:.3f} | "
                    f"{fpr[name]['0.05']:.3f} |"
                )
        for label, rates in (
            (f"any of {', '.join(WITH_REFERENCE)} (with references)", fpr["any"]),
            (
                f"any of {', '.join(WITHOUT_REFERENCE)} (without)",
                group["holdout_fpr_no_reference"]["any"],
            ),
        ):
            lines.append(
                f"| {key} | {group['models']} | {label} | {rates['0.01']:.3f} | "
                f"{rates['0.05']:.3f} |"
            )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=320, help="corpus size")
    parser.add_argument("--n", type=int, default=DEFAULT_N, help="queries per family")
    parser.add_argument("--jobs", type=int, default=2, help="worker processes")
    parser.add_argument("--out", type=Path, default=None, help=f"default: {DEFAULT_OUT}")
    parser.add_argument("--no-write", action="store_true", help="print, write nothing")
    parser.add_argument("--rows", type=Path, default=None, help="also dump per-model statistics")
    parser.add_argument(
        "--from-rows",
        type=Path,
        default=None,
        help="rebuild the calibration from statistics dumped by --rows (no training)",
    )
    args = parser.parse_args(argv)

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    if args.from_rows is not None:
        rows = json.loads(args.from_rows.read_text())
        models = load_corpus(corpus_configs(len(rows)), directory=cache_dir(), jobs=1, log=log)
    else:
        models, rows = corpus_rows(args.models, args.n, args.jobs, cache_dir(), log)
    if args.rows is not None:
        args.rows.write_text(json.dumps(rows))
    document = calibration_document(models, rows, args.n)
    out = None if args.no_write else (args.out or DEFAULT_OUT)
    if out is not None:
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(document, indent=1, sort_keys=True) + "\n")
        os.replace(tmp, out)
        log(f"wrote {out}")
    print(markdown(document))
    return 0


if __name__ == "__main__":
    sys.exit(main())
