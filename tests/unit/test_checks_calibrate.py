"""Calibration: thresholds at a false-positive rate, and the shipped calibration file."""

import math

import numpy as np
import pytest

from sandbox.checks import CHECKS, calibrate, load_calibration, shipped_thresholds
from sandbox.checks.calibrate import FPR_TABLE, false_positive_rate, threshold_at
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
