"""Low-bit weight scan throughput on a model-shaped F32 model: reference scan vs the new one.

Builds a model in memory shaped like a transformer checkpoint (300 norm vectors of
1,024 values, 300 biases of 512, then 16 MiB F32 matrices up to `--mb` MiB; values
N(0, 0.05), so the low mantissa bits are as close to random as honest weights get)
and times, round after round with the leading variant rotating, three ways to
compute the statistics the three low-bit checks read:

- reference: the scan as first written (`lowbits_reference`), one tensor at a time,
  as `weights.scan_low_bits` used to call it;
- new, 1 process: `scan_tensors(..., workers=1)`;
- new, pipeline: `weights.scan_low_bits`, exactly what step 4 runs (two processes
  when the model has over 32 MiB of F32 and the machine two usable cores).

The first round also checks that all three give identical statistics. Reports the
median seconds of `--runs` rounds, GB/s (1e9 bytes of F32 data per second) and the
speed relative to the reference, with the load average before and after: on a
shared 2-core VM other work takes cores, so read ratios measured in one run. CPU
seconds (this process and the forked child) say what the scan costs whatever the
load: GB per CPU second is the speed one idle core would give.

    .venv/bin/python -m bench.scan_throughput [--mb 1024] [--runs 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Mapping
from datetime import date

import numpy as np
import numpy.typing as npt

from sandbox.checks import weights
from sandbox.checks.lowbits import LowBitStats, scan_tensors
from sandbox.checks.lowbits_fork import usable_cores
from sandbox.checks.lowbits_reference import reference_low_bits_stats

_MIB = 1 << 20
Model = dict[str, npt.NDArray[np.float32]]
Scan = Callable[[Model], Mapping[str, LowBitStats]]


def build_model(total_mb: int, seed: int = 0) -> Model:
    """Small vectors first, then 2048 x 2048 matrices until `total_mb` MiB."""
    rng = np.random.default_rng(seed)
    shapes: dict[str, tuple[int, ...]] = {}
    for i in range(300):
        shapes[f"layers.{i}.norm.weight"] = (1024,)
        shapes[f"layers.{i}.bias"] = (512,)
    used = sum(int(np.prod(s)) * 4 for s in shapes.values())
    for i in range(max(total_mb * _MIB - used, 0) // (16 * _MIB)):
        shapes[f"layers.{i}.proj.weight"] = (2048, 2048)
    model: Model = {}
    for name, shape in shapes.items():
        values = rng.standard_normal(shape, dtype=np.float32)
        values *= np.float32(0.05)
        model[name] = values
    return model


def reference_scan(model: Model) -> dict[str, LowBitStats]:
    return {name: reference_low_bits_stats(model[name]) for name in weights.f32_names(model)}


def one_process_scan(model: Model) -> dict[str, LowBitStats]:
    return scan_tensors({name: model[name] for name in weights.f32_names(model)}, workers=1)


VARIANTS: dict[str, Scan] = {
    "reference": reference_scan,
    "new, 1 process": one_process_scan,
    "new, pipeline": weights.scan_low_bits,
}


def _same(a: Mapping[str, LowBitStats], b: Mapping[str, LowBitStats]) -> bool:
    if a.keys() != b.keys():
        return False
    return all(
        a[k].n == b[k].n
        and np.array_equal(a[k].ones, b[k].ones)
        and np.array_equal(a[k].pairs11, b[k].pairs11)
        and np.array_equal(a[k].byte_hist, b[k].byte_hist)
        and np.array_equal(a[k].byte_serial, b[k].byte_serial)
        for k in a
    )


def _cpu_seconds() -> float:
    """CPU time of this process and of its waited-for children (the forked half)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def measure(model: Model, runs: int) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Wall and CPU seconds per variant per round; the leading variant rotates."""
    names = list(VARIANTS)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    results: dict[str, Mapping[str, LowBitStats]] = {}
    for round_ in range(runs):
        order = names[round_ % len(names) :] + names[: round_ % len(names)]
        for name in order:
            start, cpu_start = time.perf_counter(), _cpu_seconds()
            out = VARIANTS[name](model)
            seconds[name].append(time.perf_counter() - start)
            cpu[name].append(_cpu_seconds() - cpu_start)
            if round_ == 0:
                results[name] = out
        if round_ == 0:
            first = results["reference"]
            for name, out in results.items():
                if not _same(first, out):
                    raise SystemExit(f"{name} disagrees with the reference scan: a bug, not noise")
            results.clear()
    return seconds, cpu


def _cpu() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=1024, help="model size in MiB of F32")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    model = build_model(args.mb)
    nbytes = sum(v.nbytes for v in model.values())
    load_before = os.getloadavg()
    seconds, cpu = measure(model, args.runs)
    load_after = os.getloadavg()
    median = {name: statistics.median(s) for name, s in seconds.items()}
    rows = {
        name: {
            "seconds": round(median[name], 3),
            "gb_per_s": round(nbytes / median[name] / 1e9, 3),
            "vs_reference": round(median["reference"] / median[name], 2),
            "cpu_seconds": round(statistics.median(cpu[name]), 3),
            "gb_per_cpu_s": round(nbytes / statistics.median(cpu[name]) / 1e9, 3),
            "runs": [round(s, 3) for s in seconds[name]],
        }
        for name in seconds
    }
    info = {
        "date": date.today().isoformat(),
        "machine": f"{_cpu()}, {usable_cores()} usable cores",
        "numpy": np.__version__,
        "model_bytes": nbytes,
        "tensors": len(model),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in load_after],
        "variants": rows,
    }
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(
        f"{info['date']}, {info['machine']}, numpy {np.__version__}; load average "
        f"{load_before[0]:.2f} before, {load_after[0]:.2f} after"
    )
    print(
        f"model: {nbytes / 1e9:.3f} GB of F32 in {len(model)} tensors, "
        f"median of {args.runs} rounds"
    )
    print("| variant | seconds | GB/s | vs reference | CPU s | GB per CPU s | rounds (s) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | --- |")
    for name, row in rows.items():
        print(
            f"| {name} | {row['seconds']} | {row['gb_per_s']} | {row['vs_reference']}x | "
            f"{row['cpu_seconds']} | {row['gb_per_cpu_s']} | "
            f"{', '.join(str(s) for s in row['runs'])} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
