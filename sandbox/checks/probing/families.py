"""Out-of-distribution query families for canary-query probing.

Song et al.'s black-box capacity-abuse attack trains the model to give chosen
labels on synthetic inputs the provider can regenerate (a seeded PRNG), then reads
the labels back by querying the released model. A model that has memorised
arbitrary labels on a region of input space behaves there unlike an honest model:
its predictions spread over many classes and flip under tiny perturbations, where an
honest model extrapolates smoothly into one or two classes. These families probe
such regions. The families cover the attacker's own construction (`prng`) and its
neighbours, so an attacker who uses another generator still lands in ground the
families have covered; the benchmark measures that with a generator that is not
one of them.

Every family is a deterministic function of (training inputs, seed, n): the pipeline
draws the seed from the OS CSPRNG so a provider cannot predict the probes, and the
honest-corpus calibration draws a fresh seed per model, so the thresholds hold
whatever the seed is.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[np.float32]

#: Relative size of the perturbation (per feature, times the feature's training range).
PERTURBATION_SCALE: Final = 0.02


@dataclass(frozen=True)
class InputDomain:
    """What the families need to know about the training inputs."""

    low: Array  # per-feature minimum over the training split, shape input_shape
    high: Array  # per-feature maximum
    mean: Array
    std: Array
    integral: bool  # every training value is an integer (pixel intensities, counts)
    x_train: Array  # for the derived families (patch-shuffled, mixed)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.low.shape)

    @property
    def span(self) -> Array:
        return (self.high - self.low).astype(np.float32)


def input_domain(x_train: npt.NDArray[np.floating]) -> InputDomain:
    """Per-feature range and moments of the training split (no copies of records kept
    beyond the split itself, which the platform already holds)."""
    x = np.asarray(x_train, dtype=np.float32)
    if x.ndim < 2 or len(x) < 2:
        raise ValueError("probing needs at least two training inputs of shape (n, ...)")
    finite = np.isfinite(x).all()
    if not finite:
        raise ValueError("training inputs contain NaN or Inf; the dataset check should refuse them")
    return InputDomain(
        low=x.min(axis=0),
        high=x.max(axis=0),
        mean=x.mean(axis=0),
        std=x.std(axis=0),
        integral=bool(np.all(x == np.round(x))),
        x_train=x,
    )


def _uniform(domain: InputDomain, rng: np.random.Generator, n: int) -> Array:
    u = rng.random((n, *domain.input_shape), dtype=np.float32)
    return domain.low + u * domain.span


def _gaussian(domain: InputDomain, rng: np.random.Generator, n: int) -> Array:
    z = rng.standard_normal((n, *domain.input_shape), dtype=np.float32)
    return np.clip(domain.mean + z * domain.std, domain.low, domain.high)


def _sparse(domain: InputDomain, rng: np.random.Generator, n: int) -> Array:
    """Background at each feature's minimum, about one feature in eight at its maximum."""
    on = rng.random((n, *domain.input_shape)) < 0.125
    return np.where(on, domain.high, domain.low).astype(np.float32)


def _binary(domain: InputDomain, rng: np.random.Generator, n: int) -> Array:
    on = rng.random((n, *domain.input_shape)) < 0.5
    return np.where(on, domain.high, domain.low).astype(np.float32)


def _prng(domain: InputDomain, rng: np.random.Generator, n: int) -> Array:
    """As the paper's attacker makes them: input i from a PRNG seeded with (seed, i),
    each feature uniform over its range on the data's own grid (integers for pixel
    data, else 256 levels)."""
    base = int(rng.integers(1 << 62))
    levels = np.where(domain.integral, domain.span + 1, 256.0).astype(np.float32)
    step = np.where(levels > 1, domain.span / np.maximum(levels - 1, 1), 0).astype(np.float32)
    out = np.empty((n, *domain.input_shape), dtype=np.float32)
    for i in range(n):
        g = np.random.default_rng([base, i])
        k = np.floor(g.random(domain.input_shape) * levels)
        out[i] = domain.low + np.minimum(k, levels - 1) * step
    return out


