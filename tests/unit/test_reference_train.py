"""The probe's reference models (sandbox.guest.reference_train) and the `divergence`
statistic built on them (sandbox.checks.probing.stats.reference_statistics).

Pinned down: the plain recipe learns the task from the platform's own
initialisation on the exported graph (the provider's weights, NaN after
`load_program`, are never read); graphs the platform cannot train are refused
with the reason; the statistic has the value its definition gives on constructed
logits; the query guest trains two references and answers for them; their names
cannot be taken by a weight file.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn

from sandbox.checks.probing import stats
from sandbox.checks.probing.calibrate import (
    ALL_FAMILIES,
    MEAN_OVER_FAMILIES,
    fit_normalizers,
    scores,
)
from sandbox.guest import reference_train
from sandbox.guest.dp_train import DPRefused, load_program
from sandbox.pipeline.query import REFERENCES
from tests.unit.test_query import ctx  # noqa: F401  (the process-runner job fixture)


class DigitsMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x / 16.0)  # type: ignore[no-any-return]


class WithBatchNorm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(64)
        self.out = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.norm(x))  # type: ignore[no-any-return]


def _export(module: nn.Module, path: Path) -> str:
    batch = torch.export.Dim("batch", min=1, max=65536)
    program = torch.export.export(
        module.eval(), (torch.zeros(2, 64),), dynamic_shapes=({0: batch},)
    )
    torch.export.save(program, str(path))
    return str(path)


def test_the_plain_recipe_learns_digits_from_the_platforms_initialisation(
    tmp_path: Path,
) -> None:
    x, y = load_digits(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(y))
    x, y = torch.tensor(x[order], dtype=torch.float32), torch.tensor(y[order])
    program, module = load_program(_export(DigitsMLP(), tmp_path / "model.pt2"))
    assert all(torch.isnan(p).all() for p in module.parameters())  # nothing to read
    trained = reference_train.train_on_program(program, module, x[:1400], y[:1400])
    assert trained.steps == reference_train.RECIPE.epochs * math.ceil(1400 / 64)
    assert set(trained.params) == {"net.1.weight", "net.1.bias", "net.3.weight", "net.3.bias"}
    assert all(torch.isfinite(p).all() for p in trained.params.values())
    with torch.no_grad():
        logits = torch.func.functional_call(module, trained.params, (x[1400:],))
    accuracy = float((logits.argmax(1) == y[1400:]).float().mean())
    # measured 0.947-0.965 over 8 fresh OS seeds on these 397 held-out digits
    assert 0.90 <= accuracy <= 0.99


def test_two_references_differ_they_come_from_fresh_os_randomness(tmp_path: Path) -> None:
    x, y = load_digits(return_X_y=True)
    x, y = torch.tensor(x[:200], dtype=torch.float32), torch.tensor(y[:200])
    recipe = reference_train.Recipe(epochs=1)
    program, module = load_program(_export(DigitsMLP(), tmp_path / "model.pt2"))
    a = reference_train.train_on_program(program, module, x, y, recipe).params
    b = reference_train.train_on_program(program, module, x, y, recipe).params
    assert not torch.equal(a["net.1.weight"], b["net.1.weight"])


def test_the_declared_recipe_is_clipped_into_bounds_and_parsed_strictly() -> None:
    Recipe = reference_train.Recipe
    assert Recipe.declared() == Recipe() == Recipe(epochs=30, batch_size=64, lr=3e-3)
    assert Recipe.declared(10, 32, 1e-3) == Recipe(10, 32, 1e-3)
    # a provider cannot make the references useless or unstable
    assert Recipe.declared(1, 1, 5.0) == Recipe(5, 16, 1e-2)
    assert Recipe.declared(10_000, 65_536, 1e-9) == Recipe(60, 512, 1e-4)
    assert Recipe.declared(float("nan"), None, float("inf")) == Recipe()
    assert Recipe.from_json('{"epochs": 40, "batch_size": null, "lr": 0.5}') == Recipe(40, 64, 1e-2)
    for bad in ('{"epochs": 40}', '{"epochs": "40", "batch_size": 1, "lr": 1}', "[]",
                '{"epochs": true, "batch_size": 1, "lr": 1}',
                '{"epochs": 1, "batch_size": 1, "lr": 1, "optimizer": "sgd"}'):  # fmt: skip
        with pytest.raises(DPRefused):
            Recipe.from_json(bad)


def test_a_graph_the_platform_cannot_train_is_refused_with_the_reason(tmp_path: Path) -> None:
    with pytest.raises(DPRefused, match="GroupNorm"):
        load_program(_export(WithBatchNorm(), tmp_path / "model.pt2"))


def _logits_from_probabilities(p: np.ndarray) -> np.ndarray:
    return np.log(np.asarray(p, dtype=np.float64))


def test_divergence_has_the_value_of_its_definition() -> None:
    n = 8
    # On the holdout the model and both references agree exactly: TV 0.
    holdout = _logits_from_probabilities(np.tile([0.9, 0.1], (n, 1)))
    # On the family: model (0.9, 0.1), references (0.5, 0.5) and (0.3, 0.7):
    # TV(model, r1) = 0.4, TV(model, r2) = 0.6, TV(r1, r2) = 0.2.
    model = _logits_from_probabilities(np.tile([0.9, 0.1], (n, 1)))
    r1 = _logits_from_probabilities(np.tile([0.5, 0.5], (n, 1)))
    r2 = _logits_from_probabilities(np.tile([0.3, 0.7], (n, 1)))
    out = stats.reference_statistics(model, holdout, [r1, r2], [holdout, holdout])
    assert out["divergence"] == pytest.approx((0.5 - 0.0) / 0.2)
    assert out["agreement"] == pytest.approx(0.5)  # argmax equals r1's, not r2's
    # the holdout distance is subtracted: the same family distance over a holdout at
    # TV 0.1 from both references scores (0.5 - 0.1) / 0.2
    off = _logits_from_probabilities(np.tile([0.8, 0.2], (n, 1)))
    shifted = stats.reference_statistics(model, holdout, [r1, r2], [off, off])
    assert shifted["divergence"] == pytest.approx((0.5 - 0.1) / 0.2)
    # references that agree exactly: the spread floor keeps the score finite
    same = stats.reference_statistics(model, holdout, [r1, r1], [holdout, holdout])
    assert same["divergence"] == pytest.approx(0.4 / stats.MIN_REFERENCE_SPREAD)
    with pytest.raises(ValueError, match="two or more"):
        stats.reference_statistics(model, holdout, [r1], [holdout])


def test_divergence_scores_the_mean_over_families_other_statistics_the_maximum() -> None:
    assert "divergence" in MEAN_OVER_FAMILIES
    normalizers = {f: {"divergence": (9.0, 9.0), "sensitivity": (0.0, 1.0)} for f in "ab"}
    normalizers[ALL_FAMILIES] = {"divergence": (1.0, 0.5)}  # the corpus's per-model means
    out = scores(
        {
            "a": {"divergence": 5.0, "sensitivity": 3.0},
            "b": {"divergence": 1.0, "sensitivity": 1.0},
        },
        normalizers,
    )
    # divergence: raw mean 3.0, standardised by the pooled normaliser; sensitivity: max z
    assert out == {"divergence": pytest.approx(4.0), "sensitivity": pytest.approx(3.0)}
    # fitting stores the pooled normaliser of the per-model means
    rows = [{"a": {"divergence": float(i)}, "b": {"divergence": float(i) + 2}} for i in range(5)]
    fitted = fit_normalizers(rows)
    assert fitted[ALL_FAMILIES]["divergence"][0] == pytest.approx(3.0)  # median of 1..5


def test_the_query_guest_trains_two_references_and_answers_for_them(
    ctx,  # noqa: F811
) -> None:
    from sandbox.pipeline.dataset import Dataset, write_npz
    from sandbox.pipeline.query import query_models

    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, 2, 3)).astype(np.float32)
    y = (x.reshape(2000, -1).sum(axis=1) > 0).astype(np.int64)  # classes 0 and 1 of 3
    write_npz(Dataset(x, y, 3, (2, 3)), ctx.workspace.tmpfs("data", 4) / "train.npz")
    queries = {"train": x, "noise": rng.uniform(-3, 3, (50, 2, 3)).astype(np.float32)}
    declared = {"epochs": 20, "batch_size": 64, "lr": 1e-2}  # as algorithm.toml says
    logits = query_models(ctx, ["candidate"], queries, "probe", reference=declared)
    assert set(logits) == {"candidate", *REFERENCES}
    first, second = (logits[r] for r in REFERENCES)
    assert first["noise"].shape == (50, 3)
    assert not np.array_equal(first["noise"], second["noise"])  # independent draws
    for r in REFERENCES:  # each learned this linear task
        assert 0.9 <= float((logits[r]["train"].argmax(axis=1) == y).mean()) <= 1.0
    said = b'"batch_size": 64, "epochs": 20, "lr": 0.01'
    assert any(b"reference model: 640 steps" in logs and said in logs for _, logs in ctx.logs)


def test_reference_names_are_reserved(ctx) -> None:  # noqa: F811
    from sandbox.pipeline.query import query_models

    with pytest.raises(ValueError, match="reserved"):
        query_models(ctx, ["reference1"], {"q": np.zeros((1, 2, 3), np.float32)}, "probe")


def test_the_probe_container_also_answers_the_canaries(ctx) -> None:  # noqa: F811
    from sandbox.pipeline.dataset import Dataset
    from sandbox.pipeline.probe_step import probe_and_answer

    rng = np.random.default_rng(1)
    x = rng.normal(size=(64, 2, 3)).astype(np.float32)
    data = Dataset(x, (x[:, 0, 0] > 0).astype(np.int64), 3, (2, 3))
    canaries = rng.normal(size=(9, 2, 3)).astype(np.float32)
    outcomes, answers = probe_and_answer(ctx, data, data, {"canaries": canaries}, seed=5)
    assert outcomes and set(answers) == {"candidate"}  # no references under this policy
    assert set(answers["candidate"]) == {"canaries"}
    model = torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3)
    )
    from safetensors.torch import load_file

    model.load_state_dict(load_file(str(ctx.workspace.path / "work" / "candidate.safetensors")))
    with torch.no_grad():
        expected = model(torch.from_numpy(canaries)).numpy()
    np.testing.assert_allclose(answers["candidate"]["canaries"], expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="probe's own"):
        probe_and_answer(ctx, data, data, {"holdout": canaries}, seed=5)
