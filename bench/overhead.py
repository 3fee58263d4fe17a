"""Steady-state and whole-job overhead of the sandbox runtimes against bare metal.

Runs the same fixed CPU training job (bench/workloads/train_mlp.py: an MLP on
synthetic data, one thread, fixed seed and number of steps) three ways:

* bare:  a host process via ProcessRunner (isolates nothing; the baseline),
* runc:  a hardened container via DockerRunner, spec from `guest_spec(policy)`,
* runsc: the same spec with the runtime switched to gVisor.

Variants are interleaved round by round (the starting variant rotates) so that
noise on a shared machine hits all of them alike. For every run it records the
host wall time from just before `runner.start` until `runner.wait` returns, and
the in-guest time of the training loop alone; the guest also stamps its first
statement, the end of `import torch`, the start and end of the loop and its
last statement, so the wall time splits into phases:

    boot    host start -> first statement (container create/start + python start)
    import  `import torch`
    setup   data and model construction, first-op initialisation
    loop    the training loop (the steady-state number)
    finish  evaluation after the loop
    exit    last statement -> `wait` returns (interpreter teardown, container stop)

Reports medians and the ratios runc/bare and runsc/bare for the loop and for the
whole wall time, against the targets runc <= 1.10x and runsc <= 1.30x.

    python -m bench.overhead [--repeats 3] [--seconds 20] [--json]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: make `sandbox` and `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

WORKLOADS = Path(__file__).resolve().parent / "workloads"
GUEST_WORKLOADS = "/algorithm"  # where the workload directory is mounted in containers
# Training steps per second of train_mlp.py with one thread, measured bare on the
# reference machine (2-core AMD EPYC VM, torch 2.13.0+cpu): `--seconds` scales by it.
STEPS_PER_SECOND = 145.0
VARIANTS = ("bare", "runc", "runsc")
TARGETS = {"runc": 1.10, "runsc": 1.30}
PHASES = ("boot", "import", "setup", "loop", "finish", "exit")
_LINE = re.compile(r"^BENCH (\w+) (.*)$")

Log = Callable[[str], None]


def stderr_log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


# ------------------------------------------------------------------ pure helpers


def median(values: Iterable[float | None]) -> float | None:
    """Median of the values that are not None; None when there are none."""
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator <= 0:
        return None
    return numerator / denominator


def fmt(value: float | None, digits: int = 2, suffix: str = "") -> str:
    return "n/a" if value is None else f"{value:.{digits}f}{suffix}"


def verdict(value: float | None, target: float | None) -> str:
    if value is None or target is None:
        return ""
    return "met" if value <= target else "MISSED"


def rotated(items: Sequence[str], round_index: int) -> list[str]:
    """`items` starting at position round_index (mod len): interleaving without a fixed lead."""
    if not items:
        return []
    k = round_index % len(items)
    return [*items[k:], *items[:k]]


def steps_for(seconds: float) -> int:
    return max(1, round(seconds * STEPS_PER_SECOND))


def parse_bench_lines(logs: bytes | str) -> dict[str, Any]:
    """The `BENCH <key> <value>` lines a workload printed: floats, or JSON for `result`."""
    text = logs.decode("utf-8", "replace") if isinstance(logs, bytes) else logs
    found: dict[str, Any] = {}
    for line in text.splitlines():
        match = _LINE.match(line.strip())
        if not match:
            continue
        key, value = match.groups()
        if key == "result":
            found[key] = json.loads(value)
        else:
            try:
                found[key] = float(value)
            except ValueError:
                found[key] = value
    return found


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A GitHub markdown table; numbers are right-aligned."""
    body = [[str(c) for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in body:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    numeric = [bool(body) and all(_numeric(row[i]) for row in body) for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        parts = [
            c.rjust(widths[i]) if numeric[i] else c.ljust(widths[i]) for i, c in enumerate(cells)
        ]
        return "| " + " | ".join(parts) + " |"

    rule = (
        "|"
        + "|".join(
            "-" * (w + 1) + ":" if numeric[i] else "-" * (w + 2) for i, w in enumerate(widths)
        )
        + "|"
    )
    return "\n".join([line(list(headers)), rule, *(line(r) for r in body)])


def _numeric(cell: str) -> bool:
    return bool(re.fullmatch(r"[-+]?[0-9.]+x?|n/a", cell))


def environment_table(info: Mapping[str, Any]) -> str:
    keys = ("date", "nproc", "cpu", "kernel", "docker", "runsc", "torch")
    return markdown_table(keys, [[info.get(k, "?") for k in keys]])


# ---------------------------------------------------------------- machine info


def cpu_model(cpuinfo: str | None = None) -> str:
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return platform.processor() or "unknown"
    for line in cpuinfo.splitlines():
        if line.lower().startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def nproc() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _command_version(command: Sequence[str]) -> str:
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "unavailable"
    first = (out.stdout or out.stderr).strip().splitlines()
    return first[0] if first else "unavailable"


def machine_info(client: Any = None) -> dict[str, Any]:
    """Date, CPUs, kernel and the versions a reader needs to compare runs."""
    info: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": nproc(),
        "cpu": cpu_model(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "docker": "unavailable",
        "runsc": "unavailable",
        "torch": _torch_version(),
    }
    runsc_path = shutil.which("runsc") or "runsc"
    if client is not None:
        try:
            info["docker"] = client.version().get("Version", "unknown")
            runtimes = client.info().get("Runtimes", {})
            runsc_path = runtimes.get("runsc", {}).get("path", runsc_path)
        except Exception:
            pass
    version = _command_version([runsc_path, "--version"])
    info["runsc"] = version.removeprefix("runsc version ").strip()
    return info


def _torch_version() -> str:
    try:
        from importlib.metadata import version

        return version("torch")
    except Exception:
        return "unknown"


# ----------------------------------------------------------------- running jobs


@dataclass
class Timed:
    """One run of a workload, stamped on the host (time.time()) and parsed from its logs."""

    t_start: float  # just before runner.start
    t_started: float  # runner.start returned (container created and started)
    t_exited: float  # runner.wait returned
    removal_s: float
    exit_code: int | None
    ok: bool
    stamps: dict[str, Any] = field(default_factory=dict)
    logs_tail: str = ""

    @property
    def wall_s(self) -> float:
        return self.t_exited - self.t_start


def run_timed(runner: Any, spec: Any) -> Timed:
    """Start, wait, read the logs and remove, stamping each edge on the host clock."""
    t_start = time.time()
    handle = runner.start(spec)
    t_started = time.time()
    try:
        status = runner.wait(handle, spec.resources.wall_seconds)
        t_exited = time.time()
        logs = runner.logs(handle, spec.resources.log_kb * 1024)
    finally:
        t_remove = time.time()
        runner.remove(handle)
        removal_s = time.time() - t_remove
    text = logs.decode("utf-8", "replace")
    return Timed(
        t_start=t_start,
        t_started=t_started,
        t_exited=t_exited,
        removal_s=removal_s,
        exit_code=status.exit_code,
        ok=status.ok,
        stamps=parse_bench_lines(text),
        logs_tail="" if status.ok else text[-2000:],
    )


def bench_policy(name: str, runtime: str, *, cpus: float, wall_seconds: int) -> Any:
    """A shipped policy with the runtime set and the limits raised for the benchmark."""
    from sandbox.policy.load import load_policy

    policy = load_policy(name)
    limits = policy.limits.model_copy(
        update={"cpus": cpus, "wall_seconds": max(policy.limits.wall_seconds, wall_seconds)}
    )
    return policy.model_copy(update={"runtime": runtime, "limits": limits})


def stage_workloads(workspace: Any) -> Path:
    """Copy bench/workloads/*.py into a fresh tmpfs of the job (mounted read-only later)."""
    target = workspace.tmpfs("algorithm", 16)
    for source in sorted(WORKLOADS.glob("*.py")):
        dest = target / source.name
        shutil.copyfile(source, dest)
        dest.chmod(0o644)
    return target


@dataclass
class Backends:
    """The runner and spec factory of each variant, sharing one workspace."""

    runners: dict[str, Any]
    image: str
    policies: dict[str, Any]
    host_workloads: Path
    info: dict[str, Any]

    def spec(self, variant: str, job_id: str, script: str, args: Sequence[str]) -> Any:
        from sandbox.pipeline.containers import guest_spec
        from sandbox.runner.base import BindMount

        policy = self.policies["runc" if variant == "bare" else variant]
        spec = guest_spec(
            policy,
            job_id=job_id,
            step="bench",
            image=self.image,
            module="train",  # replaced below: the command runs the bench workload
            mounts=[BindMount(self.host_workloads, GUEST_WORKLOADS)],
        )
        if variant == "bare":
            command = (sys.executable, "-P", str(self.host_workloads / script), *args)
        else:
            command = ("python", "-P", f"{GUEST_WORKLOADS}/{script}", *args)
        return replace(spec, command=command)


def open_backends(
    workspace: Any, policy_name: str, cpus: float, wall_seconds: int, log: Log
) -> Backends:
    from sandbox.runner.docker_runner import DockerRunner
    from sandbox.runner.images import ensure_runtime_image
    from sandbox.runner.process_runner import ProcessRunner

    docker_runner = DockerRunner()
    for runtime in ("runc", "runsc"):
        docker_runner.check_runtime(runtime)
    image = ensure_runtime_image(client=docker_runner.client, log=log)
    policies = {
        rt: bench_policy(policy_name, rt, cpus=cpus, wall_seconds=wall_seconds)
        for rt in ("runc", "runsc")
    }
    return Backends(
        runners={"bare": ProcessRunner(), "runc": docker_runner, "runsc": docker_runner},
        image=image,
        policies=policies,
        host_workloads=stage_workloads(workspace),
        info=machine_info(docker_runner.client),
    )


def bench_workspace() -> Any:
    from sandbox.runner.workspace import JobWorkspace, default_root

    return JobWorkspace(default_root().parent / "bench", f"bench-{uuid.uuid4().hex[:12]}")


# ---------------------------------------------------------------- this benchmark


def phases(run: Timed) -> dict[str, float | None]:
    """Split a run's wall time into PHASES using the guest's stamps (None if missing)."""
    s = run.stamps
    result = s.get("result", {})
    edges = [
        run.t_start,
        s.get("first_line"),
        s.get("imported"),
        result.get("t_loop_start"),
        result.get("t_loop_end"),
        result.get("t_end"),
        run.t_exited,
    ]
    out: dict[str, float | None] = {}
    for name, a, b in zip(PHASES, edges, edges[1:], strict=False):
        out[name] = None if a is None or b is None else b - a
    if result.get("loop_s") is not None:
        out["loop"] = float(result["loop_s"])  # perf_counter: the more precise figure
    return out


def sample_record(variant: str, round_index: int, run: Timed) -> dict[str, Any]:
    result = run.stamps.get("result", {})
    return {
        "variant": variant,
        "round": round_index,
        "ok": run.ok,
        "exit_code": run.exit_code,
        "wall_s": round(run.wall_s, 4),
        "loop_s": result.get("loop_s"),
        "loop_cpu_s": result.get("loop_cpu_s"),
        "final_loss": result.get("final_loss"),
        "steps": result.get("steps"),
        "threads": result.get("threads"),
        "start_api_s": round(run.t_started - run.t_start, 4),
        "removal_s": round(run.removal_s, 4),
        "phases": {k: (None if v is None else round(v, 4)) for k, v in phases(run).items()},
        "logs_tail": run.logs_tail,
    }


def summarize(samples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Medians per variant, ratios to bare, and the verdicts against TARGETS."""
    by_variant: dict[str, list[Mapping[str, Any]]] = {}
    for sample in samples:
        if sample["ok"]:
            by_variant.setdefault(sample["variant"], []).append(sample)
    summary: dict[str, Any] = {}
    for variant in VARIANTS:
        runs = by_variant.get(variant, [])
        summary[variant] = {
            "n": len(runs),
            "wall_s": median(r["wall_s"] for r in runs),
            "loop_s": median(r["loop_s"] for r in runs),
            "loop_cpu_s": median(r["loop_cpu_s"] for r in runs),
            "start_api_s": median(r["start_api_s"] for r in runs),
            "removal_s": median(r["removal_s"] for r in runs),
            "phases": {p: median(r["phases"].get(p) for r in runs) for p in PHASES},
            "wall_minus_loop_s": median(
                r["wall_s"] - r["loop_s"] for r in runs if r["loop_s"] is not None
            ),
        }
    bare = summary["bare"]
    for variant in ("runc", "runsc"):
        entry = summary[variant]
        target = TARGETS[variant]
        entry["loop_ratio"] = ratio(entry["loop_s"], bare["loop_s"])
        entry["wall_ratio"] = ratio(entry["wall_s"], bare["wall_s"])
        entry["target"] = target
        entry["loop_verdict"] = verdict(entry["loop_ratio"], target)
        entry["wall_verdict"] = verdict(entry["wall_ratio"], target)
        entry["fixed_extra_s"] = (
            None
            if entry["wall_minus_loop_s"] is None or bare["wall_minus_loop_s"] is None
            else entry["wall_minus_loop_s"] - bare["wall_minus_loop_s"]
        )
    losses = {s["final_loss"] for s in samples if s["ok"]}
    summary["identical_work"] = len(losses) == 1
    return summary


def results_table(summary: Mapping[str, Any]) -> str:
    headers = (
        "variant",
        "loop (s)",
        "loop x bare",
        "wall (s)",
        "wall x bare",
        "wall - loop (s)",
        "boot (s)",
        "import torch (s)",
        "setup (s)",
        "exit (s)",
        "target",
        "loop / wall",
    )
    rows = []
    for variant in VARIANTS:
        e = summary[variant]
        ph = e["phases"]
        target = e.get("target")
        rows.append(
            [
                variant,
                fmt(e["loop_s"]),
                fmt(e.get("loop_ratio"), 3, "x") if variant != "bare" else "1.000x",
                fmt(e["wall_s"]),
                fmt(e.get("wall_ratio"), 3, "x") if variant != "bare" else "1.000x",
                fmt(e["wall_minus_loop_s"]),
                fmt(ph["boot"]),
                fmt(ph["import"]),
                fmt(ph["setup"]),
                fmt(ph["exit"]),
                f"<= {target:.2f}x" if target else "baseline",
                f"{e.get('loop_verdict', '')} / {e.get('wall_verdict', '')}" if target else "-",
            ]
        )
    return markdown_table(headers, rows)


def render(info: Mapping[str, Any], config: Mapping[str, Any], summary: Mapping[str, Any]) -> str:
    lines = [
        f"### Runtime overhead: {config['steps']} training steps "
        f"(~{config['seconds']:g} s bare), median of {config['repeats']} interleaved rounds",
        "",
        environment_table(info),
        "",
        results_table(summary),
        "",
        "loop: in-guest time of the training loop (perf_counter); wall: host time from "
        "`runner.start` to `wait` returning; boot: to the script's first statement; "
        "setup: data, model, first ops; exit: last statement to `wait` returning. Policy "
        f"`{config['policy']}`, cpus={config['cpus']:g}, one thread."
        + ("" if summary["identical_work"] else " WARNING: final losses differ between runs."),
    ]
    return "\n".join(lines)


def run(
    repeats: int,
    seconds: float,
    *,
    steps: int | None = None,
    policy: str = "default",
    cpus: float = 1.0,
    warmup: bool = True,
    log: Log = stderr_log,
) -> dict[str, Any]:
    n_steps = steps if steps is not None else steps_for(seconds)
    seconds = n_steps / STEPS_PER_SECOND
    wall_limit = int(max(600, seconds * 20 + 300))
    samples: list[dict[str, Any]] = []
    with bench_workspace() as workspace:
        backends = open_backends(workspace, policy, cpus, wall_limit, log)
        job_id = workspace.job_id
        if warmup:  # page cache, image layers, lazy engine state: not measured
            for variant in VARIANTS:
                warm = run_timed(
                    backends.runners[variant],
                    backends.spec(variant, job_id, "train_mlp.py", ["--steps", "20"]),
                )
                log(f"warm-up {variant}: {warm.wall_s:.2f} s, ok={warm.ok}")
                if not warm.ok:
                    raise RuntimeError(f"warm-up of {variant} failed:\n{warm.logs_tail}")
        for round_index in range(repeats):
            for variant in rotated(VARIANTS, round_index):
                spec = backends.spec(variant, job_id, "train_mlp.py", ["--steps", str(n_steps)])
                record = sample_record(
                    variant, round_index, run_timed(backends.runners[variant], spec)
                )
                samples.append(record)
                log(
                    f"round {round_index + 1}/{repeats} {variant:<5} wall {record['wall_s']:.2f} s"
                    f" loop {fmt(record['loop_s'])} s cpu {fmt(record['loop_cpu_s'])} s"
                    f" ok={record['ok']}"
                )
                if not record["ok"]:
                    log(record["logs_tail"])
        backends.runners["runc"].remove_job(job_id)
    config = {
        "repeats": repeats,
        "seconds": seconds,
        "steps": n_steps,
        "policy": policy,
        "cpus": cpus,
        "image": backends.image,
        "load_average": os.getloadavg(),
    }
    summary = summarize(samples)
    return {
        "machine": backends.info,
        "config": config,
        "summary": summary,
        "samples": samples,
        "markdown": render(backends.info, config, summary),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument(
        "--seconds",
        type=float,
        default=20.0,
        help="size of the job in seconds of bare single-thread work on the reference "
        f"machine ({STEPS_PER_SECOND:g} steps/s; default 20)",
    )
    parser.add_argument("--steps", type=int, help="exact number of steps (overrides --seconds)")
    parser.add_argument("--policy", default="default", help="policy whose limits to use")
    parser.add_argument("--cpus", type=float, default=1.0, help="container CPU quota")
    parser.add_argument("--no-warmup", action="store_true", help="skip the short warm-up runs")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    results = run(
        args.repeats,
        args.seconds,
        steps=args.steps,
        policy=args.policy,
        cpus=args.cpus,
        warmup=not args.no_warmup,
    )
    if args.json:
        print(json.dumps(results, indent=2, default=str))
    else:
        for sample in results["samples"]:
            print(json.dumps({k: v for k, v in sample.items() if k != "logs_tail"}))
        print()
        print(results["markdown"])
    return 0 if all(s["ok"] for s in results["samples"]) else 1


if __name__ == "__main__":
    sys.exit(main())
