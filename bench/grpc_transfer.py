"""gRPC transfer over mTLS on loopback: upload and download throughput, the server's peak
RSS growth while it streams, and metadata RPC latency.

The server runs as a separate process (`--serve`, started by this script) so its
memory is measured alone, from /proc/PID/status (VmHWM, the peak resident set;
reset between phases through /proc/PID/clear_refs). Its jobs go through an
executor that releases a model of `--mb` MB without containers, so the download
moves as many bytes as the upload. Dataset validation runs in a child process of
the server (by design: it loads the arrays); its memory is reported separately.

    python bench/grpc_transfer.py [--mb 1024] [--rpcs 1000] [--runs 3] [--json]
                                  [--baseline DIR]

`--baseline DIR` measures another checkout (e.g. `git worktree add /tmp/base HEAD~2`)
in alternation with this one, run for run, so that both see the same load on a
shared machine; the 1-minute load average at the start of each run is reported.

Targets: >= 200 MB/s each way (MB = 10**6 bytes), peak RSS growth < 100 MB,
metadata p50/p99 reported.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from sandbox.api.gen.sandbox.v1 import job_pb2, policy_pb2  # noqa: E402
from sandbox.client.config import load_config  # noqa: E402
from sandbox.client.connection import Client  # noqa: E402
from sandbox.demo import EXAMPLE_ALGORITHM  # noqa: E402
from sandbox.pipeline.report import Report  # noqa: E402
from sandbox.policy.model import Policy  # noqa: E402
from sandbox.service.executor import Progress  # noqa: E402
from sandbox.store import Role  # noqa: E402

MB = 10**6
TARGET_MB_S = 200.0
TARGET_RSS_MB = 100.0


class BigModelExecutor:
    """Releases a random model of `size` bytes: the download path at full size."""

    def __init__(self, size: int) -> None:
        self.size = size

    def run(
        self,
        *,
        job_id: str,
        algorithm: Path,
        dataset: Path,
        policy: Policy,
        out_dir: Path,
        progress: Progress,
        gpu_device: str | None,
    ) -> Report:
        out_dir.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        block = os.urandom(1 << 20)
        with open(out_dir / "model.safetensors", "wb") as handle:
            left = self.size
            while left > 0:
                piece = block[: min(left, len(block))]
                handle.write(piece)
                digest.update(piece)
                left -= len(piece)
        report = Report(job_id=job_id, policy={"name": policy.name, "sha256": "0" * 64})
        report.decision = "released"
        report.model = {"sha256": digest.hexdigest(), "bytes": self.size}
        (out_dir / "report.json").write_text(report.to_json())
        return report

    def stop(self, job_id: str) -> None:
        pass

    def reconcile(self, job_ids: set[str]) -> list[str]:
        return []


def serve(state: Path, model_bytes: int) -> None:
    from sandbox.server import start_server
    from sandbox.service.platform import Limits

    limits = Limits(max_dataset_bytes=8 << 30, max_model_bytes=8 << 30)
    server = start_server(state, executor=BigModelExecutor(model_bytes), limits=limits)
    print(server.port, flush=True)
    sys.stdin.read()  # until the parent closes our stdin
    server.stop()


def _status(pid: int) -> dict[str, int]:
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) * 1024
    return values


def _reset_peak(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def write_dataset(path: Path, size_mb: int) -> int:
    features = 1024
    n = max(size_mb * MB // (features * 4), 10)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, features), dtype=np.float32)
    y = (np.arange(n) % 10).astype(np.int64)
    with open(path, "wb") as handle:
        np.savez(handle, x=x, y=y)
    return path.stat().st_size


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, int(round(q * len(ordered))) - 1)]


def run(size_mb: int, rpcs: int, workdir: Path) -> dict[str, Any]:
    from sandbox.service.state import init_state

    load_avg = os.getloadavg()[0]
    configs = init_state(workdir / "state", [("owner", Role.DATA_OWNER), ("prov", Role.PROVIDER)])
    dataset = workdir / "data.npz"
    size = write_dataset(dataset, size_mb)
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(workdir / "state"), "--model-bytes", str(size)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())

        def client(name: str) -> Client:
            config = replace(load_config(configs[name]), address=f"127.0.0.1:{port}")
            return Client(config, progress=False)

        owner, provider = client("owner"), client("prov")
        owner.list_policies()  # connect and warm up
        base = _status(server.pid)["VmRSS"]
        _reset_peak(server.pid)
        t0 = time.perf_counter()
        uploaded = owner.upload_dataset(dataset, "bench")
        upload_s = time.perf_counter() - t0
        upload_peak = _status(server.pid)["VmHWM"] - base

        algorithm = provider.upload_algorithm(EXAMPLE_ALGORITHM)
        job = owner.submit(uploaded.id, algorithm.id, "default")
        final = owner.wait(job.id, timeout_s=600)
        assert final.decision == "released", final
        base = _status(server.pid)["VmRSS"]
        _reset_peak(server.pid)
        t0 = time.perf_counter()
        result = provider.download_model(job.id, workdir / "model.bin")
        download_s = time.perf_counter() - t0
        download_peak = _status(server.pid)["VmHWM"] - base
        assert result["verified"]

        latencies: dict[str, list[float]] = {"GetJob": [], "ListJobs": [], "ListPolicies": []}
        calls = {
            "GetJob": (owner.jobs.GetJob, job_pb2.GetJobRequest(id=job.id)),
            "ListJobs": (owner.jobs.ListJobs, job_pb2.ListJobsRequest(page_size=50)),
            "ListPolicies": (owner.policies.ListPolicies, policy_pb2.ListPoliciesRequest()),
        }
        for i in range(rpcs):
            name = list(calls)[i % len(calls)]
            method, request = calls[name]
            t0 = time.perf_counter()
            method(request, timeout=10)
            latencies[name].append(time.perf_counter() - t0)
        owner.close()
        provider.close()
    finally:
        if server.stdin:
            server.stdin.close()
        server.wait(30)
    every = [v for values in latencies.values() for v in values]
    return {
        "bytes": size,
        "upload_mb_s": size / MB / upload_s,
        "upload_s": upload_s,
        "download_mb_s": size / MB / download_s,
        "download_s": download_s,
        "upload_rss_growth_mb": upload_peak / MB,
        "download_rss_growth_mb": download_peak / MB,
        "rpc_p50_ms": statistics.median(every) * 1000,
        "rpc_p99_ms": percentile(every, 0.99) * 1000,
        "rpc_by_method_ms": {
            name: {
                "p50": statistics.median(values) * 1000,
                "p99": percentile(values, 0.99) * 1000,
            }
            for name, values in latencies.items()
        },
        "rpcs": rpcs,
        "load_avg": load_avg,
    }


def run_baseline(root: Path, args: argparse.Namespace) -> dict[str, Any]:
    """One run of the checkout at `root` (its own bench script, its own code)."""
    env = dict(os.environ, PYTHONPATH=str(root))
    command = [sys.executable, "-P", str(root / "bench" / "grpc_transfer.py")]
    command += ["--mb", str(args.mb), "--rpcs", str(args.rpcs), "--runs", "1", "--json"]
    if args.dir:
        command += ["--dir", str(args.dir)]
    out = subprocess.run(command, env=env, check=True, capture_output=True, text=True, cwd="/")
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Each number is the median over the runs (peak RSS growth: the largest)."""
    result = dict(runs[0])
    for key, value in runs[0].items():
        if isinstance(value, float):
            values = [r[key] for r in runs]
            result[key] = max(values) if "rss" in key else statistics.median(values)
    result["runs"] = len(runs)
    result["all_runs"] = [
        {k: round(v, 2) for k, v in r.items() if k.endswith(("mb_s", "mb", "load_avg"))}
        for r in runs
    ]
    return result


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def table(r: dict[str, Any]) -> str:
    rows = [
        "| measure | value | target |",
        "| --- | ---: | --- |",
        f"| upload {r['bytes'] / MB:,.0f} MB (hash, send, validate, encrypt, store) "
        f"| {r['upload_mb_s']:.0f} MB/s ({r['upload_s']:.1f} s) "
        f"| >= {TARGET_MB_S:.0f} MB/s: {verdict(r['upload_mb_s'] >= TARGET_MB_S)} |",
        f"| download (stream, verify sha256) | {r['download_mb_s']:.0f} MB/s "
        f"({r['download_s']:.1f} s) | >= {TARGET_MB_S:.0f} MB/s: "
        f"{verdict(r['download_mb_s'] >= TARGET_MB_S)} |",
        f"| server peak RSS growth, upload | {r['upload_rss_growth_mb']:.1f} MB "
        f"| < {TARGET_RSS_MB:.0f} MB: {verdict(r['upload_rss_growth_mb'] < TARGET_RSS_MB)} |",
        f"| server peak RSS growth, download | {r['download_rss_growth_mb']:.1f} MB "
        f"| < {TARGET_RSS_MB:.0f} MB: {verdict(r['download_rss_growth_mb'] < TARGET_RSS_MB)} |",
        f"| metadata RPC p50 / p99 ({r['rpcs']} sequential, median of runs) "
        f"| {r['rpc_p50_ms']:.2f} / {r['rpc_p99_ms']:.2f} ms | reported |",
    ]
    rows.append(
        f"\nmedian of {r['runs']} runs; peak RSS growth: the largest of the runs; "
        f"load average {_range([run['load_avg'] for run in r['all_runs']])}"
    )
    return "\n".join(rows)


