"""Song et al.'s white-box attacks on a tabular set (breast_cancer), end to end, small budget.

Each attack's generated package (the same train.py a provider would upload) runs in
this process on the pipeline's breast_cancer training split (455 records of 30
standardised features): 30 epochs of the red-team 30-128-2 MLP take well under a
second. The decoder then reads the released weights with the attacker's knowledge
only (schema, parameters, key; never the data) and `metrics.score` compares the
result with the true records: records travel as q8 bytes over -3..3 SD, and a
record counts as recovered when its MAE is below 0.25 SD.
"""

from __future__ import annotations

import os
import runpy
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import pytest

from sandbox.checks import run_checks, sanitize_arrays
from sandbox.checks.rescale import UnitChain
from sandbox.checks.sanitize import DEFAULT_BITS
from sandbox.demo import sample_dataset
from sandbox.pipeline.algorithm import unpack_algorithm
from sandbox.pipeline.dataset import Dataset, split_holdout
from sandbox.redteam.attacks import Knowledge, attack_params, decode, make_package
from sandbox.redteam.harness import (
    load_weights,
    mlp_accuracy,
    package_unit_chains,
    released_arrays,
)
from sandbox.redteam.metrics import Extraction, score, tolerance

DATASET = "breast_cancer"
#: The package's own modules, forgotten between packages (each run imports its own copy).
_PACKAGE_MODULES = ("model", "trainlib", "payload")


@cache
def _split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    x, y = sample_dataset(DATASET)
    train, holdout = split_holdout(Dataset(x, y, 2, (30,)), 0.2, 0)
    return train.x, train.y, holdout.x, holdout.y


@dataclass(frozen=True)
class Trained:
    knowledge: Knowledge
    tensors: dict[str, np.ndarray]


RunPackage = Callable[..., Trained]


@pytest.fixture(scope="module")
def run_package(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunPackage]:
    """Train a generated package in this process; restores what train.py changes
    (torch's thread count and RNG, sys.path, bytecode writing, the environment, its
    modules). Each (attack, overrides) trains once per module."""
    import torch

    root = tmp_path_factory.mktemp("tabular")
    x, y, _, _ = _split()
    data = root / "data"
    data.mkdir()
    with open(data / "train.npz", "wb") as handle:
        np.savez(handle, x=x, y=y)
    threads, path, bytecode = torch.get_num_threads(), list(sys.path), sys.dont_write_bytecode
    rng_state = torch.get_rng_state()
    env = {k: os.environ.get(k) for k in ("SANDBOX_DATA", "SANDBOX_OUTPUT")}
    cache_: dict[tuple[str, tuple[tuple[str, float], ...]], Trained] = {}

    def run(name: str, **overrides: float) -> Trained:
        key = (name, tuple(sorted(overrides.items())))
        if key in cache_:
            return cache_[key]
        tag = "-".join([name, *(f"{k}{v:g}" for k, v in sorted(overrides.items()))])
        package, out = root / tag, root / f"{tag}-out"
        knowledge = make_package(name, package, dataset=DATASET, **overrides)
        os.environ["SANDBOX_DATA"], os.environ["SANDBOX_OUTPUT"] = str(data), str(out)
        for module in _PACKAGE_MODULES:
            sys.modules.pop(module, None)
        sys.path[:] = [str(package), *path]
        try:
            runpy.run_path(str(package / "train.py"), run_name="__main__")
        finally:
            sys.path[:] = path
            for module in _PACKAGE_MODULES:
                sys.modules.pop(module, None)
        cache_[key] = Trained(knowledge, load_weights(out / "model.safetensors"))
        return cache_[key]

    try:
        yield run
    finally:
        torch.set_num_threads(threads)
        torch.set_rng_state(rng_state)
        sys.dont_write_bytecode = bytecode
        for k, v in env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _accuracy(tensors: dict[str, np.ndarray]) -> float:
    _, _, xh, yh = _split()
    return mlp_accuracy(tensors, xh, yh, 1.0)


def _extract(t: Trained, tensors: dict[str, np.ndarray] | None = None) -> Extraction:
    return score(
        decode(t.tensors if tensors is None else tensors, t.knowledge), _split()[0], t.knowledge
    )


def _flagged(t: Trained) -> set[str]:
    """Checks that flag the model at the thresholds the pipeline uses for a 2-class task."""
    results = run_checks(t.tensors, _split()[0], seed=0, num_classes=2)
    assert {r.details["calibration_group"] for r in results} == {"classes=2"}
    return {r.name for r in results if r.verdict == "flag"}


