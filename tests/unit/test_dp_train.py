"""DP-SGD on exported graphs (sandbox.guest.dp_train): the mechanism, not just the code.

- sensitivity: for add/remove-one neighbours the clipped gradient SUM moves by at
  most C at every step, also for a graph whose forward mixes the batch (it
  subtracts the batch mean), on both ways of computing it (vmap and ghost norms);
  the same graph with batched gradients breaks the bound (the weakened setting the
  property test must catch);
- ghost clipping: the same clipped sums as vmap on the example MLP and other graphs,
  and every graph it does not cover goes the vmap way;
- noise: the step adds N(0, (sigma C)^2) / (q n) per coordinate;
- refusals: BatchNorm, buffers, large constants, with reasons that say what to use;
- re-initialisation: the provider's weights never reach training;
- the container entry point end to end on a tiny dataset.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
import pickle
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file
from torch import nn

from sandbox.dp.plan import DPSettings, Hints, check_dp_report, make_plan
from sandbox.guest import dp_train, protocol
from sandbox.guest.dp_train import (
    DPConfig,
    DPRefused,
    check_archive,
    check_program,
    clip_and_sum,
    clipped_sum,
    ghost_clipped_sum,
    ghost_graph,
    load_program,
    make_generator,
    noisy_step,
    parameter_shapes,
    per_example_grads,
    platform_init,
    select_device,
)

CPU = torch.device("cpu")
D, K = 6, 3  # features, classes


def export(module: nn.Module, d: int = D) -> torch.export.ExportedProgram:
    """As sandbox/guest/export.py does: eval mode, dynamic batch dimension."""
    module.eval()
    batch = torch.export.Dim("batch", min=1, max=65536)
    return torch.export.export(module, (torch.zeros(2, d),), dynamic_shapes=({0: batch},))


def saved(program: torch.export.ExportedProgram, path: Path) -> str:
    torch.export.save(program, str(path))
    return str(path)


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(D, 16), nn.ReLU(), nn.Linear(16, K))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x * 0.5)


class BatchCoupled(nn.Module):
    """Tries to mix the examples of a batch: every output depends on the batch mean."""

    def __init__(self) -> None:
        super().__init__()
        self.l1 = nn.Linear(2 * D, 16)
        self.l2 = nn.Linear(16, K)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.cat([x, x - x.mean(0, keepdim=True)], dim=1)
        return self.l2(torch.relu(self.l1(h)))


class WithBatchNorm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.l1 = nn.Linear(D, 8)
        self.bn = nn.BatchNorm1d(8)
        self.l2 = nn.Linear(8, K)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.l2(self.bn(self.l1(x)))


class WithBuffer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.l1 = nn.Linear(D, K)
        self.register_buffer("shift", torch.ones(K))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.l1(x) + self.shift


class WithConstant(nn.Module):
    """A constant added to a parameter would carry the provider's values past re-init."""

    def __init__(self) -> None:
        super().__init__()
        self.delta = nn.Parameter(torch.zeros(K, D))
        self.hidden = torch.randn(K, D)  # a plain attribute: a lifted tensor constant

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ (self.hidden + self.delta).t()


def params_of(program: torch.export.ExportedProgram, seed: int) -> dict[str, torch.Tensor]:
    return platform_init(parameter_shapes(program), make_generator(CPU, seed), CPU)


def data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, D, generator=g), torch.randint(0, K, (n,), generator=g)


