"""Step 5, in a container with NO provider code: DP-SGD on the exported graph.

Loads `/work/model.pt2` with torch.export (a graph of aten ops; the provider's
Python never runs here), discards the provider's weights, re-initialises every
parameter with the platform's own rule from the OS CSPRNG, and trains with DP-SGD
(Abadi et al., CCS 2016) on `/data/train.npz`:

- Poisson sampling: every example joins a step's batch independently with
  probability q, so batch sizes vary and a batch may be empty (the step still adds
  noise and updates: the accountant counts every step);
- per-example gradients from `torch.func.vmap(torch.func.grad(loss))`, where the
  loss runs the graph on ONE example (`x_i.unsqueeze(0)`): an operator that mixes
  the batch (a batch mean, BatchNorm) sees a batch of one, so each example's
  gradient depends on that example alone;
- each example's gradient clipped to L2 norm `clip` over all parameters jointly
  (a non-finite gradient counts as zero), summed, plus Gaussian noise
  N(0, (sigma * clip)^2) per coordinate, divided by the EXPECTED batch size q * n;
- where every parameter is the weight or bias of exactly one linear layer
  (`ghost_graph`), the clipped sum comes from ghost norms instead (`ghost_clipped_sum`):
  the same vmap over single examples yields each layer's input and output gradient,
  from which each example's norm and the clipped sum follow without materialising
  per-example gradients; the same sums to float rounding, several times faster. Any
  other graph goes the vmap way;
- an optimiser step (SGD or Adam) owned by this trainer: the module is a pure
  function of the parameters passed in; its own state is never read back.

Hyperparameters come from `/work/dp_config.json`, written by the host's planner
(`sandbox.dp.plan`); the host holds the accountant. Writes the trained parameters
to `/output/model.safetensors` and what ran to `/output/dp.json`.

Randomness: initialisation, sampling and noise come from torch generators seeded
with 64 bits each from `os.urandom`. Those generators (Mersenne Twister on the CPU,
Philox on CUDA) are not themselves cryptographic, and floating-point Gaussian
samples are not exact; both are the usual practice of DP-SGD libraries (Opacus'
default mode) and are named as residual risks in the report.

The core (`per_example_grads`, `clip_and_sum`, `ghost_graph`, `ghost_clipped_sum`,
`noisy_step`, `train`) is plain functions, importable and tested on the host;
`main()` is the container entry.
"""

from __future__ import annotations

import json
import math
import operator
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from sandbox.guest import protocol
from sandbox.guest.archive import check_archive

Tensors = dict[str, torch.Tensor]

CONFIG_FORMAT = 1
MAX_STEPS = 10_000_000
# Lifted tensor constants larger than this are refused: DP retraining re-initialises
# every parameter, and a constant added to a parameter would carry the provider's
# chosen values past the re-initialisation (Feng and Tramer, ICML 2024).
MAX_CONSTANT_ELEMENTS = 16
_NORM_EPS = 1e-6  # as Opacus: factor = clip / (norm + eps), so a clipped norm stays < clip
_BATCH_NORM_OPS = ("batch_norm", "native_batch_norm", "_native_batch_norm_legit")
_BATCH_NORM_REASON = (
    "BatchNorm couples the examples of a batch and keeps running statistics; "
    "use GroupNorm or LayerNorm"
)
_SCALE_NAMES = ("weight", "scale", "gamma")
SCHEDULES = ("constant", "cosine")
INIT_LAST = ("default", "zero")


