"""Answering queries, in a container with NO provider code: logits of checked weights.

The host writes the query sets to `/data/queries.npz` (one float32 array per key,
each of shape [n, *input_shape]) and names the weight files (work/NAME.safetensors,
already passed by the egress gate) on the command line. This entrypoint loads the
exported graph (checked by `archive.load_checked`, so no provider code runs),
loads each weight file into it and writes `/output/logits.npz` holding one float32
array per (name, key) under the key `NAME|KEY`. Probing and the membership audit
use it; the host validates every array's shape and values.

With `--reference` first on the command line, it also trains the platform's two
reference models (`sandbox.guest.reference_train`: the same graph, the platform's
initialisation and plain recipe from `/data/reference.json`, on `/train/train.npz`)
and answers every query set for them too, under the names `reference1` and
`reference2`.
"""

import json
import re
import sys
from typing import Any, NoReturn

import numpy as np
import torch
from safetensors.torch import load_file

from sandbox.guest import protocol, reference_train
from sandbox.guest.archive import load_checked
from sandbox.guest.dp_train import DPRefused, load_program

BATCH = 512
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def logits_of(module: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    """The module's logits on x in batches, as float32 [n, classes]."""
    parts = []
    with torch.no_grad():
        for start in range(0, len(x), BATCH):
            out = module(torch.from_numpy(np.ascontiguousarray(x[start : start + BATCH])))
            if isinstance(out, (tuple, list)):
                out = out[0]
            parts.append(out.detach().to(torch.float32).reshape(out.shape[0], -1).numpy())
    if not parts:
        return np.zeros((0, 0), dtype=np.float32)
    return np.concatenate(parts, axis=0)


def _refuse(violations: list[str]) -> NoReturn:
    protocol.fail(
        protocol.EXIT_INVALID,
        "the platform cannot train a reference model of this graph: " + "; ".join(violations),
    )


def _load_trainable(path: str) -> tuple[torch.export.ExportedProgram, torch.nn.Module]:
    try:
        return load_program(path)
    except DPRefused as refused:
        _refuse(refused.violations)
    except Exception as error:  # a hostile or broken archive: refuse, never crash
        _refuse([f"the exported program does not load: {type(error).__name__}"])


def _train_reference(
    program: torch.export.ExportedProgram,
    module: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    recipe: reference_train.Recipe,
) -> Any:
    try:
        trained = reference_train.train_on_program(program, module, x, y, recipe)
    except DPRefused as refused:
        _refuse(refused.violations)
    except (RuntimeError, ValueError, IndexError, TypeError) as error:
        protocol.fail(
            protocol.EXIT_INVALID,
            f"reference training failed: {type(error).__name__}: {str(error)[:300]}",
        )
    said = json.dumps(recipe.to_json(), sort_keys=True)
    print(f"reference model: {trained.steps} steps in {trained.seconds:.1f} s, recipe {said}")
    return trained.params


def main() -> None:
    args = sys.argv[1:]
    with_reference = bool(args) and args[0] == "--reference"
    names = args[1:] if with_reference else args
    if not names or not all(_NAME.match(name) for name in names):
        protocol.fail(protocol.EXIT_INVALID, "query needs weight names ([A-Za-z0-9_-]+)")
    if set(names) & set(reference_train.REFERENCES):
        protocol.fail(protocol.EXIT_INVALID, "reference1/reference2 are reserved for --reference")
    with np.load(str(protocol.DATA / "queries.npz"), allow_pickle=False) as data:
        queries = {key: np.asarray(data[key], dtype=np.float32) for key in data.files}
    if not queries or not all(_NAME.match(key) for key in queries):
        protocol.fail(protocol.EXIT_INVALID, "queries.npz needs keys named [A-Za-z0-9_-]+")
    path = str(protocol.WORK / "model.pt2")
    weights = {name: load_file(str(protocol.WORK / f"{name}.safetensors")) for name in names}
    if with_reference:
        program, trainable = _load_trainable(path)
        try:
            recipe = reference_train.Recipe.from_json(
                (protocol.DATA / "reference.json").read_bytes()
            )
        except (OSError, ValueError, DPRefused) as error:
            _refuse([f"no valid reference recipe: {error}"])
        with np.load(str(protocol.TRAIN / "train.npz"), allow_pickle=False) as data:
            x_train = torch.from_numpy(np.ascontiguousarray(data["x"], dtype=np.float32))
            y_train = torch.from_numpy(np.ascontiguousarray(data["y"], dtype=np.int64))
        for reference in reference_train.REFERENCES:
            weights[reference] = _train_reference(program, trainable, x_train, y_train, recipe)
    else:
        program = load_checked(path)
    results: dict[str, Any] = {}  # np.savez's stubs want Any for **arrays
    for name, state in weights.items():
        module = program.module()
        module.load_state_dict(state, strict=True)
        for key, x in queries.items():
            results[f"{name}|{key}"] = logits_of(module, x)
    protocol.OUTPUT.mkdir(parents=True, exist_ok=True)
    with open(protocol.OUTPUT / "logits.npz", "wb") as handle:
        np.savez(handle, **results)
    print(f"answered {sum(len(x) for x in queries.values())} queries for {len(weights)} model(s)")


if __name__ == "__main__":
    main()