def _range(values: list[float]) -> str:
    return f"{min(values):.1f}-{max(values):.1f}"


def compared(r: dict[str, Any], base: dict[str, Any], root: Path) -> str:
    pairs = ", ".join(
        f"{b['upload_mb_s']:.0f} vs {n['upload_mb_s']:.0f}"
        for b, n in zip(base["all_runs"], r["all_runs"], strict=True)
    )
    return (
        f"\nbaseline {root}, alternated run for run: upload {base['upload_mb_s']:.0f} MB/s, "
        f"download {base['download_mb_s']:.0f} MB/s, server RSS growth "
        f"{base['upload_rss_growth_mb']:.1f} / {base['download_rss_growth_mb']:.1f} MB "
        f"(upload MB/s per run, baseline vs this: {pairs})"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mb", type=int, default=1024, help="dataset size in MB")
    parser.add_argument("--rpcs", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3, help="report the median of the runs")
    parser.add_argument("--dir", type=Path, help="work directory (default: a temp dir)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--baseline", type=Path, help="another checkout, measured alternately")
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--model-bytes", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.model_bytes)
        return 0
    runs, base_runs = [], []
    for _ in range(args.runs):
        if args.baseline:
            base_runs.append(run_baseline(args.baseline.resolve(), args))
        with tempfile.TemporaryDirectory(prefix="bench-grpc-", dir=args.dir) as tmp:
            runs.append(run(args.mb, args.rpcs, Path(tmp)))
    result = median_of(runs)
    if args.baseline:
        result["baseline"] = median_of(base_runs)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(table(result))
        if args.baseline:
            print(compared(result, result["baseline"], args.baseline))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
