"""Thresholds from honest models at a chosen false-positive rate, and the shipped table.

`calibrate` turns each check's statistics on honest models into the threshold
that at most a fraction `fpr` of them lie beyond (an empirical quantile, rounded
to the conservative side: with n honest models, floor(fpr * n) of them may lie
beyond). `calibration.json`, next to this module and written by
`python -m bench.corpus`, holds every honest statistic, so thresholds for any FPR
are derived at run time, plus the precomputed per-FPR table, the false-positive
rates measured on a held-out half of the corpus and the sanitizer's accuracy sweep.

Calibration groups. Honest statistics depend on the task and the model's size: the
low-bit statistics of 64-feature, 10-class digits models reach 230 where no 2-class
breast_cancer model exceeds 3.1, so one pooled threshold lets small-task payloads
through. The file therefore also holds the same tables per number of classes (from
the platform's own dataset, never the provider's word), each with the range of
parameter counts (counted in the candidate's tensors) it was fitted on. A model
uses its class group's thresholds when the group has at least `MIN_GROUP_MODELS`
honest models and its size lies within `SIZE_SLACK` times that range; otherwise the
pooled corpus ("all"), so a 2-class model far larger than any calibrated 2-class
model is judged against honest models of every size rather than small ones only.

Family-wise calibration. The policy's rate bounds the chance that an honest model is
flagged by *any* enabled check. Splitting it evenly (fpr/k per check, Bonferroni)
fails with a few hundred models: each check's threshold then sits at the corpus's
largest value, which a fresh honest model exceeds with probability about 1/(n+1) per
check, k/(n+1) in all (measured: 8.8% at a nominal 1%). `familywise_calibrate`
instead puts every enabled check at one common rank level, the least conservative at
which the leave-one-out family-wise rate on the corpus stays within the target: a
corpus model counts as flagged when, judged by thresholds fitted on the *other* models,
some check flags it. The honest models and a fresh one are exchangeable, so that count
estimates the fresh model's chance without the optimism of judging the corpus by
thresholds fitted on itself. This needs each model's statistics together, so the file
stores the honest values of every check in corpus order (`format` 2).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from sandbox.checks.result import Tail, exceeds

CALIBRATION_FILE: Final = "calibration.json"
#: calibration.json's honest lists are aligned (one index per corpus model) from this format on.
ALIGNED_FORMAT: Final = 2
DEFAULT_FPR: Final = 0.01
#: The FPRs tabulated in calibration.json.
FPR_TABLE: Final = (0.001, 0.005, 0.01, 0.02, 0.05, 0.1)
#: The pooled corpus's group name (the fallback).
POOLED: Final = "all"
#: A class group needs this many honest models to be used (fewer: the pooled corpus).
MIN_GROUP_MODELS: Final = 50
#: A class group covers models from its smallest size / SLACK to its largest * SLACK.
SIZE_SLACK: Final = 2.0


def threshold_at(values: Sequence[float], fpr: float, tail: Tail) -> float:
    """The threshold beyond which at most floor(fpr * n) of `values` lie (ties pass)."""
    if not 0 <= fpr < 1:
        raise ValueError(f"fpr must be in [0, 1), got {fpr}")
    finite = [v for v in values if math.isfinite(v)]
    return threshold_allowing(values, math.floor(fpr * len(finite) + 1e-9), tail)


def threshold_allowing(values: Sequence[float], allowed: int, tail: Tail) -> float:
    """The threshold beyond which at most `allowed` of `values` lie (ties pass)."""
    finite = sorted(v for v in values if math.isfinite(v))
    if not finite:
        raise ValueError("no finite honest statistics to calibrate on")
    allowed = min(max(0, allowed), len(finite) - 1)
    if tail == "upper":
        return finite[len(finite) - 1 - allowed]
    return finite[allowed]


def calibrate(
    statistics: Mapping[str, Sequence[float]],
    fpr: float = DEFAULT_FPR,
    tails: Mapping[str, Tail] | None = None,
) -> dict[str, float]:
    """Per check, the threshold at `fpr` from honest models' statistics.

    `tails` says which side is suspicious per check (default: the checks' own, or
    "upper" for names it does not know).
    """
    if tails is None:
        from sandbox.checks.battery import CHECKS

        tails = {name: spec.tail for name, spec in CHECKS.items()}
    return {
        name: threshold_at(values, fpr, tails.get(name, "upper"))
        for name, values in statistics.items()
    }


@dataclass(frozen=True)
class FamilyCalibration:
    """Thresholds for a set of checks that together flag at most `target` of honest models.

    `allowed`: honest models the corpus may hold beyond each check's threshold (one
    common rank level); `corpus_rate`: the leave-one-out family-wise rate on the
    corpus at that level, the estimate of a fresh honest model's chance of being
    flagged by any of the checks. Above `target` only when the corpus is too small for
    it (`feasible` False): the thresholds are then the corpus's extremes.
    """

    thresholds: dict[str, float]
    allowed: int
    models: int
    corpus_rate: float
    target: float

    @property
    def feasible(self) -> bool:
        return self.corpus_rate <= self.target + 1e-12

    def describe(self) -> dict[str, Any]:
        """What report.json's check details say about the calibration."""
        return {
            "method": "family-wise, leave-one-out",
            "familywise_fpr": self.target,
            "corpus_models": self.models,
            "honest_beyond_threshold": self.allowed,
            "corpus_familywise_rate": round(self.corpus_rate, 5),
            "checks": sorted(self.thresholds),
        }


