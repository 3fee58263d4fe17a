"""Canary-query probing: families, statistics on models with known answers, calibration.

Statistics are pinned on constructed models whose answers are known in closed
form: a constant-label model (no spread, perfectly stable), a hash-labelled
"memorising" model (labels uniform over the classes and reshuffled by any move,
the extreme of capacity abuse) and a smooth linear model. The calibration is
checked against the shipped honest-corpus file: thresholds exist per task group
and the false-positive rate measured on the held-out half stays near the target.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np
import numpy.typing as npt
import pytest

from sandbox.checks.probing import stats
from sandbox.checks.probing.calibrate import (
    ProbeCalibration,
    _shipped_document,
    holdout_fpr,
    load_shipped,
    scores,
    verdicts,
)
from sandbox.checks.probing.families import FAMILIES, build_families, input_domain, perturb

CLASSES = 10


def _digits_like(n: int = 300, seed: int = 0) -> npt.NDArray[np.float32]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 17, size=(n, 64)).astype(np.float32)


def constant_model(x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    logits = np.zeros((len(x), CLASSES), np.float32)
    logits[:, 3] = 2.0
    return logits


def hash_model(x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Memorises arbitrary labels: each exact input hashes to a class, confidently."""
    labels = [
        hashlib.sha256(np.ascontiguousarray(row).tobytes()).digest()[0] % CLASSES for row in x
    ]
    logits = np.zeros((len(x), CLASSES), np.float32)
    logits[np.arange(len(x)), labels] = 20.0
    return logits


def linear_model(x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    w = np.random.default_rng(1).normal(size=(int(np.prod(x.shape[1:])), CLASSES)) / 64
    return (x.reshape(len(x), -1) @ w).astype(np.float32)


# --------------------------------------------------------------------------- families


def test_families_have_the_shape_range_and_dtype_asked_for() -> None:
    x = _digits_like()
    domain = input_domain(x)
    built = build_families(domain, seed=7, n=50)
    assert list(built) == list(FAMILIES)
    for name, q in built.items():
        assert q.shape == (50, 64), name
        assert q.dtype == np.float32, name
        assert np.isfinite(q).all(), name
        assert (q >= domain.low - 1e-5).all() and (q <= domain.high + 1e-5).all(), name
    # the attacker's PRNG inputs sit on the data's integer grid; binary on the extremes
    assert np.array_equal(built["prng"], np.round(built["prng"]))
    assert set(np.unique(built["binary"])) <= {float(v) for v in (*domain.low, *domain.high)}
    assert 0.05 < float((built["sparse"] == domain.high).mean()) < 0.2


def test_families_are_deterministic_per_seed_and_differ_across_seeds() -> None:
    domain = input_domain(_digits_like())
    a = build_families(domain, seed=123, n=20)
    b = build_families(domain, seed=123, n=20)
    c = build_families(domain, seed=124, n=20)
    for name in FAMILIES:
        assert np.array_equal(a[name], b[name]), name
        assert not np.array_equal(a[name], c[name]), name
    # one family's queries do not depend on which others are enabled
    alone = build_families(domain, seed=123, n=20, names=["mixed"])
    assert np.array_equal(alone["mixed"], a["mixed"])


def test_patch_shuffle_keeps_each_records_values() -> None:
    x = _digits_like()
    built = build_families(input_domain(x), seed=3, n=30, names=["patch_shuffle"])
    q = built["patch_shuffle"]
    # a permutation of 2x2 patches of some training record: same multiset of values
    assert any(
        np.array_equal(np.sort(q[0]), np.sort(record)) for record in x
    ), "patch-shuffled input is not a permutation of a training record"


def test_non_square_inputs_shuffle_chunks() -> None:
    x = np.random.default_rng(0).normal(size=(100, 30)).astype(np.float32)
    q = build_families(input_domain(x), seed=1, n=10, names=["patch_shuffle"])["patch_shuffle"]
    assert q.shape == (10, 30)


def test_unknown_families_and_tiny_n_are_refused() -> None:
    domain = input_domain(_digits_like())
    with pytest.raises(ValueError, match="unknown probe families"):
        build_families(domain, seed=0, n=8, names=["faces"])
    with pytest.raises(ValueError, match="at least 2"):
        build_families(domain, seed=0, n=1)


def test_perturbation_is_small_and_seeded() -> None:
    domain = input_domain(_digits_like())
    q = build_families(domain, seed=0, n=100, names=["uniform"])["uniform"]
    p1 = perturb(domain, q, seed=(0, 1))
    p2 = perturb(domain, q, seed=(0, 1))
    assert np.array_equal(p1, p2)
    moved = np.abs(p1 - q) / domain.span
    assert 0.01 < float(moved.mean()) < 0.03  # E|N(0, 0.02)| = 0.016


# --------------------------------------------------------------------------- statistics


def test_constant_model_has_no_spread_and_is_perfectly_stable() -> None:
    q = build_families(input_domain(_digits_like()), seed=0, n=200, names=["uniform"])["uniform"]
    logits = constant_model(q)
    s = stats.family_statistics(logits, constant_model(q + 1), logits)
    expected_conf = math.exp(2) / (math.exp(2) + CLASSES - 1)
    assert s["label_entropy"] == 0.0
    assert s["instability"] == 0.0
    assert s["sensitivity"] == pytest.approx(0.0, abs=1e-12)
    assert s["confidence"] == pytest.approx(expected_conf, rel=1e-9)
    assert s["confidence_gap"] == pytest.approx(0.0, abs=1e-12)


def test_hash_model_looks_like_memorised_labels() -> None:
    domain = input_domain(_digits_like())
    q = build_families(domain, seed=0, n=2000, names=["uniform"])["uniform"]
    logits = hash_model(q)
    s = stats.family_statistics(logits, hash_model(perturb(domain, q, seed=0)))
    # labels uniform over 10 classes: entropy of a 2000-sample histogram ~ 1
    assert 0.99 < s["label_entropy"] <= 1.0
    # any move re-draws the label: it changes with probability 0.9
    assert 0.86 < s["instability"] < 0.94
    assert 0.86 < s["sensitivity"] < 0.94  # one-hot -> one-hot: TV = 1 when labels differ
    assert s["confidence"] > 0.999


def test_smooth_model_is_stable_under_the_perturbation() -> None:
    domain = input_domain(_digits_like())
    q = build_families(domain, seed=0, n=500, names=["uniform"])["uniform"]
    s = stats.family_statistics(linear_model(q), linear_model(perturb(domain, q, seed=0)))
    assert s["instability"] < 0.2
    assert s["sensitivity"] < 0.1


def test_agreement_and_its_absence() -> None:
    q = build_families(input_domain(_digits_like()), seed=0, n=300, names=["uniform"])["uniform"]
    assert stats.agreement(hash_model(q), hash_model(q)) == 1.0
    assert stats.agreement(constant_model(q), hash_model(q)) == pytest.approx(0.1, abs=0.06)


def test_label_entropy_of_two_equal_classes_is_one() -> None:
    logits = np.zeros((4, 2), np.float32)
    logits[[0, 1], 0] = 1.0
    logits[[2, 3], 1] = 1.0
    assert stats.label_entropy(logits) == pytest.approx(1.0)


def test_confidence_histogram_counts_every_query() -> None:
    logits = hash_model(_digits_like(50))
    histogram = stats.confidence_histogram(logits)
    assert len(histogram["edges"]) == 11 and histogram["edges"][0] == 0.0
    assert histogram["edges"][-1] == 1.0
    assert sum(histogram["counts"]) == 50 and histogram["counts"][-1] == 50


def test_shape_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError, match="shapes differ"):
        stats.instability(np.zeros((3, 2)), np.zeros((4, 2)))
    with pytest.raises(ValueError, match="shape"):
        stats.softmax(np.zeros(3))


