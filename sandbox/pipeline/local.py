"""The pipeline of one job, end to end, without a server.

prepare -> architecture -> train -> gate -> utility -> [dp-retrain] -> decide ->
(hold until the fixed release time) -> release. DESIGN.md section 3. Under a fixed
release time nothing of the job runs past it: a job still running then is stopped and
rejected, and its rejection appears RELEASE_SLACK_SECONDS later. Every
container is removed and every plaintext file and tmpfs mount is gone when
`run_local` returns or raises, whatever happened. A step that fails ends the job
as `rejected` with a reason; bad inputs, and jobs the privacy budget cannot pay
for, are refused before any container starts.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from dataclasses import replace
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
from sandbox.audit.keys import default_home
from sandbox.checks.calibrate import load_calibration
from sandbox.dp import BudgetLedger, SqliteBudgetLedger
from sandbox.errors import FailedPrecondition, InvalidInput, SandboxError
from sandbox.gate import GateViolation
from sandbox.pipeline import membership_step, probe_step, steps
from sandbox.pipeline.context import JobContext, Progress, StepFailed
from sandbox.pipeline.dp_step import Budgeting, dp_retrain
from sandbox.pipeline.query import REFERENCES
from sandbox.pipeline.report import Report, write_atomic
from sandbox.policy.decide import DecisionRules, StepResults, decide, needs_dp
from sandbox.policy.load import policy_hash
from sandbox.policy.model import Policy
from sandbox.report_html import render_html
from sandbox.runner.base import Runner
from sandbox.runner.workspace import JobWorkspace, default_root, sweep_stale


def _release(ctx: JobContext, model: Path, out_dir: Path) -> None:
    """Step 7: the chosen model (provider's, sanitized or DP) becomes model.safetensors."""
    shutil.copyfile(model, out_dir / "model.safetensors")
    ctx.report.model = {
        "sha256": sha256_file(out_dir / "model.safetensors"),
        "bytes": os.path.getsize(out_dir / "model.safetensors"),
        "path": "model.safetensors",
        "source": model.stem,
    }


#: Under a fixed release time, a job stopped at it (or whose host-side work ran past it)
#: has its rejection published this long after the release time: the time its containers
#: take to be killed and removed, and the decision, however loaded the host, so that
#: every outcome appears at one of two fixed times (release, or release + slack)
#: whatever the job's code did. README (red-team scorecard) has the measurement.
RELEASE_SLACK_SECONDS = 30.0


def _hold_until_release_time(ctx: JobContext, started: float) -> None:
    """With a fixed release time, every outcome appears at a fixed time: timing carries nothing.

    A job that ends in time is held until the release time. One still running then was
    stopped at it (`JobContext.run` caps every container's wall-clock limit at the time
    left, and a step due after it does not start), and is rejected; its rejection is
    held until the release time plus RELEASE_SLACK_SECONDS. Only host-side work that
    overran even the slack could make an outcome late, and the reason then says so.
    """
    delay = ctx.policy.release.fixed_delay_seconds
    if delay is None:
        return
    release = started + delay
    now = time.monotonic()
    if not ctx.overran and now <= release:
        ctx.progress(
            "hold", f"holding the outcome until the fixed release time ({release - now:.0f} s)"
        )
        time.sleep(release - now)
        return
    if ctx.report.decision != "rejected" or not ctx.overran:
        # host-side work (not a container) ran past the release time: nothing is released
        ctx.report.decision = "rejected"
        ctx.report.reasons.append(
            f"the job was still running at the policy's fixed release time of {delay} s after "
            "submission, so it was rejected; lower the work (epochs, data, model size) to "
            f"finish well within {delay} s, or ask for a policy with a later release time"
        )
    publish = release + RELEASE_SLACK_SECONDS
    late = now - publish
    if late > 0:
        ctx.report.reasons.append(
            f"the platform's own work ran {late:.0f} s past the {RELEASE_SLACK_SECONDS:.0f} s "
            "allowed after the release time, so this rejection appears late: its time is not "
            "fixed, and tells the provider how long the job ran (a timing leak)"
        )
        return
    ctx.progress("hold", f"holding the rejection until its fixed time ({publish - now:.0f} s)")
    time.sleep(publish - now)


def _write_owner_logs(ctx: JobContext, out_dir: Path) -> None:
    """Container logs go to a separate owner-only file: never to the provider."""
    owner = out_dir / "owner"
    owner.mkdir(mode=0o700, exist_ok=True)
    os.chmod(owner, 0o700)
    text = b"".join(f"===== {step} =====\n".encode() + logs + b"\n" for step, logs in ctx.logs)
    write_atomic(owner / "logs.txt", text, mode=0o600)


def _write_owner_report_html(report: Report, out_dir: Path) -> None:
    """The owner's report as a self-contained page, next to the logs (owner-only).

    Written for every outcome, rejections included, like report.json; rendering
    never raises on a partial report, it says what is missing instead.
    """
    page = render_html(json.loads(report.to_json()), load_calibration())
    write_atomic(out_dir / "owner" / "report.html", page.encode(), mode=0o600)


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


def _rules(policy: Policy) -> DecisionRules:
    return DecisionRules(
        dp_mode=policy.dp.mode,
        utility_floor=policy.release.utility_floor,
        max_sanitize_drop=policy.release.max_sanitize_drop,
        allow_non_dp_release=policy.dp.allow_non_dp_release,
    )


def _pipeline(
    ctx: JobContext,
    budgeting: Budgeting,
    algorithm: Path,
    dataset: Path,
    holdout: Path | None,
) -> tuple[StepResults, dict[str, Path]]:
    """Every step after which a decision can be taken, and the models it could release."""
    report = ctx.report
    try:
        # the first step: its bad inputs are refused as such, even at a 1 s release time
        with ctx.timed(
            "prepare", "checking the dataset and the algorithm package", check_release=False
        ):
            package, train, test, canaries = steps.prepare(ctx, algorithm, dataset, holdout)
            budgeting.reserve(ctx.policy, package, train)
    except SandboxError as bad_input:
        report.reasons.append(bad_input.message)
        raise
    candidates: dict[str, Path] = {}
    try:
        with ctx.timed("architecture", "capturing the model with torch.export (no data)"):
            arch = steps.architecture(ctx, package, train)
        with ctx.timed("train", "running train.py in the sandbox"):
            out = steps.train(ctx, package)
        with ctx.timed("gate", "validating the output at the egress gate"):
            candidates["candidate"] = steps.gate(ctx, out, arch)
        with ctx.timed("checks", "weight checks and the low-bit sanitizer"):
            checks, sanitized = steps.weight_checks(ctx, candidates["candidate"], train, arch)
        if ctx.policy.probes.enabled:
            # one query container answers the probes and, when planted, the canaries
            also = {} if canaries is None else {membership_step.QUERY: canaries.x}
            trained_on = steps.reference_data(ctx.policy, canaries)
            with ctx.timed("probe", "probing the model with out-of-distribution queries"):
                probed, answers = probe_step.probe_and_answer(
                    ctx,
                    train,
                    test,
                    also,
                    reference_data=trained_on or "data",
                    declared=dict(package.hyperparameters),
                )
                checks = (*checks, *probed)
            if canaries is not None:
                with ctx.timed("membership", "auditing membership of the planted canaries"):
                    q = membership_step.QUERY
                    clean = trained_on == steps.CANARY_FREE
                    references = [answers[r][q] for r in REFERENCES] if clean else []
                    audit = membership_step.audit(
                        ctx, canaries, answers["candidate"][q], references
                    )
                    checks = (*checks, audit)
        elif canaries is not None:
            with ctx.timed("membership", "auditing membership of the planted canaries"):
                checks = (*checks, membership_step.audit(ctx, canaries))
        names = ["candidate"]
        if sanitized is not None:
            candidates["sanitized"] = sanitized
            names.append("sanitized")
        with ctx.timed("utility", "measuring holdout accuracy"):
            accuracy = steps.evaluate(ctx, test, names, "evaluate")
        report.utility = {"holdout_n": len(test.y)}
        report.utility |= {f"{name}_accuracy": round(a, 6) for name, a in accuracy.items()}
        results = StepResults(
            checks=checks,
            candidate_accuracy=accuracy["candidate"],
            sanitized_accuracy=accuracy.get("sanitized"),
        )
    except (StepFailed, GateViolation, InvalidInput) as failure:
        if isinstance(failure, GateViolation):
            report.gate = {"verdict": "fail", "reason": failure.message}
        return StepResults(failure=getattr(failure, "message", None) or str(failure)), {}
    if needs_dp(_rules(ctx.policy), results.checks):
        try:
            with ctx.timed("dp-retrain", "retraining the declared architecture with DP-SGD"):
                candidates["dp"] = dp_retrain(ctx, budgeting, arch)
                dp_accuracy = steps.evaluate(ctx, test, ["dp"], "evaluate-dp")["dp"]
            report.utility["dp_accuracy"] = round(dp_accuracy, 6)
            results = replace(results, dp_accuracy=dp_accuracy)
        except (StepFailed, GateViolation, InvalidInput) as failure:
            reason = getattr(failure, "message", None) or str(failure)
            results = replace(results, dp_failure=reason)
    return results, candidates


_SOURCE = {"released": "candidate", "released_sanitized": "sanitized", "released_dp": "dp"}
_ACCURACY = {
    "released": "candidate_accuracy",
    "released_sanitized": "sanitized_accuracy",
    "released_dp": "dp_accuracy",
}


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
    ledger: BudgetLedger | None = None,
    dataset_id: str | None = None,
) -> Report:
    """Run one job end to end; write the released model (if any), report.json, logs,
    and for a release a signed attestation; every decision goes to the audit log.

    `ledger`/`dataset_id` name the privacy budget to charge; by default a ledger in
    $SANDBOX_HOME keyed by the dataset file's sha256.
    """
    if policy.gpu and gpu_device is None:
        raise FailedPrecondition(f"policy {policy.name} grants a GPU but none was assigned")
    prepare_out_dir(out_dir)
    signing_key = signing_key or load_or_create_signing_key()  # fail before any container
    audit = AuditLog(audit_path or default_log_path(), signing_key)
    own_ledger = ledger is None
    ledger = ledger or SqliteBudgetLedger(default_home() / "ledger.db")
    submitted = utc_now()
    started = time.monotonic()
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
    try:
        with JobWorkspace(root, job_id) as workspace:
            ctx = JobContext(job_id, policy, runner, image, workspace, report, say)
            ctx.gpu_device = gpu_device
            if policy.release.fixed_delay_seconds is not None:
                ctx.release_at = started + policy.release.fixed_delay_seconds
            budgeting = Budgeting(ledger, dataset_id or _dataset_key(dataset), job_id)
            try:
                results, candidates = _pipeline(ctx, budgeting, algorithm, dataset, holdout)
                outcome = decide(_rules(policy), results)
                report.decision = outcome.decision
                report.reasons.extend(outcome.reasons)
                _hold_until_release_time(ctx, started)
                if report.decision != "rejected":
                    with ctx.timed("release", "releasing the model", check_release=False):
                        _release(ctx, candidates[_SOURCE[report.decision]], out_dir)
                    key = _ACCURACY[report.decision]
                    report.utility["released_accuracy"] = report.utility.get(key)
            except BaseException as stopped:
                if not report.reasons:
                    report.reasons.append(_stop_reason(stopped))
                report.decision = "rejected"
                raise
            finally:
                budgeting.settle(policy, report.decision)
                runner.remove_job(job_id)
                _write_owner_logs(ctx, out_dir)
                write_atomic(out_dir / "report.json", report.to_json().encode())
                _write_owner_report_html(report, out_dir)
                _record_outcome(report, out_dir, dataset, submitted, signing_key, audit)
    finally:
        if own_ledger and isinstance(ledger, SqliteBudgetLedger):
            ledger.close()
    say("done", f"decision: {report.decision}")
    return report


def _dataset_key(dataset: Path) -> str:
    """A local dataset's identity for its privacy budget: the file's sha256."""
    try:
        return "sha256:" + sha256_file(dataset)
    except (OSError, SandboxError):  # prepare reports the missing file in the owner's words
        return "missing:" + hashlib.sha256(str(dataset).encode()).hexdigest()


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
