"""Calibration: thresholds at a false-positive rate, and the shipped calibration file."""

import math

import numpy as np
import pytest

from sandbox.checks import CHECKS, calibrate, load_calibration, shipped_thresholds
from sandbox.checks.calibrate import (
    FPR_TABLE,
    false_positive_rate,
    familywise_calibrate,
    leave_one_out_levels,
    shipped_familywise,
    threshold_at,
)
from sandbox.checks.result import Tail
from sandbox.checks.sanitize import DEFAULT_BITS


def test_threshold_at_known_answers() -> None:
    values = [float(v) for v in range(1, 101)]  # 1..100
    assert threshold_at(values, 0.01, "upper") == 99.0  # 100 alone lies above
    assert threshold_at(values, 0.05, "upper") == 95.0
    assert threshold_at(values, 0.0, "upper") == 100.0  # nothing may lie beyond
    assert threshold_at(values, 0.01, "lower") == 2.0
    assert false_positive_rate(values, 99.0, "upper") == 0.01
    assert false_positive_rate(values, 2.0, "lower") == 0.01
    assert threshold_at([3.0, float("nan"), 1.0, 2.0], 0.0, "upper") == 3.0
    with pytest.raises(ValueError, match="fpr"):
        threshold_at(values, 1.0, "upper")
    with pytest.raises(ValueError, match="no finite"):
        threshold_at([float("nan")], 0.1, "upper")


def test_calibrated_rate_holds_on_fresh_samples_from_the_same_law() -> None:
    rng = np.random.default_rng(0)
    honest = rng.normal(size=2000).tolist()
    fresh = rng.normal(size=20000).tolist()
    for fpr in (0.01, 0.05):
        for tail in ("upper", "lower"):
            t = threshold_at(honest, fpr, tail)
            assert abs(false_positive_rate(fresh, t, tail) - fpr) < 0.6 * fpr + 0.003
            assert false_positive_rate(honest, t, tail) <= fpr  # conservative on its own data


def test_calibrate_uses_each_checks_tail() -> None:
    stats = {"lowbit_uniform": [1.0, 2.0, 3.0, 4.0], "sign_runs": [1.0, 2.0, 3.0, 4.0]}
    thresholds = calibrate(stats, 0.25)
    assert thresholds == {"lowbit_uniform": 2.0, "sign_runs": 3.0}
    assert calibrate({"x": [5.0, 6.0]}, 0.5, {"x": "lower"}) == {"x": 6.0}


def test_shipped_calibration_covers_every_check_and_is_monotone() -> None:
    document = load_calibration()
    assert set(document["checks"]) == set(CHECKS)
    assert document["corpus"]["models"] >= 100
    for name, entry in document["checks"].items():
        assert entry["tail"] == CHECKS[name].tail
        assert len(entry["honest"]) == document["corpus"]["models"]
        ordered = [entry["thresholds"][f"{f:g}"] for f in FPR_TABLE]
        if entry["tail"] == "upper":  # a larger FPR never raises an upper threshold
            assert ordered == sorted(ordered, reverse=True), name
        else:
            assert ordered == sorted(ordered), name
    at_one_percent = shipped_thresholds(0.01)
    for name, value in at_one_percent.items():
        assert math.isclose(value, document["checks"][name]["thresholds"]["0.01"], abs_tol=1e-5)
    assert set(document["holdout_fpr"]) == {*CHECKS, "any"}


def test_default_sanitize_bits_are_the_measured_ones() -> None:
    sweep = load_calibration()["sanitizer"]
    for dtype in ("F32", "F16", "BF16"):
        assert DEFAULT_BITS[dtype] == sweep[dtype]["recommended_bits"], dtype
        row = sweep[dtype]["by_bits"][str(DEFAULT_BITS[dtype])]
        assert row["mean_drop_points"] <= sweep[dtype]["max_mean_drop_points"]


def test_shipped_calibration_has_class_groups_with_their_own_thresholds() -> None:
    document = load_calibration()
    groups = document["groups"]
    assert set(groups) == {"classes=2", "classes=10"}
    assert sum(g["models"] for g in groups.values()) == document["corpus"]["models"]
    for key, group in groups.items():
        assert set(group["checks"]) == set(CHECKS), key
        low, high = group["parameters"]
        assert 0 < low <= high
        for name, entry in group["checks"].items():
            assert len(entry["honest"]) == group["models"]
            threshold = entry["thresholds"]["0.01"]
            assert math.isclose(shipped_thresholds(0.01, key)[name], threshold, abs_tol=1e-5)
        assert set(group["holdout_fpr"]) == {*CHECKS, "any"}
    assert set(document["holdout_fpr_routed"]) == {*CHECKS, "any"}
    # the reason for the groups: digits models set the pooled low-bit tail
    two = groups["classes=2"]["checks"]["lowbit_patterned"]["thresholds"]["0.01"]
    assert two * 10 < document["checks"]["lowbit_patterned"]["thresholds"]["0.01"]


