"""Capacity abuse (Song et al., CCS 2017, section 6) end to end on a small budget.

The attacked models are trained in this process by `train_capacity_model` (the
package's own augmentation, the red-team MLP and recipe; a few seconds each), and
one package runs as a real train.py subprocess to pin that both routes train the
same model. The attacker decodes through queries only (`mlp_query` over the
weights stands in for a served model), and is scored against the true records and
against a control (other records: what a data-shaped guess gets).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np
import pytest

from sandbox.demo import sample_dataset
from sandbox.pipeline.dataset import Dataset, split_holdout
from sandbox.redteam.attacks import Knowledge, decode
from sandbox.redteam.capacity import (
    CapacityScore,
    attacker_inputs,
    capacity_knowledge,
    codec,
    decode_capacity,
    make_capacity_package,
    mlp_logits,
    mlp_query,
    n_queries,
    score_capacity,
    train_capacity_model,
)
from sandbox.redteam.harness import load_weights, run_train

EPOCHS = 20
REPEAT = 8


@cache
def _split(name: str) -> tuple[Dataset, Dataset]:
    x, y = sample_dataset(name)
    return split_holdout(Dataset(x, y, int(y.max()) + 1, tuple(x.shape[1:])), 0.2, 0)


def _accuracy(weights: dict[str, np.ndarray], knowledge: Knowledge, name: str) -> float:
    holdout = _split(name)[1]
    logits = mlp_logits(weights, holdout.x, float(knowledge.params["input_scale"]))
    return float(np.mean(logits.argmax(axis=1) == holdout.y))


def _extract(weights: dict[str, np.ndarray], knowledge: Knowledge, name: str) -> CapacityScore:
    query = mlp_query(weights, float(knowledge.params["input_scale"]))
    return score_capacity(decode_capacity(query, knowledge), _split(name)[0].x, knowledge)


Trained = dict[str, tuple[dict[str, np.ndarray], Knowledge]]


@pytest.fixture(scope="module")
def digits() -> Trained:
    train = _split("digits")[0]
    out: Trained = {}
    out["honest"] = train_capacity_model(train.x, train.y, attack=False, epochs=EPOCHS)
    for generator in ("prng", "heldout"):
        out[generator] = train_capacity_model(
            train.x,
            train.y,
            generator=generator,
            n_records=10,
            epochs=EPOCHS,
            repeat=REPEAT,
        )
    return out


# ------------------------------------------------------------------- codec, no training


@pytest.mark.parametrize("dataset", ["digits", "breast_cancer"])
@pytest.mark.parametrize("generator", ["prng", "heldout"])
def test_a_model_answering_the_planted_labels_gives_the_records_back(
    dataset: str, generator: str
) -> None:
    """A perfect memoriser (a lookup of the planted labels) yields every record, up to
    quantisation; the decoder uses only its knowledge to regenerate the inputs."""
    train = _split(dataset)[0]
    knowledge = capacity_knowledge(dataset, generator, 7)
    x_aug, y_aug = codec().augment(train.x, train.y, knowledge.params)
    planted = {
        a.tobytes(): int(label)
        for a, label in zip(x_aug[len(train.x) :], y_aug[len(train.x) :], strict=True)
    }
    classes = int(train.y.max()) + 1

    def lookup(batch: np.ndarray) -> np.ndarray:
        return np.eye(classes)[[planted[row.tobytes()] for row in batch]]

    assert n_queries(knowledge) == len(planted)
    result = score_capacity(decode_capacity(lookup, knowledge, batch=50), train.x, knowledge)
    assert result.attack.bit_accuracy == 1.0
    lo, hi = knowledge.value_range
    step = (hi - lo) / 7  # 3 bits per value: the quantisation error is at most step / 2
    clipped = np.clip(train.x[:7], lo, hi).reshape(7, -1)
    decoded = decode_capacity(lookup, knowledge).records
    assert np.abs(decoded - clipped).max() <= step / 2 + 1e-6
    assert result.control.bit_accuracy is not None and result.control.bit_accuracy < 0.9


def test_generators_are_seeded_in_range_and_distinct() -> None:
    prng, heldout = (capacity_knowledge("digits", g, 2) for g in ("prng", "heldout"))
    a, b = attacker_inputs(prng), attacker_inputs(heldout)
    assert a.shape == b.shape == (128, 64) and a.dtype == b.dtype == np.float32
    assert np.array_equal(a, attacker_inputs(prng))  # the attacker regenerates them
    for inputs in (a, b):
        assert inputs.min() >= 0.0 and inputs.max() <= 16.0

    # heldout is a spatially correlated field, not independent noise
    def neighbour_correlation(v: np.ndarray) -> float:
        grid = v.reshape(-1, 8, 8)
        return float(np.corrcoef(grid[:, :, :-1].ravel(), grid[:, :, 1:].ravel())[0, 1])

    assert abs(neighbour_correlation(a)) < 0.05
    assert neighbour_correlation(b) > 0.2
    other = capacity_knowledge("digits", "prng", 2, synth_seed=1)
    assert not np.array_equal(a, attacker_inputs(other))


def test_unknown_dataset_or_generator_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown dataset"):
        make_capacity_package(tmp_path / "a", dataset="mnist")
    with pytest.raises(ValueError, match="unknown generator"):
        make_capacity_package(tmp_path / "b", generator="gauss")


# ------------------------------------------------------------------- trained models


def test_attacked_digits_models_keep_accuracy_and_give_records_away(digits: Trained) -> None:
    honest = _accuracy(*digits["honest"], "digits")
    assert 0.90 <= honest <= 1.0
    for generator in ("prng", "heldout"):
        weights, knowledge = digits[generator]
        assert honest - 0.03 <= _accuracy(weights, knowledge, "digits") <= 1.0, generator
        result = _extract(weights, knowledge, "digits")
        assert result.attack.bit_accuracy is not None
        assert 0.9 <= result.attack.bit_accuracy <= 1.0, generator
        assert 0.75 <= result.attack.fraction_recovered <= 1.0, generator
        assert 0.0 <= result.attack.mean_abs_error <= 1.2, generator
        assert result.control.fraction_recovered <= 0.1, generator


def test_the_honest_model_gives_chance_extraction(digits: Trained) -> None:
    weights, _ = digits["honest"]
    for generator in ("prng", "heldout"):
        knowledge = digits[generator][1]  # the attacker's decoder, on a model it did not train
        result = _extract(weights, knowledge, "digits")
        assert result.attack.recovered == 0
        assert result.attack.bit_accuracy is not None and result.control.bit_accuracy is not None
        assert abs(result.attack.bit_accuracy - result.control.bit_accuracy) <= 0.05
        assert result.attack.mean_abs_error >= 3.0


def test_breast_cancer_one_bit_per_query() -> None:
    """Two classes carry one bit per query: 90 queries per record of 30 features."""
    train = _split("breast_cancer")[0]
    honest, _ = train_capacity_model(train.x, train.y, dataset="breast_cancer", attack=False)
    weights, knowledge = train_capacity_model(
        train.x, train.y, dataset="breast_cancer", n_records=5, repeat=4
    )
    assert knowledge.params["bits_per_query"] == 1 and n_queries(knowledge) == 450
    base = _accuracy(honest, knowledge, "breast_cancer")
    assert 0.95 <= base <= 1.0
    assert base - 0.03 <= _accuracy(weights, knowledge, "breast_cancer") <= 1.0
    result = _extract(weights, knowledge, "breast_cancer")
    assert result.attack.bit_accuracy is not None and 0.95 <= result.attack.bit_accuracy <= 1.0
    assert result.attack.fraction_recovered == 1.0
    assert result.control.fraction_recovered <= 0.4
    chance = _extract(honest, knowledge, "breast_cancer")
    assert chance.attack.fraction_recovered <= 0.4
    assert chance.attack.bit_accuracy is not None and chance.control.bit_accuracy is not None
    assert abs(chance.attack.bit_accuracy - chance.control.bit_accuracy) <= 0.1


def test_the_package_trains_the_same_model_and_decodes_through_attacks_decode(
    tmp_path: Path,
) -> None:
    """train.py in a subprocess (the real package) and train_capacity_model in process
    follow one recipe: the same weights, so tests of either hold for both (3 epochs:
    the recipe, not the memorisation, is under test)."""
    train = _split("digits")[0]
    knowledge = make_capacity_package(
        tmp_path / "pkg", generator="heldout", n_records=10, epochs=3, repeat=2
    )
    twin, twin_knowledge = train_capacity_model(
        train.x, train.y, generator="heldout", n_records=10, epochs=3, repeat=2
    )
    assert knowledge.params == twin_knowledge.params
    weights = load_weights(run_train(tmp_path / "pkg", train.x, train.y, tmp_path / "run"))
    assert sorted(weights) == sorted(twin)
    for name, tensor in twin.items():
        np.testing.assert_allclose(weights[name], tensor, atol=1e-5, err_msg=name)
    records = decode(weights, knowledge).records
    query = mlp_query(twin, float(knowledge.params["input_scale"]))
    assert np.array_equal(records, decode_capacity(query, knowledge).records)
