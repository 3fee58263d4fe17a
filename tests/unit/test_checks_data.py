"""The data-aware checks: weights that copy training records stand out against a control."""

from functools import cache

import numpy as np

from sandbox.checks import data as D
from sandbox.demo import sample_dataset


@cache
def _digits() -> np.ndarray:
    x, _ = sample_dataset("digits")
    return x[:600]


def _random_weights(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 0.1, shape).astype(np.float32)


def test_window_offsets_cover_every_start_or_keep_aligned_ones() -> None:
    assert D.window_offsets(10, 4).tolist() == list(range(7))
    assert D.window_offsets(3, 4).size == 0
    assert D.window_offsets(33, 8, step=8).tolist() == [0, 8, 16, 24]
    coarse = D.window_offsets(100_000, 64, limit=100)
    assert coarse.size <= 100 + 100 and set(range(0, 64 * 100, 64)) <= set(coarse.tolist())


def test_copied_records_correlate_and_random_weights_do_not() -> None:
    x = _digits()
    rng = np.random.default_rng(1)
    copied = (x[:32] / 16.0 + rng.normal(0, 0.05, (32, 64))).astype(np.float32)
    attacked = {"fc.weight": copied * 0.1, "fc.bias": _random_weights((32,))}
    honest = {"fc.weight": _random_weights((32, 64)), "fc.bias": _random_weights((32,))}
    a = D.data_correlation(attacked, x, threshold=0.2)
    h = D.data_correlation(honest, x, threshold=0.2)
    assert a.verdict == "flag" and a.statistic > 0.4
    assert h.verdict == "pass" and abs(h.statistic) < 0.06
    best = a.details["per_tensor"]["fc.weight"]
    assert best["best_r"] > 0.95 and best["windows_r_above_0.9"] >= 32


def test_the_control_removes_the_chance_level() -> None:
    """Short windows against many records match well by chance; the excess stays ~0."""
    x = _digits()
    honest = {"w": _random_weights((4096,), seed=3)}
    result = D.data_correlation(honest, x)
    detail = result.details["per_tensor"]["w"]
    assert detail["top_mean_r"] > 0.3  # chance alone
    assert abs(result.statistic) < 0.06


def test_signs_that_spell_record_bits_are_found() -> None:
    x = _digits()
    bits = np.unpackbits(x[:16].astype(np.uint8), axis=None)  # 16 records, u8, MSB first
    rng = np.random.default_rng(2)
    magnitudes = rng.uniform(0.01, 0.1, bits.size).astype(np.float32)
    attacked = {"w": np.where(bits == 1, magnitudes, -magnitudes)}
    honest = {"w": rng.normal(0, 0.1, bits.size).astype(np.float32)}
    a = D.data_sign_agreement(attacked, x, threshold=0.1)
    h = D.data_sign_agreement(honest, x, threshold=0.1)
    assert a.verdict == "flag" and a.statistic > 0.3
    assert h.verdict == "pass" and abs(h.statistic) < 0.05
    assert a.details["per_tensor"]["w:u8"]["best_r"] > 0.99


def test_bit_encodings_depend_on_the_data() -> None:
    x = _digits()
    quantised = {f"q{b}:{r}" for b in D.QUANTISE_BITS for r in D.QUANTISE_RANGES}
    encodings = D.record_bit_encodings(x[:5])
    assert set(encodings) == {"median", "u8", *quantised}
    assert encodings["u8"].shape == (5, 64 * 8)
    assert encodings["q4:rank"].shape == (5, 64 * 4)
    floats = np.random.default_rng(0).normal(size=(5, 30)).astype(np.float32)
    assert set(D.record_bit_encodings(floats)) == {"median", *quantised}


