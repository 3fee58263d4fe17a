"""Every weight check on synthetic tensors whose answer is known in advance."""

import math

import numpy as np
import pytest

from sandbox.checks import weights as W
from sandbox.checks.lowbits import ANALYSED_BITS, low_bits_stats, patterned_score, serial_score
from sandbox.demo import sample_dataset

RNG_SEED = 7


def _normal(n: int, seed: int = RNG_SEED) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 0.05, n).astype(np.float32)


def _with_low_bits(w: np.ndarray, low: np.ndarray, k: int) -> np.ndarray:
    bits = w.view(np.uint32).copy()
    mask = np.uint32((1 << k) - 1)
    bits = (bits & ~mask) | (low.astype(np.uint32) & mask)
    return bits.view(np.float32)


def _uniform_low(n: int, seed: int = 1) -> np.ndarray:
    """Weights whose low 16 bits are fair independent coins (an encrypted payload)."""
    rng = np.random.default_rng(seed)
    return _with_low_bits(_normal(n), rng.integers(0, 1 << 16, n), 16)


def _pixel_payload(n: int) -> np.ndarray:
    """Raw digits pixels (0..16) as bytes in the low 8 bits: an LSB payload."""
    x, _ = sample_dataset("digits")
    pixels = x.reshape(-1)[:n].astype(np.uint8)
    return _with_low_bits(_normal(n), pixels, 8)


# --------------------------------------------------------------------------- the scan


def test_plane_counts_and_serial_pairs_are_exact() -> None:
    low = np.array([0b1, 0b11, 0b10, 0b0, 0b1] * 20)
    w = _with_low_bits(_normal(low.size), low, 16)
    stats = low_bits_stats(w)
    assert stats.n == 100
    assert stats.ones[0] == 60 and stats.ones[1] == 40
    assert all(stats.ones[j] == 0 for j in range(2, ANALYSED_BITS))
    # plane 0 is 1,1,0,0,1 repeated: 1-1 pairs at (0,1) and (4,next 0) per period
    assert stats.pairs11[0] == 2 * 20 - 1
    assert stats.byte_hist[0].sum() == 100 and stats.byte_hist[1][0] == 100
    chi = stats.plane_chi2()
    assert chi[0] == pytest.approx((120 - 100) ** 2 / 100)
    assert chi[5] == pytest.approx(100.0)  # an all-zero plane: maximal deviation


def test_alternating_bits_have_serial_correlation_minus_one() -> None:
    low = np.tile([0xFFFF, 0x0000], 500)
    stats = low_bits_stats(_with_low_bits(_normal(low.size), low, 16))
    assert np.allclose(stats.plane_serial(), -1.0, atol=0.01)
    assert stats.byte_serial[0] == pytest.approx(-1.0, abs=0.01)
    assert serial_score(stats) > 1000


def test_blocks_do_not_change_the_scan(monkeypatch: pytest.MonkeyPatch) -> None:
    import sandbox.checks.lowbits_counts as counts

    w = _pixel_payload(5000)
    whole = low_bits_stats(w)
    monkeypatch.setattr(counts, "SMALL_VALUES", 0)  # the blocked joint-histogram path
    monkeypatch.setattr(counts, "BLOCK", 1777)
    pieces = low_bits_stats(w)
    assert np.array_equal(whole.ones, pieces.ones)
    assert np.array_equal(whole.pairs11, pieces.pairs11)
    assert np.allclose(whole.byte_serial, pieces.byte_serial)


# --------------------------------------------------------------------------- (a), (b)


def test_fair_coin_low_bits_score_like_the_null() -> None:
    scores = [patterned_score(low_bits_stats(_uniform_low(20_000, seed=s)))[0] for s in range(8)]
    assert max(scores) < 5.0  # z-scores of chi-squares under the null
    serial = [serial_score(low_bits_stats(_uniform_low(20_000, seed=s))) for s in range(8)]
    assert max(serial) < 5.0


def test_raw_pixel_payload_is_patterned_and_serially_dependent() -> None:
    tensors = {"fc.weight": _pixel_payload(8192), "fc.bias": _normal(128)}
    patterned = W.lowbit_patterned(tensors, threshold=60.0)
    assert patterned.verdict == "flag" and patterned.statistic > 1000
    assert patterned.details["worst"]["tensor"] == "fc.weight"
    # pixels <= 16 never set bits 5..7 of the byte
    assert patterned.details["worst"]["ones_frequency"][7] == 0.0
    serial = W.lowbit_serial(tensors, threshold=10.0)
    assert serial.verdict == "flag" and serial.statistic > 50