class DPRefused(Exception):
    """The graph or the configuration cannot be trained with DP-SGD; `violations` says why."""

    def __init__(self, violations: list[str]) -> None:
        super().__init__("; ".join(violations))
        self.violations = violations


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class DPConfig:
    """`dp_config.json`: what the host's planner decided (see sandbox.dp.plan.DPPlan)."""

    n: int
    sample_rate: float
    expected_batch_size: float
    steps: int
    epochs: int
    lr: float
    clip: float
    noise_multiplier: float
    optimizer: str = "adam"
    momentum: float = 0.0
    chunk: int = 256
    device: str = "cpu"
    # Utility levers that cost no privacy (bench/dp.py measured them on digits):
    warmup_steps: int = 0  # linear learning-rate warm-up over the first steps
    schedule: str = "constant"  # or "cosine": decay to zero at the last step
    ema: float = 0.0  # decay of an exponential moving average of the iterates; 0 = off
    init_last: str = "default"  # or "zero": the output layer's weights start at zero
    # Each example's loss is the cross-entropy against a target that puts 1 - s on its
    # label and s / classes on every class (Szegedy et al. 2016). Still one example's
    # own loss, so the clipped sum's sensitivity is unchanged.
    label_smoothing: float = 0.0

    @staticmethod
    def from_json(raw: bytes | str) -> DPConfig:
        """Parse and check strictly: unknown keys, wrong types and bad ranges are errors."""
        try:
            data = json.loads(raw)
        except ValueError as error:
            raise DPRefused([f"dp_config.json is not valid JSON: {error}"]) from error
        if not isinstance(data, dict) or data.get("format") != CONFIG_FORMAT:
            raise DPRefused(["dp_config.json is not a format-1 DP configuration"])
        fields = {
            "n": int,
            "sample_rate": float,
            "expected_batch_size": float,
            "steps": int,
            "epochs": int,
            "lr": float,
            "clip": float,
            "noise_multiplier": float,
            "optimizer": str,
            "momentum": float,
            "chunk": int,
            "device": str,
            "warmup_steps": int,
            "schedule": str,
            "ema": float,
            "init_last": str,
            "label_smoothing": float,
        }
        optional = {
            "optimizer",
            "momentum",
            "chunk",
            "device",
            "warmup_steps",
            "schedule",
            "ema",
            "init_last",
            "label_smoothing",
        }
        required = set(fields) - optional
        unknown = sorted(set(data) - set(fields) - {"format"})
        missing = sorted(required - set(data))
        problems: list[str] = []
        if unknown:
            problems.append(f"dp_config.json has unknown keys {unknown}")
        if missing:
            problems.append(f"dp_config.json lacks {missing}")
        values: dict[str, Any] = {}
        for key, kind in fields.items():
            if key not in data:
                continue
            value = data[key]
            if kind is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if not isinstance(value, kind) or isinstance(value, bool):
                problems.append(f"dp_config.json: {key} is not a {kind.__name__}")
                continue
            if isinstance(value, float) and not math.isfinite(value):
                problems.append(f"dp_config.json: {key} is not finite")
                continue
            values[key] = value
        if problems:
            raise DPRefused(problems)
        config = DPConfig(**values)
        config.check()
        return config

    def check(self) -> None:
        problems = []
        if not self.n >= 1:
            problems.append("n must be >= 1")
        if not 0 < self.sample_rate <= 1:
            problems.append("sample_rate must be in (0, 1]")
        if not math.isclose(self.expected_batch_size, self.sample_rate * self.n, rel_tol=1e-6):
            problems.append("expected_batch_size must equal sample_rate * n")
        if not 1 <= self.steps <= MAX_STEPS:
            problems.append(f"steps must be in [1, {MAX_STEPS}]")
        if not 0 < self.lr <= 100:
            problems.append("lr must be in (0, 100]")
        if not 0 < self.clip <= 1e6:
            problems.append("clip must be in (0, 1e6]")
        if not 0 < self.noise_multiplier <= 1e6:
            problems.append("noise_multiplier must be in (0, 1e6]: no noise, no privacy")
        if self.optimizer not in ("adam", "sgd"):
            problems.append("optimizer must be 'adam' or 'sgd'")
        if not 0 <= self.momentum < 1:
            problems.append("momentum must be in [0, 1)")
        if not 1 <= self.chunk <= 65536:
            problems.append("chunk must be in [1, 65536]")
        if self.device not in ("cpu", "cuda", "auto"):
            problems.append("device must be 'cpu', 'cuda' or 'auto'")
        if not 0 <= self.warmup_steps <= MAX_STEPS:
            problems.append(f"warmup_steps must be in [0, {MAX_STEPS}]")
        if self.schedule not in SCHEDULES:
            problems.append(f"schedule must be one of {list(SCHEDULES)}")
        if not 0 <= self.ema < 1:
            problems.append("ema must be in [0, 1)")
        if self.init_last not in INIT_LAST:
            problems.append(f"init_last must be one of {list(INIT_LAST)}")
        if not 0 <= self.label_smoothing < 1:
            problems.append("label_smoothing must be in [0, 1)")
        if problems:
            raise DPRefused([f"dp_config.json: {p}" for p in problems])


def select_device(requested: str, cuda_available: bool) -> torch.device:
    """`cpu`; `cuda` (refused when no GPU is visible: the policy granted one); `auto`."""
    if requested == "cpu":
        return torch.device("cpu")
    if requested == "cuda":
        if not cuda_available:
            raise DPRefused(["the plan asks for a GPU but CUDA is not available in the container"])
        return torch.device("cuda")
    if requested == "auto":
        return torch.device("cuda" if cuda_available else "cpu")
    raise DPRefused([f"unknown device {requested!r}; use cpu, cuda or auto"])


def os_seed() -> int:
    """64 bits from the OS CSPRNG; never a fixed seed."""
    return int.from_bytes(os.urandom(8), "little")


def make_generator(device: torch.device, seed: int | None = None) -> torch.Generator:
    """A generator on `device`, seeded from `os.urandom` unless a test passes `seed`."""
    generator = torch.Generator(device=device)
    generator.manual_seed(os_seed() if seed is None else seed)
    return generator


# --------------------------------------------------------------------------- the graph


