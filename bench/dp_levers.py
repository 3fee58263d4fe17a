"""DP-SGD levers on digits in seconds: a closed-form copy of the example MLP's DP-SGD.

`bench/dp.py` runs the production trainer (`sandbox.guest.dp_train` on the exported
graph: vmap per-example gradients until 2026-12-06, 1-3 s of CPU a run; ghost norms
through vmap since, 0.15-0.5 s). Comparing levers needs many seeds, so this module
trains the same 64-128-10 MLP with the same DP-SGD - every
example in every step (or Poisson sampling), each example's whole gradient clipped
to C, Gaussian noise sigma * C per coordinate, divided by q * n, SGD with momentum as
torch.optim.SGD does it, the iterate average with its (1+t)/(10+t) ramp, the zero
output layer, label smoothing, sigma from the PRV accountant - but computes each
example's gradient norm from its factors (|a b^T| = |a| |b|) and the clipped sum as
matrix products: about 0.2 s a run. `tests/unit/test_dp_lever_bench.py` checks its
clipped sum against `dp_train.clipped_sum` on the exported example.

Each lever is a field of `Lever`; all cost no privacy (sigma depends only on epsilon,
q and the steps; everything else post-processes the noisy sums or is fixed before
the data is seen), except `precond`, which uses the true input covariance and is an
upper bound for any data-independent preconditioner, and `linear`, a reference: a
650-parameter linear softmax on the pixels under the same DP-SGD, not the declared
architecture. Seeds are fixed and shared by every setting (paired comparisons).

    .venv/bin/python -m bench.dp_levers [--seeds 24] [--epsilon 1 3] [--quick]
"""

from __future__ import annotations

import argparse
import functools
import math
import statistics
from dataclasses import dataclass, replace

import torch

from bench.dp import DELTA, load_example
from sandbox.dp.accountant import calibrate

HIDDEN, CLASSES, FEATURES = 128, 10, 64
INPUT_SCALE = 1.0 / 16.0  # examples/digits_mlp/model.py scales inside forward


@dataclass(frozen=True)
class Lever:
    epsilon: float = 3.0
    steps: int = 30
    q: float = 1.0  # < 1: Poisson sampling
    lr: float = 4.0
    clip: float = 1.0
    momentum: float = 0.5
    ema: float = 0.95
    label_smoothing: float = 0.0
    optimizer: str = "sgd"  # sgd | adam | adambc (second moment minus the noise variance)
    adam_eps: float = 1e-8  # adambc: the floor of the corrected second moment
    subspace: str = "none"  # W1's update: none | out (W1_0 + B A, B 128 x r) | in | rows
    rank: int = 128
    split: float | None = None  # per-layer clipping: share of C^2 for the first layer
    lr_first: float = 1.0  # lr multiplier of the first layer (W1 or A, b1)
    lr_bias: float = 1.0  # lr multiplier of the biases
    noise_ratio: float = 1.0  # sigma of the last step / the first, same GDP mu (q = 1)
    init: str = "uniform"  # uniform (the platform's rule) | orth
    hidden_bias: float = 0.0  # initial b1
    row_norm: float = 0.0  # > 0: project W1's rows into this L2 ball after each step
    precond: float = 0.0  # > 0: W1's gradient times (Sigma + precond * mean eig)^-1
    noise: bool = True  # False: the same run without noise (a ceiling)


@dataclass(frozen=True)
class Data:
    x: torch.Tensor  # scaled as the graph scales it
    y: torch.Tensor
    xt: torch.Tensor
    yt: torch.Tensor


@functools.lru_cache(maxsize=1)
def digits() -> Data:
    train, holdout = load_example()
    return Data(
        torch.from_numpy(train.x) * INPUT_SCALE,
        torch.from_numpy(train.y),
        torch.from_numpy(holdout.x) * INPUT_SCALE,
        torch.from_numpy(holdout.y),
    )


@functools.cache
def sigma(epsilon: float, q: float, steps: int) -> float:
    return calibrate(epsilon, DELTA, q, steps, "prv")


