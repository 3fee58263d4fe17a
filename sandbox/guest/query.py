"""Answering queries, in a container with NO provider code: logits of checked weights.

The host writes the query sets to `/data/queries.npz` (one float32 array per key,
each of shape [n, *input_shape]) and names the weight files (work/NAME.safetensors,
already passed by the egress gate) on the command line. This entrypoint loads the
exported graph (checked by `archive.load_checked`, so no provider code runs),
loads each weight file into it and writes `/output/logits.npz` holding one float32
array per (name, key) under the key `NAME|KEY`. Probing and the membership audit
use it; the host validates every array's shape and values.
"""

import re
import sys
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

from sandbox.guest import protocol
from sandbox.guest.archive import load_checked

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


def main() -> None:
    names = sys.argv[1:]
    if not names or not all(_NAME.match(name) for name in names):
        protocol.fail(protocol.EXIT_INVALID, "query needs weight names ([A-Za-z0-9_-]+)")
    with np.load(str(protocol.DATA / "queries.npz"), allow_pickle=False) as data:
        queries = {key: np.asarray(data[key], dtype=np.float32) for key in data.files}
    if not queries or not all(_NAME.match(key) for key in queries):
        protocol.fail(protocol.EXIT_INVALID, "queries.npz needs keys named [A-Za-z0-9_-]+")
    program = load_checked(str(protocol.WORK / "model.pt2"))
    results: dict[str, Any] = {}  # np.savez's stubs want Any for **arrays
    for name in names:
        module = program.module()
        module.load_state_dict(load_file(str(protocol.WORK / f"{name}.safetensors")), strict=True)
        for key, x in queries.items():
            results[f"{name}|{key}"] = logits_of(module, x)
    protocol.OUTPUT.mkdir(parents=True, exist_ok=True)
    with open(protocol.OUTPUT / "logits.npz", "wb") as handle:
        np.savez(handle, **results)
    print(f"answered {sum(len(x) for x in queries.values())} queries for {len(names)} model(s)")


if __name__ == "__main__":
    main()
