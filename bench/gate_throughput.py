"""Egress gate throughput, measured next to the two floors it cannot beat.

Builds a model-shaped safetensors file (mostly large F32 matrices, some F16/BF16,
a few hundred small bias/norm tensors, stored in a shuffled order so the gate must
reorder), then, round by round, times: the gate (validation + value scan + canonical
write + fsync + sha256), shutil.copyfile (with and without fsync) and hashlib.sha256
over the same file. Reports medians and the gate's speed as a ratio of each.

The gate's sha256 runs on its own thread, so its floor is roughly max(sha256, write).
copyfile without fsync only fills the page cache; the gate's figure includes the
fsync (it writes with O_DIRECT where the filesystem allows it), so copyfile+fsync is
the fair comparison. One warm-up gate run precedes the timed rounds; on a VM whose
host reclaims freed guest memory the first touch of new memory is slow, so single
runs vary - look at the median.

    python bench/gate_throughput.py [--mb 1024] [--runs 3] [--dir /tmp]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from sandbox.gate import MODEL_FILENAME, TensorSpec, gate_output
from sandbox.policy.model import GateRules

_MIB = 1 << 20
_NP_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16}


def plan_tensors(total_mb: int) -> dict[str, TensorSpec]:
    """A transformer-like mix: 16 MiB F32 matrices, some half-precision, many small."""
    specs: dict[str, TensorSpec] = {}
    for i in range(300):
        specs[f"layers.{i}.norm.weight"] = TensorSpec("F32", (1024,))
        specs[f"layers.{i}.bias"] = TensorSpec("F16", (512,))
    used = sum(s.nbytes for s in specs.values())
    budget = max(total_mb * _MIB - used, 0)
    big = 16 * _MIB
    for i in range(budget // big):
        dtype = ("F32", "F32", "F16", "BF16")[i % 4]
        cols = big // (2048 * (4 if dtype == "F32" else 2))
        specs[f"layers.{i}.proj.weight"] = TensorSpec(dtype, (2048, cols))
    return specs


def _values(spec: TensorSpec, base: np.ndarray, scale: float) -> bytes:
    count = spec.nbytes // {"F32": 4}.get(spec.dtype, 2)
    floats = base[:count] * np.float32(scale)
    if spec.dtype == "BF16":
        return (floats.view(np.uint32) >> 16).astype("<u2").tobytes()
    return floats.astype(_NP_DTYPES[spec.dtype]).tobytes()


def write_model(path: Path, specs: dict[str, TensorSpec]) -> None:
    """Stream a valid safetensors file with tensors in a shuffled, non-canonical order."""
    order = list(specs)
    random.Random(0).shuffle(order)
    header: dict[str, object] = {}
    offset = 0
    for name in order:
        spec = specs[name]
        header[name] = {
            "dtype": spec.dtype,
            "shape": list(spec.shape),
            "data_offsets": [offset, offset + spec.nbytes],
        }
        offset += spec.nbytes
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    base = np.random.default_rng(0).standard_normal(8 * _MIB, dtype=np.float32)
    with path.open("wb") as f:
        f.write(len(text).to_bytes(8, "little") + text)
        for i, name in enumerate(order):
            f.write(_values(specs[name], base, 0.01 * (1 + i % 7)))
        f.flush()
        os.fsync(f.fileno())


def _timed(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    buffer = memoryview(bytearray(16 * _MIB))
    with path.open("rb", buffering=0) as f:
        while n := f.readinto(buffer):
            digest.update(buffer[:n])
    return digest.hexdigest()


def _copy_fsync(src: Path, dst: Path) -> None:
    shutil.copyfile(src, dst)
    fd = os.open(dst, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=1024, help="model size in MiB")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=Path("/tmp"))
    args = parser.parse_args()

    specs = plan_tensors(args.mb)
    rules = GateRules(max_model_mb=args.mb + 16, max_header_kb=4096, dtypes=("F32", "F16", "BF16"))
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="gate-bench-") as tmp:
        root = Path(tmp)
        out = root / "output"
        out.mkdir()
        model = out / MODEL_FILENAME
        write_model(model, specs)
        size = model.stat().st_size
        dest, copy = root / "canonical.safetensors", root / "copy.bin"
        timings: dict[str, list[float]] = {"gate": [], "copy": [], "copy+fsync": [], "sha256": []}
        result = gate_output(out, specs, rules, dest)  # warm-up: page cache, allocator
        for _ in range(args.runs):
            dest.unlink()
            timings["gate"].append(_timed(lambda: gate_output(out, specs, rules, dest)))
            timings["copy"].append(_timed(lambda: shutil.copyfile(model, copy)))
            copy.unlink()
            timings["copy+fsync"].append(_timed(lambda: _copy_fsync(model, copy)))
            copy.unlink()
            timings["sha256"].append(_timed(lambda: _sha256_file(model)))
        assert _sha256_file(dest) == result.sha256

    speed = {k: size / statistics.median(v) / 1e9 for k, v in timings.items()}
    print(f"file: {size / 1e9:.3f} GB, {len(specs)} tensors, median of {args.runs} runs")
    for key, value in speed.items():
        runs = ", ".join(f"{t:.3f}" for t in timings[key])
        print(f"  {key:<11} {value:6.2f} GB/s   (seconds: {runs})")
    print(
        f"SUMMARY gate {speed['gate']:.2f} GB/s on {size / 1e9:.2f} GB = "
        f"{speed['gate'] / speed['copy']:.2f}x copyfile, "
        f"{speed['gate'] / speed['copy+fsync']:.2f}x copyfile+fsync, "
        f"{speed['gate'] / speed['sha256']:.2f}x sha256 "
        f"({'meets' if speed['gate'] >= 1.0 else 'misses'} the 1 GB/s target)"
    )


if __name__ == "__main__":
    main()
