"""The honest part of every red-team package: load the data, train, save.

Imports only torch, numpy, safetensors and the stdlib (the package contract).
`train(..., penalty=...)` adds an attacker's regulariser to the loss.
"""

import os
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

HERE = Path(__file__).resolve().parent
sys.dont_write_bytecode = True
sys.path.insert(0, str(HERE))
from model import build_model  # noqa: E402


def env_dir(name: str) -> Path:
    value = os.environ.get(name)
    if not value:
        sys.exit(f"train.py: ${name} is not set; the sandbox sets it to a directory")
    return Path(value)


def load_train() -> tuple[np.ndarray, np.ndarray]:
    with np.load(env_dir("SANDBOX_DATA") / "train.npz", allow_pickle=False) as data:
        x = np.ascontiguousarray(data["x"], dtype=np.float32)
        y = np.ascontiguousarray(data["y"], dtype=np.int64)
    return x, y


def train(
    x: np.ndarray,
    y: np.ndarray,
    params: dict,
    penalty: Callable[[torch.nn.Module], torch.Tensor] | None = None,
) -> torch.nn.Module:
    """Adam on cross-entropy (+ `penalty(model)`), seeded, like the digits example."""
    torch.set_num_threads(int(params.get("threads", 1)))
    torch.manual_seed(int(params["seed"]))
    model = build_model(tuple(x.shape[1:]), int(y.max()) + 1)
    optimizer = torch.optim.Adam(model.parameters(), lr=float(params["lr"]))
    loss_fn = torch.nn.CrossEntropyLoss()
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    generator = torch.Generator().manual_seed(int(params["seed"]))
    batch = int(params["batch_size"])
    for _ in range(int(params["epochs"])):
        order = torch.randperm(len(yt), generator=generator)
        for start in range(0, len(yt), batch):
            idx = order[start : start + batch]
            loss = loss_fn(model(xt[idx]), yt[idx])
            if penalty is not None:
                loss = loss + penalty(model)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return model


def state_numpy(model: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def save(state: dict[str, np.ndarray]) -> None:
    out = env_dir("SANDBOX_OUTPUT")
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}
    save_file(tensors, str(out / "model.safetensors"))
