"""Step 1, in a container WITHOUT the dataset: capture the provider's model.

Imports the provider's `model.py`, calls `build_model(input_shape, num_classes)`,
captures it with `torch.export` (dynamic batch dimension) and writes the exported
program (`model.pt2`) and the initial weights (`init.safetensors`) to the output.
The result is untrusted: `describe` re-reads it in a fresh container without any
provider code.
"""

import importlib.util
import json
import os
import sys
import traceback
from collections.abc import Callable
from typing import Any

import torch
from safetensors.torch import save_file

from sandbox.guest import protocol


def _load_build_model() -> Callable[..., Any]:
    path = protocol.ALGORITHM / "model.py"
    if not path.is_file():
        protocol.fail(protocol.EXIT_CONTRACT, "model.py is missing from the algorithm package")
    sys.path.insert(0, str(protocol.ALGORITHM))
    spec = importlib.util.spec_from_file_location("model", path)
    if spec is None or spec.loader is None:
        protocol.fail(protocol.EXIT_CONTRACT, "model.py cannot be imported")
    module = importlib.util.module_from_spec(spec)
    sys.modules["model"] = module
    try:
        spec.loader.exec_module(module)
    except Exception as error:  # provider code: report, never crash silently
        traceback.print_exc()
        protocol.fail(
            protocol.EXIT_USER_CODE,
            f"importing model.py raised {type(error).__name__}: {error}",
        )
    build = getattr(module, "build_model", None)
    if not callable(build):
        protocol.fail(
            protocol.EXIT_CONTRACT,
            "model.py does not define build_model(input_shape, num_classes) -> torch.nn.Module",
        )
    return build  # type: ignore[no-any-return]


def capture(model: torch.nn.Module, input_shape: tuple[int, ...]) -> torch.export.ExportedProgram:
    """The model in eval mode as torch.export captures it, with a dynamic batch dim."""
    model.eval()
    example = torch.zeros((2, *input_shape), dtype=torch.float32)
    batch = torch.export.Dim("batch", min=1, max=65536)
    return torch.export.export(model, (example,), dynamic_shapes=({0: batch},))


def main() -> None:
    input_shape = tuple(json.loads(os.environ["SANDBOX_INPUT_SHAPE"]))
    num_classes = int(os.environ["SANDBOX_NUM_CLASSES"])
    build = _load_build_model()
    torch.manual_seed(0)
    try:
        model = build(input_shape, num_classes)
    except Exception as error:
        traceback.print_exc()
        protocol.fail(
            protocol.EXIT_USER_CODE, f"build_model raised {type(error).__name__}: {error}"
        )
    if not isinstance(model, torch.nn.Module):
        protocol.fail(
            protocol.EXIT_CONTRACT,
            f"build_model returned {type(model).__name__}, not a torch.nn.Module",
        )
    try:
        program = capture(model, input_shape)
    except Exception as error:
        traceback.print_exc()
        protocol.fail(
            protocol.EXIT_EXPORT,
            f"torch.export could not capture the model ({type(error).__name__}: "
            f"{str(error)[:300]}); use plain tensor operations without data-dependent "
            "Python control flow",
        )
    protocol.OUTPUT.mkdir(parents=True, exist_ok=True)
    torch.export.save(program, str(protocol.OUTPUT / "model.pt2"))
    weights = {
        name: tensor.detach().contiguous().clone() for name, tensor in program.state_dict.items()
    }
    save_file(weights, str(protocol.OUTPUT / "init.safetensors"))
    print(f"exported {len(weights)} tensors")


if __name__ == "__main__":
    main()
