"""Probe thresholds from the honest corpus, and verdicts at the policy's false-positive rate.

One check per statistic (`probe_<statistic>`), whatever the number of families:
each family's value is standardised against the honest corpus on that family
(robust z-score: (value - median) / (1.4826 * MAD)), sign-flipped for lower-tail
statistics, and the check's score is the largest z over the families. A model that
memorised a generator's region stands out on the family nearest that region;
taking the maximum lets any family raise the alarm, and calibrating the maximum
itself (not each family) keeps the false-positive rate what the policy says.

`calibration.json` (written by `python -m bench.probe_corpus`) holds, per group of
tasks with the same number of classes and for the pooled corpus, the per-family
centres and scales, every honest model's score per check (so a threshold at any
FPR is derived at run time) and the false-positive rates measured on a held-out
half of the corpus.
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

from sandbox.checks.calibrate import threshold_at
from sandbox.checks.probing.stats import SUMMARIES, TAILS
from sandbox.checks.result import CheckResult, judge

CALIBRATION_FILE: Final = "calibration.json"
#: Statistics that become checks (agreement needs a reference model). Measured on the
#: corpus and red-team models (bench/probing.py): the perturbation statistics separate
#: capacity abuse on tabular data by an order of magnitude, confidence_gap is the one
#: that moves on digits; label_entropy and raw confidence vary as much between honest
#: models as under attack, so they are reported but do not vote (each extra check
#: costs every check a share of the family-wise false-positive rate).
CHECKED: Final = ("instability", "sensitivity", "confidence_gap", "divergence")
#: The checks that vote, by whether reference models ran. With references, divergence
#: catches capacity abuse on both tasks and sensitivity adds the tabular margin; the
#: other two would only spend the family-wise false-positive rate (held-out, at 1%:
#: 0.9% on both tasks with these two, 2.3% on digits with all four).
WITH_REFERENCE: Final = ("sensitivity", "divergence")
WITHOUT_REFERENCE: Final = ("instability", "sensitivity", "confidence_gap")


def checks_for(reference: bool) -> tuple[str, ...]:
    """The probe checks a job runs: see WITH_REFERENCE."""
    return WITH_REFERENCE if reference else WITHOUT_REFERENCE


#: How a statistic's per-family z-scores become its score (default: the maximum).
MEAN_OVER_FAMILIES: Final = frozenset({"divergence"})
#: The normalizers' pseudo-family of the corpus's per-model means of those statistics.
ALL_FAMILIES: Final = "all-families"
_MAD_TO_SIGMA: Final = 1.4826
_MIN_SCALE: Final = 1e-3

#: per family, per statistic: (centre, scale) of the honest corpus
Normalizers = dict[str, dict[str, tuple[float, float]]]
#: per family, per statistic: the value
FamilyStats = Mapping[str, Mapping[str, float]]


def fit_normalizers(rows: Sequence[FamilyStats]) -> Normalizers:
    """Robust centre and scale of each (family, statistic) over honest models."""
    out: Normalizers = {}
    families = sorted({f for row in rows for f in row})
    for family in families:
        per: dict[str, list[float]] = {}
        for row in rows:
            for stat, value in row.get(family, {}).items():
                if math.isfinite(value):
                    per.setdefault(stat, []).append(float(value))
        out[family] = {stat: _robust(values) for stat, values in per.items()}
    pooled: dict[str, list[float]] = {}
    for row in rows:
        for stat, value in _family_means(row).items():
            pooled.setdefault(stat, []).append(value)
    if pooled:
        out[ALL_FAMILIES] = {stat: _robust(values) for stat, values in pooled.items()}
    return out


def _robust(values: Sequence[float]) -> tuple[float, float]:
    centre = float(np.median(values))
    mad = float(np.median(np.abs(np.asarray(values) - centre)))
    return centre, max(_MAD_TO_SIGMA * mad, _MIN_SCALE)


def _family_means(stats: FamilyStats) -> dict[str, float]:
    """Per MEAN_OVER_FAMILIES statistic, its raw mean over the families that measured it."""
    out: dict[str, float] = {}
    for stat in MEAN_OVER_FAMILIES:
        values = [
            float(v[stat])
            for f, v in stats.items()
            if f != ALL_FAMILIES and stat in v and math.isfinite(v[stat])
        ]
        if values:
            out[stat] = float(np.mean(values))
    return out


def scores(stats: FamilyStats, normalizers: Normalizers) -> dict[str, float]:
    """Per statistic, the largest suspicious-side z-score over the families that have
    a normalizer (absent when none has): the check statistic, "upper" tail. A
    MEAN_OVER_FAMILIES statistic is averaged over the families first and its mean is
    standardised against the honest corpus's means (ALL_FAMILIES)."""
    per: dict[str, list[float]] = {}
    for family, values in stats.items():
        for stat, value in values.items():
            if stat in MEAN_OVER_FAMILIES or stat not in TAILS:
                continue
            if stat not in normalizers.get(family, {}):
                continue
            centre, scale = normalizers[family][stat]
            z = (value - centre) / scale
            per.setdefault(stat, []).append(z if TAILS[stat] == "upper" else -z)
    out = {stat: max(zs) for stat, zs in per.items()}
    pooled = normalizers.get(ALL_FAMILIES, {})
    for stat, mean in _family_means(stats).items():
        if stat in pooled:
            centre, scale = pooled[stat]
            out[stat] = (
                (mean - centre) / scale if TAILS[stat] == "upper" else (centre - mean) / scale
            )
    return out


