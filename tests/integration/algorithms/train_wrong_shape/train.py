"""train.py writes the right tensor names with the wrong shapes (one extra input feature)."""

import os
from pathlib import Path

import torch
from safetensors.torch import save_file

state = {"fc.weight": torch.zeros(10, 65), "fc.bias": torch.zeros(10)}
save_file(state, str(Path(os.environ["SANDBOX_OUTPUT"]) / "model.safetensors"))
