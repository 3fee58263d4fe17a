"""Pipeline step 4, behaviour side: canary-query probing of the gated candidate.

After the weight checks, the platform asks the candidate (loaded into the exported
graph by trusted code in a sandbox container, `query_models`) for its logits on
out-of-distribution query families, on a slightly perturbed copy of each, and on
the holdout, then reduces them to per-family statistics and judges them against
the honest corpus's calibration (sandbox.checks.probing). The seed comes from the
OS CSPRNG, so a provider cannot train its model to behave on the probes. With
`probes.reference` the same container first trains two reference models of the
declared graph with the platform's plain recipe on the same training split, and
the candidate's distance from them (`divergence`, `agreement`) joins the statistics.

Verdicts enter the decision as ordinary `probe_<statistic>` check outcomes; the
owner's report gets `report.probes` (statistics, histograms, verdicts, seconds).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from sandbox.checks.probing.calibrate import checks_for, load_shipped, verdicts
from sandbox.checks.probing.families import build_families, input_domain, perturb
from sandbox.checks.probing.stats import (
    confidence_histogram,
    family_statistics,
    reference_statistics,
)
from sandbox.pipeline.context import JobContext
from sandbox.pipeline.dataset import Dataset
from sandbox.pipeline.query import REFERENCES, Logits, query_models
from sandbox.policy.decide import CheckOutcome

PERTURBED = "-p"
DECLARED = ("epochs", "batch_size", "lr")


def probe_queries(
    train: Dataset, seed: int, n: int, families: tuple[str, ...]
) -> dict[str, npt.NDArray[np.float32]]:
    """FAMILY and its perturbed copy FAMILY-p for each family, from one seed."""
    domain = input_domain(train.x)
    built = build_families(domain, seed=seed, n=n, names=families)
    queries: dict[str, npt.NDArray[np.float32]] = {}
    for i, (name, x) in enumerate(built.items()):
        queries[name] = x
        queries[f"{name}{PERTURBED}"] = perturb(domain, x, seed=(seed, i))
    return queries


def probe(
    ctx: JobContext,
    train: Dataset,
    test: Dataset,
    name: str = "candidate",
    *,
    seed: int | None = None,
    declared: Mapping[str, float | None] | None = None,
) -> tuple[CheckOutcome, ...]:
    """Probe work/NAME.safetensors; fill report.probes; return the check outcomes.

    `seed` is for tests and benchmarks only: the pipeline leaves it None and the
    queries come from the OS CSPRNG. `declared`: see `probe_and_answer`.
    """
    return probe_and_answer(ctx, train, test, {}, name, seed=seed, declared=declared)[0]


def probe_and_answer(
    ctx: JobContext,
    train: Dataset,
    test: Dataset,
    also: Mapping[str, npt.NDArray[np.float32]],
    name: str = "candidate",
    *,
    seed: int | None = None,
    reference_data: str = "data",
    declared: Mapping[str, float | None] | None = None,
) -> tuple[tuple[CheckOutcome, ...], Logits]:
    """`probe`, with the answers on the query sets `also` asked in the same container
    (the membership audit's canaries: one container start less per job):
    answers[model][key] for the model and, when references run, each reference.
    `reference_data` is the workspace directory the references train on; `declared`
    the algorithm's [hyperparameters] (epochs, batch_size, lr), which set the
    references' recipe within fixed bounds (sandbox.guest.reference_train.Recipe)."""
    rules = ctx.policy.probes
    start = time.monotonic()
    seed = secrets.randbits(63) if seed is None else seed
    queries = probe_queries(train, seed, rules.queries_per_family, tuple(rules.families))
    queries["holdout"] = np.ascontiguousarray(test.x, dtype=np.float32)
    clash = sorted(set(queries) & set(also))
    if clash:
        raise ValueError(f"query sets {clash} are the probe's own names")
    answers = query_models(
        ctx,
        [name],
        {**queries, **also},
        "probe",
        reference=dict(declared or {}) if rules.reference else None,
        reference_data=reference_data,
    )
    logits = answers[name]
    holdout = logits["holdout"]
    stats: dict[str, dict[str, float]] = {
        family: family_statistics(logits[family], logits[f"{family}{PERTURBED}"], holdout)
        for family in rules.families
    }
    if rules.reference:
        references = [answers[r] for r in REFERENCES]
        for family in rules.families:
            stats[family] |= reference_statistics(
                logits[family],
                holdout,
                [r[family] for r in references],
                [r["holdout"] for r in references],
            )
    calibration = load_shipped(train.num_classes)
    checked = [s for s in checks_for(rules.reference) if any(s in v for v in stats.values())]
    results = verdicts(stats, calibration, rules.fpr / max(1, len(checked)), checked=checked)
    entries: list[dict[str, Any]] = [
        {
            "name": r.name,
            "statistic": r.statistic,
            "threshold": r.threshold,
            "verdict": r.verdict,
            "explanation": r.explanation,
        }
        for r in results
    ]
    ctx.report.probes = {
        "queries_per_family": rules.queries_per_family,
        "reference": rules.reference,
        **(
            {
                "reference_declared": {k: (declared or {}).get(k) for k in DECLARED},
                "reference_holdout_accuracy": _accuracies(answers, test),
            }
            if rules.reference
            else {}
        ),
        "families": [
            {
                "name": family,
                "n": int(len(logits[family])),
                "statistics": {k: round(v, 6) for k, v in stats[family].items()},
                "confidence_histogram": confidence_histogram(logits[family]),
            }
            for family in rules.families
        ],
        "holdout_confidence_histogram": confidence_histogram(holdout),
        "checks": [_finite(e) for e in entries],
        "seconds": round(time.monotonic() - start, 3),
    }
    if (
        calibration.queries_per_family is not None
        and calibration.queries_per_family != rules.queries_per_family
    ):
        ctx.report.probes["note"] = (
            f"thresholds were calibrated at {calibration.queries_per_family} queries per "
            f"family, this job used {rules.queries_per_family}: the false-positive rate is "
            "approximate"
        )
    outcomes = tuple(
        CheckOutcome(r.name, "flag" if r.verdict == "flag" else "pass", r.explanation)
        for r in results
    )
    return outcomes, {model: {key: out[key] for key in also} for model, out in answers.items()}


def _accuracies(
    answers: dict[str, dict[str, npt.NDArray[np.float32]]], test: Dataset
) -> list[float]:
    """Holdout accuracy of each reference: shows the owner the references learned the task."""
    return [
        round(float((answers[r]["holdout"].argmax(axis=1) == test.y).mean()), 4) for r in REFERENCES
    ]


def _finite(entry: dict[str, Any]) -> dict[str, Any]:
    """JSON-safe numbers: NaN/Inf statistics (an uncalibrated check) become None."""
    out = dict(entry)
    for key in ("statistic", "threshold"):
        value = out.get(key)
        out[key] = round(float(value), 6) if value is not None and np.isfinite(value) else None
    return out