def arg_family(stats: FamilyStats, normalizers: Normalizers, stat: str) -> str | None:
    """The family that set the score of `stat` (the explanation names it)."""
    best, name = -math.inf, None
    if stat in MEAN_OVER_FAMILIES:  # the family with the largest raw value
        for family, values in stats.items():
            if stat in values and values[stat] > best:
                best, name = values[stat], family
        return name
    for family, values in stats.items():
        if stat in values and stat in normalizers.get(family, {}):
            centre, scale = normalizers[family][stat]
            z = (values[stat] - centre) / scale
            z = z if TAILS[stat] == "upper" else -z
            if z > best:
                best, name = z, family
    return name


@dataclass(frozen=True)
class ProbeCalibration:
    """What the verdicts need: normalizers and each check's honest scores."""

    normalizers: Normalizers
    honest: Mapping[str, Sequence[float]]  # per check: honest scores
    queries_per_family: int | None = None

    def threshold(self, stat: str, fpr: float) -> float | None:
        values = self.honest.get(stat)
        if not values:
            return None
        return threshold_at(values, fpr, "upper")

    @staticmethod
    def fit(rows: Sequence[FamilyStats], queries_per_family: int | None = None) -> ProbeCalibration:
        normalizers = fit_normalizers(rows)
        honest: dict[str, list[float]] = {}
        for row in rows:
            for stat, score in scores(row, normalizers).items():
                if math.isfinite(score):
                    honest.setdefault(stat, []).append(round(score, 6))
        return ProbeCalibration(
            normalizers, {k: sorted(v) for k, v in honest.items()}, queries_per_family
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "queries_per_family": self.queries_per_family,
            "normalizers": {
                f: {s: [round(c, 6), round(sc, 6)] for s, (c, sc) in per.items()}
                for f, per in self.normalizers.items()
            },
            "honest_scores": {k: list(v) for k, v in self.honest.items()},
        }

    @staticmethod
    def from_json(document: Mapping[str, Any]) -> ProbeCalibration:
        normalizers: Normalizers = {
            f: {s: (float(pair[0]), float(pair[1])) for s, pair in per.items()}
            for f, per in document.get("normalizers", {}).items()
        }
        honest = {k: [float(x) for x in v] for k, v in document.get("honest_scores", {}).items()}
        n = document.get("queries_per_family")
        return ProbeCalibration(normalizers, honest, int(n) if n is not None else None)