def sigmas(lever: Lever) -> list[float]:
    """Per-step noise multipliers: constant, or geometric at the same GDP mu (q = 1,
    where the steps compose as one Gaussian mechanism: mu^2 = sum 1 / sigma_t^2)."""
    base = sigma(lever.epsilon, lever.q, lever.steps)
    if lever.noise_ratio == 1.0:
        return [base] * lever.steps
    if lever.q != 1.0:
        raise ValueError("a noise schedule needs q = 1")
    shape = [lever.noise_ratio ** (t / max(1, lever.steps - 1)) for t in range(lever.steps)]
    scale = math.sqrt(sum(1 / s**2 for s in shape) * base**2 / lever.steps)
    return [scale * s for s in shape]


def targets(y: torch.Tensor, smoothing: float) -> torch.Tensor:
    t = torch.full((len(y), CLASSES), smoothing / CLASSES)
    t[torch.arange(len(y)), y] += 1 - smoothing
    return t


def clipped_sum(
    params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor, clip: float, smoothing: float
) -> dict[str, torch.Tensor]:
    """The sum of per-example gradients clipped jointly to `clip`, from their factors.

    `params` use the exported graph's names (`net.1.*`, `net.3.*`) and `x` is raw
    pixels, so this is comparable with `dp_train.clipped_sum` on the example.
    """
    w1, b1, w2, b2 = (
        params[k] for k in ("net.1.weight", "net.1.bias", "net.3.weight", "net.3.bias")
    )
    xs = x * INPUT_SCALE
    z1 = xs @ w1.T + b1
    h = torch.relu(z1)
    d2 = torch.softmax(h @ w2.T + b2, 1) - targets(y, smoothing)
    d1 = (d2 @ w2) * (z1 > 0).float()
    d2n = (d2 * d2).sum(1)
    d1n = (d1 * d1).sum(1)
    norms = (d1n * (xs * xs).sum(1) + d1n + d2n * (h * h).sum(1) + d2n).sqrt()
    f = (clip / (norms + 1e-6)).clamp(max=1.0)
    return {
        "net.1.weight": (d1 * f[:, None]).T @ xs,
        "net.1.bias": d1.T @ f,
        "net.3.weight": (d2 * f[:, None]).T @ h,
        "net.3.bias": d2.T @ f,
    }


def _orthonormal(rows: int, cols: int, g: torch.Generator) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(max(rows, cols), min(rows, cols), generator=g))
    return q if rows >= cols else q.T


@functools.cache
def _preconditioner(lam: float) -> torch.Tensor:
    x = digits().x
    cov = x.T @ x / x.shape[0]
    eig = torch.linalg.eigvalsh(cov).mean()
    p = torch.linalg.inv(cov + lam * eig * torch.eye(FEATURES))
    return p / torch.linalg.eigvalsh(p).mean()


