"""Fixed cost per job: container start-up, the torch import, and the pipeline's steps.

Part 1, start-up. bench/workloads/startup.py stamps time.time() as its first
statement (and again after `import torch` with --torch); the host stamps just
before `runner.start`. Run bare (a host process: Python's own start-up), under
runc and under runsc, without and with the torch import, interleaved:

    start API   runner.start returned (docker create + start)
    first line  host stamp -> the script's first statement (container + python start)
    import      `import torch` alone
    exit        the script's last statement -> runner.wait returned
    remove      runner.remove (docker rm -f)

Part 2, the pipeline. `sandbox.pipeline.local.run_local` runs examples/digits_mlp
on scikit-learn's digits end to end (prepare, architecture = export + describe,
train, gate, utility = evaluate, release) with runc, runsc and, for reference,
bare (ProcessRunner); the report's `timings` give each step and a thin wrapper
around the runner times every container (start -> exit) by its step name.

Medians over N repeats; the variants of a round run back to back, the leading one
rotating from round to round.

    python -m bench.fixed_cost [--repeats 5] [--pipeline-repeats 3] [--json]
                               [--only startup|pipeline] [--no-bare-pipeline]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.overhead import (
    VARIANTS,
    Log,
    Timed,
    bench_workspace,
    environment_table,
    fmt,
    markdown_table,
    median,
    open_backends,
    rotated,
    run_timed,
    stderr_log,
)

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "digits_mlp"
PIPELINE_STEPS = ("prepare", "architecture", "train", "gate", "utility", "release")
CONTAINER_STEPS = ("export", "describe", "train", "evaluate")
STARTUP_MEASURES = (
    ("start_api_s", "create + start API call", False),
    ("first_line_s", "host start -> first line (container + python start)", False),
    ("import_s", "import torch", True),
    ("exit_s", "last line -> wait returns", False),
    ("wall_plain_s", "whole probe, no torch", False),
    ("wall_torch_s", "whole probe, with import torch", True),
    ("removal_s", "remove (docker rm -f)", False),
)


# ------------------------------------------------------------------ pure helpers


def startup_record(variant: str, torch: bool, round_index: int, run: Timed) -> dict[str, Any]:
    """The start-up figures of one probe run (None where the probe printed no stamp)."""
    s = run.stamps
    first, imported, end = s.get("first_line"), s.get("imported"), s.get("end")
    return {
        "variant": variant,
        "torch": torch,
        "round": round_index,
        "ok": run.ok and first is not None and end is not None,
        "start_api_s": run.t_started - run.t_start,
        "first_line_s": None if first is None else first - run.t_start,
        "import_s": None if first is None or imported is None else imported - first,
        "exit_s": None if end is None else run.t_exited - end,
        "wall_s": run.wall_s,
        "removal_s": run.removal_s,
        "logs_tail": run.logs_tail,
    }


def summarize_startup(records: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per variant: medians; first line and exit from the plain probes, import from torch ones."""
    out: dict[str, dict[str, Any]] = {}
    for variant in VARIANTS:
        ok = [r for r in records if r["variant"] == variant and r["ok"]]
        plain = [r for r in ok if not r["torch"]]
        torch = [r for r in ok if r["torch"]]
        out[variant] = {
            "n": len(ok),
            "start_api_s": median(r["start_api_s"] for r in ok),
            "first_line_s": median(r["first_line_s"] for r in plain),
            "import_s": median(r["import_s"] for r in torch),
            "exit_s": median(r["exit_s"] for r in plain),
            "wall_plain_s": median(r["wall_s"] for r in plain),
            "wall_torch_s": median(r["wall_s"] for r in torch),
            "removal_s": median(r["removal_s"] for r in ok),
        }
    return out


def startup_table(summary: Mapping[str, Mapping[str, Any]]) -> str:
    present = [v for v in VARIANTS if summary.get(v, {}).get("n")]
    headers = ["measure (median, s)", *present]
    if "bare" in present:
        headers += [f"{v} - bare" for v in present if v != "bare"]
    rows = []
    for key, label, _ in STARTUP_MEASURES:
        row: list[object] = [label, *(fmt(summary[v][key]) for v in present)]
        if "bare" in present:
            base = summary["bare"][key]
            for v in present:
                if v != "bare":
                    value = summary[v][key]
                    row.append(fmt(None if value is None or base is None else value - base))
        rows.append(row)
    return markdown_table(headers, rows)


