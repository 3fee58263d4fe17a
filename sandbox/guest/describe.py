"""Step 1b, in a fresh container with NO provider code: describe the exported graph.

Loads `model.pt2` with torch.export (a graph of aten ops; no provider Python),
lists its operators, parameters and state, runs it once on zeros to check the
output shape, finds the hidden units a random positive scale passes through
(`unit_chains`, for the sanitizer), and writes `arch.json`. The host validates
that file strictly and applies the policy; this code only reports.
"""

import json
import operator
import os

import torch

from sandbox.guest import protocol
from sandbox.guest.archive import load_checked
from sandbox.guest.unit_chains import find_unit_chains


def _ops_and_violations(program: torch.export.ExportedProgram) -> tuple[int, list[str], list[str]]:
    ops: set[str] = set()
    violations: list[str] = []
    nodes = 0
    for node in program.graph_module.graph.nodes:
        nodes += 1
        if node.op == "call_function":
            target = node.target
            if isinstance(target, torch._ops.OpOverload):
                ops.add(f"{target.namespace}::{target._schema.name.split('::')[-1]}")
                if target._schema.is_mutable:
                    violations.append(f"operator {target} mutates its inputs")
            elif target is operator.getitem:
                continue
            else:
                violations.append(
                    f"call to {getattr(target, '__name__', repr(target))} is not an aten "
                    "operator (custom ops, control flow and Python calls are not allowed)"
                )
        elif node.op in ("call_module", "call_method"):
            violations.append(f"graph node {node.op} {node.target} is not allowed")
    for sub in program.graph_module.modules():
        if sub is not program.graph_module and isinstance(sub, torch.fx.GraphModule):
            violations.append("the graph contains sub-graphs (control flow)")
            break
    return nodes, sorted(ops), violations


def main() -> None:
    input_shape = tuple(json.loads(os.environ["SANDBOX_INPUT_SHAPE"]))
    num_classes = int(os.environ["SANDBOX_NUM_CLASSES"])
    try:
        program = load_checked(str(protocol.WORK / "model.pt2"))
    except Exception as error:
        protocol.fail(protocol.EXIT_INVALID, f"the exported program does not load: {error}")
    nodes, ops, violations = _ops_and_violations(program)
    signature = program.graph_signature
    user_inputs = list(signature.user_inputs)
    if len(user_inputs) != 1:
        violations.append(f"the model takes {len(user_inputs)} inputs; exactly one is allowed")
    mutated = sorted(signature.buffers_to_mutate.values())
    tensors: dict[str, dict[str, object]] = {}
    parameters = 0
    for name, tensor in program.state_dict.items():
        dtype = protocol.TORCH_TO_SAFETENSORS.get(str(tensor.dtype))
        if dtype is None:
            violations.append(f"state tensor {name} has unsupported dtype {tensor.dtype}")
            continue
        tensors[name] = {"dtype": dtype, "shape": list(tensor.shape)}
        parameters += tensor.numel()
    output_shape: list[int] = []
    if not violations:
        try:
            with torch.no_grad():
                out = program.module()(torch.zeros((3, *input_shape), dtype=torch.float32))
            if isinstance(out, (tuple, list)) and len(out) == 1:
                out = out[0]
            output_shape = list(out.shape) if isinstance(out, torch.Tensor) else []
        except Exception as error:
            violations.append(f"the exported graph fails on a batch of 3 zeros: {error}")
    if not violations and output_shape != [3, num_classes]:
        violations.append(
            f"the model's output for a batch of 3 has shape {output_shape}; "
            f"expected [3, {num_classes}] (one logit per class)"
        )
    # the hidden units the host may rescale before sanitising (only a valid graph's)
    chains = [] if violations else find_unit_chains(program)
    arch = {
        "format": 1,
        "input_shape": list(input_shape),
        "num_classes": num_classes,
        "tensors": tensors,
        "num_nodes": nodes,
        "num_parameters": parameters,
        "ops": ops,
        "mutated_buffers": mutated,
        "unit_chains": chains,
        "violations": violations[:50],
    }
    protocol.OUTPUT.mkdir(parents=True, exist_ok=True)
    (protocol.OUTPUT / "arch.json").write_text(json.dumps(arch, sort_keys=True))
    print(f"described {nodes} nodes, {len(tensors)} tensors, {len(violations)} violations")


if __name__ == "__main__":
    main()
