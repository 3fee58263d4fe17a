"""The local pipeline of one job: prepare, architecture, train, gate, utility, release.

Pipeline steps 1-3 and 7 of DESIGN.md section 3, without a server. Every
container is removed and every plaintext file and tmpfs mount is gone when
`run_local` returns or raises, whatever happened. A step that fails ends the job
as `rejected` with a reason; bad inputs are refused before any container starts.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from sandbox.audit import (
    AuditLog,
    attest_report,
    default_log_path,
    load_or_create_signing_key,
    sha256_file,
    utc_now,
)
from sandbox.errors import FailedPrecondition, InvalidInput, SandboxError
from sandbox.gate import GateViolation, TensorSpec, gate_output
from sandbox.pipeline import containers
from sandbox.pipeline.algorithm import AlgorithmPackage, unpack_algorithm
from sandbox.pipeline.architecture import Architecture, parse_architecture
from sandbox.pipeline.dataset import (
    Dataset,
    check_compatible,
    load_dataset,
    split_holdout,
    write_npz,
)
from sandbox.pipeline.report import Report, write_atomic
from sandbox.policy.load import policy_hash
from sandbox.policy.model import Policy
from sandbox.runner.base import BindMount, ContainerSpec, Runner, run_container
from sandbox.runner.workspace import JobWorkspace, default_root, sweep_stale

MB = 1024 * 1024
Progress = Callable[[str, str], None]


class StepFailed(Exception):
    """A container step failed; the job ends `rejected` with this reason."""


@dataclass
class JobContext:
    """What the steps of one job share."""

    job_id: str
    policy: Policy
    runner: Runner
    image: str
    workspace: JobWorkspace
    report: Report
    progress: Progress
    logs: list[tuple[str, bytes]] = field(default_factory=list)
    gpu_device: str | None = None

    def run(self, spec: ContainerSpec) -> None:
        """Run one container; record its logs for the owner; raise StepFailed on failure."""
        result = run_container(self.runner, spec)
        self.logs.append((spec.step, result.logs))
        reason = containers.failure_reason(spec.step, result, self.policy)
        if reason is not None:
            raise StepFailed(reason)

    @contextmanager
    def timed(self, step: str, message: str) -> Iterator[None]:
        self.progress(step, message)
        start = time.monotonic()
        try:
            yield
        finally:
            self.report.timings[step] = round(time.monotonic() - start, 3)


def _read_small(path: Path, limit: int) -> bytes:
    """Read a file a container wrote: regular file, no links, bounded size."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as handle:
        stat = os.fstat(handle.fileno())
        if not (stat.st_mode & 0o170000 == 0o100000) or stat.st_size > limit:
            raise StepFailed(
                f"{path.name} from the container is not a regular file of <= {limit} B"
            )
        return handle.read(limit + 1)[:limit]


def _expect_only(directory: Path, allowed: set[str], step: str) -> None:
    found = {entry.name for entry in os.scandir(directory)}
    extra, missing = sorted(found - allowed), sorted(allowed - found)
    if extra or missing:
        raise StepFailed(f"{step}: unexpected outputs {extra[:10]}, missing {missing}")


def _prepare(
    ctx: JobContext, algorithm: Path, dataset: Path, holdout: Path | None
) -> tuple[AlgorithmPackage, Dataset, Dataset]:
    policy = ctx.policy
    full = load_dataset(dataset, max_bytes=policy.max_dataset_mb * MB)
    if holdout is None:
        train, test = split_holdout(full, policy.holdout_fraction, policy.holdout_seed)
        source = f"split ({policy.holdout_fraction:.2f}, seed {policy.holdout_seed})"
    else:
        train, test = full, load_dataset(holdout, max_bytes=policy.max_dataset_mb * MB)
        check_compatible(test, train)
        source = "file"
    ws = ctx.workspace
    data_mb = train.x.nbytes // MB + train.y.nbytes // MB + 2
    write_npz(train, ws.tmpfs("data", data_mb) / "train.npz")
    test_mb = test.x.nbytes // MB + test.y.nbytes // MB + 2
    write_npz(test, ws.tmpfs("holdout", test_mb) / "holdout.npz")
    package = unpack_algorithm(algorithm, ws.tmpfs("algorithm", 64) / "pkg")
    ws.tmpfs("work", policy.limits.output_mb * 4 + 64)
    ctx.report.algorithm = {
        "name": package.name,
        "version": package.version,
        "sha256": package.sha256,
    }
    ctx.report.dataset = {
        "n_train": len(train.y),
        "n_holdout": len(test.y),
        "num_classes": train.num_classes,
        "input_shape": list(train.input_shape),
        "holdout": source,
    }
    return package, train, test


