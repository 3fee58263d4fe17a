"""Hidden-unit rescaling: the function is kept, the payload above the sanitizer is not,
and nothing the graph does not prove rescalable is touched."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch
from torch import nn

from sandbox.checks.rescale import (
    UnitChain,
    chain_problems,
    chains_from_json,
    random_factors,
    rescale_tensors,
)
from sandbox.checks.sanitize import KeyStream, sanitize_tensors
from sandbox.checks.tensors import RawTensor, raw_from_numpy
from sandbox.guest.unit_chains import find_unit_chains

BATCH = torch.export.Dim("batch", min=1, max=65536)


def export(module: nn.Module, features: int = 64) -> torch.export.ExportedProgram:
    example = (torch.zeros(2, features),)
    return torch.export.export(module.eval(), example, dynamic_shapes=({0: BATCH},))


def chains_of(module: nn.Module, features: int = 64) -> tuple[UnitChain, ...]:
    found = find_unit_chains(export(module, features))
    return chains_from_json(json.loads(json.dumps(found)), limit=100)


def raw_state(module: nn.Module) -> dict[str, RawTensor]:
    return {k: raw_from_numpy(v.detach().numpy().copy()) for k, v in module.state_dict().items()}


def load_raw(module: nn.Module, tensors: dict[str, RawTensor]) -> nn.Module:
    module.load_state_dict({k: torch.from_numpy(t.data.copy()) for k, t in tensors.items()})
    return module


class CNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 16, 3, padding=1)
        self.fc = nn.Linear(16 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.c1(x.reshape(-1, 1, 8, 8)))
        x = nn.functional.max_pool2d(torch.relu(self.c2(x)), 2)
        return self.fc(x.flatten(1))  # type: ignore[no-any-return]


def mlp(*widths: int) -> nn.Module:
    layers: list[nn.Module] = [nn.Flatten()]
    for a, b in itertools.pairwise(widths[:-1]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    layers.append(nn.Linear(widths[-2], widths[-1]))
    return nn.Sequential(*layers)


# --------------------------------------------------------------------------- the finder


def test_finder_reports_every_hidden_layer_of_an_mlp() -> None:
    torch.manual_seed(0)
    chains = chains_of(mlp(64, 32, 16, 10))
    assert chains == (
        UnitChain("1.weight", "1.bias", "3.weight", 32, 1),
        UnitChain("3.weight", "3.bias", "5.weight", 16, 1),
    )


def test_finder_follows_a_cnn_through_pooling_and_flatten() -> None:
    torch.manual_seed(0)
    chains = chains_of(CNN())
    assert chains == (
        UnitChain("c1.weight", "c1.bias", "c2.weight", 8, 1),
        UnitChain("c2.weight", "c2.bias", "fc.weight", 16, 16),  # 4 x 4 map per channel
    )


class Shared(nn.Module):
    """One hidden layer read twice: scaling its rows would change the second read."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(64, 64)
        self.b = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(torch.relu(self.a(x)))))  # type: ignore[no-any-return]


class Residual(nn.Module):
    """The hidden activations also reach the output directly."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(64, 10)
        self.b = nn.Linear(10, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.a(x))
        return self.b(h) + h  # type: ignore[no-any-return]


class Between(nn.Module):
    def __init__(self, middle: nn.Module) -> None:
        super().__init__()
        self.a, self.middle, self.b = nn.Linear(64, 32), middle, nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.middle(self.a(x)))  # type: ignore[no-any-return]


class Grouped(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(1, 4, 3, padding=1)
        self.b = nn.Conv2d(4, 4, 3, padding=1, groups=2)
        self.fc = nn.Linear(4 * 64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.b(torch.relu(self.a(x.reshape(-1, 1, 8, 8))))
        return self.fc(h.flatten(1))  # type: ignore[no-any-return]


class ConvThenLinearWidth(nn.Module):
    """A linear layer over a 4-D map mixes its width, not its channels."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(1, 4, 3, padding=1)
        self.b = nn.Linear(8, 8)
        self.fc = nn.Linear(4 * 64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.b(torch.relu(self.a(x.reshape(-1, 1, 8, 8))))
        return self.fc(h.flatten(1))  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("module", "expected"),
    [
        (Shared(), []),  # a.weight is read by two nodes
        (Residual(), []),
        (Between(nn.Tanh()), []),  # tanh(c z) != c tanh(z)
        (Between(nn.Sigmoid()), []),
        (Between(nn.BatchNorm1d(32)), []),  # an affine shift per unit: not homogeneous
        (Between(nn.LeakyReLU(0.1)), [("a.weight", 32)]),
        (Between(nn.Identity()), [("a.weight", 32)]),
        (Grouped(), []),
        (ConvThenLinearWidth(), []),
    ],
    ids=[
        "shared",
        "residual",
        "tanh",
        "sigmoid",
        "batchnorm",
        "leaky",
        "identity",
        "grouped",
        "linear-over-width",
    ],
)
def test_finder_reports_only_what_the_graph_proves(
    module: nn.Module, expected: list[tuple[str, int]]
) -> None:
    assert [(c.first_weight, c.units) for c in chains_of(module)] == expected


