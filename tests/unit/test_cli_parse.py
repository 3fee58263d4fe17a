"""The `sandbox` command without Docker: argument parsing, exit codes and outputs.

The pipeline is replaced by a stub wherever a command would start containers;
`policy list|show|validate` run for real (they only read YAML files).
"""

from __future__ import annotations

import hashlib
import json
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sandbox import cli
from sandbox.demo import EXAMPLE_ALGORITHM
from sandbox.errors import InvalidInput, LimitExceeded, NotFound
from sandbox.pipeline.dataset import load_dataset
from sandbox.policy.load import available_policies, load_policy, policy_hash


@pytest.fixture(autouse=True)
def _restore_sigterm() -> Iterator[None]:
    """main() installs a SIGTERM handler; keep it out of the test process afterwards."""
    previous = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, previous)


def parse(*argv: str) -> Any:
    return cli.build_parser().parse_args(list(argv))


def usage_error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    with pytest.raises(SystemExit) as stop:
        parse(*argv)
    assert stop.value.code == 2
    return capsys.readouterr().err


# --------------------------------------------------------------------------- parsing


def test_run_arguments() -> None:
    args = parse("run", "algo.tgz", "data.npz", "--out", "results")
    assert args.func is cli.cmd_run
    assert args.algorithm == Path("algo.tgz")
    assert args.dataset == Path("data.npz")
    assert args.out == Path("results")
    assert args.policy == "default"
    assert args.holdout is None
    assert args.json is False


def test_run_all_options() -> None:
    args = parse(
        "run", "a", "d.npz", "--policy", "strict", "--out", "o", "--json", "--holdout", "h.npz"
    )
    assert (args.policy, args.out, args.json, args.holdout) == (
        "strict",
        Path("o"),
        True,
        Path("h.npz"),
    )


def test_run_requires_out(capsys: pytest.CaptureFixture[str]) -> None:
    assert "--out" in usage_error(capsys, "run", "algo", "data.npz")


def test_run_requires_both_positionals(capsys: pytest.CaptureFixture[str]) -> None:
    assert "dataset" in usage_error(capsys, "run", "algo", "--out", "o")


@pytest.mark.parametrize(
    "argv",
    [[], ["fly"], ["policy"], ["policy", "delete", "default"], ["policy", "show"], ["run", "-x"]],
)
def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    usage_error(capsys, *argv)


def test_demo_arguments() -> None:
    args = parse("demo")
    assert args.func is cli.cmd_demo
    assert (args.policy, args.out, args.json) == ("default", None, False)
    args = parse("demo", "--policy", "strict", "--out", "keep", "--json")
    assert (args.policy, args.out, args.json) == ("strict", Path("keep"), True)


@pytest.mark.parametrize(
    ("argv", "command", "json_flag"),
    [
        (["policy", "list"], "list", False),
        (["policy", "list", "--json"], "list", True),
        (["policy", "show", "strict"], "show", False),
        (["policy", "validate", "x.yaml"], "validate", False),
        (["policy", "validate", "x.yaml", "--json"], "validate", True),
    ],
)
def test_policy_arguments(argv: list[str], command: str, json_flag: bool) -> None:
    args = parse(*argv)
    assert args.func is cli.cmd_policy
    assert args.policy_command == command
    assert args.json is json_flag


# --------------------------------------------------------------------------- sandbox policy


def test_policy_list(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["policy", "list"]) == 0
    names = capsys.readouterr().out.splitlines()
    assert names == available_policies()
    assert {"default", "strict", "gpu"} <= set(names)


def test_policy_list_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["policy", "list", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == available_policies()


def test_policy_list_includes_operator_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "site.yaml").write_text("name: site\nruntime: runsc\n")
    monkeypatch.setenv("SANDBOX_POLICY_DIR", str(tmp_path))
    assert cli.main(["policy", "list"]) == 0
    names = capsys.readouterr().out.splitlines()
    assert "site" in names and "default" in names
    assert cli.main(["policy", "show", "site"]) == 0
    assert json.loads(capsys.readouterr().out)["runtime"] == "runsc"