def pipeline_record(
    variant: str, round_index: int, report: Any, containers: Mapping[str, float], wall_s: float
) -> dict[str, Any]:
    timings = dict(getattr(report, "timings", {}) or {})
    return {
        "variant": variant,
        "round": round_index,
        "ok": getattr(report, "decision", None) == "released",
        "decision": getattr(report, "decision", None),
        "reasons": list(getattr(report, "reasons", []) or []),
        "timings": timings,
        "containers": dict(containers),
        "wall_s": wall_s,
    }


def summarize_pipeline(records: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for variant in VARIANTS:
        ok = [r for r in records if r["variant"] == variant and r["ok"]]
        if not ok:
            continue
        entry: dict[str, Any] = {"n": len(ok)}
        for step in PIPELINE_STEPS:
            entry[step] = median(r["timings"].get(step) for r in ok)
        for step in CONTAINER_STEPS:
            entry[f"container:{step}"] = median(r["containers"].get(step) for r in ok)
        entry["total"] = median(r["wall_s"] for r in ok)
        out[variant] = entry
    return out


def pipeline_table(summary: Mapping[str, Mapping[str, Any]]) -> str:
    present = [v for v in VARIANTS if v in summary]
    headers = ["step (median, s)", *present]
    docker = [v for v in ("runc", "runsc") if v in present]
    if "bare" in present:
        headers += [f"{v} - bare" for v in docker]
    labels = {
        "container:export": "  export container",
        "container:describe": "  describe container",
        "container:train": "  train container",
        "container:evaluate": "  evaluate container",
        "total": "whole run_local",
    }
    order = [
        "prepare",
        "architecture",
        "container:export",
        "container:describe",
        "train",
        "container:train",
        "gate",
        "utility",
        "container:evaluate",
        "release",
        "total",
    ]
    rows = []
    for key in order:
        row: list[object] = [labels.get(key, key), *(fmt(summary[v].get(key)) for v in present)]
        if "bare" in present:
            base = summary["bare"].get(key)
            for v in docker:
                value = summary[v].get(key)
                row.append(fmt(None if value is None or base is None else value - base))
        rows.append(row)
    return markdown_table(headers, rows)


def render(info: Mapping[str, Any], config: Mapping[str, Any], results: Mapping[str, Any]) -> str:
    lines = ["### Fixed cost per job", "", environment_table(info), ""]
    if "startup" in results:
        lines += [
            f"Start-up probe (bench/workloads/startup.py), median of {config['repeats']} "
            "interleaved rounds:",
            "",
            startup_table(results["startup"]["summary"]),
            "",
        ]
    if "pipeline" in results:
        lines += [
            f"Pipeline `run_local` on examples/digits_mlp (digits, policy `{config['policy']}`),"
            f" median of {config['pipeline_repeats']} interleaved rounds:",
            "",
            pipeline_table(results["pipeline"]["summary"]),
            "",
        ]
    return "\n".join(lines).rstrip() + "\n"


# ------------------------------------------------------------------- measuring


class StepTimer:
    """Wraps a Runner; records start -> exit wall time of each container by its step."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.name = inner.name
        self.times: dict[str, float] = {}
        self._started: dict[str, tuple[str, float]] = {}

    def start(self, spec: Any) -> Any:
        began = time.time()
        handle = self.inner.start(spec)
        self._started[handle.id] = (spec.step, began)
        return handle

    def wait(self, handle: Any, timeout_s: float) -> Any:
        status = self.inner.wait(handle, timeout_s)
        step, began = self._started.pop(handle.id, (handle.step, time.time()))
        self.times[step] = self.times.get(step, 0.0) + time.time() - began
        return status

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def measure_startup(
    repeats: int, policy: str, log: Log
) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any]]:
    records: list[dict[str, Any]] = []
    with bench_workspace() as workspace:
        backends = open_backends(workspace, policy, 1.0, 600, log)
        job_id = workspace.job_id
        for variant in VARIANTS:  # warm-up, not measured
            run_timed(backends.runners[variant], backends.spec(variant, job_id, "startup.py", []))
        for round_index in range(repeats):
            for variant in rotated(VARIANTS, round_index):
                for torch in (False, True):
                    spec = backends.spec(
                        variant, job_id, "startup.py", ["--torch"] if torch else []
                    )
                    record = startup_record(
                        variant, torch, round_index, run_timed(backends.runners[variant], spec)
                    )
                    records.append(record)
                    log(
                        f"startup {round_index + 1}/{repeats} {variant:<5} torch={torch!s:<5} "
                        f"first line {fmt(record['first_line_s'], 3)} s "
                        f"import {fmt(record['import_s'], 3)} s wall {record['wall_s']:.3f} s"
                    )
                    if not record["ok"]:
                        log(record["logs_tail"])
        backends.runners["runc"].remove_job(job_id)
    return summarize_startup(records), records, backends.info | {"image": backends.image}


def _make_dataset(path: Path) -> None:
    subprocess.run(
        [sys.executable, str(REPO / "examples" / "make_digits.py"), str(path)],
        check=True,
        capture_output=True,
    )


def measure_pipeline(
    repeats: int, policy_name: str, bare: bool, log: Log
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    from bench.overhead import bench_policy
    from sandbox.pipeline.local import run_local
    from sandbox.runner.docker_runner import DockerRunner
    from sandbox.runner.images import ensure_runtime_image
    from sandbox.runner.process_runner import ProcessRunner, repo_python_path
    from sandbox.runner.workspace import default_root

    docker_runner = DockerRunner()
    image = ensure_runtime_image(client=docker_runner.client, log=log)
    policies = {
        "bare": bench_policy(policy_name, "runc", cpus=1.0, wall_seconds=600),
        "runc": bench_policy(policy_name, "runc", cpus=1.0, wall_seconds=600),
        "runsc": bench_policy(policy_name, "runsc", cpus=1.0, wall_seconds=600),
    }
    variants = [v for v in VARIANTS if bare or v != "bare"]
    # Bare guests run `python -m sandbox.guest...` from PATH: make it this interpreter.
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    records: list[dict[str, Any]] = []
    work_root = default_root().parent / "bench"
    with tempfile.TemporaryDirectory(prefix="fixed-cost-") as tmp:
        dataset = Path(tmp) / "digits.npz"
        _make_dataset(dataset)
        for round_index in range(repeats):
            for variant in rotated(variants, round_index):
                inner = (
                    ProcessRunner(python_path=repo_python_path())
                    if variant == "bare"
                    else docker_runner
                )
                timer = StepTimer(inner)
                out_dir = Path(tmp) / f"out-{variant}-{round_index}-{uuid.uuid4().hex[:6]}"
                began = time.time()
                report = run_local(
                    EXAMPLE,
                    dataset,
                    policies[variant],
                    out_dir,
                    runner=timer,
                    image=image,
                    work_root=work_root,
                )
                record = pipeline_record(
                    variant, round_index, report, timer.times, time.time() - began
                )
                records.append(record)
                log(
                    f"pipeline {round_index + 1}/{repeats} {variant:<5} {record['decision']} "
                    f"total {record['wall_s']:.2f} s timings {record['timings']}"
                )
                if not record["ok"]:
                    log(f"  reasons: {record['reasons']}")
    return summarize_pipeline(records), records


def run(
    repeats: int,
    pipeline_repeats: int,
    *,
    only: str | None = None,
    policy: str = "default",
    bare_pipeline: bool = True,
    log: Log = stderr_log,
) -> dict[str, Any]:
    results: dict[str, Any] = {}
    info: dict[str, Any] = {}
    if only in (None, "startup"):
        summary, records, info = measure_startup(repeats, policy, log)
        results["startup"] = {"summary": summary, "samples": records}
    if only in (None, "pipeline"):
        summary, records = measure_pipeline(pipeline_repeats, policy, bare_pipeline, log)
        results["pipeline"] = {"summary": summary, "samples": records}
    if not info:
        from bench.overhead import machine_info
        from sandbox.runner.docker_runner import connect

        info = machine_info(connect())
    config = {
        "repeats": repeats,
        "pipeline_repeats": pipeline_repeats,
        "policy": policy,
        "load_average": os.getloadavg(),
    }
    return {
        "machine": info,
        "config": config,
        **results,
        "markdown": render(info, config, results),
    }


def _all_ok(results: Mapping[str, Any]) -> bool:
    return all(
        sample["ok"]
        for part in ("startup", "pipeline")
        for sample in results.get(part, {}).get("samples", [])
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="start-up rounds (default 5)")
    parser.add_argument(
        "--pipeline-repeats", type=int, default=3, help="pipeline rounds (default 3)"
    )
    parser.add_argument("--only", choices=["startup", "pipeline"], help="run one part only")
    parser.add_argument("--policy", default="default", help="policy (runtime is overridden)")
    parser.add_argument(
        "--no-bare-pipeline", action="store_true", help="skip the bare pipeline reference"
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    results = run(
        args.repeats,
        args.pipeline_repeats,
        only=args.only,
        policy=args.policy,
        bare_pipeline=not args.no_bare_pipeline,
    )
    if args.json:
        print(json.dumps(results, indent=2, default=str))
    else:
        print(results["markdown"])
    return 0 if _all_ok(results) else 1


if __name__ == "__main__":
    sys.exit(main())