def test_the_schema_is_the_attackers_only_knowledge(tmp_path: Path) -> None:
    knowledge = make_package("lsb", tmp_path / "pkg", dataset=DATASET, epochs=2)
    assert knowledge.input_shape == (30,) and knowledge.value_range == (-3.0, 3.0)
    assert knowledge.params["encoding"] == "q8" and knowledge.params["input_scale"] == 1.0
    assert tolerance(knowledge) == 0.25
    assert knowledge.params == attack_params("lsb", dataset=DATASET, epochs=2)
    train = (tmp_path / "pkg" / "train.py").read_text()
    assert "'encoding': 'q8'" in train and "'value_range': [-3.0, 3.0]" in train
    assert "INPUT_SCALE = 1.0\n" in (tmp_path / "pkg" / "model.py").read_text()
    with pytest.raises(ValueError, match="unknown dataset 'iris'"):
        attack_params("lsb", dataset="iris")


@pytest.mark.parametrize("name", ["honest", "lsb", "lsb_encrypted", "correlated", "sign"])
def test_tabular_packages_pass_the_platforms_package_checks(name: str, tmp_path: Path) -> None:
    make_package(name, tmp_path / "pkg", dataset=DATASET, epochs=2)
    assert unpack_algorithm(tmp_path / "pkg", tmp_path / "unpacked").name == f"redteam-{name}"


def test_every_attack_keeps_the_task_learned(run_package: RunPackage) -> None:
    honest = _accuracy(run_package("honest").tensors)
    assert 0.95 <= honest <= 1.0  # 114 holdout records: one is 0.9 points
    for name in ("lsb", "lsb_encrypted", "correlated", "sign"):
        assert honest - 0.03 <= _accuracy(run_package(name).tensors) <= 1.0, name


@pytest.mark.parametrize("name", ["lsb", "lsb_encrypted"])
def test_lsb_carries_q8_records_and_the_sanitizer_erases_them(
    run_package: RunPackage, name: str
) -> None:
    t = run_package(name)
    before = _extract(t)
    # 4,226 F32 weights x 16 bits / 240 bits per record
    assert before.records == 4226 * 16 // 240 == 281
    assert before.bit_accuracy == 1.0
    # q8 costs at most half a step (0.012 SD); the few records with values beyond 3 SD
    # are clipped and may miss the tolerance
    assert 0.005 <= before.mean_abs_error <= 0.04
    assert 0.97 <= before.fraction_recovered <= 1.0
    clean = sanitize_arrays(t.tensors)
    after = _extract(t, clean)
    assert after.bit_accuracy is not None and abs(after.bit_accuracy - 0.5) <= 0.02
    assert after.fraction_recovered == 0.0 and 1.2 <= after.mean_abs_error <= 2.2
    assert abs(_accuracy(clean) - _accuracy(t.tensors)) <= 0.02


@pytest.fixture(scope="module")
def unit_chains(tmp_path_factory: pytest.TempPathFactory) -> tuple[UnitChain, ...]:
    """The chains the describe step finds in the red-team MLP (every attack ships it)."""
    package = tmp_path_factory.mktemp("chains") / "pkg"
    make_package("honest", package, dataset=DATASET)
    chains = package_unit_chains(package, (30,), 2)
    assert chains == (UnitChain("net.1.weight", "net.1.bias", "net.3.weight", 128, 1),)
    return chains


@pytest.mark.parametrize(("k", "survives"), [(4, False), (19, False), (22, True)])
def test_lsb_k_sweep_against_the_sanitizers_k(
    run_package: RunPackage, unit_chains: tuple[UnitChain, ...], k: int, survives: bool
) -> None:
    """Every k up to the sanitizer's 19 bits is erased to chance by the sanitizer; k=22
    keeps its top bits through the sanitizer alone, and not through what the pipeline
    releases (hidden units rescaled first)."""
    assert DEFAULT_BITS["F32"] == 19
    t = run_package("lsb", k=k)
    assert _extract(t).bit_accuracy == 1.0
    after = _extract(t, sanitize_arrays(t.tensors))
    assert after.bit_accuracy is not None
    if survives:
        assert 0.53 <= after.bit_accuracy <= 0.65  # 3 of 22 bits per weight survive
    else:
        assert abs(after.bit_accuracy - 0.5) <= 0.02
    assert after.fraction_recovered == 0.0
    released = released_arrays(t.tensors, unit_chains)
    final = _extract(t, released)
    assert final.bit_accuracy is not None and abs(final.bit_accuracy - 0.5) <= 0.02
    assert final.fraction_recovered == 0.0
    assert abs(_accuracy(released) - _accuracy(t.tensors)) <= 0.02