def run(lever: Lever, seed: int) -> float:
    """Holdout accuracy of one DP-SGD run of the example MLP (all randomness from `seed`)."""
    d = digits()
    n = d.x.shape[0]
    g = torch.Generator().manual_seed(seed)
    bound = 1.0 / math.sqrt(FEATURES)
    if lever.init == "orth":
        w0 = _orthonormal(HIDDEN, FEATURES, g) * bound * math.sqrt(FEATURES / 3)
    else:
        w0 = (torch.rand(HIDDEN, FEATURES, generator=g) * 2 - 1) * bound
    r = lever.rank
    basis = torch.empty(0)
    if lever.subspace == "out":
        basis, a = _orthonormal(HIDDEN, r, g), torch.zeros(r, FEATURES)
    elif lever.subspace == "in":
        basis, a = _orthonormal(r, FEATURES, g), torch.zeros(HIDDEN, r)
    elif lever.subspace == "rows":
        a = torch.zeros(r, FEATURES)
    else:
        a = torch.zeros(HIDDEN, FEATURES)
    b1 = torch.full((HIDDEN,), lever.hidden_bias)
    w2, b2 = torch.zeros(CLASSES, HIDDEN), torch.zeros(CLASSES)
    params = [a, b1, w2, b2]

    def first() -> torch.Tensor:
        if lever.subspace == "out":
            return w0 + basis @ a
        if lever.subspace == "in":
            return w0 + a @ basis
        if lever.subspace == "rows":
            return torch.cat([w0[:r] + a, w0[r:]])
        return w0 + a

    noise = sigmas(lever)
    moments = [torch.zeros_like(p) for p in params]
    seconds = [torch.zeros_like(p) for p in params]
    average = [first().clone(), b1.clone(), w2.clone(), b2.clone()]
    lrs = [lever.lr_first, lever.lr_first * lever.lr_bias, 1.0, lever.lr_bias]
    c = lever.clip
    for t in range(lever.steps):
        if lever.q < 1:
            idx = (torch.rand(n, generator=g) < lever.q).nonzero().squeeze(1)
            x, y = d.x[idx], d.y[idx]
        else:
            x, y = d.x, d.y
        z1 = x @ first().T + b1
        h = torch.relu(z1)
        d2 = torch.softmax(h @ w2.T + b2, 1) - targets(y, lever.label_smoothing)
        d1 = (d2 @ w2) * (z1 > 0).float()
        if lever.subspace == "out":
            d1a, xa = d1 @ basis, x
        elif lever.subspace == "in":
            d1a, xa = d1, x @ basis.T
        elif lever.subspace == "rows":
            d1a, xa = d1[:, :r], x
        else:
            d1a, xa = d1, x
        d2n = (d2 * d2).sum(1)
        one = (d1a * d1a).sum(1) * (xa * xa).sum(1) + (d1 * d1).sum(1)
        two = d2n * (h * h).sum(1) + d2n
        if lever.split is None:
            f1 = f2 = (c / ((one + two).sqrt() + 1e-6)).clamp(max=1.0)
        else:
            f1 = (c * math.sqrt(lever.split) / (one.sqrt() + 1e-6)).clamp(max=1.0)
            f2 = (c * math.sqrt(1 - lever.split) / (two.sqrt() + 1e-6)).clamp(max=1.0)
        grads = [(d1a * f1[:, None]).T @ xa, d1.T @ f1, (d2 * f2[:, None]).T @ h, d2.T @ f2]
        scale = noise[t] * c if lever.noise else 0.0
        grads = [(gr + scale * torch.randn(gr.shape, generator=g)) / (lever.q * n) for gr in grads]
        if lever.precond > 0 and lever.subspace == "none":
            grads[0] = grads[0] @ _preconditioner(lever.precond)
        for i, (p, m, v, gr) in enumerate(zip(params, moments, seconds, grads, strict=True)):
            if lever.optimizer == "sgd":
                m.mul_(lever.momentum).add_(gr)
                p.sub_(lever.lr * lrs[i] * m)
                continue
            m.mul_(0.9).add_(gr, alpha=0.1)
            v.mul_(0.999).addcmul_(gr, gr, value=0.001)
            mh, vh = m / (1 - 0.9 ** (t + 1)), v / (1 - 0.999 ** (t + 1))
            if lever.optimizer == "adambc":  # Tang et al. 2024: remove the noise's variance
                vh = (vh - (scale / (lever.q * n)) ** 2).clamp(min=lever.adam_eps)
                p.sub_(lever.lr * lrs[i] * mh / vh.sqrt())
            else:
                p.sub_(lever.lr * lrs[i] * mh / (vh.sqrt() + lever.adam_eps))
        if lever.row_norm > 0 and lever.subspace == "none":
            w = w0 + a
            a.copy_(w * (lever.row_norm / w.norm(dim=1, keepdim=True)).clamp(max=1.0) - w0)
        decay = min(lever.ema, (t + 1) / (t + 10)) if lever.ema > 0 else 0.0
        for avg, cur in zip(average, [first(), b1, w2, b2], strict=True):
            avg.mul_(decay).add_(cur, alpha=1 - decay)
    w1, c1, v2, c2 = average
    logits = torch.relu(d.xt @ w1.T + c1) @ v2.T + c2
    return float((logits.argmax(1) == d.yt).float().mean())


