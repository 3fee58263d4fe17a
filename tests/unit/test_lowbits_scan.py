"""The fast low-bit scan equals the reference scan exactly, in one process and in two.

`sandbox.checks.lowbits_reference` is the scan as first written; every statistic
the checks read (plane counts, 1-1 pair counts, byte histograms, byte serial
correlations) must come out identical - integers equal, floats bit for bit - on
random and structured tensors, at every size boundary of the new kernel (the
direct path, the joint-histogram path, block edges) and when a model is split
between a forked child and the parent, including when the child fails.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import numpy as np
import pytest

import sandbox.checks.lowbits_counts as counts_mod
import sandbox.checks.lowbits_fork as fork_mod
from sandbox.checks import weights
from sandbox.checks.lowbits import LowBitStats, low_bits_stats, scan_tensors
from sandbox.checks.lowbits_counts import BLOCK, SMALL_VALUES, count_bits, decode, encode
from sandbox.checks.lowbits_reference import reference_low_bits_stats

RNG_SEED = 11


def _assert_same(got: LowBitStats, want: LowBitStats) -> None:
    assert got.n == want.n
    assert np.array_equal(got.ones, want.ones)
    assert np.array_equal(got.pairs11, want.pairs11)
    assert np.array_equal(got.byte_hist, want.byte_hist)
    assert np.array_equal(got.byte_serial, want.byte_serial)  # bit for bit, not approx


def _normal(n: int, seed: int = RNG_SEED) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 0.05, n).astype(np.float32)


def _with_low16(low: np.ndarray, seed: int = RNG_SEED) -> np.ndarray:
    bits = _normal(low.size, seed).view(np.uint32) & np.uint32(0xFFFF0000)
    return (bits | (low.astype(np.uint32) & np.uint32(0xFFFF))).view(np.float32)


def _pixels(n: int) -> np.ndarray:
    """A raw-payload shape: digit-like bytes 0..16 in the low byte, runs of zeros."""
    rng = np.random.default_rng(RNG_SEED)
    pixels = np.where(rng.random(n) < 0.5, 0, rng.integers(0, 17, n))
    return _with_low16(pixels)


STRUCTURED: dict[str, Callable[[int], np.ndarray]] = {
    "random": _normal,
    "all low bits zero": lambda n: _with_low16(np.zeros(n, np.int64)),
    "all low bits one": lambda n: _with_low16(np.full(n, 0xFFFF)),
    "alternating": lambda n: _with_low16(np.tile([0xFFFF, 0], n // 2 + 1)[:n]),
    "ramp": lambda n: _with_low16(np.arange(n) & 0xFFFF),
    "pixel payload": _pixels,
    "sorted values": lambda n: np.sort(_normal(n)),
    "second byte only": lambda n: _with_low16((np.arange(n) % 7) << 8),
}
SIZES = [0, 1, 2, 3, 64, 1000, SMALL_VALUES - 1, SMALL_VALUES, SMALL_VALUES + 1, BLOCK + 2]


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("workers", [1, 2])
def test_random_tensors_equal_the_reference(n: int, workers: int) -> None:
    w = _normal(n, seed=n)
    _assert_same(low_bits_stats(w, workers=workers), reference_low_bits_stats(w))


@pytest.mark.parametrize("kind", list(STRUCTURED))
@pytest.mark.parametrize("n", [5, 4097, 3 * BLOCK + 5])
def test_structured_tensors_equal_the_reference(kind: str, n: int) -> None:
    w = STRUCTURED[kind](n)
    want = reference_low_bits_stats(w)
    _assert_same(low_bits_stats(w, workers=1), want)
    _assert_same(low_bits_stats(w, workers=2), want)


def test_block_edges_do_not_change_the_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(counts_mod, "SMALL_VALUES", 0)  # force the joint path
    for n, blocks in ((301, (1, 2, 7, 300)), (20_011, (1777, 20_010, 20_011))):
        w = _pixels(n)
        want = reference_low_bits_stats(w)
        for block in blocks:
            monkeypatch.setattr(counts_mod, "BLOCK", block)
            _assert_same(low_bits_stats(w, workers=1), want)


def test_any_cut_joins_back_to_the_whole() -> None:
    bits = _pixels(50_000).view(np.uint32)
    whole = count_bits(bits)
    for cut in (1, 17, SMALL_VALUES, 49_999):
        joined = count_bits(bits[:cut]).then(count_bits(bits[cut:]))
        assert joined.n == whole.n and joined.products == whole.products
        assert np.array_equal(joined.pairs11, whole.pairs11)
        assert np.array_equal(joined.byte_hist, whole.byte_hist)
        assert (joined.first, joined.last) == (whole.first, whole.last)


def test_records_round_trip() -> None:
    c = count_bits(_pixels(3000).view(np.uint32))
    tag, back = decode(encode(5, c))
    assert tag == 5 and (back.n, back.first, back.last) == (c.n, c.first, c.last)
    assert back.products == c.products
    assert np.array_equal(back.byte_hist, c.byte_hist)
    assert np.array_equal(back.pairs11, c.pairs11)
    with pytest.raises(ValueError, match="fields"):
        decode(np.zeros(3, np.int64))


def _model() -> dict[str, np.ndarray]:
    """Tensors of mixed sizes (tiny, small-path, joint-path) and kinds."""
    sizes = [64, 100_000, 1, 5000, 2 * BLOCK + 3, 300, 40_000, 70_001]
    kinds = list(STRUCTURED)
    return {
        f"t{i}": STRUCTURED[kinds[i % len(kinds)]](n).reshape(-1, 1) for i, n in enumerate(sizes)
    }


@pytest.mark.parametrize(
    "sizes", [[10], [1, 1], [5, 0, 7], [100, 3, 3, 100], [1, 2, 3, 4, 5, 6, 7]]
)
def test_halves_cover_every_value_once_and_balance(sizes: list[int]) -> None:
    first, second = fork_mod.split_halves(sizes)
    covered = [np.zeros(s, int) for s in sizes]
    for i, lo, hi in first + second:
        covered[i][lo:hi] += 1
    assert all((c == 1).all() for c in covered)
    size = [sum(hi - lo for _, lo, hi in half) for half in (first, second)]
    assert abs(size[0] - size[1]) <= 1
    cut_in_two = {i for i, _, _ in first} & {i for i, _, _ in second}
    assert len(cut_in_two) <= 1


def test_two_processes_scan_a_model_like_the_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    forks: list[int] = []
    real_fork = os.fork

    def counting_fork() -> int:
        pid = real_fork()
        if pid:
            forks.append(pid)
        return pid

    monkeypatch.setattr(os, "fork", counting_fork)
    model = _model()
    got = scan_tensors(model, workers=2)
    assert len(forks) == 1  # one child for the whole model, not one per tensor
    for name, w in model.items():
        _assert_same(got[name], reference_low_bits_stats(w))


def test_a_failing_child_is_replaced_by_counting_here(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(tag: int, counts: object) -> np.ndarray:
        raise RuntimeError("child dies")  # encode runs only in the child

    monkeypatch.setattr(fork_mod, "encode", broken)
    model = _model()
    got = scan_tensors(model, workers=2)
    for name, w in model.items():
        _assert_same(got[name], reference_low_bits_stats(w))


def test_a_hung_child_is_killed_and_its_half_counted_here(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # a fork in a threaded server can leave the child waiting on a lock forever
    def hang(tag: int, counts: object) -> np.ndarray:
        time.sleep(3600)  # encode runs only in the child
        raise AssertionError

    monkeypatch.setattr(fork_mod, "encode", hang)
    monkeypatch.setattr(fork_mod, "CHILD_TIMEOUT_SECONDS", 0.5)
    model = _model()
    started = time.monotonic()
    got = scan_tensors(model, workers=2)
    assert time.monotonic() - started < 60
    for name, w in model.items():
        _assert_same(got[name], reference_low_bits_stats(w))


def test_no_fork_available_falls_back_to_one_process(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_fork() -> int:
        raise OSError("fork: resource temporarily unavailable")

    monkeypatch.setattr(os, "fork", no_fork)
    model = _model()
    got = scan_tensors(model, workers=2)
    for name, w in model.items():
        _assert_same(got[name], reference_low_bits_stats(w))


def test_small_models_are_scanned_in_one_process(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_fork() -> int:
        raise AssertionError("a small model must not fork")

    monkeypatch.setattr(os, "fork", no_fork)
    got = weights.scan_low_bits({"a": _normal(5000), "b": _normal(70_000), "c": _normal(10)})
    assert set(got) == {"a", "b"}  # under MIN_ELEMENTS values: not analysed
    _assert_same(got["b"], reference_low_bits_stats(_normal(70_000)))


def test_the_split_is_automatic_above_the_size_threshold(monkeypatch: pytest.MonkeyPatch) -> None:
    forks: list[int] = []
    real_fork = os.fork

    def counting_fork() -> int:
        pid = real_fork()
        if pid:
            forks.append(pid)
        return pid

    monkeypatch.setattr(os, "fork", counting_fork)
    monkeypatch.setattr(fork_mod, "PARALLEL_MIN_VALUES", 100_000)
    monkeypatch.setattr(fork_mod, "usable_cores", lambda: 2)
    model = _model()
    got = weights.scan_low_bits(model)
    assert len(forks) == 1
    for name in got:
        _assert_same(got[name], reference_low_bits_stats(model[name]))
