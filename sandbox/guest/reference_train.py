"""The platform's plain training recipe on the exported graph: the probe's reference model.

Canary-query probing compares the candidate's answers on out-of-distribution
queries with those of a model the platform trains itself: the SAME declared
architecture (the `torch.export` graph from step 1; no provider Python), the SAME
training split, but the platform's own initialisation (`platform_init`, from the
OS CSPRNG) and a fixed, plain recipe (Adam, cross-entropy, shuffled mini-batches).
An honest provider's model and the reference learn the same task and extrapolate
off the data manifold in broadly similar ways; a model that memorised
attacker-chosen labels on synthetic inputs answers noise-like queries in ways the
reference does not, whatever the attacker's input generator was.

The recipe is Adam with the algorithm's declared epochs, batch size and learning
rate, clipped into fixed bounds (`Recipe.declared`); the thresholds are calibrated on
the honest corpus with exactly this rule (`bench/probe_corpus.py` calls `train` on
each corpus model's architecture with its own hyperparameters).

`train` is a plain function (importable and tested on the host); the container
entry is `sandbox.guest.query --reference`, which trains the references and then
answers queries for them beside the candidate in one container.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import torch
from torch.func import functional_call

from sandbox.guest.dp_train import (
    DPRefused,
    Tensors,
    _logits,
    make_generator,
    parameter_shapes,
    platform_init,
)

#: The references' names among the query guest's model names (reserved: a gated weight
#: file cannot take them, see sandbox.pipeline.query). Two, from independent
#: initialisations and batch orders: how far they fall from each other is the unit
#: of probing's `divergence` statistic.
REFERENCES = ("reference1", "reference2")


#: Bounds of the recipe's values: the algorithm's declared hyperparameters are
#: clipped into them, so a provider cannot declare a recipe that makes the references
#: useless (one epoch) or unstable (a huge learning rate, which widens their spread).
EPOCHS = (5, 60)
BATCH_SIZE = (16, 512)
LR = (1e-4, 1e-2)


@dataclass(frozen=True)
class Recipe:
    """The reference's plain recipe: Adam on cross-entropy, shuffled mini-batches.

    Epochs, batch size and learning rate follow the algorithm's declared
    `[hyperparameters]` (algorithm.toml, fixed before any data is seen) clipped into
    the bounds above, so an honest model and its references are trained alike and
    differ by chance, not by recipe; the defaults stand in for missing values. The
    shipped calibration was made the same way (bench/probe_corpus.py gives every
    corpus model its own hyperparameters as its declaration).
    """

    epochs: int = 30
    batch_size: int = 64
    lr: float = 3e-3

    def to_json(self) -> dict[str, object]:
        return asdict(self)

    @staticmethod
    def declared(
        epochs: float | None = None, batch_size: float | None = None, lr: float | None = None
    ) -> Recipe:
        """The recipe for these declared values (None: the default), clipped into bounds."""
        default = Recipe()

        def clip(value: float | None, bounds: tuple[float, float], fallback: float) -> float:
            if value is None or not math.isfinite(value):
                return fallback
            return min(max(value, bounds[0]), bounds[1])

        return Recipe(
            epochs=int(clip(epochs, EPOCHS, default.epochs)),
            batch_size=int(clip(batch_size, BATCH_SIZE, default.batch_size)),
            lr=float(clip(lr, LR, default.lr)),
        )

    @staticmethod
    def from_json(raw: bytes | str) -> Recipe:
        """`reference.json`: the declared values (numbers or null) of exactly these three
        keys, as the host copied them from algorithm.toml; clipped here."""
        data = json.loads(raw)
        keys = ("epochs", "batch_size", "lr")
        if not isinstance(data, dict) or set(data) != set(keys):
            raise DPRefused(["reference.json must hold exactly epochs, batch_size and lr"])
        for key in keys:
            value = data[key]
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int | float)
            ):
                raise DPRefused([f"reference.json: {key} must be a number or null"])
        return Recipe.declared(data["epochs"], data["batch_size"], data["lr"])


RECIPE = Recipe()


@dataclass(frozen=True)
class Trained:
    params: Tensors
    steps: int
    seconds: float


def train(
    module: torch.nn.Module,
    initial: Mapping[str, torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    recipe: Recipe = RECIPE,
    *,
    generator: torch.Generator,
) -> Trained:
    """Train `module`'s parameters from `initial` on (x, y) with the plain recipe.

    The module is a pure function of the parameters passed to `functional_call`; its
    own parameter values are never read (load_program fills them with NaN).
    """
    if len(x) != len(y) or len(y) == 0:
        raise DPRefused([f"the reference needs matching, non-empty x and y ({len(x)}, {len(y)})"])
    params = {name: t.detach().clone().float().requires_grad_(True) for name, t in initial.items()}
    optimizer = torch.optim.Adam(list(params.values()), lr=recipe.lr)
    loss_fn = torch.nn.CrossEntropyLoss()
    start = time.perf_counter()
    steps = 0
    for _ in range(recipe.epochs):
        order = torch.randperm(len(y), generator=generator, device=generator.device).to(x.device)
        for first in range(0, len(y), recipe.batch_size):
            index = order[first : first + recipe.batch_size]
            logits = _logits(functional_call(module, params, (x[index],)))
            loss = loss_fn(logits.reshape(len(index), -1), y[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            steps += 1
    trained = {name: p.detach().to(initial[name].dtype).contiguous() for name, p in params.items()}
    return Trained(trained, steps, time.perf_counter() - start)


def train_on_program(
    program: torch.export.ExportedProgram,
    module: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    recipe: Recipe = RECIPE,
) -> Trained:
    """Initialise the checked graph's parameters the platform's way and train them.

    `program` and `module` come from `dp_train.load_program`, which refuses, naming
    every reason, a graph the platform cannot train itself (batch-norm statistics,
    buffers, non-aten calls: the rules of DP retraining, since the reference is
    trained the same trusted way).
    """
    device = x.device
    module.to(device)
    initial = platform_init(parameter_shapes(program), make_generator(device), device)
    return train(module, initial, x, y, recipe, generator=make_generator(device))
