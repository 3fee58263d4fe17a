"""Find the hidden units of an exported graph that a positive scale passes through.

Used by the describe step (trusted code, no provider Python): the host rescales these
units by random factors before the sanitizer (`sandbox/checks/rescale.py`), which
erases payloads in the mantissa bits the sanitizer keeps.

A chain is: a linear or conv2d layer L1 whose weight (and bias, if any) is a
parameter read by nothing else; then only ops that commute with a positive
per-unit scale - relu, leaky_relu, and for a 4-D convolution output max/avg pooling
and, once, a flatten of the channel and spatial dims; then a linear or conv2d layer
L2 that reads the result as its input and whose weight is a parameter read by
nothing else. Every intermediate value has exactly one user, so the scaled
activations reach L2 and nothing else. Anything else (batch norm, residual
connections, shared weights, grouped convolutions, control flow) ends the search and
the units stay as they are: the finder only ever under-reports.
"""

from __future__ import annotations

from typing import Any

import torch

_aten = torch.ops.aten
#: Ops f with f(c * x) = c * f(x) per unit for c > 0, on any input shape.
_ELEMENTWISE = frozenset({_aten.relu.default, _aten.leaky_relu.default})
#: The same for 4-D (N, C, H, W) inputs, channel by channel.
_POOLING = frozenset(
    {
        _aten.max_pool2d.default,
        _aten.avg_pool2d.default,
        _aten.adaptive_avg_pool2d.default,
        _aten.adaptive_max_pool2d.default,
    }
)
_LINEAR, _CONV = _aten.linear.default, _aten.conv2d.default
#: flatten(x, 1) / flatten(x, 1, -1) / flatten(x, 1, 3) of an (N, C, H, W) map: channel-major.
FLATTEN_ARGS = frozenset({(1,), (1, -1), (1, 3)})


def _rank(node: torch.fx.Node) -> int | None:
    value = node.meta.get("val")
    return value.dim() if isinstance(value, torch.Tensor) else None


def _feature_dims(node: torch.fx.Node) -> list[int] | None:
    """The dims after the (possibly symbolic) batch dim, when all are static."""
    value = node.meta.get("val")
    if not isinstance(value, torch.Tensor):
        return None
    dims = list(value.shape)[1:]
    return [int(d) for d in dims] if all(isinstance(d, int) for d in dims) else None


class _Finder:
    def __init__(self, program: torch.export.ExportedProgram) -> None:
        self.parameters = dict(program.graph_signature.inputs_to_parameters)
        self.rows = {name: int(t.shape[0]) for name, t in program.state_dict.items() if t.dim()}

    def parameter(self, arg: Any) -> str | None:
        """The parameter an argument is, if it is one read by exactly one node."""
        if not (isinstance(arg, torch.fx.Node) and arg.op == "placeholder"):
            return None
        name = self.parameters.get(arg.name)
        return name if name is not None and len(arg.users) == 1 else None

    def layer(self, node: torch.fx.Node) -> tuple[str, str | None, str] | None:
        """(weight, bias, kind) of a linear/conv2d node over parameters read once."""
        if node.op != "call_function" or node.target not in (_LINEAR, _CONV):
            return None
        args = list(node.args)
        if node.kwargs:
            return None
        if node.target is _CONV and len(args) > 6 and args[6] != 1:
            return None  # grouped: units and input channels no longer line up
        weight = self.parameter(args[1]) if len(args) > 1 else None
        bias_arg = args[2] if len(args) > 2 else None
        bias = None if bias_arg is None else self.parameter(bias_arg)
        if weight is None or (bias_arg is not None and bias is None):
            return None
        return weight, bias, "conv2d" if node.target is _CONV else "linear"

    def chain_from(self, node: torch.fx.Node) -> dict[str, object] | None:
        first = self.layer(node)
        if first is None:
            return None
        weight, bias, kind = first
        rank = _rank(node)
        if kind == "conv2d" and rank != 4:
            return None
        block = 1
        current = node
        while len(current.users) == 1:
            user = next(iter(current.users))
            if user.op != "call_function" or not user.args or user.args[0] is not current:
                return None
            if user.target in _ELEMENTWISE:
                current = user
                continue
            if user.target in _POOLING and kind == "conv2d" and _rank(user) == 4 and block == 1:
                current = user
                continue
            if user.target is _aten.flatten.using_ints and kind == "conv2d" and block == 1:
                dims = _feature_dims(current)
                if dims is None or len(dims) != 3 or tuple(user.args[1:]) not in FLATTEN_ARGS:
                    return None
                block = dims[1] * dims[2]
                current = user
                continue
            second = self.layer(user)
            if second is None or second[0] == weight:
                return None
            if second[2] == "conv2d" and (block != 1 or kind != "conv2d"):
                return None
            if second[2] == "linear" and kind == "conv2d" and block == 1:
                return None  # a linear layer over a 4-D map reads its width, not channels
            return {
                "first_weight": weight,
                "first_bias": bias,
                "second_weight": second[0],
                "units": self.rows[weight],
                "block": block,
            }
        return None


def find_unit_chains(program: torch.export.ExportedProgram) -> list[dict[str, object]]:
    """Every chain of `program` in graph order, each an object with the fields of
    `sandbox.checks.rescale.UnitChain` (which the host parses with `chains_from_json`)."""
    finder = _Finder(program)
    chains = []
    for node in program.graph_module.graph.nodes:
        try:
            chain = finder.chain_from(node)
        except (TypeError, ValueError, IndexError, KeyError):
            chain = None  # shapes not static or metadata missing: not provable, not reported
        if chain is not None:
            chains.append(chain)
    return chains
