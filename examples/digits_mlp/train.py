"""Train the digits MLP: the training half of the algorithm-package contract.

Run as `python train.py` in the sandbox. Reads `$SANDBOX_DATA/train.npz` (x
float32 [n, ...], y int64 [n]) and writes `$SANDBOX_OUTPUT/model.safetensors`,
the state_dict of `build_model(x.shape[1:], y.max() + 1)`.
"""

import os
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

# Keep in step with algorithm.toml (the platform reads that file, not this one).
EPOCHS = 30
BATCH_SIZE = 64
LR = 3e-3
MAX_THREADS = 4  # a small MLP gains nothing from more

HERE = Path(__file__).resolve().parent
sys.dont_write_bytecode = True  # the package directory is read-only in the sandbox
sys.path.insert(0, str(HERE))
from model import build_model  # noqa: E402


def _env_dir(name: str) -> Path:
    value = os.environ.get(name)
    if not value:
        sys.exit(f"train.py: ${name} is not set; the sandbox sets it to a directory")
    return Path(value)


def _threads() -> int:
    # The sandbox sets OMP_NUM_THREADS to the CPU quota; affinity still shows every
    # host core, and oversubscribing a 1-CPU quota with 2 threads is ~6x slower.
    configured = os.environ.get("OMP_NUM_THREADS", "")
    if configured.isdigit() and int(configured) > 0:
        return min(int(configured), MAX_THREADS)
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, MAX_THREADS))


def main() -> None:
    data_dir = _env_dir("SANDBOX_DATA")
    out_dir = _env_dir("SANDBOX_OUTPUT")
    torch.set_num_threads(_threads())
    torch.manual_seed(0)

    with np.load(data_dir / "train.npz", allow_pickle=False) as data:
        x = torch.from_numpy(np.ascontiguousarray(data["x"], dtype=np.float32))
        y = torch.from_numpy(np.ascontiguousarray(data["y"], dtype=np.int64))
    n = x.shape[0]
    num_classes = int(y.max()) + 1
    model = build_model(tuple(x.shape[1:]), num_classes)
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    loss_fn = torch.nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(0)
    print(f"training on {n} examples, {num_classes} classes, {EPOCHS} epochs", flush=True)

    for epoch in range(1, EPOCHS + 1):
        model.train()
        order = torch.randperm(n, generator=generator)
        total_loss = 0.0
        correct = 0
        for start in range(0, n, BATCH_SIZE):
            idx = order[start : start + BATCH_SIZE]
            logits = model(x[idx])
            loss = loss_fn(logits, y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total_loss += loss.item() * len(idx)
            correct += int((logits.argmax(dim=1) == y[idx]).sum())
        if epoch % 5 == 0 or epoch == 1:
            print(
                f"epoch {epoch}/{EPOCHS} loss {total_loss / n:.4f} train_acc {correct / n:.4f}",
                flush=True,
            )

    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out_dir / "model.safetensors"))
    print(f"wrote {out_dir / 'model.safetensors'}", flush=True)


if __name__ == "__main__":
    main()