def run_linear(lever: Lever, seed: int) -> float:
    """Reference: a linear softmax on the pixels (650 parameters) under the same DP-SGD."""
    d = digits()
    n = d.x.shape[0]
    g = torch.Generator().manual_seed(seed)
    x = torch.cat([d.x, torch.ones(n, 1)], 1)
    xt = torch.cat([d.xt, torch.ones(len(d.xt), 1)], 1)
    w = torch.zeros(CLASSES, FEATURES + 1)
    m, average = torch.zeros_like(w), w.clone()
    s = sigma(lever.epsilon, 1.0, lever.steps)
    for t in range(lever.steps):
        dz = torch.softmax(x @ w.T, 1) - targets(d.y, lever.label_smoothing)
        f = (lever.clip / (dz.norm(dim=1) * x.norm(dim=1) + 1e-6)).clamp(max=1.0)
        noisy = (dz * f[:, None]).T @ x + s * lever.clip * torch.randn(w.shape, generator=g)
        m.mul_(lever.momentum).add_(noisy / n)
        w -= lever.lr * m
        decay = min(lever.ema, (t + 1) / (t + 10))
        average.mul_(decay).add_(w, alpha=1 - decay)
    return float(((xt @ average.T).argmax(1) == d.yt).float().mean())


# The production rows (bench/dp.py's TUNED) and the levers of the third round.
ROWS = {
    1.0: Lever(epsilon=1.0, steps=30, lr=1.75),
    3.0: Lever(epsilon=3.0, steps=30, lr=4.0),
    8.0: Lever(epsilon=8.0, steps=100, lr=3.0, ema=0.99, label_smoothing=0.1),
}


def levers(row: Lever) -> dict[str, Lever]:
    lr = row.lr
    return {
        "row (bench/dp.py TUNED)": row,
        "60 steps at lr / 1.6": replace(row, steps=2 * row.steps, lr=lr / 1.6),
        "without noise (ceiling)": replace(row, noise=False),
        "W1 update in a random 32-dim subspace": replace(row, subspace="out", rank=32),
        "per-layer clipping, split 0.7": replace(row, split=0.7),
        "normalised SGD: C 0.3, lr / 0.3": replace(row, clip=0.3, lr=lr / 0.3),
        "biases at lr / 4": replace(row, lr_bias=0.25),
        "orthogonal init": replace(row, init="orth"),
        "noise decaying 3x over the run": replace(row, noise_ratio=1 / 3),
        "DP-Adam, lr 0.03": replace(row, optimizer="adam", lr=0.03),
        "DP-AdamBC, lr 0.01, floor 1e-6": replace(row, optimizer="adambc", lr=0.01, adam_eps=1e-6),
        "true-covariance preconditioner (bound)": replace(row, precond=1.0),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=24)
    parser.add_argument("--epsilon", type=float, nargs="+", default=[1.0, 3.0])
    parser.add_argument("--quick", action="store_true", help="only the row and its ceiling")
    args = parser.parse_args()
    torch.set_num_threads(1)
    seeds = range(5000, 5000 + args.seeds)
    print(f"digits, delta {DELTA:g}, PRV, {args.seeds} paired seeds; holdout % mean ± sd\n")
    print("| epsilon | setting | accuracy % |")
    print("|---:|---|---:|")
    for epsilon in args.epsilon:
        row = ROWS[epsilon]
        settings = levers(row)
        if args.quick:
            settings = {k: v for k, v in list(settings.items())[:3]}
        for name, lever in settings.items():
            accs = [run(lever, s) * 100 for s in seeds]
            mean, sd = statistics.mean(accs), statistics.stdev(accs)
            print(f"| {epsilon:g} | {name} | {mean:.1f} ± {sd:.1f} |")
        for lr in (1.0, 2.0, 4.0):
            lin = [run_linear(replace(row, lr=lr), s) * 100 for s in seeds]
            mean, sd = statistics.mean(lin), statistics.stdev(lin)
            print(f"| {epsilon:g} | reference: linear softmax, lr {lr:g} | {mean:.1f} ± {sd:.1f} |")


if __name__ == "__main__":
    main()