def test_pilot_attack_reads_the_kept_bits_back_through_rescaling(
    run_package: RunPackage, unit_chains: tuple[UnitChain, ...]
) -> None:
    """The adaptive attacker (lsb_pilot: keyed pilot weights reveal each unit's secret
    factor) is the known gap: bits 19-21 come back at about 0.8, not chance. This pins
    the measured residual (README, weight checks); hardly a record comes back whole."""
    t = run_package("lsb_pilot", pilots=4)
    exact = _extract(t)
    assert exact.bit_accuracy == 1.0 and exact.fraction_recovered >= 0.9
    assert _extract(t, sanitize_arrays(t.tensors)).bit_accuracy == 1.0  # sanitizer alone
    released = released_arrays(t.tensors, unit_chains)
    final = _extract(t, released)
    assert final.bit_accuracy is not None and 0.7 <= final.bit_accuracy <= 0.9
    assert final.fraction_recovered <= 0.1  # measured 0-1 of 41 records within 0.25 SD
    assert abs(_accuracy(released) - _accuracy(t.tensors)) <= 0.02


def test_raw_lsb_shows_in_the_low_bits_and_encrypted_lsb_does_not(run_package: RunPackage) -> None:
    """k=16 on this small model: the serial check sees the raw payload, nothing sees the
    encrypted one (the sanitizer is what removes it), and the honest model passes."""
    assert "lowbit_serial" in _flagged(run_package("lsb"))
    assert not {"lowbit_patterned", "lowbit_serial", "lowbit_uniform"} & _flagged(
        run_package("lsb_encrypted")
    )
    assert _flagged(run_package("honest")) == set()


def test_class_group_thresholds_catch_raw_lsb_that_pooled_ones_miss(
    run_package: RunPackage,
) -> None:
    """k=4: 70 q8 records in 4 low bits. The pooled thresholds are set by large digits
    models and let it through; the 2-class group's, from breast_cancer-sized models, do not."""
    low = ["lowbit_patterned", "lowbit_serial", "lowbit_uniform"]
    t = run_package("lsb", k=4)
    pooled = run_checks(t.tensors, enabled=low)
    assert {r.details["calibration_group"] for r in pooled} == {"all"}
    assert not [r.name for r in pooled if r.verdict == "flag"]
    assert set(low) & _flagged(t)


@pytest.mark.parametrize(("lam", "low", "high"), [(0.1, 0.0, 0.35), (3.0, 0.8, 1.0)])
def test_correlated_value_encoding_decodes_by_strength(
    run_package: RunPackage, lam: float, low: float, high: float
) -> None:
    t = run_package("correlated", lam=lam)
    before = _extract(t)
    assert before.records == 128  # one record per hidden unit of net.1.weight [128, 30]
    assert low <= before.fraction_recovered <= high
    if lam >= 1.0:
        assert 0.1 <= before.mean_abs_error <= 0.3  # guessing medians: 0.71 SD
        assert "data_correlation" in _flagged(t)
    after = _extract(t, sanitize_arrays(t.tensors))  # the low bits are not where it lives
    assert after.mean_abs_error == pytest.approx(before.mean_abs_error, abs=0.01)


def test_sign_encoding_decodes_and_survives_the_sanitizer(run_package: RunPackage) -> None:
    t = run_package("sign")
    before = _extract(t)
    assert before.records == 4226 // 240 == 17
    assert before.bit_accuracy is not None and 0.97 <= before.bit_accuracy <= 1.0
    assert 0.8 <= before.fraction_recovered <= 1.0 and before.mean_abs_error <= 0.15
    after = _extract(t, sanitize_arrays(t.tensors))
    assert after.bit_accuracy == before.bit_accuracy


def test_sign_encoding_is_flagged(run_package: RunPackage) -> None:
    """The q8 bytes over the attacker's -3..3 match the check's +-3 SD bytes on their
    high nibble (the split's mean and SD are not exactly 0 and 1)."""
    t = run_package("sign")
    assert "data_sign_agreement" in _flagged(t)
    result = run_checks(
        t.tensors, _split()[0], seed=0, num_classes=2, enabled=["data_sign_agreement"]
    )
    assert next(iter(result[0].details["per_tensor"])).startswith("net.1.weight:q8:")


def test_decoders_read_nothing_from_an_honest_model(run_package: RunPackage) -> None:
    """The decoders hold no data: given an honest model they produce coin flips."""
    honest = run_package("honest").tensors
    lsb = run_package("lsb")
    result = _extract(lsb, honest)
    assert result.bit_accuracy is not None and abs(result.bit_accuracy - 0.5) <= 0.03
    assert result.fraction_recovered == 0.0
    sign = _extract(run_package("sign"), honest)
    assert sign.bit_accuracy is not None and 0.4 <= sign.bit_accuracy <= 0.65
    assert sign.fraction_recovered <= 0.1
