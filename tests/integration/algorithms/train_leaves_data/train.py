"""train.py tries to leave a copy of its training data somewhere besides the model.

It writes the data, tagged with a marker, to every place it can think of,
reports which writes worked (never printing the marker), then trains and writes
a valid model. Only the gate-checked model may leave the sandbox.
"""

import os
from pathlib import Path

import numpy as np
import torch
from model import build_model
from safetensors.torch import save_file

# Assembled at run time so that this source file never contains the marker itself.
MARKER = ("SANDBOX" + "-STASH-" + "5e1f0c").encode()
data_path = Path(os.environ["SANDBOX_DATA"]) / "train.npz"
payload = MARKER + data_path.read_bytes()
for target in (
    "/tmp/stash.bin",
    "/dev/shm/stash.bin",
    "/algorithm/stash.bin",
    "/data/stash.bin",
    "/output/../stash.bin",
    "/var/tmp/stash.bin",
):
    try:
        Path(target).write_bytes(payload)
        print(f"stash {target}: written", flush=True)
    except OSError as error:
        print(f"stash {target}: refused errno {error.errno}", flush=True)

torch.manual_seed(0)
torch.set_num_threads(1)
with np.load(data_path, allow_pickle=False) as data:
    x = torch.from_numpy(data["x"])
    y = torch.from_numpy(data["y"])
model = build_model(tuple(x.shape[1:]), int(y.max()) + 1)
optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
for _ in range(50):
    loss = torch.nn.functional.cross_entropy(model(x), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
state = {name: t.detach().contiguous() for name, t in model.state_dict().items()}
save_file(state, str(Path(os.environ["SANDBOX_OUTPUT"]) / "model.safetensors"))
