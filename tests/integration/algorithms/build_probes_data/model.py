"""build_model looks for the dataset and fails the job if it can see any trace of it.

The platform runs build_model in the export container, which must hold no
dataset: no /data, nothing at $SANDBOX_DATA, no such mount, no .npz anywhere it
can reach. train.py runs next to the data on purpose, so it builds the same
module with `make_model`, which does not probe.
"""

import os
from pathlib import Path

import torch
from torch import nn


class Linear(nn.Module):
    def __init__(self, features: int, num_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1) / 16.0)


def make_model(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    features = 1
    for d in input_shape:
        features *= int(d)
    return Linear(features, int(num_classes))


def _dataset_traces() -> list[str]:
    found = []
    candidates = [Path("/data"), Path("/data/train.npz")]
    if os.environ.get("SANDBOX_DATA"):
        candidates += [
            Path(os.environ["SANDBOX_DATA"]),
            Path(os.environ["SANDBOX_DATA"], "train.npz"),
        ]
    found += [f"exists: {path}" for path in candidates if path.exists()]
    try:
        with open("/data/train.npz", "rb") as handle:
            handle.read(4)
        found.append("opened /data/train.npz")
    except OSError:
        pass
    with open("/proc/self/mounts", encoding="utf-8") as mounts:
        targets = [line.split()[1] for line in mounts if len(line.split()) > 1]
    found += [f"mount: {t}" for t in targets if t == "/data" or t.startswith("/data/")]
    for root in ("/algorithm", "/output", "/tmp", "/work", "/mnt", "/srv", "/home", "/root"):
        for directory, _dirs, files in os.walk(root):
            found += [f"file: {directory}/{f}" for f in files if f.endswith(".npz")]
    return found


def build_model(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    traces = _dataset_traces()
    if traces:
        raise RuntimeError("the dataset is visible to build_model: " + "; ".join(traces))
    print("probe: build_model saw no dataset (/data, $SANDBOX_DATA, mounts, *.npz)", flush=True)
    return make_model(input_shape, num_classes)