# --------------------------------------------------------------------------- family-wise


def test_familywise_on_identical_checks_is_one_checks_quantile() -> None:
    """Two copies of one statistic are one test: the family-wise 1% of 1000 models lets
    10 lie beyond (the 11th largest is the threshold) and predicts exactly 1%."""
    values = [float(v) for v in range(1000)]
    fit = familywise_calibrate({"a": values, "b": values[:]}, 0.01, {"a": "upper", "b": "upper"})
    assert fit.allowed == 9  # leave-one-out: the top 10 are each beaten by <= 9 others
    assert fit.thresholds == {"a": 990.0, "b": 990.0}
    assert fit.corpus_rate == 0.01 and fit.feasible


def test_familywise_splits_the_rate_across_independent_checks() -> None:
    rng = np.random.default_rng(1)
    columns = {f"c{j}": rng.normal(size=2000).tolist() for j in range(5)}
    tails: dict[str, Tail] = dict.fromkeys(columns, "upper")
    fit = familywise_calibrate(columns, 0.01, tails)
    # five independent checks share the 20 allowed flags: about 4 beyond each
    assert 2 <= fit.allowed <= 4
    assert fit.corpus_rate <= 0.01
    fresh = rng.normal(size=(40000, 5))
    flagged = np.any(fresh > np.array([fit.thresholds[f"c{j}"] for j in range(5)]), axis=1)
    assert 0.005 <= flagged.mean() <= 0.016  # the rate holds on models it never saw


def test_familywise_beats_the_even_split_on_a_small_corpus() -> None:
    """The failure it fixes: fpr/k per check on 200 models puts every threshold at the
    maximum, and a fresh model beats one of nine maxima about 9/201 of the time."""
    rng = np.random.default_rng(2)
    k, n = 9, 200
    columns = {f"c{j}": rng.normal(size=n).tolist() for j in range(k)}
    tails: dict[str, Tail] = dict.fromkeys(columns, "upper")
    split = calibrate(columns, 0.01 / k, tails)
    fresh = rng.normal(size=(40000, k))
    rate = np.any(fresh > np.array([split[f"c{j}"] for j in range(k)]), axis=1).mean()
    assert rate > 0.03  # far above the 1% it claims
    fit = familywise_calibrate(columns, 0.01, tails)
    assert not fit.feasible  # 200 models cannot support 1% over nine checks...
    assert fit.allowed == 0 and 0.03 < fit.corpus_rate < 0.06  # ...and it says so, honestly


def test_familywise_respects_tails_and_ignores_nan() -> None:
    values = [float(v) for v in range(100)]
    fit = familywise_calibrate(
        {"up": values, "down": values, "gap": [float("nan")] * 100},
        0.02,
        {"up": "upper", "down": "lower", "gap": "upper"},
    )
    # the top and the bottom model are the only ones flagged at level 0: 2 of 100
    assert fit.allowed == 0 and fit.corpus_rate == 0.02
    assert fit.thresholds == {"up": 99.0, "down": 0.0}  # no honest value: no threshold
    assert leave_one_out_levels({"x": [1.0, float("nan"), 3.0]}, {"x": "upper"}).tolist() == [
        1,
        3,
        0,
    ]
    with pytest.raises(ValueError, match="not aligned"):
        familywise_calibrate({"a": [1.0, 2.0], "b": [1.0]}, 0.01, {"a": "upper", "b": "upper"})
    with pytest.raises(ValueError, match="fpr"):
        familywise_calibrate({"a": [1.0]}, 1.0)


def test_shipped_familywise_holds_on_the_shipped_corpus() -> None:
    """The shipped file supports the default 1% for both shipped check sets, in both
    class groups, and the pipeline's held-out measurement agrees within sampling error."""
    document = load_calibration()
    data_free = tuple(n for n in CHECKS if not CHECKS[n].needs_data)
    for group in ("classes=10", "classes=2"):
        for names in (tuple(CHECKS), data_free):
            fit = shipped_familywise(0.01, group, names)
            assert fit.feasible, (group, names, fit)
            assert set(fit.thresholds) == set(names)
            assert fit.models == document["groups"][group]["models"]
    for label, measured in document["holdout_familywise"].items():
        assert measured["held_out"]["0.01"] <= 0.02, label  # 1% within its sampling error