def leave_one_out_levels(
    columns: Mapping[str, Sequence[float]], tails: Mapping[str, Tail]
) -> npt.NDArray[np.int64]:
    """Per honest model, the fewest *other* models at least as extreme as it on any check.

    A model with level g is flagged by thresholds fitted on the others that let `a`
    of them lie beyond, exactly when g <= a (for some check, at most `a` others are at
    least as extreme). Non-finite statistics never flag (`exceeds`), so they rank last.
    """
    lengths = {len(v) for v in columns.values()}
    if len(lengths) != 1:
        raise ValueError(
            "honest statistics are not aligned per model (lengths "
            f"{sorted(lengths)}); regenerate calibration.json with `python -m bench.corpus`"
        )
    (n,) = lengths
    levels = np.full(n, n, dtype=np.int64)
    for name, values in columns.items():
        oriented = np.asarray(values, dtype=np.float64)
        if tails.get(name, "upper") == "lower":
            oriented = -oriented
        oriented = np.where(np.isfinite(oriented), oriented, -np.inf)
        ordered = np.sort(oriented)
        at_least = n - np.searchsorted(ordered, oriented, side="left") - 1
        at_least = np.where(np.isfinite(oriented), at_least, n)
        levels = np.minimum(levels, at_least)
    return levels


def familywise_calibrate(
    columns: Mapping[str, Sequence[float]],
    fpr: float,
    tails: Mapping[str, Tail] | None = None,
) -> FamilyCalibration:
    """Thresholds at the least conservative common rank level whose leave-one-out
    family-wise rate on these honest models is at most `fpr` (see the module doc)."""
    if not 0 <= fpr < 1:
        raise ValueError(f"fpr must be in [0, 1), got {fpr}")
    if tails is None:
        from sandbox.checks.battery import CHECKS

        tails = {name: spec.tail for name, spec in CHECKS.items()}
    if not columns:
        return FamilyCalibration({}, 0, 0, 0.0, fpr)
    levels = leave_one_out_levels(columns, tails)
    n = len(levels)
    counts = np.bincount(np.minimum(levels, n), minlength=n + 1).cumsum()
    # counts[a]: corpus models flagged at level a; the largest a within the target.
    within = np.nonzero(counts[:n] <= fpr * n + 1e-9)[0]
    allowed = int(within[-1]) if within.size else 0
    return FamilyCalibration(
        # A check with no finite honest value gets no threshold (it reports, never flags).
        thresholds={
            name: threshold_allowing(values, allowed, tails.get(name, "upper"))
            for name, values in columns.items()
            if any(math.isfinite(v) for v in values)
        },
        allowed=allowed,
        models=n,
        corpus_rate=float(counts[allowed]) / n if n else 0.0,
        target=fpr,
    )


