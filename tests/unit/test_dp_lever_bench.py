"""bench/dp_levers.py's closed-form DP-SGD is the production trainer's, on the example.

The lever bench computes the clipped gradient sum of the digits MLP from ghost norms
instead of vmap; its numbers stand for `sandbox.guest.dp_train` only if the sums
agree on the exported example, with and without label smoothing, with some examples
clipped and some not. Its noise schedule must keep the run's privacy: at q = 1 the
steps compose as one Gaussian mechanism, so the sum of 1 / sigma_t^2 must equal the
constant schedule's.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from bench import dp_levers
from bench.dp import export_example, load_example
from sandbox.guest import dp_train


@pytest.fixture(scope="module")
def example(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    directory = Path(tmp_path_factory.mktemp("digits"))
    program, module = dp_train.load_program(str(export_example(directory)))
    shapes = dp_train.parameter_shapes(program)
    generator = torch.Generator().manual_seed(7)
    params = dp_train.platform_init(shapes, generator, torch.device("cpu"))
    # a trained-looking output layer, so the first layer's gradients are not zero
    params["net.3.weight"] = torch.randn(params["net.3.weight"].shape, generator=generator)
    return module, params


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_closed_form_clipped_sum_matches_the_trainer(
    example: tuple[torch.nn.Module, dict[str, torch.Tensor]], smoothing: float
) -> None:
    module, params = example
    train, _ = load_example()
    x, y = torch.from_numpy(train.x[:200]), torch.from_numpy(train.y[:200])
    grads = dp_train.per_example_grads(module, params, {}, x, y, 256, smoothing)
    norms = torch.stack([g.reshape(200, -1).norm(dim=1) for g in grads.values()]).norm(dim=0)
    clip = float(norms.median())  # half the examples clipped, half not
    assert float(norms.min()) < clip < float(norms.max())
    expected = dp_train.clipped_sum(module, params, {}, x, y, clip, 256, smoothing)
    got = dp_levers.clipped_sum(params, x, y, clip, smoothing)
    assert set(got) == set(expected)
    for name, value in expected.items():
        scale = float(value.abs().max())
        assert scale > 0
        assert float((got[name] - value).abs().max()) <= 1e-4 * scale, name


@pytest.mark.parametrize("ratio", [1 / 3, 2.0])
def test_noise_schedule_keeps_the_gaussian_mechanisms_mu(ratio: float) -> None:
    constant = dp_levers.Lever(epsilon=1.0, steps=10)
    scheduled = dp_levers.Lever(epsilon=1.0, steps=10, noise_ratio=ratio)
    flat, varying = dp_levers.sigmas(constant), dp_levers.sigmas(scheduled)
    assert math.isclose(sum(1 / s**2 for s in varying), sum(1 / s**2 for s in flat), rel_tol=1e-9)
    assert math.isclose(varying[-1] / varying[0], ratio, rel_tol=1e-9)
    with pytest.raises(ValueError, match="q = 1"):
        dp_levers.sigmas(dp_levers.Lever(q=0.5, noise_ratio=ratio))


def test_a_short_run_learns_and_the_noise_is_added() -> None:
    """Ten steps at epsilon 1 (sigma ~12): well above chance (10%) without noise, and
    the noise changes the model (the same seed with and without it)."""
    quiet = dp_levers.run(dp_levers.Lever(epsilon=1.0, steps=10, lr=4.0, noise=False), 1)
    noisy = dp_levers.run(dp_levers.Lever(epsilon=1.0, steps=10, lr=4.0), 1)
    assert 0.6 <= quiet <= 0.97
    assert 0.3 <= noisy <= 0.97
    assert noisy != quiet