def group_key(num_classes: int) -> str:
    """Calibration groups: honest behaviour off the data manifold depends on the task
    (two classes collapse onto one label, ten spread over several), so thresholds are
    fitted per number of classes, with the pooled corpus as the fallback."""
    return f"classes={num_classes}"


@cache
def _shipped_document() -> dict[str, Any]:
    try:
        text = resources.files("sandbox.checks.probing").joinpath(CALIBRATION_FILE).read_text()
    except FileNotFoundError:
        return {}
    document: dict[str, Any] = json.loads(text)
    return document


def load_shipped(num_classes: int | None = None) -> ProbeCalibration:
    """The shipped calibration for tasks with `num_classes` classes (the pooled corpus
    when that group was not calibrated; empty, so nothing can flag, if not generated)."""
    groups: dict[str, Any] = _shipped_document().get("groups", {})
    key = group_key(num_classes) if num_classes is not None else "all"
    entry = groups.get(key) or groups.get("all")
    if entry is None:
        return ProbeCalibration({}, {})
    return ProbeCalibration.from_json(entry)


def verdicts(
    stats: FamilyStats,
    calibration: ProbeCalibration,
    fpr: float,
    *,
    checked: Sequence[str] = CHECKED,
) -> list[CheckResult]:
    """One `probe_<statistic>` result per checked statistic the families measured.

    `fpr` is each check's own rate (the pipeline divides the policy's rate by the
    number of checks). A statistic without calibration passes and says so.
    """
    z = scores(stats, calibration.normalizers)
    measured = {s for values in stats.values() for s in values}
    results: list[CheckResult] = []
    for stat in checked:
        if stat not in measured:
            continue
        score = z.get(stat, math.nan)
        family = arg_family(stats, calibration.normalizers, stat)
        if stat in MEAN_OVER_FAMILIES:
            where = f"averaged over the families (most on {family})" if family else ""
        else:
            where = f"on the {family} family" if family else "on no calibrated family"
        results.append(
            judge(
                f"probe_{stat}",
                score,
                calibration.threshold(stat, fpr),
                "upper",
                flagged=f"the model's {SUMMARIES[stat]} {where} is further from honest models "
                "than a fraction fpr of them, as when training memorised labels on synthetic "
                "inputs (capacity abuse)",
                passed=f"the model's {SUMMARIES[stat]} is within the honest range on every "
                "probe family",
                details={"family": family, "tail": TAILS[stat]},
            )
        )
    return results


def holdout_fpr(
    rows: Sequence[FamilyStats], fprs: Sequence[float], checked: Sequence[str] = CHECKED
) -> dict[str, dict[str, float]]:
    """Fit on the even-indexed half, count flags on the odd half and the other way
    round; the mean of the two. "any" is the rate of models flagged by any check
    when each uses fpr / (number of checks), as the pipeline does."""
    halves = (list(range(0, len(rows), 2)), list(range(1, len(rows), 2)))
    out: dict[str, dict[str, float]] = {}
    for fpr in fprs:
        rates: dict[str, list[float]] = {}
        for fit, test in (halves, halves[::-1]):
            if not fit or not test:
                continue
            calibration = ProbeCalibration.fit([rows[i] for i in fit])
            names = [s for s in checked if calibration.honest.get(s)]
            flags: dict[str, list[bool]] = {s: [] for s in [*names, "any"]}
            for i in test:
                each = verdicts(rows[i], calibration, fpr, checked=names)
                for r in each:
                    flags[r.name.removeprefix("probe_")].append(r.verdict == "flag")
                split = verdicts(rows[i], calibration, fpr / max(1, len(names)), checked=names)
                flags["any"].append(any(r.verdict == "flag" for r in split))
            for name, flagged in flags.items():
                if flagged:
                    rates.setdefault(name, []).append(sum(flagged) / len(flagged))
        for name, values in rates.items():
            out.setdefault(name, {})[f"{fpr:g}"] = round(float(np.mean(values)), 4)
    return out