def false_positive_rate(values: Sequence[float], threshold: float, tail: Tail) -> float:
    """Fraction of (honest) `values` a threshold flags."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return float("nan")
    return sum(exceeds(v, threshold, tail) for v in finite) / len(finite)


@cache
def load_calibration() -> dict[str, Any]:
    """The shipped calibration.json (empty checks if it has not been generated)."""
    try:
        text = resources.files("sandbox.checks").joinpath(CALIBRATION_FILE).read_text()
    except FileNotFoundError:
        return {"checks": {}}
    document: dict[str, Any] = json.loads(text)
    return document


def group_key(num_classes: int) -> str:
    """The calibration group of a task with `num_classes` classes (the dataset's, known
    to the platform), as probing names its groups."""
    return f"classes={num_classes}"


def choose_group(
    num_classes: int | None,
    parameters: int,
    document: Mapping[str, Any] | None = None,
) -> str:
    """The group whose thresholds judge a model of `parameters` weights on a task with
    `num_classes` classes: its class group when that group holds enough honest models
    of a similar size, else the pooled corpus (`POOLED`)."""
    if num_classes is None:
        return POOLED
    groups: Mapping[str, Any] = (document or load_calibration()).get("groups", {})
    key = group_key(num_classes)
    entry = groups.get(key)
    if not entry or int(entry.get("models", 0)) < MIN_GROUP_MODELS:
        return POOLED
    low, high = entry.get("parameters", (0, 0))
    if not low / SIZE_SLACK <= parameters <= high * SIZE_SLACK:
        return POOLED
    return key


def _group_checks(
    group: str, document: Mapping[str, Any] | None = None
) -> tuple[dict[str, Tail], Mapping[str, Any]]:
    """The checks' tails and `group`'s per-check entries (the pooled corpus's for
    `POOLED` or a group the file does not hold)."""
    document = load_calibration() if document is None else document
    pooled: dict[str, Any] = document.get("checks", {})
    tails: dict[str, Tail] = {name: entry["tail"] for name, entry in pooled.items()}
    if group != POOLED:
        return tails, document.get("groups", {}).get(group, {}).get("checks", pooled)
    return tails, pooled


#: (fpr, group, names) -> (the document it was computed from, its calibration). The
#: entry keeps the document alive, so an identity check cannot be fooled by a reused id
#: (tests swap `load_calibration`; a stale entry is recomputed, never served).
_FAMILIES: dict[
    tuple[float, str, tuple[str, ...] | None], tuple[Mapping[str, Any], FamilyCalibration]
] = {}


def shipped_familywise(
    fpr: float = DEFAULT_FPR, group: str = POOLED, names: tuple[str, ...] | None = None
) -> FamilyCalibration:
    """Family-wise thresholds at `fpr` for the checks `names` (default: every check the
    file holds) from the shipped honest statistics of `group`. Checks the file does
    not hold get no threshold (they report, never flag). Cached per calibration
    document: ranking 3,000 models per check is done once per policy, not per model."""
    document = load_calibration()
    key = (fpr, group, names)
    hit = _FAMILIES.get(key)
    if hit is not None and hit[0] is document:
        return hit[1]
    tails, checks = _group_checks(group, document)
    wanted = [n for n in (names if names is not None else tuple(checks)) if n in checks]
    if wanted and int(document.get("format", 1)) < ALIGNED_FORMAT:
        raise ValueError(
            "calibration.json predates family-wise calibration (its honest statistics are "
            "not stored per model); regenerate it with `python -m bench.corpus`"
        )
    columns = {n: checks[n]["honest"] for n in wanted if n in tails}
    family = familywise_calibrate(columns, fpr, tails)
    _FAMILIES[key] = (document, family)
    return family


def shipped_thresholds(fpr: float = DEFAULT_FPR, group: str = POOLED) -> dict[str, float]:
    """Per-check thresholds at `fpr` each (not family-wise) from the shipped honest
    statistics of `group` (the pooled corpus for `POOLED` or a group the file does not
    hold)."""
    tails, checks = _group_checks(group)
    honest = {name: entry["honest"] for name, entry in checks.items() if name in tails}
    return calibrate(honest, fpr, tails)