def test_too_uniform_is_two_sided_with_the_patterned_check() -> None:
    """Honest-like weights whose lowest planes lean to 0 (what untouched initial values
    leave) score above an exactly uniform (encrypted) payload on the pooled statistic."""
    rng = np.random.default_rng(3)
    n = 50_000
    low = rng.integers(0, 1 << 16, n)
    low &= ~(rng.random(n) < 0.04).astype(np.int64)  # 4% of LSBs forced to 0
    honest = {"w": _with_low_bits(_normal(n), low, 16)}
    encrypted = {"w": _uniform_low(n, seed=4)}
    h = W.lowbit_uniform(honest).statistic
    e = W.lowbit_uniform(encrypted).statistic
    assert h > 10 and abs(e) < 4
    threshold = 5.0
    assert W.lowbit_uniform(encrypted, threshold).verdict == "flag"
    assert W.lowbit_uniform(honest, threshold).verdict == "pass"
    assert W.lowbit_uniform(encrypted, threshold).tail == "lower"
    # and the encrypted payload does not look patterned
    assert W.lowbit_patterned(encrypted).statistic < 5


def test_only_f32_tensors_of_enough_values_are_scanned() -> None:
    tensors = {
        "tiny": _normal(10),
        "half": _normal(1000).astype(np.float16),
        "double": _normal(1000).astype(np.float64),
        "w": _normal(1000),
    }
    assert list(W.scan_low_bits(tensors)) == ["w"]
    empty = W.lowbit_uniform({"half": tensors["half"]})
    assert math.isnan(empty.statistic) and empty.verdict == "pass"


# --------------------------------------------------------------------------- (c) signs


def test_sign_balance_known_answers() -> None:
    n = 10_000
    w = np.abs(_normal(n))
    assert W.sign_balance({"w": w}).statistic == pytest.approx(math.sqrt(n))
    balanced = np.tile(np.float32([0.1, -0.1]), n // 2)
    assert W.sign_balance({"w": balanced}).statistic == 0.0
    assert W.sign_balance({"w": w}, threshold=20.0).verdict == "flag"


def test_runs_test_known_answers() -> None:
    alternating = np.tile([True, False], 500)
    assert W.runs_z(alternating) == pytest.approx((1000 - 501) / math.sqrt(499 * 500 / 999), 1e-6)
    blocks = np.repeat([True, False], 500)
    assert W.runs_z(blocks) < -30
    assert W.runs_z(np.ones(10, dtype=bool)) == 0.0
    random = np.random.default_rng(0).random(10_000) > 0.5
    assert abs(W.runs_z(random)) < 4
    # pixel bits as signs: long runs of zeros
    x, _ = sample_dataset("digits")
    bits = np.unpackbits(x.reshape(-1)[:2000].astype(np.uint8))
    signs = np.where(bits == 1, 0.1, -0.1).astype(np.float32)
    assert W.sign_runs({"w": signs}, threshold=10.0).verdict == "flag"


# --------------------------------------------------------------------------- (d) values


def test_value_distribution_tests_known_answers() -> None:
    rng = np.random.default_rng(5)
    normal = rng.normal(0, 1, 20_000).astype(np.float32)
    laplace = rng.laplace(0, 1, 20_000).astype(np.float32)
    uniform = rng.uniform(-1, 1, 20_000).astype(np.float32)
    for honest in (normal, laplace, uniform):
        assert W.value_ks({"w": honest}).statistic < 2.5
    assert W.excess_kurtosis(normal) == pytest.approx(0.0, abs=0.15)
    assert W.excess_kurtosis(laplace) == pytest.approx(3.0, abs=0.6)
    assert W.excess_kurtosis(uniform) == pytest.approx(-1.2, abs=0.05)
    x, _ = sample_dataset("digits")
    pixels = (x.reshape(-1)[:20_000] / 16.0).astype(np.float32)  # correlated-value copy
    assert W.value_ks({"w": pixels}).statistic > 20
    spike = normal.copy()
    spike[:18_000] *= 0.01  # most weights pinned near zero
    assert W.value_kurtosis({"w": spike}, threshold=10.0).verdict == "flag"
    assert W.value_kurtosis({"w": normal}, threshold=10.0).verdict == "pass"


def test_results_are_json_ready() -> None:
    import json

    result = W.lowbit_patterned({"w": _pixel_payload(4096)}, threshold=50.0)
    entry = result.to_dict()
    json.dumps(entry)
    assert entry["verdict"] == "flag" and entry["tail"] == "upper"
    assert "statistic" in result.explanation
    unjudged = W.sign_runs({"w": _normal(1000)})
    assert unjudged.verdict == "pass" and unjudged.threshold is None
    assert "cannot flag" in unjudged.explanation
