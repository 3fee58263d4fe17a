"""The local pipeline end to end, on a real Docker engine (runc and gVisor).

Every job here runs `run_local` with a real `DockerRunner`, the runtime image and
a private work root under the test's tmp_path, then checks what the pipeline
promises (sandbox/pipeline/local.py): a released model that is exactly the
gate's canonical file, a report with the required fields, owner-only container
logs, and - whatever happened - nothing left behind: no container of the job, no
mount and no file under the work root, no plaintext copy of the dataset.

The hostile and broken algorithm packages live in tests/integration/algorithms/;
each one is tiny (a Linear model, a few training steps) so that a job takes about
10-15 s under runc. Failure cases run under runc only (test_isolation covers
gVisor), except one crash under runsc.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import os
import stat
import sys
import tarfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from sandbox.demo import write_digits
from sandbox.errors import InvalidInput, LimitExceeded, NotFound, SandboxError
from sandbox.pipeline.dataset import load_dataset, split_holdout
from sandbox.pipeline.local import RELEASE_SLACK_SECONDS, run_local
from sandbox.pipeline.report import Report
from sandbox.policy.load import load_policy
from sandbox.policy.model import Policy
from sandbox.runner.base import LABEL_JOB
from tests.integration.recording import RecordingRunner

pytestmark = pytest.mark.docker

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "digits_mlp"
ALGORITHMS = Path(__file__).resolve().parent / "algorithms"
ALL_STEPS = ["export", "describe", "train", "evaluate"]
UP_TO_TRAIN = ["export", "describe", "train"]
MB = 1024 * 1024


@dataclass
class Job:
    job_id: str
    out: Path
    work_root: Path
    runner: RecordingRunner
    report: Report | None = None

    @property
    def report_json(self) -> dict[str, Any]:
        return json.loads((self.out / "report.json").read_text())  # type: ignore[no-any-return]


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """scikit-learn's digits as a dataset file: x float32 [1797, 64], y int64."""
    return write_digits(tmp_path_factory.mktemp("digits") / "digits.npz")


@pytest.fixture(scope="module")
def dataset_rows(digits: Path) -> list[bytes]:
    """The raw bytes of every example: a plaintext copy of the data contains them."""
    with np.load(digits, allow_pickle=False) as data:
        x = np.ascontiguousarray(data["x"])
    return [row.tobytes() for row in x]


@pytest.fixture
def job(
    tmp_path: Path, docker_client: docker.DockerClient, digits: Path, dataset_rows: list[bytes]
) -> Iterator[Job]:
    """A fresh job id, output dir and work root; checks nothing is left when the test ends."""
    made = Job(
        job_id=uuid.uuid4().hex,
        out=tmp_path / "out",
        work_root=tmp_path / "work",
        runner=RecordingRunner(docker_client),
    )
    yield made
    assert_nothing_left(docker_client, made, dataset_rows)


# What a release writes: the model, the report, the attestation (for verifiers), and
# for the owner only the container logs and the opening of the dataset commitment.
RELEASED_LISTING = {
    "model.safetensors",
    "report.json",
    "attestation.json",
    "owner",
    "owner/logs.txt",
    "owner/report.html",
    "owner/dataset-opening.json",
}
# What a rejection writes: the report, and for the owner the logs and the HTML report.
REJECTED_LISTING = {"report.json", "owner", "owner/logs.txt", "owner/report.html"}


def policy_with(name: str, **limits: int) -> Policy:
    base = load_policy(name)
    if not limits:
        return base
    return base.model_copy(update={"limits": base.limits.model_copy(update=limits)})


def run(
    job: Job,
    algorithm: Path,
    dataset: Path,
    policy: Policy,
    image: str,
    holdout: Path | None = None,
) -> dict[str, Any]:
    job.report = run_local(
        algorithm,
        dataset,
        policy,
        job.out,
        runner=job.runner,
        image=image,
        holdout=holdout,
        work_root=job.work_root,
        job_id=job.job_id,
    )
    on_disk = job.report_json
    assert on_disk == json.loads(job.report.to_json())
    assert on_disk["job_id"] == job.job_id
    return on_disk


# --------------------------------------------------------------------------- helpers


def mounts_under(root: Path) -> list[str]:
    prefix = str(root.resolve()).rstrip("/") + "/"
    with open("/proc/self/mounts", encoding="utf-8") as mounts:
        targets = [line.split()[1] for line in mounts]
    return [t for t in targets if t == prefix.rstrip("/") or t.startswith(prefix)]


