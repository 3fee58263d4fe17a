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
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from functools import cache
from importlib import resources
from typing import Any, Final

from sandbox.checks.result import Tail, exceeds

CALIBRATION_FILE: Final = "calibration.json"
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
    finite = sorted(v for v in values if math.isfinite(v))
    if not finite:
        raise ValueError("no finite honest statistics to calibrate on")
    allowed = math.floor(fpr * len(finite) + 1e-9)
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


def shipped_thresholds(fpr: float = DEFAULT_FPR, group: str = POOLED) -> dict[str, float]:
    """Thresholds at `fpr` from the shipped honest statistics of `group` (the pooled
    corpus for `POOLED` or a group the file does not hold)."""
    document = load_calibration()
    pooled: dict[str, Any] = document.get("checks", {})
    tails: dict[str, Tail] = {name: entry["tail"] for name, entry in pooled.items()}
    checks: Mapping[str, Any] = pooled
    if group != POOLED:
        checks = document.get("groups", {}).get(group, {}).get("checks", pooled)
    honest = {name: entry["honest"] for name, entry in checks.items() if name in tails}
    return calibrate(honest, fpr, tails)