# --------------------------------------------------------------------------- calibration


def _honest_rows(n: int, seed: int) -> list[dict[str, dict[str, float]]]:
    rng = np.random.default_rng(seed)
    return [
        {
            family: {
                "instability": float(rng.normal(0.05, 0.01)),
                "sensitivity": float(rng.normal(0.03, 0.005)),
                "confidence_gap": float(rng.normal(0.2, 0.05)),
            }
            for family in ("uniform", "prng")
        }
        for _ in range(n)
    ]


def test_heldout_false_positive_rate_tracks_the_target_on_synthetic_honest_models() -> None:
    rows = _honest_rows(2000, 0)
    rates = holdout_fpr(rows, [0.01, 0.05])
    for name in ("instability", "sensitivity", "confidence_gap"):
        assert 0.003 <= rates[name]["0.01"] <= 0.02, (name, rates[name])
        assert 0.03 <= rates[name]["0.05"] <= 0.07, (name, rates[name])
    assert 0.003 <= rates["any"]["0.01"] <= 0.02


def test_verdicts_flag_the_memorising_row_and_pass_an_honest_one() -> None:
    calibration = ProbeCalibration.fit(_honest_rows(400, 1))
    honest = _honest_rows(1, 2)[0]
    memorised = {f: {"instability": 0.9, "sensitivity": 0.9, "confidence_gap": 0.2} for f in honest}
    passed = verdicts(honest, calibration, 0.01)
    flagged = verdicts(memorised, calibration, 0.01)
    assert [r.name for r in passed] == [
        "probe_instability",
        "probe_sensitivity",
        "probe_confidence_gap",
    ]
    assert all(r.verdict == "pass" for r in passed)
    assert {r.name for r in flagged if r.verdict == "flag"} == {
        "probe_instability",
        "probe_sensitivity",
    }
    assert "family" in flagged[0].explanation and flagged[0].threshold is not None


def test_an_uncalibrated_statistic_cannot_flag() -> None:
    result = verdicts({"uniform": {"divergence": 99.0}}, ProbeCalibration({}, {}), 0.01)
    assert [r.verdict for r in result] == ["pass"]
    assert "cannot flag" in result[0].explanation


def test_calibration_round_trips_through_json() -> None:
    calibration = ProbeCalibration.fit(_honest_rows(50, 3), queries_per_family=256)
    again = ProbeCalibration.from_json(calibration.to_json())
    row = _honest_rows(1, 4)[0]
    # the file keeps 6 decimals of each centre and scale
    expected = scores(row, calibration.normalizers)
    assert scores(row, again.normalizers) == pytest.approx(expected, abs=1e-3)
    assert again.threshold("instability", 0.01) == calibration.threshold("instability", 0.01)


def test_shipped_calibration_covers_both_corpus_tasks_with_a_measured_fpr() -> None:
    document = _shipped_document()
    assert document["generated_by"] == "python -m bench.probe_corpus"
    assert set(document["groups"]) == {"all", "classes=2", "classes=10"}
    for key, group in document["groups"].items():
        assert group["models"] >= 100, key
        # calibrated on one half, counted on the other: near the 1% target (the halves
        # hold 53-160 models, so one flagged model is 0.6-1.9%)
        assert 0.0 <= group["holdout_fpr"]["any"]["0.01"] <= 0.04, key
    for classes in (2, 10):
        calibration = load_shipped(classes)
        assert calibration.queries_per_family == 256
        for stat in ("instability", "sensitivity", "confidence_gap"):
            assert calibration.threshold(stat, 0.01 / 3) is not None
    # an unseen task falls back to the pooled corpus
    assert load_shipped(7).honest == load_shipped(None).honest