def _architecture(ctx: JobContext, package: AlgorithmPackage, train: Dataset) -> Architecture:
    """Step 1: export in a container without data, describe in one without provider code."""
    ws, policy = ctx.workspace, ctx.policy
    shape_env = {
        "SANDBOX_INPUT_SHAPE": json.dumps(list(train.input_shape)),
        "SANDBOX_NUM_CLASSES": str(train.num_classes),
    }
    out = ws.output_dir("export", policy.limits.output_mb * 2 + 16)
    ctx.run(
        containers.guest_spec(
            policy,
            job_id=ctx.job_id,
            step="export",
            image=ctx.image,
            module="export",
            mounts=[BindMount(package.root, "/algorithm"), BindMount(out, "/output", False)],
            env=shape_env,
        )
    )
    _expect_only(out, {"model.pt2", "init.safetensors"}, "export")
    work = ws.path / "work"
    program = _read_small(out / "model.pt2", policy.limits.output_mb * 2 * MB)
    (work / "model.pt2").write_bytes(program)
    os.chmod(work / "model.pt2", 0o444)

    described = ws.output_dir("describe", 8)
    ctx.run(
        containers.guest_spec(
            policy,
            job_id=ctx.job_id,
            step="describe",
            image=ctx.image,
            module="describe",
            mounts=[BindMount(work, "/work"), BindMount(described, "/output", False)],
            env=shape_env,
        )
    )
    _expect_only(described, {"arch.json"}, "describe")
    arch = parse_architecture(
        _read_small(described / "arch.json", 4 * MB),
        input_shape=train.input_shape,
        num_classes=train.num_classes,
        rules=policy.architecture,
    )
    ctx.report.architecture = arch.summary()
    return arch


def _train(ctx: JobContext, package: AlgorithmPackage) -> Path:
    """Step 2: the provider's train.py with the training split, read-only."""
    ws, policy = ctx.workspace, ctx.policy
    out = ws.output_dir("train", policy.limits.output_mb)
    ctx.run(
        containers.guest_spec(
            policy,
            job_id=ctx.job_id,
            step="train",
            image=ctx.image,
            module="train",
            mounts=[
                BindMount(package.root, "/algorithm"),
                BindMount(ws.path / "data", "/data"),
                BindMount(out, "/output", False),
            ],
            gpu_device=ctx.gpu_device,
        )
    )
    return out


def _gate(ctx: JobContext, out: Path, arch: Architecture) -> Path:
    """Step 3: only the declared model leaves, canonically re-serialised."""
    dest = ctx.workspace.path / "work" / "candidate.safetensors"
    expected: dict[str, TensorSpec] = dict(arch.tensors)
    result = gate_output(out, expected, ctx.policy.gate, dest)
    os.chmod(dest, 0o444)  # trusted containers (evaluate) read it as the container user
    ctx.report.gate = {"verdict": "pass", "notes": list(result.notes)}
    ctx.report.model = {"sha256": result.sha256, "bytes": result.size}
    return dest


