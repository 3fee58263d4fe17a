"""Utility check, in a container with NO provider code: holdout accuracy.

Loads the exported graph and one or more candidate weight files (already passed
by the egress gate) and scores them on `holdout.npz`. Writes `metrics.json` with
integer counts so the host can check the arithmetic.
"""

import json
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from sandbox.guest import protocol
from sandbox.guest.archive import load_checked


def _score(module: torch.nn.Module, weights_path: Path, x: np.ndarray, y: np.ndarray) -> int:
    state = load_file(str(weights_path))
    module.load_state_dict(state, strict=True)
    correct = 0
    with torch.no_grad():
        for start in range(0, len(x), 512):
            batch = torch.from_numpy(x[start : start + 512])
            logits = module(batch)
            if isinstance(logits, (tuple, list)):
                logits = logits[0]
            predicted = logits.argmax(dim=1).numpy()
            correct += int((predicted == y[start : start + 512]).sum())
    return correct


def main() -> None:
    names = sys.argv[1:]
    if not names:
        protocol.fail(protocol.EXIT_INVALID, "evaluate needs weight names")
    with np.load(str(protocol.DATA / "holdout.npz"), allow_pickle=False) as data:
        x, y = data["x"], data["y"]
    program = load_checked(str(protocol.WORK / "model.pt2"))
    results: dict[str, dict[str, int]] = {}
    for name in names:
        module = program.module()
        correct = _score(module, protocol.WORK / f"{name}.safetensors", x, y)
        results[name] = {"correct": correct, "n": len(y)}
    protocol.OUTPUT.mkdir(parents=True, exist_ok=True)
    (protocol.OUTPUT / "metrics.json").write_text(json.dumps({"results": results}))
    print(json.dumps(results))


if __name__ == "__main__":
    main()
