"""The domain layer of the server: ownership, uploads, the job queue, and the views.

Every method takes the caller's `Identity` (from the verified client certificate)
and decides what that party may see or do:

- a data owner sees only their datasets and the jobs on them (full detail);
- a provider sees only their algorithms and, for jobs using them, the state and
  the decision, and downloads the model once it is released - never reasons,
  logs, exit codes, history or per-step timings;
- an operator sees metadata, never reports or models;
- nobody downloads a dataset's contents: only jobs on it read it, server-side.

A resource the caller may not see is reported as not found, so probing ids tells
nothing. Uploads land in a private directory under the work root, are checked
(size as they arrive, sha256 at the end), validated, and stored as blobs (datasets
encrypted); on any failure nothing remains: no blob, no row, no temp file.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import shutil
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from sandbox.api.pki import Identity
from sandbox.audit import AuditLog, key_id, public_key_pem
from sandbox.errors import (
    FailedPrecondition,
    InvalidInput,
    LimitExceeded,
    NotFound,
    PermissionDenied,
    SandboxError,
)
from sandbox.pipeline.report import Report
from sandbox.policy.load import available_policies, load_policy, policy_hash
from sandbox.policy.model import Policy
from sandbox.runner.gpu import GpuPool
from sandbox.runner.workspace import JobWorkspace, sweep_stale
from sandbox.service.executor import Executor
from sandbox.service.failpoint import FailPoint
from sandbox.service.state import StateDir
from sandbox.service.uploads import (
    Overlapped,
    UploadHeader,
    check_declared,
    check_digest,
    private_file,
    receive,
)
from sandbox.service.validate import DatasetCheck
from sandbox.service.views import (
    JobView,
    PolicyView,
    ReleaseView,
    ReportView,
    job_view,
)
from sandbox.store import (
    Algorithm,
    ApprovalState,
    BlobStore,
    Dataset,
    Decision,
    Job,
    JobState,
    MasterKey,
    MetadataStore,
    Release,
    Role,
    decrypt_to,
    new_id,
)
from sandbox.store.crypto import DatasetSealer
from sandbox.store.metadata import (
    DEFAULT_PAGE_SIZE,
    MAX_DETAIL,
    TERMINAL,
    check_page_size,
    check_text,
    decode_page_token,
    encode_page_token,
)

log = logging.getLogger("sandbox.service")

MiB: Final = 1 << 20
CHUNK: Final = 1 << 20
_STEP_STATES: Final = {
    "train": JobState.TRAIN,
    "gate": JobState.GATE,
    "utility": JobState.CHECKS,
}
_ORDER: Final = [
    JobState.QUEUED,
    JobState.ARCHITECTURE,
    JobState.TRAIN,
    JobState.GATE,
    JobState.CHECKS,
    JobState.DP_RETRAIN,
    JobState.DECIDE,
    JobState.RELEASE,
    JobState.DONE,
]
UNFINISHED: Final = frozenset(JobState) - TERMINAL


class _Cancelled(Exception):
    """The job was cancelled while it ran; stop quietly."""


class _Interrupted(Exception):
    """The server is stopping; the job ends failed, without a decision."""


def _clean_reason(text: str) -> str:
    """Reasons are stored as printable text of bounded length."""
    flat = "".join(ch if ch.isprintable() else " " for ch in text)
    return flat[:MAX_DETAIL] or "(no reason given)"


@dataclass
class Limits:
    max_dataset_bytes: int = 2 << 30
    max_algorithm_bytes: int = 50 * MiB
    max_model_bytes: int = 4 << 30
    #: uploads in flight at once: each holds its declared size in a tmpfs (memory)
    max_concurrent_uploads: int = 4


class Platform:
    def __init__(
        self,
        state: StateDir,
        *,
        store: MetadataStore,
        blobs: BlobStore,
        master: MasterKey,
        signing_key: Ed25519PrivateKey,
        executor: Executor,
        cpu_slots: int = 1,
        gpu_pool: GpuPool | None = None,
        limits: Limits | None = None,
        clock: Callable[[], float] = time.time,
        failpoint: FailPoint | None = None,
    ) -> None:
        self.state = state
        self.failpoint = failpoint or FailPoint()  # crash tests only; see failpoint.py
        self.store = store
        self.blobs = blobs
        self.master = master
        self.signing_key = signing_key
        self.executor = executor
        self.cpu_slots = cpu_slots
        self.gpu_pool = gpu_pool
        self.limits = limits or Limits()
        self.clock = clock
        self._cond = threading.Condition()
        self._running: dict[str, threading.Thread] = {}
        self._stopping = threading.Event()
        self._scheduler: threading.Thread | None = None
        self._parties: dict[str, Role] = {}
        self._audit_log = AuditLog(state.audit_log, signing_key)
        self._uploads = threading.BoundedSemaphore(self.limits.max_concurrent_uploads)

    def _audit(self, kind: str, who: Identity, subject: dict[str, str], **data: object) -> None:
        """Every party's action that changes something goes to the hash-chained log."""
        self._audit_log.append(
            kind, actor=f"{who.role.value}:{who.party}", subject=subject, data=data
        )

    # ------------------------------------------------------------ lifecycle

    def start(self) -> list[str]:
        """Reconcile what a crash left behind, then start scheduling jobs."""
        failed = self.reconcile()
        self._scheduler = threading.Thread(target=self._schedule_loop, name="scheduler")
        self._scheduler.daemon = True
        self._scheduler.start()
        return failed

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop scheduling, stop the running jobs (they end `failed`: "orchestrator
        stopped during STATE"), and wait for their clean-up."""
        self._stopping.set()
        self._notify()
        if self._scheduler is not None:
            self._scheduler.join(timeout_s)
        with self._cond:
            running = list(self._running)
        for job_id in running:
            self.executor.stop(job_id)
        if not self.wait_idle(timeout_s):
            log.warning("jobs still running at shutdown; the next start reconciles them")
        self._audit_log.close()

    def wait_idle(self, timeout_s: float) -> bool:
        """True once no job runs (tests and the demo)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._cond:
                if not self._running:
                    return True
            time.sleep(0.05)
        return False

    def _notify(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def reconcile(self) -> list[str]:
        """After a crash: remove the containers and plaintext of unfinished jobs and fail
        every job that had started; queued jobs stay queued and run again."""
        unfinished = self._all_jobs(states=UNFINISHED)
        self.executor.reconcile({job.id for job in unfinished})
        sweep_stale(self.state.work)
        self.blobs.sweep_temp()
        failed: list[str] = []
        for job in unfinished:
            if job.state is JobState.QUEUED:
                continue
            with contextlib.suppress(SandboxError):
                if job.state is JobState.RELEASE and self._release_or_none(job.id):
                    self.store.transition(job.id, job.state, JobState.DONE, detail="reconciled")
                    continue
                self.store.transition(
                    job.id,
                    job.state,
                    JobState.FAILED,
                    reasons=[f"orchestrator restarted during {job.state.value}"],
                )
                failed.append(job.id)
        return failed

    def _all_jobs(self, states: Collection[JobState]) -> list[Job]:
        jobs: list[Job] = []
        token: str | None = None
        while True:
            page = self.store.list_jobs(states=states, page_size=500, page_token=token)
            jobs.extend(page.items)
            if page.next_page_token is None:
                return jobs
            token = page.next_page_token

    # ------------------------------------------------------------ parties

    def ensure_party(self, who: Identity) -> None:
        """Record a certified party on first contact; one name has one role."""
        known = self._parties.get(who.party)
        if known is None:
            try:
                known = self.store.get_party(who.party).role
            except NotFound:
                with contextlib.suppress(SandboxError):
                    self.store.add_party(who.party, who.role)
                known = self.store.get_party(who.party).role
            self._parties[who.party] = known
        if known is not who.role:
            raise PermissionDenied(
                f"party {who.party} is registered as {known.value}, but the certificate "
                f"says {who.role.value}; ask the operator for a new certificate"
            )

    # ------------------------------------------------------------ uploads

    @contextlib.contextmanager
    def _upload_space(self) -> Iterator[JobWorkspace]:
        """A private workspace for one upload, if fewer than the limit are in flight."""
        if not self._uploads.acquire(blocking=False):
            raise LimitExceeded(
                f"the server is receiving {self.limits.max_concurrent_uploads} uploads "
                "already; try again in a moment"
            )
        try:
            with JobWorkspace(self.state.work, f"upload-{secrets.token_hex(8)}") as space:
                yield space
        finally:
            self._uploads.release()

    def upload_dataset(
        self, who: Identity, header: UploadHeader, chunks: Iterable[bytes]
    ) -> Dataset:
        """Encrypt into the blob store while receiving; then validate (child process)
        while the blob is fsynced."""
        self._require(who, Role.DATA_OWNER)
        check_text(header.name, "dataset name")
        dataset_id = new_id("ds")
        limit = self.limits.max_dataset_bytes
        check_declared(header, limit)
        with self._upload_space() as space:
            # plaintext only in a private, size-capped tmpfs (for the validator): never on disk
            plain = space.tmpfs("plain", header.size // MiB + 2, mode=0o700) / "dataset.npz"
            check: DatasetCheck | None = None
            blob: str | None = None
            try:
                check = DatasetCheck(limit)  # starts now: its imports overlap the transfer
                with self.blobs.writer(max_bytes=limit * 2) as sealed:
                    sealer = DatasetSealer(sealed, dataset_id, self.master, max_bytes=limit)
                    with Overlapped(sealer.write) as sealing:
                        # the digest is checked on the sealing pass (one hash fewer)
                        receive(header, chunks, plain, limit, verify_sha256=False, tee=sealing.put)
                        sealing.finish()
                    info = sealer.close()
                    check_digest(header, info.sha256_plaintext)
                    check.check(plain)
                    blob = sealed.commit().sha256
                summary = check.result()
                dataset = self.store.add_dataset(
                    id=dataset_id,
                    owner=who.party,
                    name=header.name,
                    blob_sha256=blob,
                    plaintext_sha256=info.sha256_plaintext,
                    size=info.size,
                    num_classes=summary.num_classes,
                    input_shape=summary.input_shape,
                )
            except BaseException:
                if check is not None:
                    check.kill()
                if blob is not None:
                    self.blobs.delete(blob)  # sealed under a fresh key: never shared
                raise
        self._audit(
            "upload",
            who,
            {"dataset": dataset.id},
            plaintext_sha256=dataset.plaintext_sha256,
            bytes=dataset.size,
        )
        return dataset

    def upload_algorithm(
        self, who: Identity, header: UploadHeader, chunks: Iterable[bytes]
    ) -> Algorithm:
        from sandbox.pipeline.algorithm import remove_tree, unpack_algorithm

        self._require(who, Role.PROVIDER)
        with self._upload_space() as space:
            archive = space.path / "algorithm.tar.gz"
            receive(header, chunks, archive, self.limits.max_algorithm_bytes)
            try:
                package = unpack_algorithm(archive, space.path / "pkg")
            except SandboxError as error:
                error.message = error.message.replace(str(archive), "the uploaded archive")
                raise
            remove_tree(package.root)
            existed = self.blobs.exists(header.sha256)
            with open(archive, "rb") as src:
                ref = self.blobs.put_stream(
                    src, max_bytes=self.limits.max_algorithm_bytes, expected_sha256=header.sha256
                )
            try:
                algorithm = self.store.add_algorithm(
                    id=new_id("alg"),
                    provider=who.party,
                    name=package.name[:200],
                    version=package.version[:200],
                    blob_sha256=ref.sha256,
                )
            except BaseException:
                if not existed:
                    self.blobs.delete(ref.sha256)
                raise
        self._audit(
            "upload",
            who,
            {"algorithm": algorithm.id},
            archive_sha256=ref.sha256,
            package_sha256=package.sha256,
        )
        return algorithm

    # ------------------------------------------------------------ reads

    @staticmethod
    def _require(who: Identity, *roles: Role) -> None:
        if who.role not in roles:
            raise PermissionDenied(f"a {who.role.value} may not do this")

    def get_dataset(self, who: Identity, dataset_id: str) -> Dataset:
        dataset = self.store.get_dataset(dataset_id)
        if who.role is Role.OPERATOR or (
            who.role is Role.DATA_OWNER and dataset.owner == who.party
        ):
            return dataset
        raise NotFound(f"no dataset {dataset_id}")

    def list_datasets(
        self, who: Identity, page_size: int, page_token: str
    ) -> tuple[list[Dataset], str]:
        owner = None if who.role is Role.OPERATOR else who.party
        self._require(who, Role.OPERATOR, Role.DATA_OWNER)
        page = self.store.list_datasets(
            owner=owner, page_size=page_size or 50, page_token=page_token or None
        )
        return list(page.items), page.next_page_token or ""

    def get_algorithm(self, who: Identity, algorithm_id: str) -> Algorithm:
        algorithm = self.store.get_algorithm(algorithm_id)
        if who.role is Role.PROVIDER and algorithm.provider != who.party:
            raise NotFound(f"no algorithm {algorithm_id}")
        self._require(who, Role.PROVIDER, Role.DATA_OWNER, Role.OPERATOR)
        return algorithm

    def list_algorithms(
        self, who: Identity, page_size: int, page_token: str
    ) -> tuple[list[Algorithm], str]:
        self._require(who, Role.PROVIDER, Role.DATA_OWNER, Role.OPERATOR)
        provider = who.party if who.role is Role.PROVIDER else None
        page = self.store.list_algorithms(
            provider=provider, page_size=page_size or 50, page_token=page_token or None
        )
        return list(page.items), page.next_page_token or ""

    def _access(self, who: Identity, job: Job) -> str:
        """'owner', 'provider' or 'operator': how much of `job` the caller sees."""
        if who.role is Role.OPERATOR:
            return "operator"
        if (
            who.role is Role.DATA_OWNER
            and self.store.get_dataset(job.dataset_id).owner == who.party
        ):
            return "owner"
        if (
            who.role is Role.PROVIDER
            and self.store.get_algorithm(job.algorithm_id).provider == who.party
        ):
            return "provider"
        raise NotFound(f"no job {job.id}")

    def _job(self, who: Identity, job_id: str) -> tuple[Job, str]:
        job = self.store.get_job(job_id)
        return job, self._access(who, job)

    def get_job(self, who: Identity, job_id: str) -> JobView:
        job, access = self._job(who, job_id)
        return job_view(job, access)

    def list_jobs(
        self, who: Identity, page_size: int, page_token: str
    ) -> tuple[list[JobView], str]:
        if who.role not in (Role.DATA_OWNER, Role.PROVIDER, Role.OPERATOR):
            raise PermissionDenied(f"a {who.role.value} has no jobs")
        page = self.store.list_jobs(
            dataset_owner=who.party if who.role is Role.DATA_OWNER else None,
            algorithm_provider=who.party if who.role is Role.PROVIDER else None,
            page_size=page_size or 50,
            page_token=page_token or None,
        )
        views = [job_view(job, self._access(who, job)) for job in page.items]
        return views, page.next_page_token or ""

    def watch_job(
        self, who: Identity, job_id: str, active: Callable[[], bool] = lambda: True
    ) -> Iterator[JobView]:
        """The job now, then each change the caller may see, until it is terminal."""
        last: JobView | None = None
        while active() and not self._stopping.is_set():
            view = self.get_job(who, job_id)
            if view != last:
                yield view
                last = view
            if view.terminal:
                return
            with self._cond:
                self._cond.wait(timeout=0.5)

    # ------------------------------------------------------------ jobs

    def policy(self, name: str) -> Policy:
        """Only the server's own policies: never a path a client names."""
        if name not in available_policies():
            raise NotFound(
                f"no policy named {name!r}; available: {', '.join(available_policies())}"
            )
        return load_policy(name)

    def submit_job(
        self, who: Identity, dataset_id: str, algorithm_id: str, policy_name: str
    ) -> JobView:
        self._require(who, Role.DATA_OWNER, Role.PROVIDER)
        try:
            dataset = self.store.get_dataset(dataset_id)
        except (NotFound, InvalidInput):
            raise NotFound(f"no dataset {dataset_id}") from None
        algorithm = self.store.get_algorithm(algorithm_id)
        if who.role is Role.DATA_OWNER and dataset.owner != who.party:
            raise NotFound(f"no dataset {dataset_id}")
        if who.role is Role.PROVIDER and algorithm.provider != who.party:
            raise NotFound(f"no algorithm {algorithm_id}")
        policy = self.policy(policy_name or "default")
        day = time.strftime("%Y-%m-%d", time.gmtime(self.clock()))
        self.store.charge_quota(
            algorithm.provider,
            "jobs_per_provider",
            day,
            amount=1,
            limit=policy.quotas.jobs_per_provider_per_day,
        )
        self.store.charge_quota(  # the dataset's counter, held by its owner
            dataset.owner,
            f"jobs:{dataset.id}",
            day,
            amount=1,
            limit=policy.quotas.jobs_per_dataset_per_day,
        )
        job = self.store.create_job(
            id=new_id("job"),
            dataset_id=dataset.id,
            algorithm_id=algorithm.id,
            submitter=who.party,
            policy_name=policy.name,
            policy_sha256=policy_hash(policy),
            approval_required=policy.approval == "required",
        )
        if job.approval.state is ApprovalState.PENDING and (
            who.party == dataset.owner or self.store.is_preapproved(dataset.id, algorithm.id)
        ):  # the owner submitting, or the owner's standing approval of this algorithm
            job = self.store.record_approval(job.id, by=dataset.owner, approved=True)
        self._audit(
            "job_step",
            who,
            {"job": job.id},
            step="submitted",
            dataset=dataset.id,
            algorithm=algorithm.id,
            policy=policy.name,
            approval=job.approval.state.value,
        )
        self._notify()
        return job_view(job, self._access(who, job))

    def preapprove(self, who: Identity, dataset_id: str, algorithm_id: str) -> None:
        """The owner approves every future job of `algorithm_id` on their dataset."""
        self.get_dataset(who, dataset_id)  # theirs, or not found
        if who.role is not Role.DATA_OWNER:
            raise PermissionDenied("only the dataset's owner pre-approves algorithms")
        self.store.get_algorithm(algorithm_id)
        self.store.preapprove(dataset_id, algorithm_id, by=who.party)
        self._audit(
            "approval", who, {"dataset": dataset_id, "algorithm": algorithm_id}, preapproved=True
        )

    def approve_job(self, who: Identity, job_id: str, *, approved: bool) -> JobView:
        job, access = self._job(who, job_id)
        if access != "owner":
            raise NotFound(f"no job {job_id}")
        job = self.store.record_approval(job_id, by=who.party, approved=approved)
        self._audit("approval", who, {"job": job_id}, approved=approved)
        if not approved:
            with contextlib.suppress(SandboxError):
                job = self.store.transition(
                    job_id,
                    JobState.QUEUED,
                    JobState.CANCELLED,
                    reasons=[f"the data owner {who.party} denied the job"],
                )
        self._notify()
        return job_view(job, access)

    def cancel_job(self, who: Identity, job_id: str) -> JobView:
        job, access = self._job(who, job_id)
        if access == "provider" and job.submitter != who.party:
            raise PermissionDenied(f"job {job_id} was submitted by another party")
        for _ in range(20):
            job = self.store.get_job(job_id)
            if job.state in TERMINAL:
                raise FailedPrecondition(f"job {job_id} is already {job.state.value}")
            try:
                job = self.store.transition(
                    job_id, job.state, JobState.CANCELLED, reasons=[f"cancelled by {who.party}"]
                )
                break
            except FailedPrecondition:
                continue  # it moved on under us: try again from its new state
        self.executor.stop(job_id)
        self._audit("job_step", who, {"job": job_id}, step="cancelled")
        self._notify()
        return job_view(job, access)

    # ------------------------------------------------------------ the queue

    def _schedule_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                self._schedule()
            except Exception:
                log.exception("scheduling failed")
            with self._cond:
                self._cond.wait(timeout=1.0)

    def _schedule(self) -> None:
        with self._cond:
            free = self.cpu_slots - len(self._running)
        if free <= 0:
            return
        for job in self._all_jobs(states=[JobState.QUEUED]):
            if free <= 0 or self._stopping.is_set():
                return
            if job.approval.state not in (ApprovalState.APPROVED, ApprovalState.NOT_REQUIRED):
                continue
            try:
                policy = self.policy(job.policy_name)
            except SandboxError as error:
                self._fail(job, JobState.QUEUED, error.message)
                continue
            device = None
            if policy.gpu:
                if self.gpu_pool is None or self.gpu_pool.free == 0:
                    continue  # waits for a GPU
                device = self.gpu_pool.acquire(job.id)
            try:
                self.store.transition(job.id, JobState.QUEUED, JobState.ARCHITECTURE)
            except SandboxError:
                if device and self.gpu_pool:
                    self.gpu_pool.release(device)
                continue
            thread = threading.Thread(
                target=self._worker, args=(job, policy, device), name=f"job-{job.id}"
            )
            thread.daemon = True
            with self._cond:
                self._running[job.id] = thread
            thread.start()
            free -= 1

    def _fail(self, job: Job, state: JobState, reason: str) -> None:
        with contextlib.suppress(SandboxError):
            self.store.transition(job.id, state, JobState.FAILED, reasons=[_clean_reason(reason)])
        self._notify()

    def _worker(self, job: Job, policy: Policy, device: str | None) -> None:
        current = [JobState.ARCHITECTURE]

        def advance(target: JobState, **kwargs: object) -> None:
            try:
                self.store.transition(job.id, current[0], target, **kwargs)  # type: ignore[arg-type]
            except FailedPrecondition:
                if self.store.get_job(job.id).state is JobState.CANCELLED:
                    raise _Cancelled from None
                raise
            current[0] = target
            self._notify()

        def progress(step: str, message: str) -> None:
            target = _STEP_STATES.get(step)
            if target is not None and _ORDER.index(target) > _ORDER.index(current[0]):
                advance(target)
                self.failpoint.pause_at(target.value)

        try:
            self._run(job, policy, device, advance, progress)
        except _Cancelled:
            log.info("job %s was cancelled", job.id)
        except Exception:
            if self._stopping.is_set():
                self._fail(job, current[0], f"orchestrator stopped during {current[0].value}")
            else:
                log.exception("job %s failed", job.id)
                self._fail(job, current[0], "the job stopped on an internal error")
        finally:
            if device and self.gpu_pool:
                self.gpu_pool.release(device)
            with self._cond:
                self._running.pop(job.id, None)
                self._cond.notify_all()

    def _run(
        self,
        job: Job,
        policy: Policy,
        device: str | None,
        advance: Callable[..., None],
        progress: Callable[[str, str], None],
    ) -> None:
        dataset = self.store.get_dataset(job.dataset_id)
        algorithm = self.store.get_algorithm(job.algorithm_id)
        out_dir = self.state.jobs / job.id / "out"
        out_dir.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        size_mb = (dataset.size + self.blobs.size(algorithm.blob_sha256)) // MiB + 8
        report: Report | None = None
        with JobWorkspace(self.state.work, f"{job.id}-in") as inputs:
            plain = inputs.tmpfs("plain", size_mb, mode=0o700)
            data_path = plain / "dataset.npz"
            with (
                self.blobs.open(dataset.blob_sha256) as src,
                os.fdopen(private_file(data_path), "wb") as dst,
            ):
                digest = decrypt_to(src, dst, dataset.id, self.master)
            if digest != dataset.plaintext_sha256:
                raise InvalidInput(f"dataset {dataset.id} does not match its recorded sha256")
            algo_path = plain / "algorithm.tar.gz"
            with (
                self.blobs.open(algorithm.blob_sha256) as src,
                os.fdopen(private_file(algo_path), "wb") as dst,
            ):
                shutil.copyfileobj(src, dst, CHUNK)
            try:
                report = self.executor.run(
                    job_id=job.id,
                    algorithm=algo_path,
                    dataset=data_path,
                    policy=policy,
                    out_dir=out_dir,
                    progress=progress,
                    gpu_device=device,
                )
                reasons = [_clean_reason(r) for r in report.reasons[:50]]
                decision = Decision(report.decision)
            except _Cancelled:
                raise
            except SandboxError as error:  # refused before any container (bad input)
                reasons, decision = [_clean_reason(error.message)], Decision.REJECTED
        if self._stopping.is_set():  # its containers were killed: no decision
            raise _Interrupted
        advance(JobState.DECIDE)
        self.failpoint.pause_at("decide")
        if decision is Decision.REJECTED:
            advance(JobState.DONE, decision=decision, reasons=reasons)
            return
        if report is None or report.model is None:
            raise AssertionError("a releasing decision without a model")
        with open(out_dir / "model.safetensors", "rb") as model:
            ref = self.blobs.put_stream(
                model,
                max_bytes=self.limits.max_model_bytes,
                expected_sha256=str(report.model["sha256"]),
            )
        advance(JobState.RELEASE, decision=decision, reasons=reasons)
        self.failpoint.pause_at("release-before-row")
        self.store.record_release(job.id, model_sha256=ref.sha256)
        self.failpoint.pause_at("release-after-row")
        advance(JobState.DONE)

    # ------------------------------------------------------------ models and reports

    def _release_or_none(self, job_id: str) -> Release | None:
        try:
            return self.store.get_release(job_id)
        except NotFound:
            return None

    def get_release(self, who: Identity, job_id: str) -> ReleaseView:
        job, access = self._job(who, job_id)
        if access == "operator":
            raise NotFound(f"no release for job {job_id}")
        release = self._release_or_none(job_id)
        if release is None or job.state is not JobState.DONE:
            raise NotFound(f"job {job_id} has released no model")
        return ReleaseView(
            job_id=job_id,
            model_sha256=release.model_sha256,
            model_size=self.blobs.size(release.model_sha256),
            released_at=release.released_at,
            decision=job.decision.value if job.decision else "",
        )

    def open_model(self, who: Identity, job_id: str) -> tuple[ReleaseView, Iterator[bytes]]:
        release = self.get_release(who, job_id)
        handle = self.blobs.open(release.model_sha256)
        self._audit("download", who, {"job": job_id}, model_sha256=release.model_sha256)

        def chunks() -> Iterator[bytes]:
            with handle:
                while data := handle.read(CHUNK):
                    yield data

        return release, chunks()

    def get_report(self, who: Identity, job_id: str) -> ReportView:
        job, access = self._job(who, job_id)
        if access == "operator":
            raise NotFound(f"no report for job {job_id}")
        if job.state not in TERMINAL:
            raise FailedPrecondition(f"job {job_id} is {job.state.value}: no report yet")
        out = self.state.jobs / job_id / "out"
        decision = job.decision.value if job.decision else ""
        attestation = _read_text(out / "attestation.json")
        if access == "provider":
            release = self._release_or_none(job_id)
            view: dict[str, object] = {"job_id": job_id, "decision": decision or job.state.value}
            if release is not None:
                view["model"] = {
                    "sha256": release.model_sha256,
                    "bytes": self.blobs.size(release.model_sha256),
                }
            return ReportView(
                job_id,
                decision,
                json.dumps(view, indent=2, sort_keys=True),
                attestation_json=attestation if release is not None else "",
            )
        report = _read_text(out / "report.json") or json.dumps(
            {"job_id": job_id, "decision": decision, "reasons": list(job.reasons)}
        )
        logs = b""
        with contextlib.suppress(OSError):
            logs = (out / "owner" / "logs.txt").read_bytes()
        return ReportView(
            job_id,
            decision,
            report,
            attestation_json=attestation,
            logs=logs,
            dataset_opening_json=_read_text(out / "owner" / "dataset-opening.json"),
        )

    # ------------------------------------------------------------ policies and audit

    def list_policies(self, page_size: int = 0, page_token: str = "") -> tuple[list[str], str]:
        """Policy names in order, a page at a time (the same tokens as every list call)."""
        position = decode_page_token("policies", page_token or None)
        after = str(position[0]) if position else ""
        size = check_page_size(page_size or DEFAULT_PAGE_SIZE)
        names = sorted(n for n in available_policies() if n > after)
        if len(names) <= size:
            return names, ""
        return names[:size], encode_page_token("policies", (names[size - 1],))

    def get_policy(self, name: str) -> PolicyView:
        policy = self.policy(name)
        return PolicyView(policy.name, policy_hash(policy), policy.model_dump_json())

    def public_key(self) -> tuple[str, str]:
        return public_key_pem(self.signing_key).decode(), key_id(self.signing_key)

    def read_audit_log(self, from_seq: int, limit: int) -> Iterator[str]:
        limit = min(limit or 1000, 10000)
        sent = 0
        try:
            handle = open(self.state.audit_log, encoding="utf-8")  # noqa: SIM115
        except FileNotFoundError:
            return
        with handle:
            for line in handle:
                if sent >= limit:
                    return
                try:
                    seq = int(json.loads(line).get("seq", 0))
                except (ValueError, AttributeError):
                    continue
                if seq >= from_seq:
                    sent += 1
                    yield line.rstrip("\n")


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError:
        return ""
