"""`InMemoryMetadataStore`: the fake backend, for unit tests of the layers above.

It passes the same contract suite as the SQLite backend: same validation order,
same errors, same pagination. One lock serialises every call, which makes the
compare-and-set of `transition` trivially atomic.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import replace

from sandbox.errors import FailedPrecondition, NotFound
from sandbox.store.metadata import (
    DEFAULT_PAGE_SIZE,
    Algorithm,
    Approval,
    ApprovalState,
    Dataset,
    Decision,
    Job,
    JobState,
    MetadataStore,
    Page,
    Party,
    Position,
    Release,
    Role,
    StateChange,
    T,
    check_approval_against,
    check_dataset_fields,
    check_id,
    check_page_size,
    check_party_name,
    check_quota_request,
    check_release_against,
    check_role,
    check_sha256,
    check_state,
    check_text,
    check_transition_against,
    check_transition_request,
    decode_page_token,
    encode_page_token,
    quota_exceeded,
)


def _page(
    items: Iterable[T],
    key: Callable[[T], Position],
    listing: str,
    page_size: int,
    page_token: str | None,
) -> Page[T]:
    check_page_size(page_size)
    after = decode_page_token(listing, page_token)
    ordered = sorted(items, key=key)
    if after is not None:
        ordered = [item for item in ordered if key(item) > after]
    chunk = ordered[: page_size + 1]
    if len(chunk) <= page_size:
        return Page(tuple(chunk), None)
    return Page(tuple(chunk[:page_size]), encode_page_token(listing, key(chunk[page_size - 1])))


class InMemoryMetadataStore:
    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._parties: dict[str, Party] = {}
        self._datasets: dict[str, Dataset] = {}
        self._algorithms: dict[str, Algorithm] = {}
        self._jobs: dict[str, Job] = {}
        self._releases: dict[str, Release] = {}
        self._quotas: dict[tuple[str, str, str], int] = {}
        self._preapprovals: set[tuple[str, str]] = set()

    def _now(self) -> float:
        return float(self._clock())

    def _party(self, name: str, what: str) -> Party:
        party = self._parties.get(name)
        if party is None:
            raise NotFound(f"{what} {name!r} is not a registered party; add the party first")
        return party

    def _job(self, job_id: str) -> Job:
        job = self._jobs.get(job_id)
        if job is None:
            raise NotFound(f"no job {job_id!r}")
        return job

    # ------------------------------------------------------------ parties

    def add_party(self, name: str, role: Role) -> Party:
        check_party_name(name)
        checked = check_role(role)
        with self._lock:
            if name in self._parties:
                raise FailedPrecondition(f"party {name!r} already exists")
            party = Party(name=name, role=checked, created=self._now())
            self._parties[name] = party
            return party

    def get_party(self, name: str) -> Party:
        check_party_name(name)
        with self._lock:
            party = self._parties.get(name)
        if party is None:
            raise NotFound(f"no party {name!r}")
        return party

    def list_parties(
        self,
        *,
        role: Role | None = None,
        page_size: int = DEFAULT_PAGE_SIZE,
        page_token: str | None = None,
    ) -> Page[Party]:
        wanted = None if role is None else check_role(role)
        with self._lock:
            items = [p for p in self._parties.values() if wanted is None or p.role is wanted]
        return _page(items, lambda p: (p.name,), "parties", page_size, page_token)

    # ------------------------------------------------------------ datasets

    def add_dataset(
        self,
        *,
        id: str,
        owner: str,
        name: str,
        blob_sha256: str,
        plaintext_sha256: str,
        size: int,
        num_classes: int,
        input_shape: Sequence[int],
    ) -> Dataset:
        check_id(id, "dataset id")
        check_party_name(owner)
        shape = check_dataset_fields(
            name, blob_sha256, plaintext_sha256, size, num_classes, input_shape
        )
        with self._lock:
            self._party(owner, "dataset owner")
            if id in self._datasets:
                raise FailedPrecondition(f"dataset {id!r} already exists")
            dataset = Dataset(
                id=id,
                owner=owner,
                name=name,
                blob_sha256=blob_sha256,
                plaintext_sha256=plaintext_sha256,
                size=size,
                num_classes=num_classes,
                input_shape=shape,
                created=self._now(),
            )
            self._datasets[id] = dataset
            return dataset

    def get_dataset(self, dataset_id: str) -> Dataset:
        check_id(dataset_id, "dataset id")
        with self._lock:
            dataset = self._datasets.get(dataset_id)
        if dataset is None:
            raise NotFound(f"no dataset {dataset_id!r}")
        return dataset

    def list_datasets(
        self,
        *,
        owner: str | None = None,
        page_size: int = DEFAULT_PAGE_SIZE,
        page_token: str | None = None,
    ) -> Page[Dataset]:
        if owner is not None:
            check_party_name(owner)
        with self._lock:
            items = [d for d in self._datasets.values() if owner is None or d.owner == owner]
        return _page(items, lambda d: (d.created, d.id), "datasets", page_size, page_token)

    # ------------------------------------------------------------ algorithms

    def add_algorithm(
        self, *, id: str, provider: str, name: str, version: str, blob_sha256: str
    ) -> Algorithm:
        check_id(id, "algorithm id")
        check_party_name(provider)
        check_text(name, "algorithm name")
        check_text(version, "algorithm version")
        check_sha256(blob_sha256, "algorithm blob_sha256")
        with self._lock:
            self._party(provider, "algorithm provider")
            if id in self._algorithms:
                raise FailedPrecondition(f"algorithm {id!r} already exists")
            for other in self._algorithms.values():
                if (other.provider, other.name, other.version) == (provider, name, version):
                    raise FailedPrecondition(
                        f"{provider} already has algorithm {name!r} version {version!r} "
                        f"({other.id}); upload it under a new version"
                    )
            algorithm = Algorithm(
                id=id,
                provider=provider,
                name=name,
                version=version,
                blob_sha256=blob_sha256,
                created=self._now(),
            )
            self._algorithms[id] = algorithm
            return algorithm

    def get_algorithm(self, algorithm_id: str) -> Algorithm:
        check_id(algorithm_id, "algorithm id")
        with self._lock:
            algorithm = self._algorithms.get(algorithm_id)
        if algorithm is None:
            raise NotFound(f"no algorithm {algorithm_id!r}")
        return algorithm

    def list_algorithms(
        self,
        *,
        provider: str | None = None,
        page_size: int = DEFAULT_PAGE_SIZE,
        page_token: str | None = None,
    ) -> Page[Algorithm]:
        if provider is not None:
            check_party_name(provider)
        with self._lock:
            items = [
                a for a in self._algorithms.values() if provider is None or a.provider == provider
            ]
        return _page(items, lambda a: (a.created, a.id), "algorithms", page_size, page_token)

    # ------------------------------------------------------------ jobs

    def create_job(
        self,
        *,
        id: str,
        dataset_id: str,
        algorithm_id: str,
        submitter: str,
        policy_name: str,
        policy_sha256: str,
        approval_required: bool,
    ) -> Job:
        check_id(id, "job id")
        check_id(dataset_id, "dataset id")
        check_id(algorithm_id, "algorithm id")
        check_party_name(submitter)
        check_text(policy_name, "policy name")
        check_sha256(policy_sha256, "policy_sha256")
        with self._lock:
            if dataset_id not in self._datasets:
                raise NotFound(f"no dataset {dataset_id!r}")
            if algorithm_id not in self._algorithms:
                raise NotFound(f"no algorithm {algorithm_id!r}")
            self._party(submitter, "job submitter")
            if id in self._jobs:
                raise FailedPrecondition(f"job {id!r} already exists")
            now = self._now()
            approval = ApprovalState.PENDING if approval_required else ApprovalState.NOT_REQUIRED
            job = Job(
                id=id,
                dataset_id=dataset_id,
                algorithm_id=algorithm_id,
                submitter=submitter,
                policy_name=policy_name,
                policy_sha256=policy_sha256,
                state=JobState.QUEUED,
                history=(StateChange(None, JobState.QUEUED, now, "submitted"),),
                decision=None,
                reasons=(),
                approval=Approval(approval),
                created=now,
                updated=now,
            )
            self._jobs[id] = job
            return job

    def get_job(self, job_id: str) -> Job:
        check_id(job_id, "job id")
        with self._lock:
            return self._job(job_id)

    def list_jobs(
        self,
        *,
        dataset_id: str | None = None,
        algorithm_id: str | None = None,
        submitter: str | None = None,
        dataset_owner: str | None = None,
        algorithm_provider: str | None = None,
        states: Collection[JobState] | None = None,
        page_size: int = DEFAULT_PAGE_SIZE,
        page_token: str | None = None,
    ) -> Page[Job]:
        if dataset_id is not None:
            check_id(dataset_id, "dataset id")
        if algorithm_id is not None:
            check_id(algorithm_id, "algorithm id")
        if submitter is not None:
            check_party_name(submitter)
        if dataset_owner is not None:
            check_party_name(dataset_owner)
        if algorithm_provider is not None:
            check_party_name(algorithm_provider)
        wanted = None if states is None else {check_state(s) for s in states}
        with self._lock:
            items = [
                job
                for job in self._jobs.values()
                if (dataset_id is None or job.dataset_id == dataset_id)
                and (algorithm_id is None or job.algorithm_id == algorithm_id)
                and (submitter is None or job.submitter == submitter)
                and (dataset_owner is None or self._datasets[job.dataset_id].owner == dataset_owner)
                and (
                    algorithm_provider is None
                    or self._algorithms[job.algorithm_id].provider == algorithm_provider
                )
                and (wanted is None or job.state in wanted)
            ]
        return _page(items, lambda j: (j.created, j.id), "jobs", page_size, page_token)

    def record_approval(self, job_id: str, *, by: str, approved: bool) -> Job:
        check_id(job_id, "job id")
        check_party_name(by)
        with self._lock:
            job = self._job(job_id)
            self._party(by, "approver")
            check_approval_against(job)
            now = self._now()
            state = ApprovalState.APPROVED if approved else ApprovalState.DENIED
            job = replace(job, approval=Approval(state, by, now), updated=now)
            self._jobs[job_id] = job
            return job

    def transition(
        self,
        job_id: str,
        from_state: JobState,
        to_state: JobState,
        *,
        detail: str = "",
        decision: Decision | None = None,
        reasons: Sequence[str] = (),
    ) -> Job:
        check_id(job_id, "job id")
        source, target, verdict, checked = check_transition_request(
            from_state, to_state, decision, reasons, detail
        )
        with self._lock:
            job = self._job(job_id)
            check_transition_against(job, source, target)
            now = self._now()
            job = replace(
                job,
                state=target,
                history=(*job.history, StateChange(source, target, now, detail)),
                decision=verdict if verdict is not None else job.decision,
                reasons=checked if checked else job.reasons,
                updated=now,
            )
            self._jobs[job_id] = job
            return job

    # ------------------------------------------------------------ releases

    def preapprove(self, dataset_id: str, algorithm_id: str, *, by: str) -> None:
        check_id(dataset_id, "dataset id")
        check_id(algorithm_id, "algorithm id")
        check_party_name(by)
        with self._lock:
            self._party(by, "approver")
            if dataset_id not in self._datasets:
                raise NotFound(f"no dataset {dataset_id!r}")
            if algorithm_id not in self._algorithms:
                raise NotFound(f"no algorithm {algorithm_id!r}")
            self._preapprovals.add((dataset_id, algorithm_id))

    def is_preapproved(self, dataset_id: str, algorithm_id: str) -> bool:
        check_id(dataset_id, "dataset id")
        check_id(algorithm_id, "algorithm id")
        with self._lock:
            return (dataset_id, algorithm_id) in self._preapprovals

    def record_release(self, job_id: str, *, model_sha256: str) -> Release:
        check_id(job_id, "job id")
        check_sha256(model_sha256, "model_sha256")
        with self._lock:
            job = self._job(job_id)
            check_release_against(job, self._releases.get(job_id))
            release = Release(job_id=job_id, model_sha256=model_sha256, released_at=self._now())
            self._releases[job_id] = release
            return release

    def get_release(self, job_id: str) -> Release:
        check_id(job_id, "job id")
        with self._lock:
            release = self._releases.get(job_id)
        if release is None:
            raise NotFound(f"job {job_id!r} has no release")
        return release

    # ------------------------------------------------------------ quotas

    def charge_quota(
        self, party: str, counter: str, period: str, *, amount: int, limit: int
    ) -> int:
        check_quota_request(party, counter, period, amount, limit)
        with self._lock:
            self._party(party, "quota holder")
            used = self._quotas.get((party, counter, period), 0)
            if used + amount > limit:
                raise quota_exceeded(party, counter, period, used, amount, limit)
            self._quotas[(party, counter, period)] = used + amount
            return used + amount

    def quota_usage(self, party: str, counter: str, period: str) -> int:
        check_quota_request(party, counter, period, 1, 0)
        with self._lock:
            return self._quotas.get((party, counter, period), 0)

    def close(self) -> None:
        pass


def _conforms(store: InMemoryMetadataStore) -> MetadataStore:
    return store  # mypy proves the class implements the protocol
