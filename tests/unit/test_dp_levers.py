"""The utility levers of DP retraining cost no privacy (sandbox.guest.dp_train).

- the iterate average (EMA) is post-processing: the released average is a function
  of the noisy iterates alone, equal to averaging the iterates of the same run;
- the learning-rate schedule is a function of the step number and the plan;
- the output layer that starts at zero is found from the graph's structure;
- every step the accountant counts is run (one Poisson batch and one noise draw
  each), and the epsilon of the steps run is the plan's epsilon.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from sandbox.dp.accountant import spent
from sandbox.dp.plan import DPSettings, Hints, make_plan
from sandbox.guest import dp_train
from sandbox.guest.dp_train import (
    DPConfig,
    DPRefused,
    IterateAverage,
    load_program,
    lr_at,
    make_generator,
    output_weights,
    parameter_shapes,
    platform_init,
)
from tests.unit.test_dp_train import MLP, D, K, export

CPU = torch.device("cpu")


class TwoHeads(nn.Module):
    """Two output layers summed; registered in an order unlike the data flow."""

    def __init__(self) -> None:
        super().__init__()
        self.head_a = nn.Linear(16, K)
        self.body = nn.Linear(D, 16)
        self.head_b = nn.Linear(16, K, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.body(x))
        return self.head_a(h) + self.head_b(h)


class NormLast(nn.Module):
    """The output passes through a LayerNorm: its scale is 1-D and is not zeroed."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(D, K)
        self.norm = nn.LayerNorm(K)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.fc(x))