def _utility(ctx: JobContext, test: Dataset) -> float:
    """Holdout accuracy of the candidate, computed by trusted code on the exported graph."""
    ws, policy = ctx.workspace, ctx.policy
    out = ws.output_dir("evaluate", 1)
    ctx.run(
        containers.guest_spec(
            policy,
            job_id=ctx.job_id,
            step="evaluate",
            image=ctx.image,
            module="evaluate",
            mounts=[
                BindMount(ws.path / "work", "/work"),
                BindMount(ws.path / "holdout", "/data"),
                BindMount(out, "/output", False),
            ],
            args=["candidate"],
        )
    )
    _expect_only(out, {"metrics.json"}, "evaluate")
    try:
        metrics = json.loads(_read_small(out / "metrics.json", 65536))
        counts = metrics["results"]["candidate"]
        correct, n = counts["correct"], counts["n"]
        if not (isinstance(correct, int) and isinstance(n, int)):
            raise TypeError("counts are not integers")
    except (ValueError, KeyError, TypeError) as error:
        raise StepFailed(f"evaluate: malformed metrics ({error})") from error
    if not (n == len(test.y) and 0 <= correct <= n):
        raise StepFailed("evaluate: metrics do not match the holdout")
    return correct / n


def _release(ctx: JobContext, candidate: Path, out_dir: Path) -> None:
    shutil.copyfile(candidate, out_dir / "model.safetensors")
    assert ctx.report.model is not None
    ctx.report.model["path"] = "model.safetensors"
    ctx.report.decision = "released"


def _write_owner_logs(ctx: JobContext, out_dir: Path) -> None:
    """Container logs go to a separate owner-only file: never to the provider."""
    owner = out_dir / "owner"
    owner.mkdir(mode=0o700, exist_ok=True)
    os.chmod(owner, 0o700)
    text = b"".join(f"===== {step} =====\n".encode() + logs + b"\n" for step, logs in ctx.logs)
    write_atomic(owner / "logs.txt", text, mode=0o600)


def _record_outcome(
    report: Report,
    out_dir: Path,
    dataset: Path,
    submitted: str,
    signing_key: Ed25519PrivateKey,
    audit: AuditLog,
) -> None:
    """Step 7: audit the decision; for a release, write the signed attestation.

    attestation.json is for everyone who may verify the release; the dataset
    commitment's opening (salt and the dataset's sha256) goes to owner/ only.
    """
    subject = {"job": report.job_id}
    try:
        audit.append(
            "decision",
            actor="orchestrator",
            subject=subject,
            data={
                "decision": report.decision,
                "reasons": [reason[:500] for reason in report.reasons[:20]],
                "algorithm_sha256": report.algorithm.get("sha256"),
                "model_sha256": (report.model or {}).get("sha256"),
            },
        )
        if report.decision == "rejected":
            return
        audit.checkpoint()  # the head the attestation records is a signed one
        envelope, commitment = attest_report(
            json.loads(report.to_json()),
            out_dir / "model.safetensors",
            signing_key,
            dataset_sha256=sha256_file(dataset),
            submitted=submitted,
            released=utc_now(),
            audit_head=audit.head(),
        )
        attestation = json.dumps(envelope, indent=2).encode()
        write_atomic(out_dir / "attestation.json", attestation)
        opening = json.dumps(commitment.opening(), indent=2).encode()
        write_atomic(out_dir / "owner" / "dataset-opening.json", opening, mode=0o600)
        audit.append(
            "release",
            actor="orchestrator",
            subject=subject,
            data={"attestation_sha256": hashlib.sha256(attestation).hexdigest()},
        )
    finally:
        audit.close()


def _stop_reason(stopped: BaseException) -> str:
    if isinstance(stopped, KeyboardInterrupt | SystemExit):
        return "the job was interrupted before a decision; nothing was released"
    return "the job stopped on an internal error before a decision; nothing was released"


def prepare_out_dir(out_dir: Path) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise InvalidInput(f"--out {out_dir} exists and is not a directory; choose a new directory")
    if out_dir.exists() and any(out_dir.iterdir()):
        raise InvalidInput(f"--out {out_dir} is not empty; choose a new directory")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InvalidInput(f"--out {out_dir} cannot be created: {error.strerror}") from error