def test_quantised_levels_known_answers() -> None:
    reference = np.array([[0.0, -1.0], [5.0, 0.0], [10.0, 1.0], [10.0, 2.0]])
    x = np.array([[0.0, -1.0], [5.0, 0.5], [12.0, 2.0]])
    minmax = D._quantised_levels(x, reference, "minmax", 8)
    assert minmax.tolist() == [[0, 0], [128, 128], [255, 255]]  # 127.5 rounds to even 128
    assert D._quantised_levels(x, reference, "minmax", 4)[:, 0].tolist() == [0, 8, 15]
    glob = D._quantised_levels(x, reference, "global", 8)  # one range: -1..10
    assert glob[:, 1].tolist() == [0, 35, 70]  # (0.5 + 1) / 11 * 255 = 34.8, 3 / 11 * 255 = 69.5
    sd = reference[:, 1].std()  # column 1: mean 0.5
    levels = D._quantised_levels(
        np.array([[0.0, 0.5 - 3 * sd], [0.0, 0.5 + 3 * sd]]), reference, "sd3", 8
    )
    assert levels[:, 1].tolist() == [0, 255]
    # rank: the mid-rank among the reference's values, as a fraction of 2**bits levels
    rank = D._quantised_levels(x, reference, "rank", 8)
    assert rank[:, 0].tolist() == [32, 96, 255]  # 0.5/4, 1.5/4 of 256; above all: clipped
    constant = D._quantised_levels(np.ones((2, 1)), np.ones((3, 1)), "minmax", 8)
    assert constant.tolist() == [[0], [0]]
    bits = D.record_bit_encodings(x, reference)
    assert bits["q8:minmax"][1, :8].tolist() == [1, 0, 0, 0, 0, 0, 0, 0]  # 128, MSB first
    assert bits["q4:minmax"][1, :4].tolist() == [1, 0, 0, 0]  # 8
    assert D.bits_per_feature("q4:sd3") == 4 and D.bits_per_feature("median") == 1
    assert D.compared_positions("q8:sd3", 2).tolist() == [0, 1, 2, 3, 8, 9, 10, 11]
    assert D.compared_positions("u8", 2).tolist() == list(range(16))
    assert D.compared_positions("q4:rank", 2).tolist() == list(range(8))


def _sign_encoded(levels: np.ndarray, bits: int, seed: int) -> np.ndarray:
    """Weights whose signs are the records' level bits, MSB first."""
    unpacked = np.unpackbits(levels.astype(np.uint8)[:, :, None], axis=2)[:, :, 8 - bits :]
    flat = unpacked.reshape(-1)
    magnitudes = np.random.default_rng(seed).uniform(0.01, 0.1, flat.size)
    return np.where(flat == 1, magnitudes, -magnitudes).astype(np.float32)


def test_sign_encoding_over_an_attackers_own_range_is_found() -> None:
    """Standardised tabular records as bytes over a public -3..3 (not the split's own
    mean +-3 SD) or nibbles over -4..4: the allowlisted encodings still find them."""
    rng = np.random.default_rng(5)
    x = rng.normal(0.05, 1.02, (300, 30)).astype(np.float32)
    q8 = np.rint((np.clip(x[:20], -3, 3) + 3) / 6 * 255)
    q4 = np.rint((np.clip(x[:40], -4, 4) + 4) / 8 * 15)
    honest = {"w": rng.normal(0, 0.1, 20 * 240).astype(np.float32)}
    h = D.data_sign_agreement(honest, x, threshold=0.1, seed=0)
    assert h.verdict == "pass" and abs(h.statistic) < 0.05
    for levels, bits, best in ((q8, 8, "w:q8:sd3"), (q4, 4, "w:q4:sd4")):
        attacked = {"w": _sign_encoded(levels, bits, seed=6)}
        a = D.data_sign_agreement(attacked, x, threshold=0.1, seed=0)
        assert a.verdict == "flag" and a.statistic > 0.25, (bits, a.statistic)
        assert next(iter(a.details["per_tensor"])) == best
        assert a.details["per_tensor"][best]["best_r"] > 0.8  # ranges differ: not 1.0


def test_work_is_bounded_and_seeding_makes_runs_reproducible() -> None:
    assert D._window_limit(1437, 64) == D.MAX_WINDOWS
    assert D._window_limit(20_000, 784) == D.MIN_WINDOWS  # MNIST-sized: aligned rows first
    x = _digits()
    w = {"w": _random_weights((2048,), seed=4)}
    a = D.data_correlation(w, x, seed=1).statistic
    assert a == D.data_correlation(w, x, seed=1).statistic
    b = D.data_sign_agreement(w, x, seed=1).statistic
    assert b == D.data_sign_agreement(w, x, seed=1).statistic
    # unseeded runs differ only by their controls' noise
    assert abs(D.data_correlation(w, x).statistic - a) < 0.03


def test_records_too_long_are_reported_as_skipped() -> None:
    x = np.zeros((3, D.MAX_RECORD_LENGTH + 1), dtype=np.float32)
    for check in (D.data_correlation, D.data_sign_agreement):
        result = check({"w": _random_weights((100,))}, x, 0.1)
        assert result.verdict == "pass" and result.details["skipped"] is True
        assert "too long" in result.explanation