@pytest.mark.parametrize("name", ["default", "strict", "gpu"])
def test_policy_show_prints_the_effective_policy(
    capsys: pytest.CaptureFixture[str], name: str
) -> None:
    assert cli.main(["policy", "show", name]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown == load_policy(name).model_dump(mode="json")
    assert shown["name"] == name


def test_policy_show_fills_defaults(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text("name: mine\n")
    assert cli.main(["policy", "show", str(path)]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["runtime"] == "runc"
    assert shown["limits"]["wall_seconds"] == 600
    assert shown["gate"]["nonfinite"] == "reject"


def test_policy_validate_valid(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["policy", "validate", "strict"]) == 0
    assert capsys.readouterr().out == "strict: valid (policy strict)\n"


def test_policy_validate_valid_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text("name: mine\nruntime: runsc\n")
    assert cli.main(["policy", "validate", str(path), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result == {"valid": True, "name": "mine", "sha256": policy_hash(load_policy(str(path)))}


def test_policy_validate_lists_every_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        "name: ok\nruntime: kata\nlimits: {pids: 1, memroy_mb: 5}\n"
        "gate: {dtypes: [F32, Q4]}\nholdout_fraction: 1.5\n"
    )
    assert cli.main(["policy", "validate", str(path)]) == InvalidInput.exit_code
    captured = capsys.readouterr()
    assert captured.out == ""
    err = captured.err
    assert err.startswith(f"sandbox: {path}: 5 problem(s):")
    problems = sorted(line[4:].split(":", 1)[0] for line in err.splitlines()[1:])
    assert problems == [
        "gate.dtypes.1",
        "holdout_fraction",
        "limits.memroy_mb",
        "limits.pids",
        "runtime",
    ]
    assert "limits.memroy_mb: unknown field" in err
    assert "runtime: 'kata' is not allowed; allowed values: 'runc' or 'runsc'" in err


def test_policy_validate_not_yaml(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("name: [unclosed\n")
    assert cli.main(["policy", "validate", str(path)]) == InvalidInput.exit_code
    assert capsys.readouterr().err.startswith(f"sandbox: {path}: not valid YAML")


@pytest.mark.parametrize("command", ["show", "validate"])
def test_policy_unknown_name(capsys: pytest.CaptureFixture[str], command: str) -> None:
    assert cli.main(["policy", command, "no-such-policy"]) == NotFound.exit_code
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1
    assert captured.err.startswith("sandbox: no policy named 'no-such-policy'; available: ")


def test_policy_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.yaml"
    assert cli.main(["policy", "validate", str(missing)]) == NotFound.exit_code
    assert capsys.readouterr().err == f"sandbox: policy file {missing} does not exist\n"


# --------------------------------------------------------------------------- sandbox run / demo


def _report(decision: str) -> dict[str, Any]:
    released = decision != "rejected"
    return {
        "job_id": "0" * 32,
        "decision": decision,
        "reasons": ["the model passed the egress gate and was released"]
        if released
        else ["train: train.py raised RuntimeError: boom"],
        "utility": {"released_accuracy": 0.9583, "candidate_accuracy": 0.9583, "holdout_n": 359}
        if released
        else {},
        "model": {"sha256": "ab" * 32, "bytes": 10} if released else None,
        "checks": [],
        "dp": None,
        "timings": {},
    }


class FakeJob:
    """Stands in for `cli._run_job`: records its arguments and returns a canned report."""

    def __init__(self, decision: str = "released", error: BaseException | None = None) -> None:
        self.decision, self.error = decision, error
        self.calls: list[tuple[Any, ...]] = []

    def __call__(self, *args: Any) -> dict[str, Any]:
        self.calls.append(args)
        if self.error is not None:
            raise self.error
        algorithm, dataset = args[0], args[1]
        if algorithm == EXAMPLE_ALGORITHM:  # the demo: its dataset exists while the job runs
            assert load_dataset(dataset, max_bytes=1 << 30).x.shape == (1797, 64)
        return _report(self.decision)


@pytest.fixture
def fake_job(monkeypatch: pytest.MonkeyPatch) -> FakeJob:
    job = FakeJob()
    monkeypatch.setattr(cli, "_run_job", job)
    return job


def test_run_json_prints_one_document(
    fake_job: FakeJob, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["run", "algo", "data.npz", "--out", "o", "--json"]) == 0
    out = capsys.readouterr().out
    assert json.loads(out) == _report("released")
    assert fake_job.calls == [(Path("algo"), Path("data.npz"), "default", Path("o"), None, False)]


def test_run_passes_policy_and_holdout(fake_job: FakeJob) -> None:
    argv = ["run", "a", "d.npz", "--policy", "strict", "--out", "o", "--holdout", "h.npz"]
    assert cli.main(argv) == 0
    assert fake_job.calls[0][2:5] == ("strict", Path("o"), Path("h.npz"))


def test_run_summary(fake_job: FakeJob, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["run", "a", "d.npz", "--out", "res"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "decision: released",
        "  - the model passed the egress gate and was released",
        "holdout accuracy: 0.9583",
        f"model: {Path('res') / 'model.safetensors'} sha256 {'ab' * 32}",
        f"report: {Path('res') / 'report.json'} (container logs: "
        f"{Path('res') / 'owner' / 'logs.txt'})",
    ]


def test_run_rejected_exits_10(fake_job: FakeJob, capsys: pytest.CaptureFixture[str]) -> None:
    fake_job.decision = "rejected"
    assert cli.main(["run", "a", "d.npz", "--out", "o", "--json"]) == 10
    assert json.loads(capsys.readouterr().out)["decision"] == "rejected"
    assert cli.main(["run", "a", "d.npz", "--out", "o2"]) == 10
    lines = capsys.readouterr().out.splitlines()
    assert lines[:2] == ["decision: rejected", "  - train: train.py raised RuntimeError: boom"]
    assert not any(line.startswith(("model:", "holdout accuracy:")) for line in lines)


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (InvalidInput("dataset d.npz is not an .npz (zip) archive"), 2),
        (LimitExceeded("dataset d.npz is too big"), 3),
        (NotFound("dataset d.npz does not exist"), 4),
    ],
)
def test_run_errors_map_to_catalog_codes(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    error: Exception,
    code: int,
) -> None:
    monkeypatch.setattr(cli, "_run_job", FakeJob(error=error))
    assert cli.main(["run", "a", "d.npz", "--out", "o", "--json"]) == code
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == f"sandbox: {error}\n"


def test_run_interrupted_exits_130(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(cli, "_run_job", FakeJob(error=KeyboardInterrupt()))
    assert cli.main(["run", "a", "d.npz", "--out", "o"]) == 130
    assert "interrupted" in capsys.readouterr().err


def test_sigterm_unwinds_like_an_exit(fake_job: FakeJob) -> None:
    cli.main(["run", "a", "d.npz", "--out", "o", "--json"])
    handler = signal.getsignal(signal.SIGTERM)
    assert callable(handler)
    with pytest.raises(SystemExit) as stop:
        handler(signal.SIGTERM, None)
    assert stop.value.code == 128 + signal.SIGTERM


@pytest.mark.parametrize(
    ("argv", "tty", "progress"),
    [
        (["--json"], True, False),
        ([], False, False),
        ([], True, True),
    ],
)
def test_progress_only_on_a_terminal_without_json(
    fake_job: FakeJob,
    monkeypatch: pytest.MonkeyPatch,
    argv: list[str],
    tty: bool,
    progress: bool,
) -> None:
    monkeypatch.setattr(cli, "_tty", lambda: tty)
    cli.main(["run", "a", "d.npz", "--out", "o", *argv])
    assert fake_job.calls[0][5] is progress


def test_progress_goes_to_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    cli._progress(True)("train", "running train.py")
    cli._progress(False)("train", "hidden")
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.endswith("] train: running train.py\n")
    assert "hidden" not in captured.err


@pytest.fixture
def fake_executor(monkeypatch: pytest.MonkeyPatch) -> Any:
    """The demo's in-process server runs its job through a fake executor (no containers)."""
    import sandbox.server
    from tests.api.fakes import FakeExecutor

    executor = FakeExecutor()
    monkeypatch.setattr(sandbox.server, "DockerExecutor", lambda **_: executor)
    return executor


def test_demo_runs_the_example_over_mtls(
    fake_executor: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "demo-out"
    assert cli.main(["demo", "--json", "--out", str(out)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["decision"] == "released"
    assert result["verified"] is True
    assert result["accuracy"] == 0.95
    model = (out / "model.safetensors").read_bytes()
    assert hashlib.sha256(model).hexdigest() == result["model_sha256"]
    assert result["job_id"].startswith("job_")
    ((dataset_head, algorithm_head),) = fake_executor.seen_inputs
    assert dataset_head == b"PK\x03\x04"  # the job saw the decrypted digits .npz
    assert algorithm_head == b"\x1f\x8b"  # and the uploaded package (a .tar.gz)


def test_demo_rejected_exits_10(fake_executor: Any, tmp_path: Path) -> None:
    fake_executor.mode = "rejected"
    assert cli.main(["demo", "--policy", "strict", "--out", str(tmp_path / "o")]) == 10
    assert not (tmp_path / "o" / "model.safetensors").exists()


def test_demo_dataset_is_the_sample(tmp_path: Path) -> None:
    from sandbox.demo import write_digits

    data = load_dataset(write_digits(tmp_path / "d.npz"), max_bytes=1 << 30)
    assert data.num_classes == 10
    assert data.x.dtype == np.float32 and data.x.shape == (1797, 64)