def run_local(
    algorithm: Path,
    dataset: Path,
    policy: Policy,
    out_dir: Path,
    *,
    runner: Runner,
    image: str,
    holdout: Path | None = None,
    work_root: Path | None = None,
    progress: Progress | None = None,
    gpu_device: str | None = None,
    job_id: str | None = None,
    signing_key: Ed25519PrivateKey | None = None,
    audit_path: Path | None = None,
) -> Report:
    """Run one job end to end; write the released model (if any), report.json, logs,
    and for a release a signed attestation; every decision goes to the audit log."""
    if policy.gpu and gpu_device is None:
        raise FailedPrecondition(f"policy {policy.name} grants a GPU but none was assigned")
    prepare_out_dir(out_dir)
    signing_key = signing_key or load_or_create_signing_key()  # fail before any container
    audit = AuditLog(audit_path or default_log_path(), signing_key)
    submitted = utc_now()
    root = work_root or default_root()
    for stale in sweep_stale(root):
        runner.remove_job(stale)
    job_id = job_id or uuid.uuid4().hex
    report = Report(job_id=job_id, policy={"name": policy.name, "sha256": policy_hash(policy)})
    say = progress or (lambda step, message: None)
    audit.append(
        "job_step",
        actor="orchestrator",
        subject={"job": job_id},
        data={"step": "submitted", "policy": dict(report.policy)},
    )
    with JobWorkspace(root, job_id) as workspace:
        ctx = JobContext(job_id, policy, runner, image, workspace, report, say)
        ctx.gpu_device = gpu_device
        try:
            try:
                with ctx.timed("prepare", "checking the dataset and the algorithm package"):
                    package, train, test = _prepare(ctx, algorithm, dataset, holdout)
            except SandboxError as bad_input:
                report.reasons.append(bad_input.message)
                raise
            try:
                with ctx.timed("architecture", "capturing the model with torch.export (no data)"):
                    arch = _architecture(ctx, package, train)
                with ctx.timed("train", "running train.py in the sandbox"):
                    out = _train(ctx, package)
                with ctx.timed("gate", "validating the output at the egress gate"):
                    candidate = _gate(ctx, out, arch)
                with ctx.timed("utility", "measuring holdout accuracy"):
                    accuracy = _utility(ctx, test)
                ctx.report.utility = {
                    "holdout_n": len(test.y),
                    "candidate_accuracy": round(accuracy, 6),
                    "released_accuracy": round(accuracy, 6),
                }
                with ctx.timed("release", "releasing the model"):
                    _release(ctx, candidate, out_dir)
            except (StepFailed, GateViolation, InvalidInput) as failure:
                report.decision = "rejected"
                report.reasons.append(getattr(failure, "message", None) or str(failure))
                report.model = None
                if isinstance(failure, GateViolation):
                    report.gate = {"verdict": "fail", "reason": failure.message}
            if report.decision == "released":
                report.reasons.append("the model passed the egress gate and was released")
        except BaseException as stopped:
            if not report.reasons:
                report.reasons.append(_stop_reason(stopped))
            raise
        finally:
            runner.remove_job(job_id)
            _write_owner_logs(ctx, out_dir)
            write_atomic(out_dir / "report.json", report.to_json().encode())
            _record_outcome(report, out_dir, dataset, submitted, signing_key, audit)
    say("done", f"decision: {report.decision}")
    return report


def run_with_docker(
    algorithm: Path,
    dataset: Path,
    policy: Policy,
    out_dir: Path,
    *,
    holdout: Path | None = None,
    progress: Progress | None = None,
) -> Report:
    """`run_local` on the production backend: Docker, the runtime image, a GPU if granted."""
    from sandbox.runner.backend import docker_backend
    from sandbox.runner.gpu import GpuPool

    say = progress or (lambda step, message: None)
    runner, image = docker_backend(policy.runtime, log=lambda line: say("image", line))
    pool = GpuPool() if policy.gpu else None
    job_id = uuid.uuid4().hex
    device = pool.acquire(job_id) if pool else None
    try:
        return run_local(
            algorithm,
            dataset,
            policy,
            out_dir,
            runner=runner,
            image=image,
            holdout=holdout,
            progress=say,
            gpu_device=device,
            job_id=job_id,
        )
    finally:
        if pool and device:
            pool.release(device)
