"""Calibration groups: thresholds per number of classes, the pooled corpus as fallback."""

import importlib
from typing import Any

import numpy as np
import pytest

from bench import corpus
from sandbox.checks import run_checks

# The package exports a function named `calibrate`; the module is wanted here.
C = importlib.import_module("sandbox.checks.calibrate")


def _entry(values: list[float], tail: str = "upper") -> dict[str, Any]:
    return {"tail": tail, "honest": values}


def _document() -> dict[str, Any]:
    """A pooled corpus dominated by large 10-class models (sign_runs up to 100) and a
    2-class group of 60 small models (sign_runs at most 3)."""
    small = [3.0 * i / 59 for i in range(60)]
    large = [100.0 * i / 99 for i in range(100)]
    return {
        "format": 2,
        "checks": {"sign_runs": _entry(small + large)},
        "groups": {
            "classes=2": {
                "models": 60,
                "parameters": [200, 6000],
                "checks": {"sign_runs": {"honest": small}},
            },
            "classes=10": {
                "models": 100,
                "parameters": [700, 120_000],
                "checks": {"sign_runs": {"honest": large}},
            },
            "classes=3": {"models": 20, "parameters": [100, 1000], "checks": {}},
        },
    }


def test_choose_group_known_answers() -> None:
    doc = _document()
    assert C.group_key(2) == "classes=2"
    assert C.choose_group(2, 4226, doc) == "classes=2"
    assert C.choose_group(2, 12_000, doc) == "classes=2"  # within SIZE_SLACK of 6000
    assert C.choose_group(2, 12_001, doc) == C.POOLED  # a far larger model than calibrated
    assert C.choose_group(2, 99, doc) == C.POOLED and C.choose_group(2, 100, doc) == "classes=2"
    assert C.choose_group(3, 500, doc) == C.POOLED  # 20 models < MIN_GROUP_MODELS
    assert C.choose_group(7, 500, doc) == C.POOLED  # no such group
    assert C.choose_group(None, 500, doc) == C.POOLED
    assert C.choose_group(10, 50_000, doc) == "classes=10"


def test_shipped_thresholds_per_group(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(C, "load_calibration", _document)
    assert C.shipped_thresholds(0.0, "classes=2") == {"sign_runs": 3.0}
    assert C.shipped_thresholds(0.0, "classes=10") == {"sign_runs": 100.0}
    assert C.shipped_thresholds(0.0) == {"sign_runs": 100.0}  # pooled
    assert C.shipped_thresholds(0.0, "classes=9") == {"sign_runs": 100.0}  # unknown: pooled


def test_run_checks_judges_a_model_by_its_group(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(C, "load_calibration", _document)
    signs = np.where(np.arange(4000) % 2 == 0, 0.1, -0.1).astype(np.float32)  # alternating
    model = {"w": signs}
    (pooled,) = run_checks(model, enabled=["sign_runs"], fpr=0.0)
    (small,) = run_checks(model, enabled=["sign_runs"], fpr=0.0, num_classes=2)
    assert 3.0 < small.statistic < 100.0  # far more runs than chance, not absurdly so
    assert pooled.verdict == "pass" and pooled.details["calibration_group"] == "all"
    assert small.verdict == "flag" and small.details["calibration_group"] == "classes=2"
    assert small.threshold == 3.0 and pooled.threshold == 100.0


def test_routed_holdout_fpr_uses_each_models_group() -> None:
    """Two groups on very different scales: pooled thresholds never flag the small
    group's outliers; routed ones flag about the calibrated fraction in each."""
    rng = np.random.default_rng(0)
    classes = [2 if i % 4 == 0 else 10 for i in range(800)]
    sizes = [1000 if c == 2 else 50_000 for c in classes]
    rows = [{"sign_runs": float(rng.normal(0, 1) + (0 if c == 2 else 50))} for c in classes]
    pooled = corpus.holdout_fprs(rows, (0.05,))
    routed = corpus.holdout_fprs(rows, (0.05,), classes, sizes)
    assert 0.02 <= pooled["sign_runs"]["0.05"] <= 0.08
    assert 0.02 <= routed["sign_runs"]["0.05"] <= 0.08
    members = corpus._group_members(range(len(rows)), classes)
    assert set(members) == {C.POOLED, "classes=2", "classes=10"}
    assert len(members["classes=2"]) == 200 and len(members[C.POOLED]) == 800
    shapes = corpus._group_document(members, sizes)["groups"]
    assert shapes["classes=2"] == {"models": 200, "parameters": [1000, 1000]}
    # an outlier of the small group: pooled thresholds (set by the 50-scale group) miss it
    small = [rows[i]["sign_runs"] for i in members["classes=2"]]
    outlier = max(small) + 1.0
    assert outlier < C.threshold_at([r["sign_runs"] for r in rows], 0.05, "upper")
    assert outlier > C.threshold_at(small, 0.05, "upper")
