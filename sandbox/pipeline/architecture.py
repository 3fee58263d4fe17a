"""The declared architecture: parsed strictly from the describe step's arch.json.

arch.json comes out of a container, so it is untrusted input: its size, types
and values are all checked, and the policy's bounds are applied here, on the host.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from sandbox.checks.rescale import UnitChain, chain_problems, chains_from_json
from sandbox.errors import InvalidInput
from sandbox.gate import TensorSpec
from sandbox.policy.model import ArchitectureRules

MAX_ARCH_BYTES = 4 * 1024 * 1024
_DTYPES = {"F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "BOOL"}


class ArchitectureRejected(InvalidInput):
    """The exported graph breaks a rule; `violations` lists every one."""

    def __init__(self, violations: list[str]) -> None:
        super().__init__("architecture rejected: " + "; ".join(violations))
        self.violations = violations


@dataclass(frozen=True)
class Architecture:
    input_shape: tuple[int, ...]
    num_classes: int
    tensors: dict[str, TensorSpec]
    num_nodes: int
    num_parameters: int
    ops: tuple[str, ...]
    mutated_buffers: tuple[str, ...]
    #: hidden units the sanitizer may rescale (checked against `tensors`)
    unit_chains: tuple[UnitChain, ...] = ()

    def summary(self) -> dict[str, Any]:
        return {
            "tensors": len(self.tensors),
            "parameters": self.num_parameters,
            "nodes": self.num_nodes,
            "ops": list(self.ops),
            "mutated_buffers": list(self.mutated_buffers),
            "unit_chains": len(self.unit_chains),
        }


def _int(value: Any, name: str, low: int = 0) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise InvalidInput(f"arch.json: {name} is not an integer >= {low}")
    return value


def _str_list(value: Any, name: str, limit: int = 10000) -> tuple[str, ...]:
    if not isinstance(value, list) or len(value) > limit:
        raise InvalidInput(f"arch.json: {name} is not a list of at most {limit} strings")
    if not all(isinstance(v, str) and len(v) <= 512 for v in value):
        raise InvalidInput(f"arch.json: {name} holds something other than short strings")
    return tuple(value)


def parse_architecture(
    raw: bytes,
    *,
    input_shape: tuple[int, ...],
    num_classes: int,
    rules: ArchitectureRules,
) -> Architecture:
    if len(raw) > MAX_ARCH_BYTES:
        raise InvalidInput("arch.json is larger than 4 MiB")
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as error:
        raise InvalidInput(f"arch.json is not valid JSON: {error}") from error
    if not isinstance(data, dict) or data.get("format") != 1:
        raise InvalidInput("arch.json is not a format-1 architecture description")
    violations = list(_str_list(data.get("violations", []), "violations", 50))
    if tuple(data.get("input_shape", [])) != input_shape or data.get("num_classes") != num_classes:
        violations.append("the exported graph was described for another input shape or class count")
    tensors_raw = data.get("tensors")
    if not isinstance(tensors_raw, dict) or len(tensors_raw) > 100000:
        raise InvalidInput("arch.json: tensors is not a mapping")
    tensors: dict[str, TensorSpec] = {}
    parameters = 0
    for name, entry in tensors_raw.items():
        if not (isinstance(entry, dict) and entry.get("dtype") in _DTYPES):
            raise InvalidInput(f"arch.json: tensor {name[:80]!r} has no valid dtype")
        shape = entry.get("shape")
        if not isinstance(shape, list) or len(shape) > 8:
            raise InvalidInput(f"arch.json: tensor {name[:80]!r} has no valid shape")
        dims = tuple(_int(d, f"a dimension of {name[:80]}") for d in shape)
        tensors[name] = TensorSpec(dtype=entry["dtype"], shape=dims)
        parameters += math.prod(dims)
    if not tensors:
        violations.append("the model has no parameters or buffers to train")
    nodes = _int(data.get("num_nodes"), "num_nodes")
    ops = _str_list(data.get("ops", []), "ops")
    mutated = _str_list(data.get("mutated_buffers", []), "mutated_buffers")
    if nodes > rules.max_nodes:
        violations.append(
            f"the graph has {nodes} nodes; the policy allows at most {rules.max_nodes}"
        )
    if parameters > rules.max_parameters:
        violations.append(
            f"the model has {parameters} parameters; "
            f"the policy allows at most {rules.max_parameters}"
        )
    foreign = sorted({op for op in ops if op.split("::")[0] not in rules.op_namespaces})
    if foreign:
        violations.append(
            f"operators outside the allowed namespaces {list(rules.op_namespaces)}: "
            + ", ".join(foreign[:10])
        )
    if violations:
        raise ArchitectureRejected(violations)
    try:
        chains = chains_from_json(data.get("unit_chains"), limit=len(tensors))
    except ValueError as error:
        raise InvalidInput(f"arch.json: {error}") from error
    problems = chain_problems(chains, {n: (t.dtype, t.shape) for n, t in tensors.items()})
    if problems:
        raise InvalidInput("arch.json: " + "; ".join(problems[:5]))
    return Architecture(
        input_shape=input_shape,
        num_classes=num_classes,
        tensors=tensors,
        num_nodes=nodes,
        num_parameters=parameters,
        ops=ops,
        mutated_buffers=mutated,
        unit_chains=chains,
    )