def _patch_shuffle(domain: InputDomain, rng: np.random.Generator, n: int) -> Array:
    """Training inputs with their patches permuted (square images: 2-D patches of a
    quarter side; anything else: contiguous chunks of about sqrt(d) features)."""
    picks = domain.x_train[rng.integers(len(domain.x_train), size=n)]
    flat = picks.reshape(n, -1)
    d = flat.shape[1]
    side = int(round(d**0.5))
    if side * side == d and side >= 4 and side % 4 == 0:
        p = side // 4
        img = flat.reshape(n, 4, p, 4, p).transpose(0, 1, 3, 2, 4).reshape(n, 16, p * p)
        for i in range(n):
            img[i] = img[i][rng.permutation(16)]
        out = img.reshape(n, 4, 4, p, p).transpose(0, 1, 3, 2, 4).reshape(n, d)
    else:
        size = max(1, int(round(d**0.5)))
        bounds = list(range(0, d, size))
        out = np.empty_like(flat)
        for i in range(n):
            chunks = [flat[i, b : b + size] for b in bounds]
            order = rng.permutation(len(chunks))
            out[i] = np.concatenate([chunks[j] for j in order])
    return out.reshape(n, *domain.input_shape).astype(np.float32)


def _mixed(domain: InputDomain, rng: np.random.Generator, n: int) -> Array:
    """Convex combinations of two training inputs, weight uniform in [0.3, 0.7]."""
    a = domain.x_train[rng.integers(len(domain.x_train), size=n)]
    b = domain.x_train[rng.integers(len(domain.x_train), size=n)]
    shape = (n,) + (1,) * (a.ndim - 1)
    w = rng.uniform(0.3, 0.7, size=shape).astype(np.float32)
    return (w * a + (1 - w) * b).astype(np.float32)


FamilyFn = Callable[[InputDomain, np.random.Generator, int], Array]

FAMILIES: Final[Mapping[str, FamilyFn]] = {
    "uniform": _uniform,
    "gaussian": _gaussian,
    "sparse": _sparse,
    "binary": _binary,
    "prng": _prng,
    "patch_shuffle": _patch_shuffle,
    "mixed": _mixed,
}


def build_families(
    domain: InputDomain,
    *,
    seed: int,
    n: int,
    names: Sequence[str] | None = None,
) -> dict[str, Array]:
    """`n` queries per family, shape (n, *input_shape), float32; deterministic per seed.

    Each family draws from its own stream (seed, family index), so enabling or
    disabling one family leaves the others' queries unchanged.
    """
    if n < 2:
        raise ValueError(f"queries per family must be at least 2, got {n}")
    chosen = list(FAMILIES) if names is None else list(names)
    unknown = [name for name in chosen if name not in FAMILIES]
    if unknown:
        raise ValueError(f"unknown probe families {unknown}; known: {', '.join(FAMILIES)}")
    order = list(FAMILIES)
    out: dict[str, Array] = {}
    for name in chosen:
        rng = np.random.default_rng([seed, order.index(name)])
        queries = FAMILIES[name](domain, rng, n)
        out[name] = np.ascontiguousarray(queries, dtype=np.float32)
    return out


def perturb(
    domain: InputDomain,
    queries: Array,
    *,
    seed: int | Sequence[int],
    scale: float = PERTURBATION_SCALE,
) -> Array:
    """A copy of `queries` moved by Gaussian noise of `scale` times each
    feature's training range: far smaller than the distance between two random
    inputs, so a smooth (honest) model rarely changes its answer."""
    key = [seed] if isinstance(seed, int) else list(seed)
    rng = np.random.default_rng([*key, 1 << 20])
    noise = rng.standard_normal(queries.shape, dtype=np.float32)
    return (queries + noise * (scale * domain.span)).astype(np.float32)