# --------------------------------------------------------------------------- the rescaler


@pytest.mark.parametrize("kind", ["mlp", "deep", "cnn"])
def test_rescaling_keeps_the_function(kind: str) -> None:
    torch.manual_seed(1)
    module = {"mlp": mlp(64, 128, 10), "deep": mlp(64, 48, 32, 10), "cnn": CNN()}[kind].eval()
    chains = chains_of(module)
    assert chains
    x = torch.randn(256, 64)
    with torch.no_grad():
        before = module(x)
    state = raw_state(module)
    scaled, report = rescale_tensors(state, chains, stream=KeyStream(bytes(32)))
    assert report.units == sum(c.units for c in chains)
    changed = [n for n in state if not np.array_equal(state[n].data, scaled[n].data)]
    assert sorted(changed) == sorted(report.tensors)
    assert {n for c in chains for n in c.names()} == set(report.tensors)
    with torch.no_grad():
        after = load_raw(module, scaled)(x)
    np.testing.assert_allclose(after.numpy(), before.numpy(), rtol=1e-4, atol=1e-5)
    assert bool((after.argmax(1) == before.argmax(1)).all())


def _plant_bits(values: np.ndarray, bits: np.ndarray, low: int, k: int) -> np.ndarray:
    """`values` (F32) with mantissa bits low..k-1 replaced by `bits` (n x (k - low))."""
    u = values.astype(np.float32).view(np.uint32).reshape(-1).copy()
    for i in range(k - low):
        u = (u & ~np.uint32(1 << (low + i))) | (bits[:, i].astype(np.uint32) << (low + i))
    return u.view(np.float32).reshape(values.shape)


def _read_bits(values: np.ndarray, low: int, k: int) -> np.ndarray:
    u = values.astype(np.float32).view(np.uint32).reshape(-1)
    return np.stack([(u >> (low + i)) & 1 for i in range(k - low)], axis=1)


@pytest.mark.parametrize("k", [20, 22])
def test_rescaling_erases_the_bits_the_sanitizer_keeps(k: int) -> None:
    """A payload in mantissa bits 19..k-1 survives the sanitizer alone (read back
    exactly) and is at chance after rescaling then sanitising."""
    rng = np.random.default_rng(7)
    w1 = rng.normal(0, 0.1, (128, 64)).astype(np.float32)
    w2 = rng.normal(0, 0.1, (10, 128)).astype(np.float32)
    payload1 = rng.integers(0, 2, (w1.size, k - 19))
    payload2 = rng.integers(0, 2, (w2.size, k - 19))
    state = {
        "1.weight": raw_from_numpy(_plant_bits(w1, payload1, 19, k)),
        "1.bias": raw_from_numpy(np.full(128, 0.01, dtype=np.float32)),
        "3.weight": raw_from_numpy(_plant_bits(w2, payload2, 19, k)),
    }
    chains = [UnitChain("1.weight", "1.bias", "3.weight", 128)]

    def agreement(tensors: dict[str, RawTensor]) -> float:
        got1 = _read_bits(tensors["1.weight"].data, 19, k)
        got2 = _read_bits(tensors["3.weight"].data, 19, k)
        return float(np.concatenate([(got1 == payload1), (got2 == payload2)]).mean())

    sanitized_only, _ = sanitize_tensors(state)
    assert agreement(sanitized_only) == 1.0  # the gap this closes
    scaled, _ = rescale_tensors(state, chains)
    released, _ = sanitize_tensors(scaled)
    # 8,960 to 26,880 bits: chance is 0.5 with a standard error below 0.0053
    assert 0.47 <= agreement(released) <= 0.53


def test_factors_are_in_range_fresh_and_secret() -> None:
    c = random_factors(100_000, KeyStream())
    assert c.min() >= 1.0 and c.max() < 2.0
    assert 0.49 <= float(np.mean(c)) - 1.0 <= 0.51  # uniform on [1, 2)
    assert not np.array_equal(random_factors(64, KeyStream()), random_factors(64, KeyStream()))
    fixed = bytes(range(32))
    assert np.array_equal(random_factors(8, KeyStream(fixed)), random_factors(8, KeyStream(fixed)))


def test_rescaled_values_keep_their_dtype_and_never_subnormal() -> None:
    # 1.2e-38 / c is subnormal for c > 1.021 (this key's factors: 1.537, 1.528); 1e-38 is
    # subnormal already (the gate never passes one, but the rescaler does not rely on it)
    w1 = np.array([[1e-38, 3.0], [0.0, -2.0]], dtype=np.float32)
    w2 = np.array([[1.2e-38, -1.2e-38]], dtype=np.float32)
    state = {"a": raw_from_numpy(w1), "b": raw_from_numpy(w2)}
    chains = [UnitChain("a", None, "b", 2)]
    scaled, _ = rescale_tensors(state, chains, stream=KeyStream(bytes(32)))
    assert np.all(scaled["b"].data == 0)  # flushed, not left subnormal
    for t in scaled.values():
        assert t.dtype == "F32"
        values = t.data.astype(np.float64)
        assert np.all((values == 0) | (np.abs(values) >= np.finfo(np.float32).tiny))
    assert scaled["a"].data[1, 0] == 0.0  # zeros stay zero