def check_program(program: torch.export.ExportedProgram) -> list[str]:
    """Every reason the graph cannot be DP-trained (empty when it can)."""
    violations: list[str] = []
    signature = program.graph_signature
    batch_norm = False
    for node in program.graph_module.graph.nodes:
        if node.op != "call_function":
            continue
        target = node.target
        if isinstance(target, torch._ops.OpOverload) and target.namespace == "aten":
            name = target._schema.name.split("::")[-1]
            if name in _BATCH_NORM_OPS:
                batch_norm = True
            elif target._schema.is_mutable:
                violations.append(f"operator {target} mutates its inputs (state across examples)")
        elif target is not operator.getitem:
            violations.append(
                f"call to {getattr(target, '__name__', repr(target))} is not an aten operator"
            )
    buffers = list(signature.buffers)
    if any(b.rsplit(".", 1)[-1] in ("running_mean", "running_var") for b in buffers):
        batch_norm = True
    if batch_norm:
        violations.append(_BATCH_NORM_REASON)
    mutated = sorted(signature.buffers_to_mutate.values())
    if mutated:
        violations.append(
            f"the graph updates buffers {mutated[:5]} during the forward pass: state that "
            "couples examples; DP-SGD needs a stateless forward pass"
        )
    if buffers:
        violations.append(
            f"the graph keeps buffers {sorted(buffers)[:5]}: DP retraining trains parameters "
            "only and re-initialises them; register learned tensors as nn.Parameter and "
            "compute fixed ones inside forward"
        )
    parameters = set(signature.parameters)
    extra = sorted(set(program.state_dict) - parameters)
    if extra:
        violations.append(f"the state holds tensors that are not parameters: {extra[:5]}")
    for name in signature.parameters:
        tensor = program.state_dict[name]
        if not tensor.is_floating_point():
            violations.append(f"parameter {name} has dtype {tensor.dtype}; only floats train")
    for name, value in program.constants.items():
        if isinstance(value, torch.Tensor) and value.numel() > MAX_CONSTANT_ELEMENTS:
            violations.append(
                f"tensor constant {name} has {value.numel()} elements (at most "
                f"{MAX_CONSTANT_ELEMENTS}): its values would survive re-initialisation; "
                "make it an nn.Parameter"
            )
    if len(signature.user_inputs) != 1:
        violations.append(f"the model takes {len(signature.user_inputs)} inputs; exactly one")
    if not parameters:
        violations.append("the graph has no parameters to train")
    return violations


def platform_init(
    shapes: Mapping[str, tuple[torch.Size, torch.dtype]],
    generator: torch.Generator,
    device: torch.device,
    zero: frozenset[str] = frozenset(),
) -> Tensors:
    """The platform's initialisation, a fixed rule of names and shapes only.

    Tensors with 2+ dimensions: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) with fan_in the
    product of all but the first dimension (PyTorch's default for Linear and Conv,
    kaiming_uniform with a = sqrt(5)). Tensors with 0 or 1 dimension: ones when the
    last name component is a scale (`weight`, `scale`, `gamma`: norm layers), else
    zeros (biases). Names in `zero` (the output layer's weights, `output_weights`)
    start at zero: under DP noise a zero last layer learns faster (De et al. 2022).
    The provider's initial values are never read.
    """
    params: Tensors = {}
    for name, (shape, dtype) in shapes.items():
        if name in zero:
            value = torch.zeros(shape, device=device, dtype=torch.float32)
        elif len(shape) >= 2:
            fan_in = math.prod(shape[1:])
            bound = 1.0 / math.sqrt(fan_in) if fan_in else 0.0
            value = torch.rand(shape, generator=generator, device=device, dtype=torch.float32)
            value = (value * 2.0 - 1.0) * bound
        elif name.rsplit(".", 1)[-1] in _SCALE_NAMES:
            value = torch.ones(shape, device=device, dtype=torch.float32)
        else:
            value = torch.zeros(shape, device=device, dtype=torch.float32)
        params[name] = value.to(dtype)
    return params


def output_weights(program: torch.export.ExportedProgram) -> frozenset[str]:
    """The weights (2+ dimensions) of the output layer: a rule on the graph alone.

    Walking back from the graph's output through operators on data, the first
    operator on each path that also takes parameters (directly or through
    operators on parameters alone, such as a transpose) is an output layer; its
    parameters with 2+ dimensions are returned. For the digits MLP that is the
    last Linear's weight. A parameter that any other operator also uses (tied
    weights, such as an embedding shared with the output layer) is left out: at
    zero it could silence its other use and stall training. Only names and the
    graph's structure are read.
    """
    signature = program.graph_signature
    parameters = dict(signature.inputs_to_parameters)
    static_inputs = set(parameters) | set(signature.inputs_to_lifted_tensor_constants)
    graph = program.graph_module.graph
    static: set[torch.fx.Node] = set()
    for node in graph.nodes:  # topological order
        if node.op == "placeholder":
            if node.name in static_inputs:
                static.add(node)
        elif node.op == "call_function" and all(n in static for n in node.all_input_nodes):
            static.add(node)

    def params_under(node: torch.fx.Node) -> set[str]:
        if node.op == "placeholder":
            return {parameters[node.name]} if node.name in parameters else set()
        found: set[str] = set()
        for parent in node.all_input_nodes:
            found |= params_under(parent)
        return found

    def only_feeds(node: torch.fx.Node, layers: set[torch.fx.Node]) -> bool:
        """Every path from `node` through operators on parameters alone ends in `layers`."""
        return all(
            only_feeds(user, layers) if user in static else user in layers for user in node.users
        )

    shapes = program.state_dict
    found: set[str] = set()
    layers: set[torch.fx.Node] = set()
    seen: set[torch.fx.Node] = set()
    stack = [n for out in graph.nodes if out.op == "output" for n in out.all_input_nodes]
    while stack:
        node = stack.pop()
        if node in seen or node in static:
            continue
        seen.add(node)
        feeding = [n for n in node.all_input_nodes if n in static]
        if feeding:
            layers.add(node)
            for parent in feeding:
                found |= params_under(parent)
            continue
        stack.extend(node.all_input_nodes)
    placeholders = {parameters[n.name]: n for n in graph.nodes if n.name in parameters}
    return frozenset(
        name for name in found if shapes[name].dim() >= 2 and only_feeds(placeholders[name], layers)
    )


