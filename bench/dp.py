"""DP retraining on digits: holdout accuracy at epsilon 1, 3, 8 beside non-private training.

Runs on the host (no Docker) by calling the guest's own functions
(`sandbox.guest.dp_train`): the example MLP (`examples/digits_mlp/model.py`) is
exported with torch.export exactly as `sandbox/guest/export.py` does, loaded back
with `load_program` (the provider's weights are discarded), re-initialised by the
platform rule and trained with DP-SGD on a stratified 80/20 split of scikit-learn's
digits (`split_holdout(0.2, seed 0)`: 1,438 train, 359 holdout; one holdout example
is 0.28 points). Delta is 1e-5; sigma comes from `sandbox.dp.plan.make_plan` with
the PRV accountant.

The baseline is the same exported graph, from the same platform initialisation,
trained without DP for the same number of epochs with the algorithm's own
hyperparameters (`algorithm.toml`: Adam, batch 64, lr 3e-3), as its train.py does.

Targets: DP within 3, 1.5 and 0.5 points of the baseline at epsilon 1, 3 and 8; DP
training time at most 2x the baseline's for the same epochs. Time is reported as wall
clock and as this process's CPU time (one thread, so CPU time is the work done and
moves less when other jobs share the cores); the verdict uses CPU time. Every repeat draws fresh
OS-seeded randomness (as in production), and the variants run interleaved, the
leading one rotating per repeat, so machine noise hits all alike; the table gives
means, standard deviations and median times.

The per-epsilon settings in `TUNED` came from a grid over optimiser (Adam, SGD with
momentum 0.9), batch size (256-1437), lr, clip (0.01-3) and epochs (15-80) at 2-3
seeds; the notes in each entry say what won and by how much.

    .venv/bin/python -m bench.dp [--repeats 5] [--epochs 30] [--threads 1] [--json]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sandbox.demo import EXAMPLE_ALGORITHM, sample_dataset
from sandbox.dp.plan import DPPlan, DPSettings, Hints, make_plan
from sandbox.guest import dp_train
from sandbox.pipeline.dataset import Dataset, split_holdout

DELTA = 1e-5
TARGET_GAP = {1.0: 3.0, 3.0: 1.5, 8.0: 0.5}  # points of holdout accuracy
TARGET_TIME_RATIO = 2.0
# Non-private baseline: the algorithm's own hyperparameters (algorithm.toml).
BASE_BATCH, BASE_LR = 64, 3e-3

# Per-epsilon DP settings (one policy per epsilon). Epochs are set by --epochs for all.
TUNED: dict[float, dict[str, Any]] = {
    # SGD+momentum beat Adam by ~1 point here; batch 512 beat 256 and 1024.
    8.0: {"optimizer": "sgd", "momentum": 0.9, "batch": 512, "lr": 1.0, "clip": 1.0},
    # lr 0.3 beat 1.0 (noise is 2x larger); Adam lr 0.01-0.03 was ~1 point lower.
    3.0: {"optimizer": "sgd", "momentum": 0.9, "batch": 512, "lr": 0.3, "clip": 1.0},
    # the largest batches win at epsilon 1 (sigma ~19): q 0.71, 42 steps at 30 epochs.
    1.0: {"optimizer": "sgd", "momentum": 0.9, "batch": 1024, "lr": 0.3, "clip": 1.0},
}


@dataclass(frozen=True)
class Run:
    variant: str
    accuracy: float
    seconds: float  # wall clock of the training loop
    cpu: float  # CPU time of this process over the same loop: steadier on a shared machine


def load_example() -> tuple[Dataset, Dataset]:
    x, y = sample_dataset("digits")
    full = Dataset(x=x, y=y, num_classes=10, input_shape=(64,))
    return split_holdout(full, 0.2, 0)


def export_example(directory: Path) -> Path:
    """build_model from the example package, captured as sandbox/guest/export.py does."""
    spec = importlib.util.spec_from_file_location("digits_model", EXAMPLE_ALGORITHM / "model.py")
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot import {EXAMPLE_ALGORITHM / 'model.py'}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    torch.manual_seed(0)
    model = module.build_model((64,), 10)
    model.eval()
    batch = torch.export.Dim("batch", min=1, max=65536)
    program = torch.export.export(
        model, (torch.zeros((2, 64), dtype=torch.float32),), dynamic_shapes=({0: batch},)
    )
    path = directory / "model.pt2"
    torch.export.save(program, str(path))
    return path


def accuracy(
    module: torch.nn.Module, params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor
) -> float:
    with torch.no_grad():
        logits = torch.func.functional_call(module, params, (x,), strict=True)
    return float((logits.argmax(1) == y).float().mean())


def train_non_private(
    module: torch.nn.Module,
    initial: dict[str, torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    epochs: int,
    generator: torch.Generator,
) -> tuple[dict[str, torch.Tensor], float]:
    """Minibatch Adam over shuffled epochs: what the example's train.py does."""
    params = {k: v.clone().requires_grad_(True) for k, v in initial.items()}
    optimizer = torch.optim.Adam(list(params.values()), lr=BASE_LR)
    n = x.shape[0]
    start = time.perf_counter()
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator)
        for first in range(0, n, BASE_BATCH):
            idx = order[first : first + BASE_BATCH]
            logits = torch.func.functional_call(module, params, (x[idx],), strict=True)
            loss = torch.nn.functional.cross_entropy(logits, y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    seconds = time.perf_counter() - start
    return {k: v.detach() for k, v in params.items()}, seconds


def dp_plan(epsilon: float, epochs: int, n: int, accountant: str) -> DPPlan:
    tuned = TUNED[epsilon]
    settings = DPSettings(
        epsilon=epsilon,
        delta=DELTA,
        accountant="rdp" if accountant == "rdp" else "prv",
        clip=tuned["clip"],
        epochs=(1, 1000),
        batch_size=(1, 65536),
        lr=(1e-5, 100.0),
        default_epochs=epochs,
        default_batch_size=tuned["batch"],
        default_lr=tuned["lr"],
        optimizer=tuned["optimizer"],
        momentum=tuned["momentum"],
        chunk=256,  # vmap 256 examples at a time: fastest here (cache-sized), 512+ is slower
    )
    return make_plan(settings, Hints(), n)


def rotated(items: list[str], offset: int) -> list[str]:
    k = offset % len(items) if items else 0
    return items[k:] + items[:k]


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |"]
    lines.append("|" + "|".join("-" * (w + 1) + ":" for w in widths) + "|")
    lines += [
        "| " + " | ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in rows
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--accountant", choices=["prv", "rdp"], default="prv")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    train, holdout = load_example()
    x, y = torch.from_numpy(train.x), torch.from_numpy(train.y)
    xt, yt = torch.from_numpy(holdout.x), torch.from_numpy(holdout.y)
    n = len(train)
    cpu = torch.device("cpu")
    with tempfile.TemporaryDirectory() as tmp:
        program, module = dp_train.load_program(str(export_example(Path(tmp))))
    shapes = dp_train.parameter_shapes(program)
    plans = {eps: dp_plan(eps, args.epochs, n, args.accountant) for eps in TUNED}
    configs = {eps: dp_train.DPConfig.from_json(p.to_json()) for eps, p in plans.items()}

    variants = ["non-private", *(f"eps={eps:g}" for eps in sorted(TUNED))]
    runs: list[Run] = []
    for repeat in range(args.repeats + 1):  # round 0 warms up and is discarded
        for variant in rotated(variants, repeat):
            initial = dp_train.platform_init(shapes, dp_train.make_generator(cpu), cpu)
            cpu_start = time.process_time()
            if variant == "non-private":
                shuffle = torch.Generator().manual_seed(dp_train.os_seed())
                params, seconds = train_non_private(module, initial, x, y, args.epochs, shuffle)
            else:
                eps = float(variant.removeprefix("eps="))
                result = dp_train.train(
                    module,
                    initial,
                    x,
                    y,
                    configs[eps],
                    sample_generator=dp_train.make_generator(cpu),
                    noise_generator=dp_train.make_generator(cpu),
                )
                params, seconds = result.params, result.seconds
            cpu_seconds = time.process_time() - cpu_start
            if repeat > 0:
                runs.append(Run(variant, accuracy(module, params, xt, yt), seconds, cpu_seconds))

    def stats(variant: str) -> tuple[list[float], float, float]:
        mine = [r for r in runs if r.variant == variant]
        return (
            [r.accuracy for r in mine],
            statistics.median(r.seconds for r in mine),
            statistics.median(r.cpu for r in mine),
        )

    base_acc, base_time, base_cpu = stats("non-private")
    base_mean = statistics.mean(base_acc)
    rows: list[list[str]] = []
    results: list[dict[str, Any]] = []
    for variant in variants:
        accs, seconds, cpu_seconds = stats(variant)
        mean = statistics.mean(accs)
        std = statistics.stdev(accs) if len(accs) > 1 else 0.0
        row: dict[str, Any] = {
            "variant": variant,
            "accuracy_mean": mean,
            "accuracy_std": std,
            "accuracy_min": min(accs),
            "accuracy_max": max(accs),
            "seconds_median": seconds,
            "cpu_seconds_median": cpu_seconds,
            "time_ratio": seconds / base_time,
            "cpu_ratio": cpu_seconds / base_cpu,
        }
        if variant == "non-private":
            setting = f"Adam, batch {BASE_BATCH}, lr {BASE_LR:g}"
            gap_text, target, verdict = "", "", ""
            ratio_text = "1.00x / 1.00x"
        else:
            eps = float(variant.removeprefix("eps="))
            plan = plans[eps]
            gap = (base_mean - mean) * 100
            setting = (
                f"{plan.optimizer}{' m0.9' if plan.momentum else ''}, batch "
                f"{plan.expected_batch_size:.0f} (q {plan.sample_rate:.3f}), lr {plan.lr:g}, "
                f"C {plan.clip:g}, sigma {plan.noise_multiplier:.2f}, {plan.steps} steps"
            )
            gap_text = f"{gap:.1f}"
            ratio = cpu_seconds / base_cpu
            ratio_text = f"{seconds / base_time:.2f}x / {ratio:.2f}x"
            ok_gap, ok_time = gap <= TARGET_GAP[eps], ratio <= TARGET_TIME_RATIO
            target = f"<= {TARGET_GAP[eps]:g} pts, <= {TARGET_TIME_RATIO:g}x"
            verdict = f"{'met' if ok_gap else 'MISSED'} / {'met' if ok_time else 'MISSED'}"
            row.update(
                epsilon=plan.epsilon,
                delta=plan.delta,
                plan=plan.summary(),
                gap_points=gap,
            )
        results.append(row)
        rows.append(
            [
                variant,
                f"{row.get('epsilon', float('inf')):.4g}",
                setting,
                f"{mean * 100:.1f} ± {std * 100:.1f}",
                f"{min(accs) * 100:.1f}-{max(accs) * 100:.1f}",
                gap_text,
                f"{seconds:.2f} / {cpu_seconds:.2f}",
                ratio_text,
                target,
                verdict,
            ]
        )
    header = [
        "variant",
        "epsilon spent",
        "setting",
        "holdout acc % (mean ± sd)",
        "min-max",
        "gap (pts)",
        "train s, wall / CPU (median)",
        "vs non-private, wall / CPU",
        "target",
        "accuracy / time",
    ]
    if args.json:
        print(json.dumps({"epochs": args.epochs, "repeats": args.repeats, "runs": results}))
        return
    print(
        f"digits, {n} train / {len(holdout)} holdout, {args.epochs} epochs, delta {DELTA:g}, "
        f"{args.accountant.upper()} accountant, {args.repeats} repeats, "
        f"{torch.get_num_threads()} thread(s)\n"
    )
    print(markdown_table(header, rows))


if __name__ == "__main__":
    main()
