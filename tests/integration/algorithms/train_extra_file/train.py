"""train.py writes a valid model, plus a second file next to it."""

import os
from pathlib import Path

import torch
from model import build_model
from safetensors.torch import save_file

out = Path(os.environ["SANDBOX_OUTPUT"])
torch.manual_seed(0)
model = build_model((64,), 10)
save_file(
    {k: v.detach().contiguous() for k, v in model.state_dict().items()},
    str(out / "model.safetensors"),
)
(out / "notes.txt").write_text("smuggled next to the model\n")
