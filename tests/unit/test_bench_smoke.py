"""The benchmarks' pure helpers, so that bench/ does not rot (no Docker, no torch)."""

import ast
import json
from pathlib import Path
from typing import ClassVar

import pytest

from bench import fixed_cost, overhead, release_cost
from bench.overhead import Timed

WORKLOADS = Path(overhead.__file__).resolve().parent / "workloads"


def test_median_ratio_and_formatting() -> None:
    assert overhead.median([3.0, None, 1.0, 2.0]) == 2.0
    assert overhead.median([None]) is None
    assert overhead.ratio(11.0, 10.0) == pytest.approx(1.1)
    assert overhead.ratio(1.0, 0.0) is None
    assert overhead.ratio(None, 2.0) is None
    assert overhead.fmt(None) == "n/a"
    assert overhead.fmt(1.23456, 3, "x") == "1.235x"
    assert overhead.verdict(1.05, 1.10) == "met"
    assert overhead.verdict(1.31, 1.30) == "MISSED"
    assert overhead.verdict(None, 1.30) == ""


def test_rotation_interleaves_every_variant_once_per_round() -> None:
    rounds = [overhead.rotated(overhead.VARIANTS, r) for r in range(3)]
    assert rounds[0] == ["bare", "runc", "runsc"]
    assert rounds[1] == ["runc", "runsc", "bare"]
    assert all(sorted(r) == sorted(overhead.VARIANTS) for r in rounds)
    assert [r[0] for r in rounds] == list(overhead.VARIANTS)
    assert overhead.rotated([], 4) == []


def test_steps_scale_with_seconds() -> None:
    assert overhead.steps_for(20) == round(20 * overhead.STEPS_PER_SECOND)
    assert overhead.steps_for(0) == 1


def test_parse_bench_lines_ignores_other_output() -> None:
    logs = (
        b"noise\nBENCH first_line 100.5\nWarning: x\nBENCH imported 101.0\n"
        b'BENCH result {"loop_s": 2.0, "final_loss": 0.5}\nBENCH odd text\n'
    )
    found = overhead.parse_bench_lines(logs)
    assert found["first_line"] == 100.5
    assert found["imported"] == 101.0
    assert found["result"] == {"loop_s": 2.0, "final_loss": 0.5}
    assert found["odd"] == "text"


def test_markdown_table_aligns_numbers_right() -> None:
    table = overhead.markdown_table(["name", "s"], [["a", "1.00"], ["bb", "n/a"]])
    lines = table.splitlines()
    assert lines[0] == "| name |    s |"
    assert lines[1] == "|------|-----:|"
    assert lines[2] == "| a    | 1.00 |"
    assert len({len(line) for line in lines}) == 1


def test_cpu_model_and_environment_table() -> None:
    assert (
        overhead.cpu_model("processor\t: 0\nmodel name\t: Some CPU @ 2GHz\n") == "Some CPU @ 2GHz"
    )
    assert overhead.cpu_model("flags: x\n") == "unknown"
    table = overhead.environment_table({"date": "d", "nproc": 2, "cpu": "c"})
    header, _, row = table.splitlines()
    assert [c.strip() for c in header.strip("|").split("|")][:3] == ["date", "nproc", "cpu"]
    assert [c.strip() for c in row.strip("|").split("|")][:4] == ["d", "2", "c", "?"]


def _timed(start: float, stamps: dict, exited: float) -> Timed:
    return Timed(
        t_start=start,
        t_started=start + 0.2,
        t_exited=exited,
        removal_s=0.01,
        exit_code=0,
        ok=True,
        stamps=stamps,
    )


def _train_stamps(t0: float, loop_s: float) -> dict:
    return {
        "first_line": t0 + 0.3,
        "imported": t0 + 1.3,
        "result": {
            "loop_s": loop_s,
            "loop_cpu_s": loop_s,
            "final_loss": 0.25,
            "steps": 10,
            "threads": 1,
            "t_loop_start": t0 + 2.0,
            "t_loop_end": t0 + 2.0 + loop_s,
            "t_end": t0 + 2.5 + loop_s,
        },
    }


def test_overhead_summary_ratios_verdicts_and_table() -> None:
    samples = []
    loops = {"bare": 10.0, "runc": 10.5, "runsc": 14.0}
    for r in range(3):
        for variant, loop in loops.items():
            t0 = 1000.0 * r
            run = _timed(t0, _train_stamps(t0, loop), t0 + loop + 3.0)
            samples.append(overhead.sample_record(variant, r, run))
    phases = samples[0]["phases"]
    assert phases["boot"] == pytest.approx(0.3)
    assert phases["import"] == pytest.approx(1.0)
    assert phases["loop"] == pytest.approx(10.0)
    assert phases["exit"] == pytest.approx(0.5)
    summary = overhead.summarize(samples)
    assert summary["identical_work"]
    assert summary["runc"]["loop_ratio"] == pytest.approx(1.05)
    assert summary["runc"]["loop_verdict"] == "met"
    assert summary["runsc"]["loop_ratio"] == pytest.approx(1.4)
    assert summary["runsc"]["loop_verdict"] == "MISSED"
    assert summary["runsc"]["wall_ratio"] == pytest.approx(17.0 / 13.0)
    text = overhead.render(
        {"date": "today", "nproc": 2, "cpu": "cpu"},
        {"steps": 10, "seconds": 20, "repeats": 3, "policy": "default", "cpus": 1.0},
        summary,
    )
    assert "| runsc " in text and "1.400x" in text and "MISSED" in text
    json.dumps(summary)  # serialisable for --json