def test_bf16_and_overflowing_chains_are_left_as_they_are() -> None:
    bf16 = RawTensor("BF16", np.full((4, 4), 0x3F80, dtype=np.uint16))
    big = np.full((4, 4), 60000.0, dtype=np.float16)  # x c in [1, 2) overflows F16
    state = {
        "bf.a": bf16,
        "bf.b": RawTensor("BF16", np.full((2, 4), 0x3F80, dtype=np.uint16)),
        "h.a": raw_from_numpy(big),
        "h.b": raw_from_numpy(np.ones((2, 4), dtype=np.float16)),
    }
    chains = [UnitChain("bf.a", None, "bf.b", 4), UnitChain("h.a", None, "h.b", 4)]
    scaled, report = rescale_tensors(state, chains)
    assert report.chains == 0 and report.units == 0 and len(report.skipped) == 2
    assert "BF16" in report.skipped[0] and "overflow" in report.skipped[1]
    assert all(scaled[n] is state[n] for n in state)


def test_a_weight_near_the_float32_maximum_skips_its_chain_and_never_becomes_inf() -> None:
    """A provider cannot make the release carry infinities: c * 3e38 could overflow."""
    near = np.full((4, 4), 0.5, dtype=np.float32)
    near[2, 1] = np.float32(3e38)
    state = {"a": raw_from_numpy(near), "b": raw_from_numpy(np.ones((2, 4), np.float32))}
    for _ in range(20):  # fresh factors each time: c > 1.134 overflows, most draws
        scaled, report = rescale_tensors(state, [UnitChain("a", None, "b", 4)])
        assert all(np.isfinite(t.data).all() for t in scaled.values())
        assert report.units in (0, 4)
        if report.units == 0:
            assert "overflow" in report.skipped[0] and scaled["a"] is state["a"]


# --------------------------------------------------------------------------- validation

SHAPES = {
    "w1": ("F32", (8, 4)),
    "b1": ("F32", (8,)),
    "w2": ("F32", (3, 8)),
    "w3": ("F32", (2, 3)),
    "idx": ("I64", (8, 8)),
    "conv": ("F32", (8, 1, 3, 3)),
    "fc": ("F32", (2, 128)),
}


@pytest.mark.parametrize(
    ("chains", "expected"),
    [
        ([UnitChain("w1", "b1", "w2", 8)], None),
        ([UnitChain("w1", "b1", "w2", 8), UnitChain("w2", None, "w3", 3)], None),
        ([UnitChain("conv", "b1", "fc", 8, 16)], None),
        ([UnitChain("w1", "b1", "nope", 8)], "no tensor named nope"),
        ([UnitChain("w1", "b1", "w2", 7)], "no 7 rows"),
        ([UnitChain("w1", "w3", "w2", 8)], "not a vector of 8"),
        ([UnitChain("w1", "b1", "w3", 8)], "input columns"),
        ([UnitChain("conv", "b1", "fc", 8, 15)], "8 x 15"),
        ([UnitChain("w1", "b1", "w1", 8)], "names one tensor twice"),
        ([UnitChain("idx", None, "w2", 8)], "floating-point"),
        ([UnitChain("w1", None, "w2", 8), UnitChain("w1", None, "w2", 8)], "two chains"),
        ([UnitChain("w1", "b1", "w2", 8), UnitChain("w2", "b1", "w3", 3)], "two chains"),
        ([UnitChain("w1", None, "w2", 8), UnitChain("w2", "w1", "w3", 3)], "bias and a weight"),
        ([UnitChain("w1", None, "w2", 0)], "at least 1"),
    ],
)
def test_chain_problems(chains: list[UnitChain], expected: str | None) -> None:
    problems = chain_problems(chains, SHAPES)
    if expected is None:
        assert problems == []
    else:
        assert any(expected in p for p in problems), problems


def test_rescaling_refuses_chains_that_do_not_fit() -> None:
    state = {"a": raw_from_numpy(np.ones((4, 4), np.float32))}
    with pytest.raises(ValueError, match="no tensor named b"):
        rescale_tensors(state, [UnitChain("a", None, "b", 4)])


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({}, "not a list"),
        ([1], "five chain fields"),
        ([{"first_weight": "a", "second_weight": "b", "units": 1}], "five chain fields"),
        (
            [{"first_weight": 1, "first_bias": None, "second_weight": "b", "units": 1, "block": 1}],
            "short string",
        ),
        (
            [
                {
                    "first_weight": "a",
                    "first_bias": None,
                    "second_weight": "b",
                    "units": True,
                    "block": 1,
                }
            ],
            "not integers",
        ),
        (
            [
                {
                    "first_weight": "a",
                    "first_bias": None,
                    "second_weight": "b",
                    "units": 0,
                    "block": 1,
                }
            ],
            "out of range",
        ),
        ([{}] * 3, "at most 2"),
    ],
)
def test_chains_from_json_is_strict(raw: object, expected: str) -> None:
    with pytest.raises(ValueError, match=expected):
        chains_from_json(raw, limit=2)
