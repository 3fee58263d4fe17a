"""The `sandbox` console script, run as a subprocess the way an operator runs it.

Checks the contract of sandbox/cli.py and the error catalog (sandbox/errors.py):
`--json` prints exactly one JSON document (the report), a rejected job exits 10,
every deliberate error exits with its catalog code and a one-line message on
stderr, never a Python traceback.

Each subprocess gets its own work root (SANDBOX_WORKDIR) under tmp_path, so the
tests can check that nothing is left there afterwards.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import docker
import numpy as np
import pytest
import yaml

from sandbox.demo import write_digits
from sandbox.errors import InvalidInput, JobRejected, LimitExceeded, NotFound
from sandbox.runner.base import LABEL_JOB, LABEL_STEP

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "digits_mlp"
ALGORITHMS = Path(__file__).resolve().parent / "algorithms"
SANDBOX = Path(sys.executable).parent / "sandbox"  # the console script of this venv


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_digits(tmp_path_factory.mktemp("cli-digits") / "digits.npz")


@pytest.fixture
def work_root(tmp_path: Path) -> Path:
    return tmp_path / "work"


def environment(work_root: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "SANDBOX_WORKDIR": str(work_root), **extra}


def sandbox(
    *args: str | Path, work_root: Path, timeout: float = 300, **env: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SANDBOX), *map(str, args)],
        capture_output=True,
        text=True,
        env=environment(work_root, **env),
        cwd=REPO,
        timeout=timeout,
        check=False,
    )


def single_json(stdout: str) -> Any:
    """The one JSON document stdout holds; fails if there is anything else."""
    assert stdout.lstrip().startswith("{"), stdout[:200]
    document, end = json.JSONDecoder().raw_decode(stdout.lstrip())
    assert stdout.lstrip()[end:].strip() == "", "stdout holds more than one JSON document"
    return document


def assert_one_line_error(result: subprocess.CompletedProcess[str], code: int, text: str) -> None:
    assert result.returncode == code, (result.returncode, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("sandbox: "), lines
    assert text in lines[0], lines
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def assert_nothing_left(work_root: Path, client: docker.DockerClient, job_id: str | None) -> None:
    if work_root.exists():
        assert list(work_root.iterdir()) == []
    if job_id is not None:
        label = f"{LABEL_JOB}={job_id}"
        assert client.containers.list(all=True, filters={"label": label}) == []


# --------------------------------------------------------------------------- sandbox run


@pytest.mark.docker
def test_run_json_prints_exactly_the_report(
    tmp_path: Path,
    work_root: Path,
    digits: Path,
    runtime_image: str,
    docker_client: docker.DockerClient,
) -> None:
    out = tmp_path / "out"
    result = sandbox(
        "run", EXAMPLE, digits, "--policy", "default", "--out", out, "--json", work_root=work_root
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    report = single_json(result.stdout)
    assert report == json.loads((out / "report.json").read_text())
    assert report["decision"] == "released_sanitized", report["reasons"]
    assert 0.90 <= report["utility"]["released_accuracy"] <= 1.00
    assert (out / "model.safetensors").is_file()
    assert_nothing_left(work_root, docker_client, report["job_id"])
    check_attestation_and_audit(out, work_root, report)


def check_attestation_and_audit(out: Path, work_root: Path, report: dict[str, Any]) -> None:
    """The release is attested; `sandbox verify` accepts it and refuses any tampering."""
    home = Path(os.environ["SANDBOX_HOME"])
    exported = sandbox("key", "public", work_root=work_root)
    assert exported.returncode == 0, exported.stderr
    assert exported.stdout.startswith("-----BEGIN PUBLIC KEY-----")
    key = out.parent / "platform-key.pem"
    key.write_text(exported.stdout)
    model = out / "model.safetensors"
    good = sandbox(
        "verify",
        out / "attestation.json",
        "--model",
        model,
        "--key",
        key,
        "--policy",
        "default",
        "--json",
        work_root=work_root,
    )
    assert good.returncode == 0, good.stdout + good.stderr
    assert single_json(good.stdout)["ok"] is True
    tampered = out / "tampered.safetensors"
    data = bytearray(model.read_bytes())
    data[-1] ^= 1
    tampered.write_bytes(bytes(data))
    bad = sandbox(
        "verify", out / "attestation.json", "--model", tampered, "--key", key, work_root=work_root
    )
    assert bad.returncode == 7, bad.stdout + bad.stderr
    assert "sha256" in bad.stdout.lower()
    wrong_policy = sandbox(
        "verify", out / "attestation.json", "--key", key, "--policy", "strict", work_root=work_root
    )
    assert wrong_policy.returncode == 7
    log = home / "audit.jsonl"
    audit = sandbox("audit", "verify", log, "--key", key, "--json", work_root=work_root)
    assert audit.returncode == 0, audit.stdout + audit.stderr
    assert report["job_id"] in log.read_text()


@pytest.mark.docker
def test_rejected_job_exits_10(
    tmp_path: Path,
    work_root: Path,
    digits: Path,
    runtime_image: str,
    docker_client: docker.DockerClient,
) -> None:
    out = tmp_path / "out"
    result = sandbox(
        "run", ALGORITHMS / "build_raises", digits, "--out", out, "--json", work_root=work_root
    )
    assert result.returncode == JobRejected.exit_code == 10, result.stderr
    assert "Traceback" not in result.stderr
    report = single_json(result.stdout)
    assert report == json.loads((out / "report.json").read_text())
    assert report["decision"] == "rejected"
    assert report["reasons"] == [
        "export: build_model raised RuntimeError: deliberate failure in build_model"
    ]
    assert not (out / "model.safetensors").exists()
    assert_nothing_left(work_root, docker_client, report["job_id"])


@pytest.mark.docker
def test_rejected_job_human_summary(
    tmp_path: Path, work_root: Path, digits: Path, runtime_image: str
) -> None:
    out = tmp_path / "out"
    result = sandbox(
        "run", ALGORITHMS / "build_not_module", digits, "--out", out, work_root=work_root
    )
    assert result.returncode == 10, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "decision: rejected"
    assert lines[1] == "  - export: build_model returned dict, not a torch.nn.Module"
    assert lines[-1].startswith(f"report: {out / 'report.json'}")
    assert not any(line.startswith("model:") for line in lines)


def _not_npz(tmp: Path, digits: Path) -> list[str | Path]:
    bad = tmp / "data.csv"
    bad.write_text("x,y\n1,0\n")
    return ["run", EXAMPLE, bad, "--out", tmp / "out"]


def _missing_dataset(tmp: Path, digits: Path) -> list[str | Path]:
    return ["run", EXAMPLE, tmp / "missing.npz", "--out", tmp / "out"]


def _missing_algorithm(tmp: Path, digits: Path) -> list[str | Path]:
    return ["run", tmp / "no-such-algorithm", digits, "--out", tmp / "out"]


def _non_empty_out(tmp: Path, digits: Path) -> list[str | Path]:
    out = tmp / "out"
    out.mkdir()
    (out / "keep.txt").write_text("the operator's file\n")
    return ["run", EXAMPLE, digits, "--out", out]


def _out_is_a_file(tmp: Path, digits: Path) -> list[str | Path]:
    taken = tmp / "out"
    taken.write_text("not a directory\n")
    return ["run", EXAMPLE, digits, "--out", taken]


def _over_limit(tmp: Path, digits: Path) -> list[str | Path]:
    policy = yaml.safe_load((REPO / "policies" / "default.yaml").read_text())
    policy.update(name="tiny", max_dataset_mb=1)
    path = tmp / "tiny.yaml"
    path.write_text(yaml.safe_dump(policy))
    large = tmp / "large.npz"
    rng = np.random.default_rng(0)
    np.savez(large, x=rng.random((4096, 128), dtype=np.float32), y=np.arange(4096) % 4)
    return ["run", EXAMPLE, large, "--policy", path, "--out", tmp / "out"]


ERRORS = [
    pytest.param(_not_npz, InvalidInput.exit_code, "is not an .npz (zip) archive", id="not-npz"),
    pytest.param(_missing_dataset, NotFound.exit_code, "missing.npz does not exist", id="no-data"),
    pytest.param(
        _missing_algorithm, NotFound.exit_code, "no-such-algorithm does not exist", id="no-algo"
    ),
    pytest.param(_non_empty_out, InvalidInput.exit_code, "is not empty", id="out-not-empty"),
    pytest.param(_out_is_a_file, InvalidInput.exit_code, "--out", id="out-is-a-file"),
    pytest.param(
        _over_limit, LimitExceeded.exit_code, "over the limit of 1048576 bytes", id="over-limit"
    ),
]


@pytest.mark.docker
@pytest.mark.parametrize(("make", "code", "text"), ERRORS)
def test_run_errors_exit_with_catalog_code(
    tmp_path: Path,
    work_root: Path,
    digits: Path,
    runtime_image: str,
    make: Any,
    code: int,
    text: str,
) -> None:
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    args = make(inputs, digits)
    result = sandbox(*args, "--json", work_root=work_root)
    assert_one_line_error(result, code, text)
    if work_root.exists():
        assert list(work_root.iterdir()) == []
    kept = inputs / "out" / "keep.txt"
    if make is _non_empty_out:
        assert kept.read_text() == "the operator's file\n"
        assert [p.name for p in kept.parent.iterdir()] == ["keep.txt"]
    if make is _out_is_a_file:
        assert (inputs / "out").read_text() == "not a directory\n"


def test_run_unknown_policy_exits_4(tmp_path: Path, work_root: Path, digits: Path) -> None:
    out = tmp_path / "out"
    result = sandbox(
        "run", EXAMPLE, digits, "--policy", "no-such-policy", "--out", out, work_root=work_root
    )
    assert_one_line_error(result, NotFound.exit_code, "no policy named 'no-such-policy'")
    assert "default" in result.stderr  # it names the policies that do exist
    assert not out.exists()


def test_run_usage_error_exits_2(tmp_path: Path, work_root: Path, digits: Path) -> None:
    result = sandbox("run", EXAMPLE, digits, work_root=work_root)  # --out is required
    assert result.returncode == 2
    assert "--out" in result.stderr
    assert "Traceback" not in result.stderr


# --------------------------------------------------------------------------- sandbox policy


def test_policy_validate_lists_every_problem(tmp_path: Path, work_root: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "name: Bad Name!\n"
        "runtime: docker\n"
        "gpus: 1\n"
        "limits:\n"
        "  memory_mb: 1\n"
        "  cpus: 0\n"
        "  wall_seconds: forever\n"
        "gate:\n"
        "  nonfinite: ignore\n"
    )
    result = sandbox("policy", "validate", bad, work_root=work_root)
    assert result.returncode == InvalidInput.exit_code
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    assert "7 problem(s)" in result.stderr
    problems = [line for line in result.stderr.splitlines() if line.startswith("  - ")]
    fields = sorted(line[4:].split(":", 1)[0] for line in problems)
    assert fields == [
        "gate.nonfinite",
        "gpus",
        "limits.cpus",
        "limits.memory_mb",
        "limits.wall_seconds",
        "name",
        "runtime",
    ]
    assert "'docker' is not allowed; allowed values: 'runc' or 'runsc'" in result.stderr
    assert "gpus: unknown field" in result.stderr


def test_policy_validate_good_file(tmp_path: Path, work_root: Path) -> None:
    good = tmp_path / "mine.yaml"
    good.write_text("name: mine\nruntime: runsc\n")
    result = sandbox("policy", "validate", good, "--json", work_root=work_root)
    assert result.returncode == 0, result.stderr
    document = single_json(result.stdout)
    assert document["valid"] is True
    assert document["name"] == "mine"
    assert len(document["sha256"]) == 64


# --------------------------------------------------------------------------- sandbox demo


@pytest.mark.docker
def test_demo_json_releases(
    tmp_path: Path, work_root: Path, runtime_image: str, docker_client: docker.DockerClient
) -> None:
    """The demo: a server on port 0 with fresh certificates, owner and provider over
    mTLS, a real job in Docker, the model downloaded and checked against the release."""
    temp = tmp_path / "tmp"  # the demo keeps its results in a fresh temporary directory
    temp.mkdir()
    result = sandbox("demo", "--json", work_root=work_root, TMPDIR=str(temp))
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    summary = single_json(result.stdout)
    assert summary["decision"] == "released_sanitized", summary["reasons"]
    assert summary["verified"] is True
    assert 0.90 <= summary["accuracy"] <= 1.00
    report = summary["report"]
    assert report["policy"]["name"] == "default"
    assert report["dataset"]["n_train"] + report["dataset"]["n_holdout"] == 1797
    assert report["model"]["sha256"] == summary["model_sha256"]
    assert summary["job_id"].startswith("job_")
    kept = [p for p in temp.rglob("model.safetensors") if p.parent.name == "out"]
    assert len(kept) == 1, list(temp.rglob("*"))
    assert hashlib.sha256(kept[0].read_bytes()).hexdigest() == summary["model_sha256"]
    assert json.loads((kept[0].parent / "report.json").read_text()) == report
    assert (kept[0].parent / "attestation.json").exists()
    assert not list(temp.rglob("*.npz"))  # the generated dataset does not outlive the demo
    assert not [
        d for d in temp.iterdir() if d.name.startswith("sandbox-demo-") and (d / "state").exists()
    ]  # the demo's state directory (keys, blobs) is gone
    left = docker_client.containers.list(
        all=True, filters={"label": f"sandbox.job={summary['job_id']}"}
    )
    assert left == []
    with open("/proc/self/mounts") as mounts:
        assert not [line for line in mounts if str(temp) in line]


# --------------------------------------------------------------------------- interruption


@pytest.mark.docker
@pytest.mark.parametrize(
    ("signum", "code"),
    [
        pytest.param(signal.SIGINT, 130, id="SIGINT"),
        pytest.param(signal.SIGTERM, 128 + signal.SIGTERM, id="SIGTERM"),
    ],
)
def test_interrupted_run_cleans_up(
    tmp_path: Path,
    work_root: Path,
    digits: Path,
    runtime_image: str,
    docker_client: docker.DockerClient,
    signum: int,
    code: int,
) -> None:
    """Ctrl-C or `kill` while train.py runs: no container, mount or plaintext file remains."""
    out = tmp_path / "out"
    args = ["run", ALGORITHMS / "train_hang", digits, "--out", out, "--json"]
    process = subprocess.Popen(
        [str(SANDBOX), *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment(work_root),
        cwd=REPO,
    )
    try:
        job_id = _wait_for_training(process, work_root, docker_client)
        process.send_signal(signum)
        stdout, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == code, stderr
    assert "Traceback" not in stderr
    assert stdout == ""
    assert_nothing_left(work_root, docker_client, job_id)
    with open("/proc/self/mounts", encoding="utf-8") as mounts:
        assert [line for line in mounts if str(work_root) in line] == []


def _wait_for_training(
    process: subprocess.Popen[str], work_root: Path, client: docker.DockerClient
) -> str:
    """The job id, once its train container is running (train_hang then sleeps forever)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        jobs = [p.name for p in work_root.iterdir()] if work_root.exists() else []
        if jobs:
            labels = [f"{LABEL_JOB}={jobs[0]}", f"{LABEL_STEP}=train"]
            if client.containers.list(filters={"label": labels, "status": "running"}):
                time.sleep(1)  # let train.py start
                return jobs[0]
        time.sleep(0.25)
    raise AssertionError("the train container never started")
