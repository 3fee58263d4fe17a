"""A fixed CPU training job for bench/overhead.py: an MLP on synthetic data.

Run with the image's python (or the host's, for the bare baseline):

    python -P train_mlp.py --steps N

Single-threaded (OMP/MKL = 1 and torch.set_num_threads(1)), fixed seeds, fixed
number of steps, no file I/O: every variant does exactly the same arithmetic, so
the printed `final_loss` must be equal across runtimes. Prints three lines that
start with "BENCH " (parsed by bench/overhead.py):

    BENCH first_line <time.time() at the first statement>
    BENCH imported <time.time() after `import torch`>
    BENCH result <json: steps, loop_s, loop_cpu_s, final_loss, ...>

Only torch and the standard library are used: the runtime image has no
scikit-learn, so the data are synthetic (a fixed random teacher network labels
Gaussian inputs).
"""

import time

FIRST_LINE = time.time()  # first statement: the start-up probes read it
print(f"BENCH first_line {FIRST_LINE:.6f}", flush=True)

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402

for _name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")

import torch  # noqa: E402

IMPORTED = time.time()
print(f"BENCH imported {IMPORTED:.6f}", flush=True)

FEATURES, HIDDEN, CLASSES = 128, 512, 10
SAMPLES, BATCH = 16384, 256


def make_data(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian inputs labelled by a fixed random two-layer teacher."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(SAMPLES, FEATURES, generator=gen)
    w1 = torch.randn(FEATURES, 64, generator=gen) / FEATURES**0.5
    w2 = torch.randn(64, CLASSES, generator=gen) / 8.0
    y = (torch.tanh(x @ w1) @ w2).argmax(dim=1)
    return x, y


def build_model() -> torch.nn.Module:
    return torch.nn.Sequential(
        torch.nn.Linear(FEATURES, HIDDEN),
        torch.nn.ReLU(),
        torch.nn.Linear(HIDDEN, HIDDEN),
        torch.nn.ReLU(),
        torch.nn.Linear(HIDDEN, CLASSES),
    )


def train(steps: int, seed: int = 0) -> dict[str, float | int]:
    torch.manual_seed(seed)
    x, y = make_data(seed)
    model = build_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()
    batches = SAMPLES // BATCH
    loss = torch.zeros(())
    loop_start = time.time()
    wall0, cpu0 = time.perf_counter(), time.process_time()
    for step in range(steps):
        i = (step % batches) * BATCH
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(x[i : i + BATCH]), y[i : i + BATCH])
        loss.backward()
        optimizer.step()
    loop_s, loop_cpu_s = time.perf_counter() - wall0, time.process_time() - cpu0
    loop_end = time.time()
    with torch.no_grad():
        accuracy = (model(x).argmax(dim=1) == y).float().mean().item()
    return {
        "steps": steps,
        "loop_s": round(loop_s, 6),
        "loop_cpu_s": round(loop_cpu_s, 6),
        "final_loss": float(loss.item()),
        "train_accuracy": round(accuracy, 6),
        "threads": torch.get_num_threads(),
        "t_loop_start": round(loop_start, 6),
        "t_loop_end": round(loop_end, 6),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="fixed single-threaded MLP training job")
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)
    result = train(args.steps, args.seed)
    result["import_s"] = round(IMPORTED - FIRST_LINE, 6)
    result["t_first_line"] = round(FIRST_LINE, 6)
    result["t_imported"] = round(IMPORTED, 6)
    result["t_end"] = round(time.time(), 6)
    print("BENCH result " + json.dumps(result, sort_keys=True), flush=True)


if __name__ == "__main__":
    main()
