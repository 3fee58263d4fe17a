"""Train the linear classifier: 150 full-batch Adam steps, fixed seed, one thread."""

import os
from pathlib import Path

import numpy as np
import torch
from model import build_model
from safetensors.torch import save_file

torch.manual_seed(0)
torch.set_num_threads(1)
with np.load(Path(os.environ["SANDBOX_DATA"]) / "train.npz", allow_pickle=False) as data:
    x = torch.from_numpy(data["x"])
    y = torch.from_numpy(data["y"])
model = build_model(tuple(x.shape[1:]), int(y.max()) + 1)
optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
for _ in range(150):
    loss = torch.nn.functional.cross_entropy(model(x), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
print(f"final training loss {loss.item():.4f}", flush=True)
state = {name: t.detach().contiguous() for name, t in model.state_dict().items()}
save_file(state, str(Path(os.environ["SANDBOX_OUTPUT"]) / "model.safetensors"))