def files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if not p.is_dir()) if root.exists() else []


def holds_dataset(path: Path, rows: list[bytes]) -> bool:
    data = path.read_bytes()
    return any(row in data for row in rows)


def assert_nothing_left(client: docker.DockerClient, job: Job, rows: list[bytes]) -> None:
    """No container, no mount, no job directory, no plaintext data: whatever happened."""
    label = f"{LABEL_JOB}={job.job_id}"
    left = client.containers.list(all=True, filters={"label": label})
    assert left == [], f"containers of job {job.job_id} survived: {[c.name for c in left]}"
    assert mounts_under(job.work_root) == []
    if job.work_root.exists():
        assert sorted(p.name for p in job.work_root.iterdir()) == []
    assert files_under(job.work_root) == []
    leaked = [p for p in files_under(job.out) if holds_dataset(p, rows)]
    assert leaked == [], f"plaintext dataset rows found in {leaked}"


def out_listing(out: Path) -> set[str]:
    return {str(p.relative_to(out)) for p in out.rglob("*")}


def assert_rejected(report: dict[str, Any], reason: str, out: Path) -> None:
    assert report["decision"] == "rejected"
    assert len(report["reasons"]) == 1, report["reasons"]
    assert reason in report["reasons"][0], report["reasons"]
    assert report["model"] is None
    assert out_listing(out) == REJECTED_LISTING


def host_accuracy(model: torch.nn.Module, weights: Path, holdout: Path) -> tuple[int, int]:
    """Score released weights on the host, independently of the pipeline's evaluate step."""
    state = {k: torch.from_numpy(v) for k, v in load_file(str(weights)).items()}
    model.load_state_dict(state, strict=True)
    model.eval()
    with np.load(holdout, allow_pickle=False) as data:
        x, y = torch.from_numpy(data["x"]), torch.from_numpy(data["y"])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the evaluate container (cpus 1.0): same summation order
    try:
        with torch.no_grad():
            predicted = model(x).argmax(dim=1)
    finally:
        torch.set_num_threads(threads)
    return int((predicted == y).sum()), len(y)