def test_failed_runs_are_left_out_of_the_medians() -> None:
    ok = overhead.sample_record("bare", 0, _timed(0.0, _train_stamps(0.0, 10.0), 13.0))
    bad = dict(ok, ok=False, loop_s=99.0, wall_s=99.0)
    summary = overhead.summarize([ok, bad])
    assert summary["bare"]["n"] == 1
    assert summary["bare"]["loop_s"] == 10.0
    assert summary["runc"]["loop_ratio"] is None


def test_fixed_cost_startup_summary_and_table() -> None:
    records = []
    for variant, boot in (("bare", 0.02), ("runc", 0.2), ("runsc", 0.4)):
        for torch in (False, True):
            stamps = {"first_line": 10.0 + boot, "end": 10.0 + boot + (1.0 if torch else 0.0)}
            if torch:
                stamps["imported"] = 11.0 + boot
            run = _timed(10.0, stamps, stamps["end"] + 0.05)
            records.append(fixed_cost.startup_record(variant, torch, 0, run))
    assert records[1]["import_s"] == pytest.approx(1.0)
    assert records[0]["import_s"] is None
    summary = fixed_cost.summarize_startup(records)
    assert summary["runsc"]["first_line_s"] == pytest.approx(0.4)
    assert summary["runc"]["import_s"] == pytest.approx(1.0)
    table = fixed_cost.startup_table(summary)
    assert "runsc - bare" in table
    assert "0.38" in table  # runsc first line minus bare


def test_fixed_cost_pipeline_summary_and_render() -> None:
    class FakeReport:
        decision = "released"
        reasons: ClassVar[list[str]] = []
        timings: ClassVar[dict[str, float]] = {"prepare": 0.1, "architecture": 5.0, "train": 3.0}

    records = [
        fixed_cost.pipeline_record(v, 0, FakeReport(), {"export": 2.5, "train": 3.0}, 9.0 + i)
        for i, v in enumerate(("bare", "runc", "runsc"))
    ]
    summary = fixed_cost.summarize_pipeline(records)
    assert summary["runsc"]["total"] == 11.0
    assert summary["runc"]["container:export"] == 2.5
    text = fixed_cost.render(
        {"date": "today"},
        {"repeats": 1, "pipeline_repeats": 1, "policy": "default"},
        {"pipeline": {"summary": summary}},
    )
    assert "whole run_local" in text and "export container" in text


def test_step_timer_forwards_and_times() -> None:
    class Inner:
        name = "fake"

        def start(self, spec):
            return type("H", (), {"id": "1", "step": spec.step})()

        def wait(self, handle, timeout_s):
            return "status"

        def remove(self, handle):
            return "removed"

    timer = fixed_cost.StepTimer(Inner())
    handle = timer.start(type("S", (), {"step": "export"})())
    assert timer.wait(handle, 1.0) == "status"
    assert timer.remove(handle) == "removed"
    assert timer.name == "fake"
    assert set(timer.times) == {"export"}


@pytest.mark.parametrize("name", ["train_mlp.py", "startup.py"])
def test_workloads_stamp_time_as_their_first_statement(name: str) -> None:
    tree = ast.parse((WORKLOADS / name).read_text())
    body = [
        n for n in tree.body if not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))
    ]
    assert isinstance(body[0], ast.Import) and body[0].names[0].name == "time"
    assert "time.time()" in ast.unparse(body[1])


def test_release_cost_summary_counts_gains_as_no_drop() -> None:
    rows = [
        {
            "arch": "mlp",
            "dataset": "digits",
            "changes": {"sanitized": [-0.5, 0.0], "rescaled+sanitized": [0.5, -0.25]},
            "coverage": 0.99,
            "chains": 1,
        },
        {
            "arch": "cnn",
            "dataset": "digits",
            "changes": {"sanitized": [0.0, 0.0], "rescaled+sanitized": [0.0, 0.0]},
            "coverage": 0.0,
            "chains": 0,
        },
    ]
    text = release_cost.summary(rows)
    assert "| all (2) | sanitized | 0.125 | -0.125 | -0.500 | 0.250 |" in text
    assert "| all (2) | rescaled+sanitized | 0.062 | +0.062 | -0.250 | 0.500 |" in text
    assert "| digits cnn (1) | sanitized | 0.000 |" in text
    assert "mean 0.4950, min 0.0000; models with no chain: 1 of 2" in text