class Tied(nn.Module):
    """The input projection's weight is reused (transposed) by the output layer."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(D, 16, bias=False)
        self.head = nn.Linear(16, K)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.proj(x))
        back = h @ self.proj.weight  # [batch, D]: the tied use
        return self.head(h) + back[:, :K]


def data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, D, generator=g), torch.randint(0, K, (n,), generator=g)


def config(**changes: object) -> DPConfig:
    base = DPConfig(
        n=40,
        sample_rate=0.5,
        expected_batch_size=20.0,
        steps=6,
        epochs=3,
        lr=0.1,
        clip=1.0,
        noise_multiplier=1.0,
        optimizer="sgd",
        momentum=0.9,
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def loaded(module: nn.Module, tmp_path: Path) -> tuple[torch.export.ExportedProgram, nn.Module]:
    path = tmp_path / "model.pt2"
    torch.export.save(export(module), str(path))
    return load_program(str(path))


def run(module: nn.Module, initial: dict[str, torch.Tensor], cfg: DPConfig) -> dp_train.TrainResult:
    x, y = data(cfg.n, seed=5)
    return dp_train.train(
        module,
        initial,
        x,
        y,
        cfg,
        sample_generator=make_generator(CPU, 6),
        noise_generator=make_generator(CPU, 7),
    )


# --------------------------------------------------------------------------- EMA


def test_the_released_average_is_the_average_of_the_noisy_iterates(tmp_path: Path) -> None:
    """Post-processing: the EMA run equals averaging, outside training, the iterates of
    the same run (same seeds) taken one prefix at a time: it sees nothing else."""
    program, module = loaded(MLP(), tmp_path)
    initial = platform_init(parameter_shapes(program), make_generator(CPU, 1), CPU)
    steps, decay = 6, 0.8
    iterates = [run(module, initial, config(steps=k)).params for k in range(1, steps + 1)]
    average = IterateAverage(initial, decay)
    for params in iterates:
        average.update(params)
    released = run(module, initial, config(steps=steps, ema=decay)).params
    last = iterates[-1]
    for name in released:
        torch.testing.assert_close(released[name], average.average[name], rtol=1e-5, atol=1e-6)
        assert not torch.allclose(released[name], last[name])  # it did average


def test_iterate_average_takes_parameters_only() -> None:
    """The decay ramps up ((1 + t) / (10 + t)), then stays at the configured value."""
    start = {"w": torch.zeros(2)}
    average = IterateAverage(start, 0.5)
    average.update({"w": torch.ones(2)})  # decay 1/10: 0.9 of the new value
    torch.testing.assert_close(average.average["w"], torch.full((2,), 0.9))
    for _ in range(20):
        average.update({"w": torch.full((2,), 2.0)})
    assert average.decay == 0.5
    torch.testing.assert_close(average.average["w"], torch.full((2,), 2.0), atol=1e-5, rtol=0)
    assert list(IterateAverage.update.__annotations__) == ["params", "return"]


# --------------------------------------------------------------------------- schedule


def test_warm_up_then_cosine_schedule() -> None:
    cfg = config(steps=10, lr=1.0, warmup_steps=4)
    assert [lr_at(t, cfg) for t in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert [lr_at(t, cfg) for t in range(4, 10)] == [1.0] * 6
    cosine = config(steps=10, lr=2.0, schedule="cosine")
    assert lr_at(0, cosine) == 2.0
    assert lr_at(5, cosine) == pytest.approx(1.0)
    assert lr_at(9, cosine) == pytest.approx(2.0 * 0.5 * (1 + math.cos(math.pi * 0.9)))
    assert all(lr_at(t, cosine) > 0 for t in range(10))  # the last step still moves


def test_the_schedule_is_applied_to_the_optimizer(tmp_path: Path) -> None:
    """SGD without momentum, no noise contribution from data: the first step's size
    is the warmed-up learning rate; a zero-lr step would not move at all."""
    program, module = loaded(MLP(), tmp_path)
    initial = platform_init(parameter_shapes(program), make_generator(CPU, 2), CPU)
    plain = run(module, initial, config(steps=1, momentum=0.0)).params
    warm = run(module, initial, config(steps=1, momentum=0.0, warmup_steps=4)).params
    for name in initial:
        moved_plain = plain[name] - initial[name]
        moved_warm = warm[name] - initial[name]
        torch.testing.assert_close(moved_warm, moved_plain / 4, rtol=1e-4, atol=1e-7)


# --------------------------------------------------------------------------- zero last layer


def test_output_weights_come_from_the_graph(tmp_path: Path) -> None:
    assert output_weights(loaded(MLP(), tmp_path)[0]) == {"net.2.weight"}
    assert output_weights(loaded(TwoHeads(), tmp_path)[0]) == {"head_a.weight", "head_b.weight"}
    assert output_weights(loaded(NormLast(), tmp_path)[0]) == frozenset()
    # proj.weight feeds an output-side matmul but also the input layer: not zeroed.
    assert output_weights(loaded(Tied(), tmp_path)[0]) == {"head.weight"}


def test_zero_init_of_the_output_layer_is_the_platforms(tmp_path: Path) -> None:
    program, _ = loaded(MLP(), tmp_path)
    shapes = parameter_shapes(program)
    zero = output_weights(program)
    params = platform_init(shapes, make_generator(CPU, 3), CPU, zero)
    plain = platform_init(shapes, make_generator(CPU, 3), CPU)
    assert torch.equal(params["net.2.weight"], torch.zeros(K, 16))
    assert torch.equal(params["net.0.weight"], plain["net.0.weight"])  # same rule elsewhere
    assert float(params["net.0.weight"].abs().max()) > 0


# --------------------------------------------------------------------------- accounting


def test_every_counted_step_runs_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The plan's steps (what the accountant composed) = Poisson batches drawn = noisy
    updates made = steps reported, with the levers on, also when sampling leaves
    batches empty; the epsilon of the steps run is the plan's."""
    plan = make_plan(
        DPSettings(
            epsilon=4.0,
            delta=1e-5,
            accountant="rdp",
            default_epochs=5,
            default_batch_size=4096,  # capped at n: q = 1 (RDP at q < 1 takes ~10 s here)
            warmup_fraction=0.3,
            schedule="cosine",
            ema=0.9,
            init_last="zero",
        ),
        Hints(),
        n=40,
    )
    counts = {"batches": 0, "steps": 0, "empty": 0}
    real_batch, real_step = dp_train.poisson_batch, dp_train.noisy_step

    def counted_batch(*args: object, **kwargs: object) -> torch.Tensor:
        counts["batches"] += 1
        batch = real_batch(*args, **kwargs)  # type: ignore[arg-type]
        counts["empty"] += batch.numel() == 0
        return batch

    def counted_step(*args: object, **kwargs: object) -> None:
        counts["steps"] += 1
        real_step(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(dp_train, "poisson_batch", counted_batch)
    monkeypatch.setattr(dp_train, "noisy_step", counted_step)
    program, module = loaded(MLP(), tmp_path)
    initial = platform_init(
        parameter_shapes(program), make_generator(CPU, 4), CPU, output_weights(program)
    )
    cfg = DPConfig.from_json(plan.to_json())
    assert (cfg.warmup_steps, cfg.schedule, cfg.ema, cfg.init_last) == (2, "cosine", 0.9, "zero")
    result = run(module, initial, cfg)
    assert plan.steps == cfg.steps == result.steps == counts["batches"] == counts["steps"] == 5
    ran = spent(cfg.noise_multiplier, cfg.sample_rate, counts["steps"], plan.delta, "rdp")
    assert ran == pytest.approx(plan.epsilon, rel=1e-9) and ran <= 4.0
    # Sparse Poisson batches: the empty ones are steps too (noise only), counted alike.
    counts.update(batches=0, steps=0, empty=0)
    sparse = config(n=40, sample_rate=0.02, expected_batch_size=0.8, steps=30, ema=0.9)
    result = run(module, initial, sparse)
    assert result.steps == counts["batches"] == counts["steps"] == 30
    assert counts["empty"] == result.empty_batches >= 1


def test_lever_settings_are_checked() -> None:
    for change, needle in [
        ({"ema": 1.0}, "ema must be in"),
        ({"schedule": "step"}, "schedule must be one of"),
        ({"init_last": "provider"}, "init_last must be one of"),
        ({"warmup_steps": -1}, "warmup_steps must be in"),
    ]:
        with pytest.raises(DPRefused, match=needle):
            config(**change).check()


def test_the_container_entry_runs_the_levers_and_reports_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """main() with the policy's levers on: the plan's checks pass, dp.json says what ran."""
    import numpy as np
    from safetensors.torch import load_file

    from sandbox.dp.plan import check_dp_report
    from sandbox.guest import protocol

    dirs = {name: tmp_path / name for name in ("work", "data", "output")}
    for name, path in dirs.items():
        path.mkdir()
        monkeypatch.setattr(protocol, name.upper(), path)
    torch.export.save(export(MLP()), str(dirs["work"] / "model.pt2"))
    x, y = data(40, seed=8)
    np.savez(dirs["data"] / "train.npz", x=x.numpy(), y=y.numpy())
    plan = make_plan(
        DPSettings(
            epsilon=5.0,
            delta=1e-5,
            accountant="rdp",
            default_epochs=3,
            default_batch_size=4096,
            ema=0.95,
            init_last="zero",
            warmup_fraction=0.5,
        ),
        Hints(),
        n=40,
    )
    assert (plan.sample_rate, plan.steps, plan.warmup_steps) == (1.0, 3, 2)
    (dirs["work"] / "dp_config.json").write_bytes(plan.to_json())
    dp_train.main()
    report = check_dp_report(plan, (dirs["output"] / "dp.json").read_bytes())
    assert (report["ema"], report["init_last"], report["warmup_steps"]) == (0.95, "zero", 2)
    weights = load_file(str(dirs["output"] / "model.safetensors"))
    assert all(torch.isfinite(w).all() for w in weights.values())
    assert float(weights["net.2.weight"].abs().max()) > 0  # it started at zero and learned