def parameter_shapes(
    program: torch.export.ExportedProgram,
) -> dict[str, tuple[torch.Size, torch.dtype]]:
    state = program.state_dict
    return {
        name: (state[name].shape, state[name].dtype) for name in program.graph_signature.parameters
    }


# --------------------------------------------------------------------------- DP-SGD core


def _logits(output: Any) -> torch.Tensor:
    if isinstance(output, (tuple, list)) and len(output) == 1:
        output = output[0]
    if not isinstance(output, torch.Tensor):
        raise DPRefused(["the model's output is not one tensor of logits"])
    return output


def per_example_grads(
    module: torch.nn.Module,
    params: Mapping[str, torch.Tensor],
    buffers: Mapping[str, torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    chunk: int,
    label_smoothing: float = 0.0,
) -> Tensors:
    """Gradients of the cross-entropy of each example alone: name -> [len(x), *shape].

    The loss runs the graph on a batch of exactly one example, and vmap maps it over
    the batch, so example i's gradient is a function of (params, x[i], y[i]) only,
    whatever the graph does across its batch dimension. `chunk` bounds how many
    examples vmap processes at once.
    """

    def loss(p: Mapping[str, torch.Tensor], xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        out = torch.func.functional_call(
            module, (dict(p), dict(buffers)), (xi.unsqueeze(0),), strict=True
        )
        return torch.nn.functional.cross_entropy(
            _logits(out), yi.unsqueeze(0), label_smoothing=label_smoothing
        )

    chunk_size = chunk if x.shape[0] > chunk else None  # one chunk: skip vmap's concatenation
    grad = torch.func.vmap(
        torch.func.grad(loss), in_dims=(None, 0, 0), chunk_size=chunk_size, randomness="error"
    )
    result: Tensors = grad(dict(params), x, y)
    return result


def _clip_factors(squares: torch.Tensor, clip: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Each example's clipping factor (float32) from its squared gradient norm (float64).

    factor = min(1, clip / (norm + eps)), and 0 where the squared norm is not finite;
    also returns which examples were finite.
    """
    finite = torch.isfinite(squares)
    factor = (clip / (squares.sqrt() + _NORM_EPS)).clamp(max=1.0)
    factor = torch.where(finite, factor, torch.zeros_like(factor)).float()
    return factor, finite


def clip_and_sum(grads: Mapping[str, torch.Tensor], clip: float) -> Tensors:
    """Clip each example's gradient to L2 norm `clip` over all parameters jointly; sum.

    The norm of each clipped gradient is below `clip`, so adding or removing one
    example changes the sum by less than `clip` (replacing one: less than 2 * clip).
    A gradient with a non-finite entry, or whose float32 norm overflows, contributes zero.
    """
    names = list(grads)
    first = grads[names[0]]
    count = first.shape[0]
    if count == 0:
        return {name: torch.zeros_like(g[0:1]).sum(0) for name, g in grads.items()}
    squares = torch.zeros(count, dtype=torch.float64, device=first.device)
    for g in grads.values():
        norms = torch.linalg.vector_norm(g.reshape(count, -1), dim=1).double()
        squares = squares + norms * norms
    factor, finite = _clip_factors(squares, clip)
    clean = bool(finite.all())
    summed: Tensors = {}
    for name, g in grads.items():
        values = g if clean else torch.nan_to_num(g, nan=0.0, posinf=0.0, neginf=0.0)
        summed[name] = torch.tensordot(factor.to(values.dtype), values, dims=1)
    return summed


# --------------------------------------------------------------------------- ghost clipping
#
# The same clipped sum without materialising any per-example gradient, for graphs whose
# parameters are all weights and biases of linear layers (Goodfellow 2015; Li et al.,
# ICLR 2022; Bu et al. 2023, "book-keeping"). The graph still runs under vmap on ONE
# example at a time, exactly as in `per_example_grads`, so what each example's numbers
# depend on is unchanged; vmap only differentiates with respect to a zero added to each
# linear layer's output instead of the parameters. That gives, per example i and layer l,
# the layer's input a_il ([1, in]) and the gradient of the loss at its output g_il
# ([1, out]). A parameter used by nothing but that one layer has the per-example gradient
# g_il^T a_il (weight) and g_il (bias), so the squared norm of example i's whole gradient
# is sum_l |a_il|^2 |g_il|^2 (+ |g_il|^2 with a bias), and the clipped sum is
# sum_i f_i g_il^T a_il = (f * g_l)^T a_l, one matrix product per layer. The bound does
# not rest on the recognition being right: f_i comes from the norms of the very a_il and
# g_il that make example i's contribution, so that contribution's norm is below `clip`
# whatever they are; the recognition is what makes the sum equal vmap's. A graph it does
# not recognise goes the vmap way (`ghost_graph` returns None).

_LINEAR = torch.ops.aten.linear.default
_F32_MAX = float(torch.finfo(torch.float32).max)


@dataclass(frozen=True)
class GhostLayer:
    """One linear layer: its parameters' names and its per-example input / output widths."""

    weight: str
    bias: str | None
    inputs: int
    outputs: int


@dataclass(frozen=True)
class GhostGraph:
    """The graph rewritten for ghost clipping: `module(x, *z)` returns `(output, inputs)`.

    `z` holds one tensor per layer of `layers`, added to that layer's output (zeros in
    use); `inputs` holds each layer's input. Parameters are looked up by the same names
    as in the original graph, with `functional_call`.
    """

    module: torch.fx.GraphModule
    layers: tuple[GhostLayer, ...]
    parameters: int  # elements in all parameters: a vmap chunk's gradients hold chunk x this


def _attribute(module: torch.nn.Module, target: str) -> Any:
    value: Any = module
    for part in target.split("."):
        value = getattr(value, part)
    return value


def _same_size(a: int | torch.SymInt, b: int | torch.SymInt) -> bool:
    """Whether two sizes from the graph's shape metadata are the same (symbolic) size."""
    if isinstance(a, int) and isinstance(b, int):
        return a == b
    if isinstance(a, torch.SymInt) and isinstance(b, torch.SymInt):
        return bool(a.node.expr == b.node.expr)
    return False


def ghost_graph(module: torch.nn.Module, names: Iterable[str]) -> GhostGraph | None:
    """The ghost-clipping form of `module`, or None where the graph is not one it covers.

    Covered (anything else is None, and the trainer uses vmap): an fx graph with one
    input, in which every parameter named in `names` is read by exactly one node, once,
    and that node is `aten.linear` taking it as its weight (2-D) or its bias (1-D, with a
    parameter as the weight); no parameter is read twice or under two names (tied
    weights), none is a layer's input; and each such layer's input is, by the graph's
    shape metadata, [batch, features] with the batch dimension of the graph's input, so
    that on one example it is [1, features] (checked again on every call).
    """
    if not isinstance(module, torch.fx.GraphModule):
        return None
    wanted = set(names)
    declared = [name for name, _ in module.named_parameters(remove_duplicate=False)]
    if len(declared) != len(wanted) or set(declared) != wanted or any(module.buffers()):
        return None  # tied parameters (one tensor, two names), buffers, or other names
    graph = module.graph
    nodes = list(graph.nodes)
    for node in nodes:
        if node.op in ("call_method", "root"):
            return None
        if node.op == "call_module":
            sub = _attribute(module, str(node.target))
            if any(sub.parameters()) or any(sub.buffers()):
                return None  # a call that could read parameters without a get_attr
    inputs = [n for n in nodes if n.op == "placeholder"]
    if len(inputs) != 1 or not wanted:
        return None
    batch_meta = inputs[0].meta.get("val")
    if not isinstance(batch_meta, torch.Tensor) or batch_meta.dim() < 1:
        return None
    batch = batch_meta.shape[0]
    reads: dict[str, torch.fx.Node] = {}
    seen: set[int] = set()
    for node in nodes:
        if node.op != "get_attr":
            continue
        target = str(node.target)
        try:
            value = _attribute(module, target)
        except AttributeError:
            return None
        if not isinstance(value, torch.Tensor):
            continue
        if id(value) in seen or target in reads:
            return None  # one tensor under two names, or read twice
        seen.add(id(value))
        if isinstance(value, torch.nn.Parameter) or target in wanted:
            if target not in wanted:
                return None
            reads[target] = node
    if set(reads) != wanted:
        return None
    by_node = {node: name for name, node in reads.items()}
    layers: list[tuple[torch.fx.Node, GhostLayer]] = []
    claimed: set[str] = set()
    for node in nodes:
        if node.op != "call_function" or node.target is not _LINEAR:
            continue
        args = node.args
        if node.kwargs or len(args) not in (2, 3) or args[0] in by_node:
            if any(a in by_node for a in node.all_input_nodes):
                return None
            continue
        weight = args[1]
        bias = args[2] if len(args) == 3 else None
        if weight not in by_node:
            if bias in by_node:
                return None  # a parameter bias on a weight that is not a parameter
            continue
        assert isinstance(weight, torch.fx.Node)
        if bias is not None and bias not in by_node:
            return None
        weight_name = by_node[weight]
        bias_name = by_node[bias] if isinstance(bias, torch.fx.Node) else None
        w = _attribute(module, weight_name)
        if w.dim() != 2 or weight_name == bias_name:
            return None
        if bias_name is not None and tuple(_attribute(module, bias_name).shape) != (w.shape[0],):
            return None
        source = args[0]
        meta = source.meta.get("val") if isinstance(source, torch.fx.Node) else None
        if (
            not isinstance(meta, torch.Tensor)
            or meta.dim() != 2
            or not _same_size(meta.shape[0], batch)
            or not _same_size(meta.shape[1], int(w.shape[1]))
        ):
            return None
        layers.append((node, GhostLayer(weight_name, bias_name, int(w.shape[1]), int(w.shape[0]))))
        claimed.add(weight_name)
        if bias_name is not None:
            claimed.add(bias_name)
    if claimed != wanted:
        return None
    for node in reads.values():
        users = list(node.users)
        if len(users) != 1 or users[0].target is not _LINEAR:
            return None
        if sum(1 for a in users[0].args if a is node) != 1:
            return None

    rewritten = torch.fx.Graph()
    remap: dict[torch.fx.Node, torch.fx.Node] = {}
    output = rewritten.graph_copy(graph, remap)
    last = remap[inputs[0]]
    zs: list[torch.fx.Node] = []
    for index in range(len(layers)):
        with rewritten.inserting_after(last):
            last = rewritten.placeholder(f"ghost_z{index}")
        zs.append(last)
    captured: list[torch.fx.Node] = []
    shifted: dict[torch.fx.Node, torch.fx.Node] = {}
    for (node, _), z in zip(layers, zs, strict=True):
        linear = remap[node]
        with rewritten.inserting_after(linear):
            shifted[linear] = rewritten.call_function(torch.ops.aten.add.Tensor, (linear, z))
        for user in list(linear.users):
            if user is not shifted[linear]:
                user.replace_input_with(linear, shifted[linear])
        source = linear.args[0]
        assert isinstance(source, torch.fx.Node)
        captured.append(source)
    # graph_copy returned the output's value without an output node: map it as well
    result = torch.fx.map_arg(output, lambda n: shifted.get(n, n))
    rewritten.output((result, tuple(captured)))
    rewritten.lint()
    parameters = sum(_attribute(module, name).numel() for name in wanted)
    return GhostGraph(
        torch.fx.GraphModule(module, rewritten), tuple(layer for _, layer in layers), parameters
    )


def ghost_chunk(ghost: GhostGraph, chunk: int) -> int:
    """Examples per vmap call on the ghost path, for the memory `chunk` allows the vmap path.

    `chunk` bounds a vmap call's per-example gradients (chunk x all parameters); the ghost
    path keeps per example only each layer's input and output gradient, so the same
    memory holds more examples.
    """
    kept = sum(layer.inputs + layer.outputs for layer in ghost.layers)
    return max(chunk, min(65536, chunk * (ghost.parameters // max(kept, 1))))


def ghost_clipped_sum(
    ghost: GhostGraph,
    params: Mapping[str, torch.Tensor],
    buffers: Mapping[str, torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    clip: float,
    chunk: int,
    label_smoothing: float = 0.0,
) -> Tensors | None:
    """`clipped_sum` by ghost norms; None if a layer's input is not [1, features] per example.

    Each example's squared norm is summed in float64 from its layers' factors; a
    parameter's share that a float32 norm could not hold counts as infinite, so, as in
    `clip_and_sum`, a gradient with a non-finite entry or an overflowing norm contributes
    zero (its rows are zeroed before the products).
    """
    first = params[ghost.layers[0].weight]
    zeros = tuple(
        torch.zeros(1, layer.outputs, dtype=params[layer.weight].dtype, device=first.device)
        for layer in ghost.layers
    )

    def loss(
        z: tuple[torch.Tensor, ...], xi: torch.Tensor, yi: torch.Tensor
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        out, inputs = torch.func.functional_call(
            ghost.module, (dict(params), dict(buffers)), (xi.unsqueeze(0), *z), strict=True
        )
        value = torch.nn.functional.cross_entropy(
            _logits(out), yi.unsqueeze(0), label_smoothing=label_smoothing
        )
        return value, tuple(inputs)

    step = torch.func.vmap(
        torch.func.grad(loss, has_aux=True), in_dims=(None, 0, 0), randomness="error"
    )
    total: Tensors = {name: torch.zeros_like(p) for name, p in params.items()}
    for start in range(0, x.shape[0], chunk):
        xs, ys = x[start : start + chunk], y[start : start + chunk]
        count = xs.shape[0]
        grads, inputs = step(zeros, xs, ys)
        parts: list[tuple[torch.Tensor, torch.Tensor]] = []
        squares = torch.zeros(count, dtype=torch.float64, device=first.device)
        for layer, out_grad, layer_input in zip(ghost.layers, grads, inputs, strict=True):
            if tuple(out_grad.shape) != (count, 1, layer.outputs) or tuple(layer_input.shape) != (
                count,
                1,
                layer.inputs,
            ):
                return None
            g = out_grad.reshape(count, layer.outputs)
            a = layer_input.reshape(count, layer.inputs)
            g2 = g.double().square().sum(1)
            w2 = a.double().square().sum(1) * g2
            squares = squares + torch.where(w2 > _F32_MAX, math.inf, w2)
            if layer.bias is not None:
                squares = squares + torch.where(g2 > _F32_MAX, math.inf, g2)
            parts.append((g, a))
        factor, finite = _clip_factors(squares, clip)
        clean = bool(finite.all())
        keep = finite.unsqueeze(1)
        for layer, (g, a) in zip(ghost.layers, parts, strict=True):
            out_grad = g if clean else torch.where(keep, g, torch.zeros_like(g))
            layer_input = a if clean else torch.where(keep, a, torch.zeros_like(a))
            scaled = out_grad * factor.to(g.dtype).unsqueeze(1)
            total[layer.weight] += scaled.t() @ layer_input
            if layer.bias is not None:
                total[layer.bias] += scaled.sum(0)
    return total


def clipped_sum(
    module: torch.nn.Module,
    params: Mapping[str, torch.Tensor],
    buffers: Mapping[str, torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    clip: float,
    chunk: int,
    label_smoothing: float = 0.0,
    ghost: GhostGraph | None = None,
) -> Tensors:
    """Sum of the clipped per-example gradients of a batch, `chunk` examples at a time.

    With `ghost` (`ghost_graph(module, params)`), by ghost norms (`ghost_clipped_sum`),
    the same sum to float rounding; without it, or if that path declines the batch, by
    vmap (`per_example_grads`, `clip_and_sum`).
    """
    if ghost is not None:
        fast = ghost_clipped_sum(
            ghost, params, buffers, x, y, clip, ghost_chunk(ghost, chunk), label_smoothing
        )
        if fast is not None:
            return fast
    total: Tensors = {name: torch.zeros_like(p) for name, p in params.items()}
    for start in range(0, x.shape[0], chunk):
        end = start + chunk
        grads = per_example_grads(
            module, params, buffers, x[start:end], y[start:end], chunk, label_smoothing
        )
        for name, value in clip_and_sum(grads, clip).items():
            total[name] += value
    return total


def noisy_step(
    params: Mapping[str, torch.Tensor],
    summed: Mapping[str, torch.Tensor],
    *,
    clip: float,
    noise_multiplier: float,
    expected_batch_size: float,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
) -> None:
    """Add N(0, (sigma * clip)^2) to each coordinate, divide by q * n, take one step.

    `params` are the leaf tensors `optimizer` was built on. The divisor is the
    expected batch size, fixed in advance, so the step's scale never depends on how
    many examples the sampling happened to draw.
    """
    std = noise_multiplier * clip
    for name, p in params.items():
        noise = torch.randn(p.shape, generator=generator, device=p.device, dtype=p.dtype)
        p.grad = (summed[name] + std * noise) / expected_batch_size
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def poisson_batch(n: int, sample_rate: float, generator: torch.Generator) -> torch.Tensor:
    """Indices of one Poisson-sampled batch: each example independently with probability q."""
    mask = torch.rand(n, generator=generator, device=generator.device) < sample_rate
    return mask.nonzero().squeeze(1)


def lr_at(step: int, config: DPConfig) -> float:
    """Learning rate of step `step` (0-based): linear warm-up, then constant or cosine.

    A function of the step number and the plan only: the schedule reads no data.
    """
    factor = 1.0
    if config.warmup_steps > 0:
        factor = min(1.0, (step + 1) / config.warmup_steps)
    if config.schedule == "cosine":
        factor *= 0.5 * (1.0 + math.cos(math.pi * step / config.steps))
    return config.lr * factor


class IterateAverage:
    """Exponential moving average of the parameters (Polyak averaging with decay).

    `update` takes the current parameters and nothing else, so the average is a
    function of the released noisy iterates: post-processing, no privacy cost.
    The decay ramps up as min(decay, (1 + t) / (10 + t)) so that the start, far from
    the optimum, is forgotten quickly (De et al. 2022; Tensorflow's EMA). The ramp
    passes 0.9 only after 81 updates, so for short runs it, not `decay`, applies.
    """

    def __init__(self, params: Mapping[str, torch.Tensor], decay: float) -> None:
        self.decay = decay
        self.updates = 0
        self.average: Tensors = {k: v.detach().clone() for k, v in params.items()}

    def update(self, params: Mapping[str, torch.Tensor]) -> None:
        self.updates += 1
        decay = min(self.decay, self.updates / (9 + self.updates))
        with torch.no_grad():
            for name, value in params.items():
                self.average[name].mul_(decay).add_(value.detach(), alpha=1.0 - decay)


def make_optimizer(params: list[torch.Tensor], config: DPConfig) -> torch.optim.Optimizer:
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr)
    return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum)


@dataclass(frozen=True)
class TrainResult:
    params: Tensors
    steps: int
    empty_batches: int
    seconds: float


def train(
    module: torch.nn.Module,
    initial: Mapping[str, torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    config: DPConfig,
    *,
    sample_generator: torch.Generator,
    noise_generator: torch.Generator,
    ghost: bool = True,
) -> TrainResult:
    """Run `config.steps` DP-SGD steps from `initial`; x and y on the training device.

    The clipped sums come from ghost norms where `ghost_graph` covers the graph (and
    `ghost` is true), else from vmap: the same sums either way.
    """
    n = x.shape[0]
    if n != config.n:
        raise DPRefused([f"the dataset has {n} examples; the plan was made for {config.n}"])
    params = {name: t.detach().clone().float().requires_grad_(True) for name, t in initial.items()}
    optimizer = make_optimizer(list(params.values()), config)
    average = IterateAverage(params, config.ema) if config.ema > 0 else None
    fast = ghost_graph(module, params) if ghost else None
    start = time.perf_counter()
    empty = 0
    for step in range(config.steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, config)
        index = poisson_batch(n, config.sample_rate, sample_generator).to(x.device)
        detached = {name: p.detach() for name, p in params.items()}
        if index.numel() == 0:
            empty += 1
            summed = {name: torch.zeros_like(p) for name, p in detached.items()}
        else:
            summed = clipped_sum(
                module,
                detached,
                {},
                x[index],
                y[index],
                config.clip,
                config.chunk,
                config.label_smoothing,
                fast,
            )
        noisy_step(
            params,
            summed,
            clip=config.clip,
            noise_multiplier=config.noise_multiplier,
            expected_batch_size=config.expected_batch_size,
            optimizer=optimizer,
            generator=noise_generator,
        )
        if average is not None:
            average.update(params)
    final = average.average if average is not None else params
    trained = {name: p.detach().to(initial[name].dtype).contiguous() for name, p in final.items()}
    return TrainResult(trained, config.steps, empty, time.perf_counter() - start)


# --------------------------------------------------------------------------- entry point


def load_program(path: str) -> tuple[torch.export.ExportedProgram, torch.nn.Module]:
    """Load the exported program and its module; raise DPRefused with every violation.

    The archive is checked before torch.export.load sees it (see `check_archive`),
    and the graph before the module is built or run.
    """
    problems = check_archive(path)
    if problems:
        raise DPRefused(problems)
    program = torch.export.load(path)
    violations = check_program(program)
    if violations:
        raise DPRefused(violations)
    module = program.module()
    with torch.no_grad():
        for p in module.parameters():
            p.requires_grad_(False)
            p.fill_(math.nan)  # the provider's values are never used; a stray read shows as NaN
    return program, module


def _load_data(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    with np.load(str(protocol.DATA / "train.npz"), allow_pickle=False) as data:
        x = np.ascontiguousarray(data["x"], dtype=np.float32)
        y = np.ascontiguousarray(data["y"], dtype=np.int64)
    return torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)


def main() -> None:
    from safetensors.torch import save_file

    try:
        config = DPConfig.from_json((protocol.WORK / "dp_config.json").read_bytes())
        device = select_device(config.device, torch.cuda.is_available())
        try:
            program, module = load_program(str(protocol.WORK / "model.pt2"))
        except DPRefused:
            raise
        except Exception as error:
            raise DPRefused([f"the exported program does not load: {error}"]) from error
        module.to(device)
        x, y = _load_data(device)
        zero = output_weights(program) if config.init_last == "zero" else frozenset()
        initial = platform_init(parameter_shapes(program), make_generator(device), device, zero)
        del program  # the provider's initial weights go no further
        result = train(
            module,
            initial,
            x,
            y,
            config,
            sample_generator=make_generator(device),
            noise_generator=make_generator(device),
        )
    except DPRefused as refused:
        protocol.fail(
            protocol.EXIT_INVALID, "DP retraining refused: " + "; ".join(refused.violations)
        )
    except (RuntimeError, ValueError, IndexError, TypeError) as error:
        # e.g. an operator without a vmap rule, or a random op (vmap randomness="error")
        protocol.fail(
            protocol.EXIT_INVALID,
            f"DP training failed: {type(error).__name__}: {str(error)[:300]}",
        )
    protocol.OUTPUT.mkdir(parents=True, exist_ok=True)
    save_file(
        {k: v.cpu() for k, v in result.params.items()}, str(protocol.OUTPUT / "model.safetensors")
    )
    report = {
        "format": 1,
        "steps": result.steps,
        "sample_rate": config.sample_rate,
        "expected_batch_size": config.expected_batch_size,
        "n": config.n,
        "noise_multiplier": config.noise_multiplier,
        "clip": config.clip,
        "optimizer": config.optimizer,
        "lr": config.lr,
        "warmup_steps": config.warmup_steps,
        "schedule": config.schedule,
        "ema": config.ema,
        "init_last": config.init_last,
        "label_smoothing": config.label_smoothing,
        "device": device.type,
        "init": "platform",
    }
    (protocol.OUTPUT / "dp.json").write_text(json.dumps(report, sort_keys=True))
    print(f"DP-SGD ran {result.steps} steps on {device.type} in {result.seconds:.1f} s")


if __name__ == "__main__":
    main()