def load_module(package: Path) -> Any:
    """Import a package's model.py (our own test code or the example: trusted here)."""
    spec = importlib.util.spec_from_file_location(f"model_{package.name}", package / "model.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    before, sys.dont_write_bytecode = sys.dont_write_bytecode, True  # no __pycache__ in packages
    try:
        spec.loader.exec_module(module)
    finally:
        sys.dont_write_bytecode = before
    return module


def write_split_holdout(digits: Path, policy: Policy, path: Path) -> Path:
    """The holdout the pipeline splits off, written out so the host can score it."""
    full = load_dataset(digits, max_bytes=policy.max_dataset_mb * MB)
    holdout = split_holdout(full, policy.holdout_fraction, policy.holdout_seed).holdout
    np.savez(path, x=holdout.x, y=holdout.y)
    return path


# --------------------------------------------------------------------------- released jobs


@pytest.mark.parametrize(("policy_name", "runtime"), [("default", "runc"), ("strict", "runsc")])
def test_digits_end_to_end_released(
    job: Job, digits: Path, runtime_image: str, policy_name: str, runtime: str, tmp_path: Path
) -> None:
    policy = load_policy(policy_name)
    assert policy.runtime == runtime
    job.runner.check_runtime(runtime)
    policy = policy.model_copy(  # strict's 240 s release time is tested on its own below
        update={"release": policy.release.model_copy(update={"fixed_delay_seconds": None})}
    )
    report = run(job, EXAMPLE, digits, policy, runtime_image)

    assert report["decision"] == "released_sanitized", report["reasons"]
    # Probing and the membership audit share one query container where enabled.
    probing = ["probe"] if policy.probes.enabled else []
    audit = policy.membership.enabled
    assert job.runner.steps == [*UP_TO_TRAIN, *probing, "evaluate"]
    assert (policy_name == "strict") == bool(probing) == audit
    assert report["policy"]["name"] == policy_name
    assert isinstance(report["reasons"], list) and report["reasons"]
    assert all(isinstance(r, str) for r in report["reasons"])
    assert isinstance(report["checks"], list)
    assert report["dp"] is None
    # Canaries the secret coin flips left out never reach train.npz.
    excluded = 0
    if audit:
        membership = report["membership"]
        assert membership["canaries"] == policy.membership.canaries
        excluded = membership["canaries"] - membership["included"]
        assert 60 <= excluded <= 140  # Binomial(200, 1/2): outside this, p < 1e-8
        assert membership["verdict"] == "pass"
    if probing:
        assert {f["name"] for f in report["probes"]["families"]} == set(policy.probes.families)
    n_train = 1438 - excluded
    assert report["dataset"]["n_train"] == n_train
    assert report["dataset"]["n_holdout"] == 359
    assert report["dataset"]["holdout"].startswith("split")

    utility = report["utility"]
    assert utility["holdout_n"] == 359
    assert 0.90 <= utility["candidate_accuracy"] <= 1.00
    # The default policy releases the sanitized model: low mantissa bits randomised,
    # accuracy within the policy's allowed drop of the provider's own weights.
    assert 0.90 <= utility["sanitized_accuracy"] <= 1.00
    assert utility["released_accuracy"] == utility["sanitized_accuracy"]
    assert (
        utility["candidate_accuracy"] - utility["sanitized_accuracy"]
        <= policy.release.max_sanitize_drop
    )
    verdicts = {c["name"]: c["verdict"] for c in report["checks"]}
    assert verdicts.pop("sanitizer") == "applied"
    # the 128 hidden units of the example MLP (linear, ReLU, linear) were rescaled first
    assert report["architecture"]["unit_chains"] == 1
    sanitizer = next(c for c in report["checks"] if c["name"] == "sanitizer")
    assert sanitizer["details"]["rescale"]["units_rescaled"] == 128
    # strict sanitises what rescaling did not reach (the last bias) with 22 bits
    coarser = {"net.3.bias": 22} if policy.checks.sanitize_bits_unrescaled else None
    assert sanitizer["details"].get("bits_by_tensor") == coarser
    assert sanitizer["details"]["bits"] == {"F32": 19}
    data_aware = {"data_correlation", "data_sign_agreement"}
    expected = set(policy.checks.enabled) - (set() if policy.checks.data_checks else data_aware)
    assert set(verdicts) == expected
    assert set(verdicts.values()) == {"pass"}, verdicts  # an honest model is not flagged

    timings = report["timings"]
    assert set(timings) >= {"prepare", "architecture", "train", "gate", "utility", "release"}
    assert all(isinstance(t, float | int) and t >= 0 for t in timings.values())
    assert timings["train"] > 1.0  # 30 epochs in a container take seconds, not nothing

    # The released file is the gate's canonical model: hash and size as reported.
    model_path = job.out / "model.safetensors"
    raw = model_path.read_bytes()
    assert report["model"]["sha256"] == hashlib.sha256(raw).hexdigest()
    assert report["model"]["bytes"] == len(raw)
    tensors = load_file(str(model_path))
    assert {k: list(v.shape) for k, v in tensors.items()} == {
        "net.1.weight": [128, 64],
        "net.1.bias": [128],
        "net.3.weight": [10, 128],
        "net.3.bias": [10],
    }
    assert all(v.dtype == np.float32 for v in tensors.values())

    # The reported accuracy is really the holdout accuracy of the released weights.
    holdout = write_split_holdout(digits, policy, tmp_path / "split-holdout.npz")
    module = load_module(EXAMPLE).build_model((64,), 10)
    correct, n = host_accuracy(module, model_path, holdout)
    assert n == 359
    assert round(correct / n, 6) == utility["released_accuracy"]

    # Container logs: for the owner only, never in report.json.
    owner = job.out / "owner"
    logs = owner / "logs.txt"
    assert stat.S_IMODE(owner.stat().st_mode) == 0o700
    assert stat.S_IMODE(logs.stat().st_mode) == 0o600
    log_text = logs.read_text()
    assert f"training on {n_train} examples" in log_text
    assert "===== train =====" in log_text
    report_text = (job.out / "report.json").read_text()
    assert "training on" not in report_text
    assert "epoch 1/30" not in report_text
    assert "=====" not in report_text
    assert out_listing(job.out) == RELEASED_LISTING

    # The owner's HTML report: owner-only, rendered from this report, no container logs.
    page = owner / "report.html"
    assert stat.S_IMODE(page.stat().st_mode) == 0o600
    page_text = page.read_text()
    assert report["job_id"] in page_text and "released_sanitized" in page_text
    assert f"{utility['sanitized_accuracy'] * 100:.4g}%" in page_text
    assert "training on" not in page_text


def test_separate_holdout_file(job: Job, digits: Path, runtime_image: str, tmp_path: Path) -> None:
    """--holdout FILE: the whole dataset trains, the file is what gets scored."""
    with np.load(digits, allow_pickle=False) as data:
        x, y = data["x"], data["y"]
    order = np.random.default_rng(0).permutation(len(y))
    train_idx, hold_idx = np.sort(order[360:]), np.sort(order[:360])
    train_path, holdout_path = tmp_path / "train.npz", tmp_path / "holdout.npz"
    np.savez(train_path, x=x[train_idx], y=y[train_idx])
    np.savez(holdout_path, x=x[hold_idx], y=y[hold_idx])

    algorithm = ALGORITHMS / "linear_ok"
    report = run(job, algorithm, train_path, load_policy("default"), runtime_image, holdout_path)

    assert report["decision"] == "released_sanitized", report["reasons"]
    assert report["dataset"]["holdout"] == "file"
    assert report["dataset"]["n_train"] == 1437
    assert report["dataset"]["n_holdout"] == 360
    assert report["utility"]["holdout_n"] == 360
    accuracy = report["utility"]["released_accuracy"]
    assert 0.88 <= accuracy <= 1.00
    module = load_module(algorithm).build_model((64,), 10)
    correct, n = host_accuracy(module, job.out / "model.safetensors", holdout_path)
    assert n == 360
    assert round(correct / n, 6) == accuracy


def test_build_model_sees_no_dataset(job: Job, digits: Path, runtime_image: str) -> None:
    """(j) build_model fails the job if it can find the data; the export container has none."""
    report = run(
        job, ALGORITHMS / "build_probes_data", digits, load_policy("default"), runtime_image
    )
    assert report["decision"] == "released_sanitized", report["reasons"]
    logs = (job.out / "owner" / "logs.txt").read_text()
    export_log = logs.split("===== export =====", 1)[1].split("=====", 1)[0]
    assert "probe: build_model saw no dataset" in export_log  # the probe really ran


def test_train_cannot_leave_data_elsewhere(job: Job, digits: Path, runtime_image: str) -> None:
    """(k) train.py stashes the data in /tmp, /dev/shm, /algorithm...: only the model leaves."""
    algorithm = ALGORITHMS / "train_leaves_data"
    sources = sorted(p.name for p in algorithm.iterdir())
    report = run(job, algorithm, digits, load_policy("default"), runtime_image)

    assert report["decision"] == "released_sanitized", report["reasons"]
    logs = (job.out / "owner" / "logs.txt").read_text()
    assert "stash /tmp/stash.bin: written" in logs  # the attempt was real
    for read_only in ("/algorithm/stash.bin", "/data/stash.bin", "/output/../stash.bin"):
        assert f"stash {read_only}: refused errno 30" in logs  # EROFS
    assert out_listing(job.out) == RELEASED_LISTING
    assert set(load_file(str(job.out / "model.safetensors"))) == {"fc.weight", "fc.bias"}
    marker = ("SANDBOX" + "-STASH-" + "5e1f0c").encode()
    carriers = [p for p in files_under(job.out.parent) if marker in p.read_bytes()]
    assert carriers == []
    assert sorted(p.name for p in algorithm.iterdir()) == sources


# --------------------------------------------------------------------------- rejected jobs


FAILURES = [
    pytest.param(
        "export_control_flow",
        {},
        "export: torch.export could not capture the model",
        ["export"],
        id="a-export-cannot-capture",
    ),
    pytest.param(
        "build_raises",
        {},
        "export: build_model raised RuntimeError: deliberate failure in build_model",
        ["export"],
        id="b-build-model-raises",
    ),
    pytest.param(
        "build_not_module",
        {},
        "export: build_model returned dict, not a torch.nn.Module",
        ["export"],
        id="c-build-model-not-module",
    ),
    pytest.param(
        "export_hostile_pt2",
        {},
        "describe: the exported program is not a plain torch.export archive: the program "
        "carries guard code",
        ["export", "describe"],
        id="c2-export-writes-code-into-the-program",
    ),
    pytest.param(
        "train_crash",
        {},
        "train: train.py raised RuntimeError: deliberate crash in train.py",
        UP_TO_TRAIN,
        id="d-train-crashes",
    ),
    pytest.param(
        "train_hang",
        {"wall_seconds": 15},
        "train: killed at the wall-clock limit of 15 s",
        UP_TO_TRAIN,
        id="e-train-hangs",
    ),
    pytest.param(
        "train_oom",
        {"memory_mb": 512},
        "train: ran out of memory (limit 512 MB) and was killed",
        UP_TO_TRAIN,
        id="f-train-out-of-memory",
    ),
    pytest.param(
        "train_no_output",
        {},
        "train: train.py finished without writing $SANDBOX_OUTPUT/model.safetensors",
        UP_TO_TRAIN,
        id="g-train-writes-nothing",
    ),
    pytest.param(
        "train_extra_file",
        {},
        "the output directory may contain only model.safetensors, but it also has 'notes.txt'",
        UP_TO_TRAIN,
        id="h-train-writes-extra-file",
    ),
    pytest.param(
        "train_wrong_shape",
        {},
        "tensors do not match the declared architecture: 'fc.weight' has shape [10, 65], "
        "expected [10, 64]",
        UP_TO_TRAIN,
        id="i-train-wrong-shapes",
    ),
]


@pytest.mark.parametrize(("algorithm", "limits", "reason", "steps"), FAILURES)
def test_broken_algorithm_is_rejected(
    job: Job,
    digits: Path,
    runtime_image: str,
    algorithm: str,
    limits: dict[str, int],
    reason: str,
    steps: list[str],
) -> None:
    policy = policy_with("default", **limits)
    report = run(job, ALGORITHMS / algorithm, digits, policy, runtime_image)
    assert_rejected(report, reason, job.out)
    assert job.runner.steps == steps  # it stopped at the failing step
    if "gate" in report["timings"]:
        assert report["gate"] == {"verdict": "fail", "reason": report["reasons"][0]}
    if "wall_seconds" in limits:
        assert limits["wall_seconds"] - 1 <= report["timings"]["train"] <= 45


def test_crash_rejected_under_gvisor(job: Job, digits: Path, runtime_image: str) -> None:
    job.runner.check_runtime("runsc")
    strict = load_policy("strict")
    immediate = strict.model_copy(  # the fixed release time is tested on its own below
        update={"release": strict.release.model_copy(update={"fixed_delay_seconds": None})}
    )
    report = run(job, ALGORITHMS / "train_crash", digits, immediate, runtime_image)
    assert_rejected(report, "train: train.py raised RuntimeError: deliberate crash", job.out)
    assert job.runner.steps == UP_TO_TRAIN


def with_release_delay(seconds: int) -> Policy:
    base = load_policy("default")
    release = base.release.model_copy(update={"fixed_delay_seconds": seconds})
    return base.model_copy(update={"release": release})


def test_fixed_release_time_hides_how_long_the_job_took(
    job: Job, digits: Path, runtime_image: str
) -> None:
    started = time.monotonic()
    report = run(job, ALGORITHMS / "linear_ok", digits, with_release_delay(30), runtime_image)
    elapsed = time.monotonic() - started
    assert report["decision"] == "released_sanitized", report["reasons"]
    busy = sum(report["timings"].values())
    assert busy < 25  # the job itself was done well before the release time
    assert 30 <= elapsed < 36


def test_job_still_running_at_the_release_time_is_stopped_and_rejected(
    job: Job, digits: Path, runtime_image: str
) -> None:
    """Stopped at the release time (no container runs past it) and rejected, the
    rejection appearing at release + RELEASE_SLACK_SECONDS whatever the job was doing."""
    started = time.monotonic()
    report = run(job, ALGORITHMS / "linear_ok", digits, with_release_delay(5), runtime_image)
    elapsed = time.monotonic() - started
    assert report["decision"] == "rejected"
    assert report["model"] is None
    reason = report["reasons"][-1]
    assert "the policy's fixed release time of 5 s" in reason, reason
    assert "ask for a policy with a later release time" in reason
    assert 5 + RELEASE_SLACK_SECONDS <= elapsed < 5 + RELEASE_SLACK_SECONDS + 5, elapsed
    assert "utility" not in job.runner.steps  # nothing started after the release time
    assert out_listing(job.out) == REJECTED_LISTING


# --------------------------------------------------------------------------- bad inputs


def _not_npz(tmp: Path, digits: Path) -> tuple[Path, Path, Path | None, Policy]:
    path = tmp / "data.csv"
    path.write_text("x0,x1,y\n0.5,0.25,1\n")
    return EXAMPLE, path, None, load_policy("default")


def _pickled(tmp: Path, digits: Path) -> tuple[Path, Path, Path | None, Policy]:
    path = tmp / "pickled.npz"
    x = np.empty(20, dtype=object)
    x[:] = [{"row": i} for i in range(20)]
    np.savez(path, x=x, y=np.arange(20, dtype=np.int64) % 2)
    return EXAMPLE, path, None, load_policy("default")


def _wrong_dtypes(tmp: Path, digits: Path) -> tuple[Path, Path, Path | None, Policy]:
    path = tmp / "float64.npz"
    with np.load(digits, allow_pickle=False) as data:
        np.savez(path, x=data["x"].astype(np.float64), y=data["y"])
    return EXAMPLE, path, None, load_policy("default")


def _no_train_py(tmp: Path, digits: Path) -> tuple[Path, Path, Path | None, Policy]:
    package = tmp / "no_train"
    package.mkdir()
    (package / "model.py").write_bytes((ALGORITHMS / "linear_ok" / "model.py").read_bytes())
    return package, digits, None, load_policy("default")


def _dotdot_tar(tmp: Path, digits: Path) -> tuple[Path, Path, Path | None, Policy]:
    archive = tmp / "escape.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name in ("model.py", "train.py"):
            tar.add(ALGORITHMS / "linear_ok" / name, arcname=name)
        payload = b"print('escaped')\n"
        info = tarfile.TarInfo("../../../../escaped_member.py")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    return archive, digits, None, load_policy("default")


def _too_large(tmp: Path, digits: Path) -> tuple[Path, Path, Path | None, Policy]:
    path = tmp / "large.npz"
    rng = np.random.default_rng(0)
    np.savez(path, x=rng.random((4096, 128), dtype=np.float32), y=np.arange(4096) % 4)
    policy = load_policy("default").model_copy(update={"max_dataset_mb": 1})
    return EXAMPLE, path, None, policy


def _missing_dataset(tmp: Path, digits: Path) -> tuple[Path, Path, Path | None, Policy]:
    return EXAMPLE, tmp / "does-not-exist.npz", None, load_policy("default")


def _mismatched_holdout(tmp: Path, digits: Path) -> tuple[Path, Path, Path | None, Policy]:
    path = tmp / "holdout32.npz"
    with np.load(digits, allow_pickle=False) as data:
        np.savez(path, x=np.ascontiguousarray(data["x"][:100, :32]), y=data["y"][:100])
    return EXAMPLE, digits, path, load_policy("default")


BAD_INPUTS = [
    pytest.param(_not_npz, InvalidInput, r"is not an \.npz \(zip\) archive", id="not-npz"),
    pytest.param(_pickled, InvalidInput, r"holds pickled objects", id="pickled-npz"),
    pytest.param(
        _wrong_dtypes, InvalidInput, r"x has dtype float64, the contract needs float32", id="dtype"
    ),
    pytest.param(_no_train_py, InvalidInput, r"no train\.py at its top level", id="no-train-py"),
    pytest.param(_dotdot_tar, InvalidInput, r"has a '\.\.' component", id="dotdot-member"),
    pytest.param(
        _too_large, LimitExceeded, r"over the limit of 1048576 bytes", id="dataset-over-limit"
    ),
    pytest.param(_missing_dataset, NotFound, r"does-not-exist\.npz does not exist", id="missing"),
    pytest.param(
        _mismatched_holdout, InvalidInput, r"holdout's examples have shape \(32,\)", id="holdout"
    ),
]


@pytest.mark.parametrize(("make", "error", "message"), BAD_INPUTS)
def test_bad_input_refused_before_any_container(
    job: Job,
    tmp_path: Path,
    digits: Path,
    runtime_image: str,
    make: Any,
    error: type[SandboxError],
    message: str,
) -> None:
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    algorithm, dataset, holdout, policy = make(inputs, digits)
    with pytest.raises(error, match=message) as raised:
        run(job, algorithm, dataset, policy, runtime_image, holdout)
    assert job.runner.steps == []  # refused before any container started
    assert not list(tmp_path.rglob("escaped_member.py"))
    # The owner's report says why, in the same words as the error.
    report = job.report_json
    assert report["decision"] == "rejected"
    assert report["model"] is None
    assert report["reasons"] == [raised.value.message]
    assert out_listing(job.out) == REJECTED_LISTING
    assert sorted(os.listdir(job.out / "owner")) == ["logs.txt", "report.html"]