def l2(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return math.sqrt(sum(float((a[k].double() - b[k].double()).pow(2).sum()) for k in a))


def batched_grads(
    module: nn.Module, params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor
) -> dict[str, torch.Tensor]:
    """The WEAKENED way: per-example gradients of losses from ONE forward over the batch."""

    def losses(p: dict[str, torch.Tensor]) -> torch.Tensor:
        out = torch.func.functional_call(module, p, (x,))
        return nn.functional.cross_entropy(out, y, reduction="none")

    jac: dict[str, torch.Tensor] = torch.func.jacrev(losses)(params)
    return jac


# --------------------------------------------------------------------------- sensitivity


@pytest.mark.parametrize("ghost", [False, True], ids=["vmap", "ghost"])
@pytest.mark.parametrize(
    ("architecture", "smoothing"), [(MLP, 0.0), (BatchCoupled, 0.0), (BatchCoupled, 0.3)]
)
def test_clipped_sum_moves_at_most_clip_for_neighbouring_batches(
    tmp_path: Path, architecture: type[nn.Module], smoothing: float, ghost: bool
) -> None:
    _, module = load_program(saved(export(architecture()), tmp_path / "m.pt2"))
    x, y = data(24, seed=1)
    x[5] = 40.0  # an outlier: shifts the batch mean a lot, the worst case for coupling
    clip = 0.5
    params = params_of(export(architecture()), seed=2)
    fast = ghost_graph(module, params) if ghost else None
    assert (fast is not None) == ghost  # both graphs are linear layers only
    leaves = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    optimizer = torch.optim.SGD(list(leaves.values()), lr=0.5)
    for _ in range(4):  # at every step of a (noise-free) trajectory
        current = {k: v.detach() for k, v in leaves.items()}
        full = clipped_sum(module, current, {}, x, y, clip, 7, smoothing, fast)
        for k in (0, 5, 23):  # remove one record
            keep = torch.arange(24) != k
            neighbour = clipped_sum(module, current, {}, x[keep], y[keep], clip, 7, smoothing, fast)
            assert l2(full, neighbour) <= clip * (1 + 1e-5)
        replaced = x.clone()
        replaced[5] = -40.0  # replace one record: at most 2 C
        other = clipped_sum(module, current, {}, replaced, y, clip, 7, smoothing, fast)
        assert l2(full, other) <= 2 * clip * (1 + 1e-5)
        noisy_step(
            leaves,
            full,
            clip=clip,
            noise_multiplier=0.0,
            expected_batch_size=24.0,
            optimizer=optimizer,
            generator=make_generator(CPU, 0),
        )


def test_batched_gradients_of_the_coupled_graph_break_the_bound(tmp_path: Path) -> None:
    """The property above would fail without per-example vmap: proof the test can fail."""
    _, module = load_program(saved(export(BatchCoupled()), tmp_path / "m.pt2"))
    x, y = data(24, seed=1)
    x[5] = 40.0
    clip = 0.5
    params = params_of(export(BatchCoupled()), seed=2)
    keep = torch.arange(24) != 5
    full = clip_and_sum(batched_grads(module, params, x, y), clip)
    neighbour = clip_and_sum(batched_grads(module, params, x[keep], y[keep]), clip)
    assert l2(full, neighbour) > 2 * clip
    # and vmap over single examples gives each example's own gradient, not the batched one
    vmapped = per_example_grads(module, params, {}, x, y, chunk=8)
    alone = per_example_grads(module, params, {}, x[3:4], y[3:4], chunk=8)
    for name in params:
        torch.testing.assert_close(vmapped[name][3], alone[name][0], rtol=1e-5, atol=1e-6)


def test_label_smoothing_is_each_examples_own_smoothed_loss(tmp_path: Path) -> None:
    """With smoothing s, example i's gradient is that of torch's smoothed cross-entropy
    on example i alone (target 1 - s + s/K on its label, s/K elsewhere): a per-example
    loss, so clipping bounds it as before. It differs from the unsmoothed gradient."""
    _, module = load_program(saved(export(MLP()), tmp_path / "m.pt2"))
    params = params_of(export(MLP()), seed=4)
    x, y = data(5, seed=3)
    smoothed = per_example_grads(module, params, {}, x, y, chunk=4, label_smoothing=0.2)
    plain = per_example_grads(module, params, {}, x, y, chunk=4)
    for i in range(5):
        leaves = {k: v.clone().requires_grad_(True) for k, v in params.items()}
        out = torch.func.functional_call(module, leaves, (x[i : i + 1],))
        target = torch.full((1, K), 0.2 / K)
        target[0, y[i]] += 0.8
        loss = -(target * torch.log_softmax(out, dim=1)).sum()
        expected = torch.autograd.grad(loss, list(leaves.values()))
        for name, want in zip(leaves, expected, strict=True):
            torch.testing.assert_close(smoothed[name][i], want, rtol=1e-5, atol=1e-6)
    assert l2({k: v[0] for k, v in smoothed.items()}, {k: v[0] for k, v in plain.items()}) > 1e-3


# --------------------------------------------------------------------------- ghost clipping


class Deep(nn.Module):
    """Three linear layers, one without a bias, other activations, arithmetic on the input."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(D, 12, bias=False)
        self.b = nn.Linear(12, 8)
        self.c = nn.Linear(8, K)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.a(x * 2.0 - 1.0))
        return self.c(nn.functional.gelu(self.b(h)) + h[:, :8])


class Tied(nn.Module):
    """One Linear applied twice: its weight has two uses, so its gradient is not one outer
    product."""

    def __init__(self) -> None:
        super().__init__()
        self.l1 = nn.Linear(D, D)
        self.l2 = nn.Linear(D, K)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.l2(torch.relu(self.l1(torch.relu(self.l1(x)))))


class Scaled(nn.Module):
    """A learned scale: a parameter used by a multiplication, not a linear layer."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(D))
        self.l1 = nn.Linear(D, K)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.l1(x * self.scale)


class Normed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.l1 = nn.Linear(D, 8)
        self.norm = nn.LayerNorm(8)
        self.l2 = nn.Linear(8, K)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.l2(self.norm(self.l1(x)))


class Sequence(nn.Module):
    """A linear layer over a sequence: per example its input is [1, 2, 3], not [1, features],
    and its weight's gradient is a sum of two outer products."""

    def __init__(self) -> None:
        super().__init__()
        self.token = nn.Linear(D // 2, 4)
        self.head = nn.Linear(8, K)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = torch.relu(self.token(x.reshape(x.shape[0], 2, D // 2)))
        return self.head(tokens.flatten(1))


class Transposed(nn.Module):
    """The same layer as x @ W.t() + b: not aten.linear, so not covered."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(K, D))
        self.bias = nn.Parameter(torch.zeros(K))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight.t() + self.bias


def random_params(program: torch.export.ExportedProgram, seed: int) -> dict[str, torch.Tensor]:
    """Parameters with every layer away from zero, so that every gradient is non-zero."""
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=g) * 0.7 for k, (s, _) in parameter_shapes(program).items()}


def median_norm(grads: dict[str, torch.Tensor]) -> float:
    count = next(iter(grads.values())).shape[0]
    squares = sum(g.reshape(count, -1).double().pow(2).sum(1) for g in grads.values())
    assert isinstance(squares, torch.Tensor)
    norms = squares.sqrt()
    return float(norms[torch.isfinite(norms)].median())


def assert_same_sums(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert set(got) == set(want)
    for name, value in want.items():
        scale = float(value.abs().max())
        assert scale > 0, name
        assert float((got[name] - value).abs().max()) <= 2e-5 * scale, name


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_ghost_clipping_gives_the_vmap_sum_on_the_example_mlp(
    tmp_path: Path, smoothing: float
) -> None:
    from bench.dp import export_example, load_example

    program, module = load_program(str(export_example(tmp_path)))
    params = random_params(program, seed=8)
    fast = ghost_graph(module, params)
    assert fast is not None
    assert [(layer.inputs, layer.outputs) for layer in fast.layers] == [(64, 128), (128, 10)]
    train, _ = load_example()
    x, y = torch.from_numpy(train.x[:300]), torch.from_numpy(train.y[:300])
    grads = per_example_grads(module, params, {}, x, y, 256, smoothing)
    for clip in (median_norm(grads), 1e-3, 1e6):  # half clipped, all clipped, none
        want = clipped_sum(module, params, {}, x, y, clip, 256, smoothing)
        got = ghost_clipped_sum(fast, params, {}, x, y, clip, 64, smoothing)
        assert got is not None
        assert_same_sums(got, want)
        assert_same_sums(clipped_sum(module, params, {}, x, y, clip, 256, smoothing, fast), want)


@pytest.mark.parametrize("architecture", [Deep, MLP, BatchCoupled])
def test_ghost_clipping_gives_the_vmap_sum_on_other_graphs(
    tmp_path: Path, architecture: type[nn.Module]
) -> None:
    program = export(architecture())
    _, module = load_program(saved(program, tmp_path / "m.pt2"))
    params = random_params(program, seed=9)
    fast = ghost_graph(module, params)
    assert fast is not None
    x, y = data(40, seed=10)
    x[3] = math.nan  # non-finite gradients: dropped by both
    x[4] = math.inf
    x[7] = 1e30  # finite; where its float32 gradient norm overflows, dropped by both
    x[8] = 1e4  # huge but finite: clipped
    grads = per_example_grads(module, params, {}, x, y, 64)
    clip = median_norm(grads)
    for chunk in (1, 7, 64):
        want = clipped_sum(module, params, {}, x, y, clip, chunk, 0.1)
        got = ghost_clipped_sum(fast, params, {}, x, y, clip, chunk, 0.1)
        assert got is not None
        assert_same_sums(got, want)
    nothing = {k: torch.zeros_like(v) for k, v in params.items()}
    for row in range(10):  # each example alone: the same contribution, at most C
        want = clipped_sum(module, params, {}, x[row : row + 1], y[row : row + 1], clip, 64)
        got = ghost_clipped_sum(fast, params, {}, x[row : row + 1], y[row : row + 1], clip, 64)
        assert got is not None
        assert l2(got, want) <= 1e-5 * clip
        assert l2(got, nothing) <= clip * (1 + 1e-6)
        if row in (3, 4):
            assert l2(got, nothing) == 0.0
    empty = ghost_clipped_sum(fast, params, {}, x[:0], y[:0], clip, 64)
    assert empty is not None and all(float(v.abs().sum()) == 0 for v in empty.values())


@pytest.mark.parametrize("architecture", [Tied, Scaled, Normed, Sequence, Transposed])
def test_graphs_ghost_clipping_does_not_cover_go_the_vmap_way(
    tmp_path: Path, architecture: type[nn.Module]
) -> None:
    program = export(architecture())
    assert check_program(program) == []
    _, module = load_program(saved(program, tmp_path / "m.pt2"))
    params = random_params(program, seed=11)
    assert ghost_graph(module, params) is None
    assert ghost_graph(nn.Linear(D, K), {"weight", "bias"}) is None  # not a graph at all
    config = DPConfig(
        n=30,
        sample_rate=0.5,
        expected_batch_size=15.0,
        steps=3,
        epochs=1,
        lr=0.05,
        clip=1.0,
        noise_multiplier=1.0,
    )
    x, y = data(30, seed=12)
    runs = [
        dp_train.train(
            module,
            params,
            x,
            y,
            config,
            sample_generator=make_generator(CPU, 13),
            noise_generator=make_generator(CPU, 14),
            ghost=ghost,
        ).params
        for ghost in (True, False)
    ]
    for name in runs[0]:  # the trainer fell back: exactly the vmap run
        torch.testing.assert_close(runs[0][name], runs[1][name], rtol=0, atol=0)


def test_ghost_graph_refuses_parameter_names_it_does_not_match(tmp_path: Path) -> None:
    _, module = load_program(saved(export(MLP()), tmp_path / "m.pt2"))
    names = [name for name, _ in module.named_parameters()]
    assert ghost_graph(module, names) is not None
    assert ghost_graph(module, names[1:]) is None
    assert ghost_graph(module, [*names, "extra.weight"]) is None


def test_ghost_path_declines_a_layer_whose_input_is_not_one_row(tmp_path: Path) -> None:
    """The shape the graph's metadata promised is checked on every call: a mismatch
    returns None, and clipped_sum then computes the sum by vmap."""
    program = export(MLP())
    _, module = load_program(saved(program, tmp_path / "m.pt2"))
    params = random_params(program, seed=15)
    fast = ghost_graph(module, params)
    assert fast is not None
    wrong = dataclasses.replace(fast.layers[0], inputs=fast.layers[0].inputs + 1)
    broken = dataclasses.replace(fast, layers=(wrong, *fast.layers[1:]))
    x, y = data(10, seed=16)
    assert ghost_clipped_sum(broken, params, {}, x, y, 0.5, 4) is None
    want = clipped_sum(module, params, {}, x, y, 0.5, 4)
    torch.testing.assert_close(clipped_sum(module, params, {}, x, y, 0.5, 4, 0.0, broken), want)


def test_training_with_ghost_clipping_follows_the_vmap_run(tmp_path: Path) -> None:
    program = export(Deep())
    _, module = load_program(saved(program, tmp_path / "m.pt2"))
    initial = params_of(program, seed=17)
    x, y = data(40, seed=18)
    config = DPConfig(
        n=40,
        sample_rate=0.5,
        expected_batch_size=20.0,
        steps=5,
        epochs=1,
        lr=0.1,
        clip=0.5,
        noise_multiplier=1.0,
        optimizer="sgd",
        momentum=0.5,
        label_smoothing=0.1,
    )
    runs = [
        dp_train.train(
            module,
            initial,
            x,
            y,
            config,
            sample_generator=make_generator(CPU, 19),
            noise_generator=make_generator(CPU, 20),
            ghost=ghost,
        ).params
        for ghost in (True, False)
    ]
    for name in runs[0]:
        torch.testing.assert_close(runs[0][name], runs[1][name], rtol=1e-4, atol=1e-5)


@settings(max_examples=40, deadline=None)
@given(
    norms=st.lists(st.floats(0.0, 1e4), min_size=1, max_size=12),
    clip=st.floats(1e-3, 10.0),
    drop=st.integers(0, 11),
    seed=st.integers(0, 2**31 - 1),
)
def test_clip_and_sum_bounds_every_contribution(
    norms: list[float], clip: float, drop: int, seed: int
) -> None:
    g = torch.Generator().manual_seed(seed)
    count = len(norms)
    a, b = torch.randn(count, 3, 4, generator=g), torch.randn(count, 5, generator=g)
    scale = torch.tensor(norms) / torch.sqrt(a.pow(2).sum((1, 2)) + b.pow(2).sum(1))
    grads = {"a": a * scale.view(-1, 1, 1), "b": b * scale.view(-1, 1)}
    total = clip_and_sum(grads, clip)
    drop %= count
    keep = torch.arange(count) != drop
    rest = clip_and_sum({k: v[keep] for k, v in grads.items()}, clip)
    assert l2(total, rest) <= clip * (1 + 1e-5)


def test_non_finite_gradients_contribute_zero() -> None:
    grads = {"w": torch.tensor([[3.0, 4.0], [math.nan, 1.0], [math.inf, 0.0], [3e37, 3e37]])}
    total = clip_and_sum(grads, 1.0)  # the last row's float32 norm overflows: dropped too
    torch.testing.assert_close(total["w"], torch.tensor([0.6, 0.8]), rtol=1e-5, atol=1e-6)
    big = clip_and_sum({"w": torch.tensor([[3e18, 4e18]])}, 2.0)  # huge but finite: clipped
    torch.testing.assert_close(big["w"], torch.tensor([1.2, 1.6]), rtol=1e-5, atol=1e-6)
    empty = clip_and_sum({"w": torch.zeros(0, 2)}, 1.0)
    assert empty["w"].shape == (2,) and float(empty["w"].abs().sum()) == 0.0


# --------------------------------------------------------------------------- noise and sampling


def test_noise_has_standard_deviation_sigma_clip_over_expected_batch() -> None:
    params = {"w": torch.zeros(200, 100, requires_grad=True)}
    optimizer = torch.optim.SGD(list(params.values()), lr=1.0)
    summed = {"w": torch.zeros(200, 100)}
    noisy_step(
        params,
        summed,
        clip=0.5,
        noise_multiplier=2.0,
        expected_batch_size=10.0,
        optimizer=optimizer,
        generator=make_generator(CPU, 3),
    )
    std = float(params["w"].detach().std())
    assert 0.097 < std < 0.103  # sigma * C / (q n) = 2 * 0.5 / 10
    assert abs(float(params["w"].detach().mean())) < 0.003


def test_generators_are_seeded_from_the_os() -> None:
    draws = {float(torch.rand(1, generator=make_generator(CPU))) for _ in range(4)}
    assert len(draws) == 4
    assert dp_train.os_seed() != dp_train.os_seed()


def test_poisson_batches_vary_and_empty_batches_still_step(tmp_path: Path) -> None:
    program, module = load_program(saved(export(MLP()), tmp_path / "m.pt2"))
    sizes = [len(dp_train.poisson_batch(1000, 0.05, make_generator(CPU, s))) for s in range(20)]
    assert len(set(sizes)) > 5 and 30 < np.mean(sizes) < 70
    x, y = data(20, seed=4)
    config = DPConfig(
        n=20,
        sample_rate=1e-9,
        expected_batch_size=20e-9 * 1.0,
        steps=3,
        epochs=1,
        lr=0.1,
        clip=1.0,
        noise_multiplier=1e-9,
        optimizer="sgd",
    )
    initial = params_of(program, 5)
    result = dp_train.train(
        module,
        initial,
        x,
        y,
        config,
        sample_generator=make_generator(CPU, 6),
        noise_generator=make_generator(CPU, 7),
    )
    assert result.steps == 3 and result.empty_batches == 3
    assert all(torch.isfinite(v).all() for v in result.params.values())


# --------------------------------------------------------------------------- refusals


def test_batch_norm_is_refused_with_what_to_use_instead(tmp_path: Path) -> None:
    violations = check_program(export(WithBatchNorm()))
    assert any(
        "BatchNorm couples the examples" in v and "GroupNorm or LayerNorm" in v for v in violations
    )
    assert any("buffers" in v for v in violations)  # every violation is collected
    train_mode = WithBatchNorm().train()
    batch = torch.export.Dim("batch", min=2, max=65536)
    program = torch.export.export(train_mode, (torch.zeros(4, D),), dynamic_shapes=({0: batch},))
    assert any("BatchNorm" in v for v in check_program(program))
    with pytest.raises(DPRefused, match="GroupNorm or LayerNorm"):
        load_program(saved(export(WithBatchNorm()), tmp_path / "bn.pt2"))


def test_buffers_and_large_constants_are_refused() -> None:
    assert any("keeps buffers ['shift']" in v for v in check_program(export(WithBuffer())))
    assert any("survive re-initialisation" in v for v in check_program(export(WithConstant())))
    assert check_program(export(MLP())) == []
    assert check_program(export(BatchCoupled())) == []


# --------------------------------------------------------------------------- re-initialisation


def test_training_never_starts_from_the_providers_weights(tmp_path: Path) -> None:
    """Two providers, two different (one malicious) initialisations: identical training."""
    honest = MLP()
    backdoored = MLP()
    with torch.no_grad():
        for p in backdoored.parameters():
            p.copy_(torch.arange(p.numel(), dtype=torch.float32).reshape(p.shape) * 1e3)
    runs = []
    for i, provider in enumerate((honest, backdoored)):
        program = export(provider)
        provided = {k: v.clone() for k, v in program.state_dict.items()}
        loaded, module = load_program(saved(program, tmp_path / f"m{i}.pt2"))
        initial = params_of(loaded, seed=11)
        assert all(not torch.equal(initial[k], provided[k]) for k in provided)
        x, y = data(30, seed=12)
        config = DPConfig(
            n=30,
            sample_rate=0.5,
            expected_batch_size=15.0,
            steps=4,
            epochs=1,
            lr=0.05,
            clip=1.0,
            noise_multiplier=1.0,
        )
        result = dp_train.train(
            module,
            initial,
            x,
            y,
            config,
            sample_generator=make_generator(CPU, 13),
            noise_generator=make_generator(CPU, 14),
        )
        runs.append(result.params)
    for name in runs[0]:
        torch.testing.assert_close(runs[0][name], runs[1][name], rtol=0, atol=0)
        assert torch.isfinite(runs[0][name]).all()  # the module's own (poisoned) state unused


def test_platform_init_rule() -> None:
    shapes = {
        "fc.weight": (torch.Size([50, 400]), torch.float32),
        "fc.bias": (torch.Size([50]), torch.float32),
        "norm.weight": (torch.Size([50]), torch.float32),
        "conv.weight": (torch.Size([8, 3, 5, 5]), torch.float32),
    }
    p = platform_init(shapes, make_generator(CPU), CPU)
    # float32 bounds: float32(0.05) is 0.05000000075, and a draw may land on it
    assert float(p["fc.weight"].abs().max()) <= np.float32(1 / math.sqrt(400))
    assert float(p["fc.weight"].std()) == pytest.approx(1 / math.sqrt(400) / math.sqrt(3), rel=0.05)
    assert float(p["conv.weight"].abs().max()) <= np.float32(1 / math.sqrt(75))
    assert torch.equal(p["fc.bias"], torch.zeros(50))
    assert torch.equal(p["norm.weight"], torch.ones(50))
    q = platform_init(shapes, make_generator(CPU), CPU)
    assert not torch.equal(p["fc.weight"], q["fc.weight"])  # fresh OS seed each time


# --------------------------------------------------------------------------- configuration


def test_device_selection() -> None:
    assert select_device("cpu", cuda_available=True).type == "cpu"
    assert select_device("auto", cuda_available=False).type == "cpu"
    assert select_device("auto", cuda_available=True).type == "cuda"
    assert select_device("cuda", cuda_available=True).type == "cuda"
    with pytest.raises(DPRefused, match="CUDA is not available"):
        select_device("cuda", cuda_available=False)


def test_config_is_parsed_strictly() -> None:
    good = {
        "format": 1,
        "n": 10,
        "sample_rate": 0.5,
        "expected_batch_size": 5.0,
        "steps": 3,
        "epochs": 1,
        "lr": 0.1,
        "clip": 1.0,
        "noise_multiplier": 1.0,
    }
    assert DPConfig.from_json(json.dumps(good)).steps == 3
    for change, needle in [
        ({"noise_multiplier": 0.0}, "no noise, no privacy"),
        ({"extra": 1}, "unknown keys"),
        ({"steps": "3"}, "steps is not a int"),
        ({"expected_batch_size": 6.0}, "sample_rate \\* n"),
        ({"device": "tpu"}, "device must be"),
        ({"clip": math.inf}, "not finite"),
        ({"label_smoothing": 1.0}, "label_smoothing must be in"),
    ]:
        with pytest.raises(DPRefused, match=needle):
            DPConfig.from_json(json.dumps({**good, **change}))


# --------------------------------------------------------------------------- the entry point


@pytest.fixture
def dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    out = {name: tmp_path / name for name in ("work", "data", "output")}
    for path in out.values():
        path.mkdir()
    monkeypatch.setattr(protocol, "WORK", out["work"])
    monkeypatch.setattr(protocol, "DATA", out["data"])
    monkeypatch.setattr(protocol, "OUTPUT", out["output"])
    return out


def test_main_trains_and_reports_the_plan(dirs: dict[str, Path]) -> None:
    program = export(MLP())
    torch.export.save(program, str(dirs["work"] / "model.pt2"))
    x, y = data(40, seed=20)
    np.savez(dirs["data"] / "train.npz", x=x.numpy(), y=y.numpy())
    plan = make_plan(
        DPSettings(
            epsilon=5.0,
            delta=1e-5,
            accountant="rdp",
            default_epochs=2,
            default_batch_size=10,
            batch_size=(1, 100),
        ),
        Hints(),
        n=40,
    )
    (dirs["work"] / "dp_config.json").write_bytes(plan.to_json())
    dp_train.main()
    weights = load_file(str(dirs["output"] / "model.safetensors"))
    assert {k: (tuple(v.shape), v.dtype) for k, v in weights.items()} == {
        k: (tuple(v.shape), v.dtype) for k, v in program.state_dict.items()
    }
    report = check_dp_report(plan, (dirs["output"] / "dp.json").read_bytes())
    assert report["steps"] == plan.steps == 8
    assert sorted(p.name for p in dirs["output"].iterdir()) == ["dp.json", "model.safetensors"]


def test_main_refuses_batch_norm_with_the_error_marker(
    dirs: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    torch.export.save(export(WithBatchNorm()), str(dirs["work"] / "model.pt2"))
    x, y = data(10, seed=21)
    np.savez(dirs["data"] / "train.npz", x=x.numpy(), y=y.numpy())
    config = {
        "format": 1,
        "n": 10,
        "sample_rate": 0.5,
        "expected_batch_size": 5.0,
        "steps": 2,
        "epochs": 1,
        "lr": 0.1,
        "clip": 1.0,
        "noise_multiplier": 1.0,
    }
    (dirs["work"] / "dp_config.json").write_text(json.dumps(config))
    with pytest.raises(SystemExit) as stop:
        dp_train.main()
    assert stop.value.code == protocol.EXIT_INVALID
    err = capsys.readouterr().err
    assert protocol.ERROR_MARKER + "DP retraining refused: BatchNorm couples the examples" in err
    assert "use GroupNorm or LayerNorm" in err
    assert list(dirs["output"].iterdir()) == []


# --------------------------------------------------------------------------- hostile archives


class _Payload:
    """Unpickling this creates `marker`: proof that code from the archive ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.marker), "w"))


Edit = Callable[[str, bytes], bytes]


def tampered(src: Path, dst: Path, edit: Edit, extra: dict[str, bytes] | None = None) -> str:
    """Copy the archive `src` to `dst`, passing every entry (name without root) to `edit`."""
    with zipfile.ZipFile(src) as archive, zipfile.ZipFile(dst, "w") as out:
        root = archive.namelist()[0].split("/", 1)[0]
        for name in archive.namelist():
            out.writestr(name, edit(name.split("/", 1)[1], archive.read(name)))
        for name, data in (extra or {}).items():
            out.writestr(f"{root}/{name}", data)
    return str(dst)


def _pickled_weight(marker: Path) -> Edit:
    def edit(name: str, data: bytes) -> bytes:
        if name.endswith("_weights_config.json"):
            config = json.loads(data)
            next(iter(config["config"].values()))["use_pickle"] = True
            return json.dumps(config).encode()
        if name == "data/weights/weight_0":
            return pickle.dumps(_Payload(marker))
        return data

    return edit


def _guard_code(marker: Path) -> Edit:
    def edit(name: str, data: bytes) -> bytes:
        if name.startswith("models/"):
            program = json.loads(data)
            program["guards_code"] = [f"open({str(marker)!r}, 'w') is not None"]
            return json.dumps(program).encode()
        return data

    return edit


def _sample_inputs(marker: Path) -> Edit:
    def edit(name: str, data: bytes) -> bytes:
        if name.startswith("data/sample_inputs/"):
            buffer = io.BytesIO()
            torch.save(_Payload(marker), buffer)  # fails weights_only: torch falls back
            return buffer.getvalue()
        return data

    return edit


def _sympy_expression(marker: Path) -> Edit:
    def edit(name: str, data: bytes) -> bytes:
        if name.startswith("models/"):
            text = data.decode().replace(
                "Symbol(", f"(open({str(marker)!r}, 'w') and 1)*Symbol(", 1
            )
            return text.encode()
        return data

    return edit


HOSTILE = {
    "pickled weight": (_pickled_weight, "is pickled"),
    "guard code": (_guard_code, "guard code"),
    "sample inputs": (_sample_inputs, "sample inputs do not load safely"),
    "sympy expression": (_sympy_expression, "shape expression sympy would eval"),
}


@pytest.mark.parametrize("attack", list(HOSTILE))
def test_hostile_archives_are_refused_before_torch_sees_them(tmp_path: Path, attack: str) -> None:
    make, reason = HOSTILE[attack]
    marker = tmp_path / "ran"
    good = Path(saved(export(MLP()), tmp_path / "good.pt2"))
    assert check_archive(str(good)) == []
    evil = tampered(good, tmp_path / "evil.pt2", make(marker))
    with pytest.raises(DPRefused, match=reason):
        load_program(evil)
    assert not marker.exists()


@pytest.mark.parametrize("attack", ["pickled weight", "guard code", "sympy expression"])
def test_plain_torch_export_load_runs_code_from_hostile_archives(
    tmp_path: Path, attack: str
) -> None:
    """Why check_archive exists. If this starts failing, torch fixed its loader: keep the check."""
    make, _ = HOSTILE[attack]
    marker = tmp_path / "ran"
    good = Path(saved(export(MLP()), tmp_path / "good.pt2"))
    evil = tampered(good, tmp_path / "evil.pt2", make(marker))
    with contextlib.suppress(Exception):
        torch.export.load(evil).module()(torch.zeros(2, D))
    assert marker.exists()


def test_unexpected_archive_entries_are_refused(tmp_path: Path) -> None:
    good = Path(saved(export(MLP()), tmp_path / "good.pt2"))
    legacy = tampered(good, tmp_path / "legacy.pt2", lambda n, d: d, {"data/weights/model.pt": b""})
    assert any("unexpected entry" in p for p in check_archive(legacy))
    (tmp_path / "junk.pt2").write_bytes(b"not a zip")
    assert "not a readable" in check_archive(str(tmp_path / "junk.pt2"))[0]
    assert check_archive(saved(export(BatchCoupled()), tmp_path / "coupled.pt2")) == []
