"""One contract suite for every MetadataStore backend (SQLite and the in-memory fake).

Every test receives `make` (a factory taking a clock) or `store`, parametrised over
both backends, so the fake used by the upper layers' unit tests is proven to behave
like the real store - errors included.
"""

import contextlib
import hashlib
import itertools
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from sandbox.errors import FailedPrecondition, InvalidInput, LimitExceeded, NotFound
from sandbox.store.metadata import (
    TERMINAL,
    TRANSITIONS,
    ApprovalState,
    Decision,
    Job,
    JobState,
    MetadataStore,
    Page,
    Role,
    new_id,
)
from sandbox.store.metadata_memory import InMemoryMetadataStore
from sandbox.store.metadata_sqlite import SqliteMetadataStore

S = JobState
SHA_A = hashlib.sha256(b"a").hexdigest()
SHA_B = hashlib.sha256(b"b").hexdigest()
Factory = Callable[..., MetadataStore]
T = TypeVar("T")


class Clock:
    """Deterministic time: each reading is one second later (or frozen)."""

    def __init__(self, start: float = 1_700_000_000.25, step: float = 1.0) -> None:
        self.now = start
        self.step = step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


@pytest.fixture(params=["memory", "sqlite"])
def make(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Factory]:
    opened: list[MetadataStore] = []
    counter = itertools.count()

    def factory(clock: Callable[[], float] | None = None) -> MetadataStore:
        clock = clock or Clock()
        store: MetadataStore
        if request.param == "memory":
            store = InMemoryMetadataStore(clock=clock)
        else:
            store = SqliteMetadataStore(tmp_path / f"meta{next(counter)}.db", clock=clock)
        opened.append(store)
        return store

    yield factory
    for store in opened:
        store.close()


@pytest.fixture
def store(make: Factory) -> MetadataStore:
    return make()


def seed(store: MetadataStore) -> None:
    store.add_party("alice", Role.DATA_OWNER)
    store.add_party("bob", Role.PROVIDER)
    store.add_party("carol", Role.DATA_OWNER)
    store.add_dataset(
        id="ds1",
        owner="alice",
        name="digits",
        blob_sha256=SHA_A,
        plaintext_sha256=SHA_B,
        size=1234,
        num_classes=10,
        input_shape=[1, 8, 8],
    )
    store.add_dataset(
        id="ds2",
        owner="carol",
        name="cancer",
        blob_sha256=SHA_B,
        plaintext_sha256=SHA_A,
        size=99,
        num_classes=2,
        input_shape=(30,),
    )
    store.add_algorithm(id="alg1", provider="bob", name="cnn", version="1.0", blob_sha256=SHA_A)


def job(
    store: MetadataStore, job_id: str = "job1", *, approval: bool = False, ds: str = "ds1"
) -> Job:
    return store.create_job(
        id=job_id,
        dataset_id=ds,
        algorithm_id="alg1",
        submitter="bob",
        policy_name="default",
        policy_sha256=SHA_B,
        approval_required=approval,
    )


def drive(store: MetadataStore, job_id: str, target: JobState) -> Job:
    """Move a fresh queued job along the shortest legal path to `target`."""
    paths = {
        S.QUEUED: [],
        S.ARCHITECTURE: [S.ARCHITECTURE],
        S.TRAIN: [S.ARCHITECTURE, S.TRAIN],
        S.GATE: [S.ARCHITECTURE, S.TRAIN, S.GATE],
        S.CHECKS: [S.ARCHITECTURE, S.TRAIN, S.GATE, S.CHECKS],
        S.DP_RETRAIN: [S.ARCHITECTURE, S.TRAIN, S.GATE, S.CHECKS, S.DP_RETRAIN],
        S.DECIDE: [S.ARCHITECTURE, S.DECIDE],
        S.RELEASE: [S.ARCHITECTURE, S.DECIDE, S.RELEASE],
        S.DONE: [S.ARCHITECTURE, S.DECIDE, S.DONE],
        S.FAILED: [S.FAILED],
        S.CANCELLED: [S.CANCELLED],
    }
    current = store.get_job(job_id)
    for nxt in paths[target]:
        decision = None
        if current.state is S.DECIDE:
            decision = Decision.RELEASED if nxt is S.RELEASE else Decision.REJECTED
        current = store.transition(job_id, current.state, nxt, decision=decision)
    return current


def collect(fetch: Callable[[str | None], Page[T]]) -> tuple[list[T], int]:
    items: list[T] = []
    token: str | None = None
    pages = 0
    while True:
        page = fetch(token)
        pages += 1
        items.extend(page.items)
        token = page.next_page_token
        if token is None:
            return items, pages


# ----------------------------------------------------------------- parties


def test_parties(store: MetadataStore) -> None:
    party = store.add_party("alice@example", Role.DATA_OWNER)
    assert party.name == "alice@example"
    assert party.role is Role.DATA_OWNER
    assert store.get_party("alice@example") == party
    with pytest.raises(FailedPrecondition, match="already exists"):
        store.add_party("alice@example", Role.PROVIDER)
    with pytest.raises(NotFound, match="no party 'nobody'"):
        store.get_party("nobody")


@pytest.mark.parametrize("name", ["", "-lead", "a b", "x" * 129, "é", "a/b"])
def test_bad_party_names(store: MetadataStore, name: str) -> None:
    with pytest.raises(InvalidInput, match="party name"):
        store.add_party(name, Role.PROVIDER)


def test_bad_role_lists_the_allowed_ones(store: MetadataStore) -> None:
    with pytest.raises(InvalidInput, match="data_owner, provider, operator, security"):
        store.add_party("eve", "admin")  # type: ignore[arg-type]


def test_roles_accept_strings(store: MetadataStore) -> None:
    assert store.add_party("sec", "security").role is Role.SECURITY  # type: ignore[arg-type]


def test_list_parties_by_name_with_role_filter(store: MetadataStore) -> None:
    for i in range(7):
        store.add_party(f"p{i}", Role.PROVIDER if i % 2 else Role.DATA_OWNER)
    everyone, pages = collect(lambda t: store.list_parties(page_size=3, page_token=t))
    assert [p.name for p in everyone] == [f"p{i}" for i in range(7)]
    assert pages == 3
    providers, _ = collect(
        lambda t: store.list_parties(role=Role.PROVIDER, page_size=2, page_token=t)
    )
    assert [p.name for p in providers] == ["p1", "p3", "p5"]


# ----------------------------------------------------------------- datasets, algorithms


def test_datasets(store: MetadataStore) -> None:
    seed(store)
    ds = store.get_dataset("ds1")
    assert (ds.owner, ds.name, ds.size, ds.num_classes) == ("alice", "digits", 1234, 10)
    assert ds.input_shape == (1, 8, 8)
    assert (ds.blob_sha256, ds.plaintext_sha256) == (SHA_A, SHA_B)
    assert isinstance(ds.created, float)
    with pytest.raises(NotFound, match="no dataset 'nope'"):
        store.get_dataset("nope")


def test_dataset_needs_a_registered_owner(store: MetadataStore) -> None:
    with pytest.raises(NotFound, match="dataset owner 'ghost' is not a registered party"):
        store.add_dataset(
            id="ds9",
            owner="ghost",
            name="x",
            blob_sha256=SHA_A,
            plaintext_sha256=SHA_A,
            size=1,
            num_classes=2,
            input_shape=[3],
        )


def test_duplicate_dataset_id(store: MetadataStore) -> None:
    seed(store)
    with pytest.raises(FailedPrecondition, match="dataset 'ds1' already exists"):
        store.add_dataset(
            id="ds1",
            owner="carol",
            name="other",
            blob_sha256=SHA_A,
            plaintext_sha256=SHA_A,
            size=1,
            num_classes=2,
            input_shape=[3],
        )
    assert store.get_dataset("ds1").owner == "alice"


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("id", "../etc", "dataset id"),
        ("name", "", "dataset name"),
        ("name", "a\nb", "control characters"),
        ("blob_sha256", "ABC", "not a sha256"),
        ("plaintext_sha256", SHA_A.upper(), "not a sha256"),
        ("size", -1, "size"),
        ("num_classes", 1, "num_classes"),
        ("num_classes", True, "num_classes"),
        ("input_shape", [], "input_shape"),
        ("input_shape", [3, 0], "input_shape"),
        ("input_shape", [1] * 9, "input_shape"),
    ],
)
def test_dataset_validation(store: MetadataStore, field: str, value: object, message: str) -> None:
    store.add_party("alice", Role.DATA_OWNER)
    fields: dict[str, object] = {
        "id": "ds1",
        "owner": "alice",
        "name": "digits",
        "blob_sha256": SHA_A,
        "plaintext_sha256": SHA_B,
        "size": 10,
        "num_classes": 10,
        "input_shape": [8, 8],
    }
    fields[field] = value
    with pytest.raises(InvalidInput, match=message):
        store.add_dataset(**fields)  # type: ignore[arg-type]


def test_algorithms(store: MetadataStore) -> None:
    seed(store)
    alg = store.get_algorithm("alg1")
    assert (alg.provider, alg.name, alg.version, alg.blob_sha256) == ("bob", "cnn", "1.0", SHA_A)
    with pytest.raises(FailedPrecondition, match="already has algorithm 'cnn' version '1.0'"):
        store.add_algorithm(id="alg2", provider="bob", name="cnn", version="1.0", blob_sha256=SHA_B)
    store.add_algorithm(id="alg2", provider="bob", name="cnn", version="1.1", blob_sha256=SHA_B)
    with pytest.raises(FailedPrecondition, match="algorithm 'alg2' already exists"):
        store.add_algorithm(id="alg2", provider="bob", name="x", version="1", blob_sha256=SHA_B)
    with pytest.raises(NotFound, match="algorithm provider 'zed'"):
        store.add_algorithm(id="alg3", provider="zed", name="x", version="1", blob_sha256=SHA_B)
    with pytest.raises(NotFound, match="no algorithm 'alg9'"):
        store.get_algorithm("alg9")


def test_list_datasets_and_algorithms_paginate_with_filters(store: MetadataStore) -> None:
    store.add_party("alice", Role.DATA_OWNER)
    store.add_party("carol", Role.DATA_OWNER)
    store.add_party("bob", Role.PROVIDER)
    for i in range(11):
        store.add_dataset(
            id=f"ds{i:02}",
            owner="alice" if i % 3 else "carol",
            name=f"set {i}",
            blob_sha256=SHA_A,
            plaintext_sha256=SHA_B,
            size=i,
            num_classes=2,
            input_shape=[4],
        )
        store.add_algorithm(
            id=f"alg{i:02}", provider="bob", name="m", version=str(i), blob_sha256=SHA_A
        )
    every, pages = collect(lambda t: store.list_datasets(page_size=4, page_token=t))
    assert [d.id for d in every] == [f"ds{i:02}" for i in range(11)]
    assert pages == 3
    carols, _ = collect(lambda t: store.list_datasets(owner="carol", page_size=2, page_token=t))
    assert [d.id for d in carols] == ["ds00", "ds03", "ds06", "ds09"]
    algs, _ = collect(lambda t: store.list_algorithms(provider="bob", page_size=5, page_token=t))
    assert len(algs) == 11
    assert store.list_algorithms(provider="alice").items == ()


def test_exact_page_boundary_has_no_empty_last_page(store: MetadataStore) -> None:
    for i in range(4):
        store.add_party(f"p{i}", Role.OPERATOR)
    first = store.list_parties(page_size=2)
    second = store.list_parties(page_size=2, page_token=first.next_page_token)
    assert [p.name for p in second.items] == ["p2", "p3"]
    assert second.next_page_token is None


def test_pagination_with_equal_timestamps_uses_the_id_tiebreak(make: Factory) -> None:
    store = make(Clock(step=0.0))  # every record created at the same instant
    store.add_party("alice", Role.DATA_OWNER)
    ids = [new_id("ds") for _ in range(9)]
    for ds_id in ids:
        store.add_dataset(
            id=ds_id,
            owner="alice",
            name="n",
            blob_sha256=SHA_A,
            plaintext_sha256=SHA_B,
            size=1,
            num_classes=2,
            input_shape=[1],
        )
    every, _ = collect(lambda t: store.list_datasets(page_size=2, page_token=t))
    assert [d.id for d in every] == sorted(ids)


def test_keyset_pages_are_stable_under_concurrent_inserts(store: MetadataStore) -> None:
    for i in range(6):
        store.add_party(f"m{i}", Role.PROVIDER)
    first = store.list_parties(page_size=3)
    store.add_party("a-early", Role.PROVIDER)  # sorts before the cursor: not repeated
    store.add_party("z-late", Role.PROVIDER)  # sorts after: appears once
    rest, _ = collect(
        lambda t: store.list_parties(page_size=3, page_token=t or first.next_page_token)
    )
    names = [p.name for p in first.items] + [p.name for p in rest]
    assert names == ["m0", "m1", "m2", "m3", "m4", "m5", "z-late"]


@pytest.mark.parametrize("token", ["garbage!", "e30", "eyJ2IjoxLCJsIjoiZGF0YXNldHMiLCJrIjpbXX0"])
def test_bad_page_tokens(store: MetadataStore, token: str) -> None:
    with pytest.raises(InvalidInput, match="next_page_token of the previous response"):
        store.list_datasets(page_token=token)


def test_page_token_from_another_listing_is_refused(store: MetadataStore) -> None:
    seed(store)
    token = store.list_datasets(page_size=1).next_page_token
    assert token is not None
    with pytest.raises(InvalidInput, match="not a algorithms page token|not a jobs page token"):
        store.list_jobs(page_token=token)


@pytest.mark.parametrize("size", [0, -1, 501])
def test_page_size_bounds(store: MetadataStore, size: int) -> None:
    with pytest.raises(InvalidInput, match="page_size must be between 1 and 500"):
        store.list_parties(page_size=size)


# ----------------------------------------------------------------- jobs


def test_create_job(store: MetadataStore) -> None:
    seed(store)
    created = job(store)
    assert created.state is S.QUEUED
    assert created.approval.state is ApprovalState.NOT_REQUIRED
    assert created.decision is None and created.reasons == ()
    assert [(h.from_state, h.to_state, h.detail) for h in created.history] == [
        (None, S.QUEUED, "submitted")
    ]
    assert store.get_job("job1") == created
    with pytest.raises(FailedPrecondition, match="job 'job1' already exists"):
        job(store)


@pytest.mark.parametrize(
    ("changes", "error", "message"),
    [
        ({"dataset_id": "nope"}, NotFound, "no dataset 'nope'"),
        ({"algorithm_id": "nope"}, NotFound, "no algorithm 'nope'"),
        ({"submitter": "ghost"}, NotFound, "job submitter 'ghost'"),
        ({"policy_sha256": "x"}, InvalidInput, "policy_sha256"),
        ({"policy_name": ""}, InvalidInput, "policy name"),
        ({"id": "a b"}, InvalidInput, "job id"),
    ],
)
def test_create_job_checks_references(
    store: MetadataStore, changes: dict[str, str], error: type[Exception], message: str
) -> None:
    seed(store)
    fields: dict[str, object] = {
        "id": "job1",
        "dataset_id": "ds1",
        "algorithm_id": "alg1",
        "submitter": "bob",
        "policy_name": "default",
        "policy_sha256": SHA_A,
        "approval_required": False,
    }
    fields.update(changes)
    with pytest.raises(error, match=message):
        store.create_job(**fields)  # type: ignore[arg-type]


def test_happy_path_with_dp_and_release(store: MetadataStore) -> None:
    seed(store)
    job(store)
    path = [S.ARCHITECTURE, S.TRAIN, S.GATE, S.CHECKS, S.DP_RETRAIN, S.DECIDE]
    state = S.QUEUED
    for nxt in path:
        current = store.transition("job1", state, nxt, detail=f"to {nxt}")
        assert current.state is nxt
        state = nxt
    decided = store.transition(
        "job1",
        S.DECIDE,
        S.RELEASE,
        decision=Decision.RELEASED_DP,
        reasons=["lsb entropy high", "retrained with DP"],
    )
    assert decided.decision is Decision.RELEASED_DP
    assert decided.reasons == ("lsb entropy high", "retrained with DP")
    release = store.record_release("job1", model_sha256=SHA_A)
    assert store.get_release("job1") == release
    done = store.transition("job1", S.RELEASE, S.DONE)
    assert done.decision is Decision.RELEASED_DP  # kept
    assert done.reasons == ("lsb entropy high", "retrained with DP")
    assert [h.to_state for h in done.history] == [S.QUEUED, *path, S.RELEASE, S.DONE]
    assert [h.from_state for h in done.history][1:] == [S.QUEUED, *path, S.RELEASE]
    assert done.history[1].detail == "to architecture"
    assert done.updated > done.created
    assert [h.at for h in done.history] == sorted(h.at for h in done.history)
    assert store.get_job("job1") == done


def test_rejection_goes_to_done_without_release(store: MetadataStore) -> None:
    seed(store)
    job(store)
    drive(store, "job1", S.GATE)
    store.transition("job1", S.GATE, S.DECIDE, detail="gate refused extra files")
    final = store.transition(
        "job1", S.DECIDE, S.DONE, decision=Decision.REJECTED, reasons=["extra file"]
    )
    assert (final.state, final.decision, final.reasons) == (
        S.DONE,
        Decision.REJECTED,
        ("extra file",),
    )
    with pytest.raises(FailedPrecondition, match="state done; a release is recorded only"):
        store.record_release("job1", model_sha256=SHA_A)
    with pytest.raises(NotFound, match="has no release"):
        store.get_release("job1")


def test_transition_table_is_enforced_for_every_pair(make: Factory) -> None:
    store = make()
    seed(store)
    for n, source in enumerate(JobState):
        for target in JobState:
            job_id = f"j{n}-{target}"
            job(store, job_id)
            drive(store, job_id, source)
            decision = None
            if source is S.DECIDE and target in (S.RELEASE, S.DONE):
                decision = Decision.RELEASED if target is S.RELEASE else Decision.REJECTED
            if target in TRANSITIONS[source]:
                assert store.transition(job_id, source, target, decision=decision).state is target
            else:
                with pytest.raises(FailedPrecondition, match=f"cannot move from {source} to"):
                    store.transition(job_id, source, target, decision=decision)
                assert store.get_job(job_id).state is source


def test_the_table_itself() -> None:
    for state in JobState:
        if state in TERMINAL:
            assert TRANSITIONS[state] == frozenset()
        else:
            assert {S.FAILED, S.CANCELLED} <= TRANSITIONS[state]
    assert TRANSITIONS[S.QUEUED] == {S.ARCHITECTURE, S.FAILED, S.CANCELLED}
    assert S.RELEASE in TRANSITIONS[S.DECIDE]
    assert S.RELEASE not in TRANSITIONS[S.CHECKS]  # nothing skips the decision


def test_compare_and_set(store: MetadataStore) -> None:
    seed(store)
    job(store)
    store.transition("job1", S.QUEUED, S.ARCHITECTURE)
    with pytest.raises(FailedPrecondition, match="is in state architecture, not queued"):
        store.transition("job1", S.QUEUED, S.ARCHITECTURE)
    assert len(store.get_job("job1").history) == 2


def test_two_workers_never_both_advance_a_job(make: Factory) -> None:
    store = make()
    seed(store)
    for i in range(10):
        job(store, f"race{i}")
    stores = [store]
    if isinstance(store, SqliteMetadataStore):  # separate connections, as separate processes
        stores = [store, SqliteMetadataStore(store.path), SqliteMetadataStore(store.path)]
    wins: list[tuple[str, int]] = []
    losses: list[FailedPrecondition] = []
    barrier = threading.Barrier(6)

    def worker(n: int) -> None:
        mine = stores[n % len(stores)]
        barrier.wait()
        for i in range(10):
            try:
                mine.transition(f"race{i}", S.QUEUED, S.ARCHITECTURE, detail=f"worker {n}")
                wins.append((f"race{i}", n))
            except FailedPrecondition as error:
                losses.append(error)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for extra in stores[1:]:
        extra.close()
    assert sorted(w[0] for w in wins) == [f"race{i}" for i in range(10)]  # one winner each
    assert len(losses) == 50
    for i in range(10):
        history = store.get_job(f"race{i}").history
        assert len(history) == 2  # exactly one advance recorded


def test_terminal_states_stay_terminal(store: MetadataStore) -> None:
    seed(store)
    for target in TERMINAL:
        job(store, f"t-{target}")
        drive(store, f"t-{target}", target)
        for nxt in JobState:
            with pytest.raises(FailedPrecondition, match="terminal|cannot move"):
                store.transition(f"t-{target}", target, nxt)


def test_failure_and_cancel_carry_reasons(store: MetadataStore) -> None:
    seed(store)
    job(store, "f")
    drive(store, "f", S.TRAIN)
    failed = store.transition("f", S.TRAIN, S.FAILED, detail="oom", reasons=["out of memory"])
    assert (failed.state, failed.reasons, failed.decision) == (S.FAILED, ("out of memory",), None)
    job(store, "c")
    cancelled = store.transition("c", S.QUEUED, S.CANCELLED, reasons=["owner withdrew"])
    assert cancelled.reasons == ("owner withdrew",)


@pytest.mark.parametrize(
    ("source", "target", "decision", "reasons", "message"),
    [
        (S.DECIDE, S.RELEASE, None, (), "needs the decision"),
        (S.DECIDE, S.RELEASE, Decision.REJECTED, (), "does not release a model"),
        (S.DECIDE, S.DONE, Decision.RELEASED, (), "releases a model: move to release"),
        (S.CHECKS, S.DECIDE, Decision.RELEASED, (), "only when leaving decide"),
        (S.CHECKS, S.DECIDE, None, ("why",), "reasons go with a decision"),
        (S.DECIDE, S.RELEASE, "maybe", (), "decision 'maybe' is not one of"),
        (S.DECIDE, S.RELEASE, Decision.RELEASED, "one string", "list of strings"),
        (S.DECIDE, S.RELEASE, Decision.RELEASED, ["x"] * 101, "at most 100 reasons"),
        (S.DECIDE, S.RELEASE, Decision.RELEASED, ["\x00"], "control characters"),
        ("bogus", S.RELEASE, None, (), "from_state 'bogus' is not one of"),
    ],
)
def test_decision_rules(
    store: MetadataStore,
    source: JobState,
    target: JobState,
    decision: Decision | None,
    reasons: list[str],
    message: str,
) -> None:
    seed(store)
    job(store)
    if source in JobState.__members__.values():
        drive(store, "job1", source)
    with pytest.raises(InvalidInput, match=message):
        store.transition("job1", source, target, decision=decision, reasons=reasons)


def test_transition_of_unknown_job(store: MetadataStore) -> None:
    with pytest.raises(NotFound, match="no job 'ghost'"):
        store.transition("ghost", S.QUEUED, S.ARCHITECTURE)


def test_approval_gates_the_start(store: MetadataStore) -> None:
    seed(store)
    pending = job(store, approval=True)
    assert pending.approval.state is ApprovalState.PENDING
    with pytest.raises(FailedPrecondition, match="approval is pending; it starts once"):
        store.transition("job1", S.QUEUED, S.ARCHITECTURE)
    with pytest.raises(NotFound, match="approver 'ghost'"):
        store.record_approval("job1", by="ghost", approved=True)
    approved = store.record_approval("job1", by="alice", approved=True)
    assert approved.approval.state is ApprovalState.APPROVED
    assert approved.approval.by == "alice"
    assert approved.approval.at is not None
    assert store.get_job("job1").approval == approved.approval
    with pytest.raises(FailedPrecondition, match="an approval is given once"):
        store.record_approval("job1", by="alice", approved=False)
    assert store.transition("job1", S.QUEUED, S.ARCHITECTURE).state is S.ARCHITECTURE


def test_denied_job_never_starts(store: MetadataStore) -> None:
    seed(store)
    job(store, approval=True)
    denied = store.record_approval("job1", by="alice", approved=False)
    assert denied.approval.state is ApprovalState.DENIED
    with pytest.raises(FailedPrecondition, match="approval is denied"):
        store.transition("job1", S.QUEUED, S.ARCHITECTURE)
    store.transition("job1", S.QUEUED, S.CANCELLED, reasons=["denied by the data owner"])


def test_approval_of_a_job_that_needs_none_or_is_over(store: MetadataStore) -> None:
    seed(store)
    job(store, "free")
    with pytest.raises(FailedPrecondition, match="approval is not_required"):
        store.record_approval("free", by="alice", approved=True)
    job(store, "gone", approval=True)
    store.transition("gone", S.QUEUED, S.CANCELLED)
    with pytest.raises(FailedPrecondition, match="already cancelled"):
        store.record_approval("gone", by="alice", approved=True)


def test_list_jobs_filters(store: MetadataStore) -> None:
    seed(store)
    store.add_party("dave", Role.PROVIDER)
    store.add_algorithm(id="alg2", provider="dave", name="m", version="1", blob_sha256=SHA_A)
    for i in range(5):
        job(store, f"a{i}", ds="ds1")
    for i in range(3):
        store.create_job(
            id=f"b{i}",
            dataset_id="ds2",
            algorithm_id="alg2",
            submitter="dave",
            policy_name="strict",
            policy_sha256=SHA_A,
            approval_required=True,
        )
    drive(store, "a1", S.TRAIN)
    drive(store, "a3", S.FAILED)

    def ids(**filters: object) -> list[str]:
        found, _ = collect(lambda t: store.list_jobs(page_size=2, page_token=t, **filters))  # type: ignore[arg-type]
        return [j.id for j in found]

    assert ids() == ["a0", "a1", "a2", "a3", "a4", "b0", "b1", "b2"]
    assert ids(dataset_id="ds2") == ["b0", "b1", "b2"]
    assert ids(algorithm_id="alg1") == ["a0", "a1", "a2", "a3", "a4"]
    assert ids(submitter="dave") == ["b0", "b1", "b2"]
    assert ids(dataset_owner="alice") == ["a0", "a1", "a2", "a3", "a4"]
    assert ids(dataset_owner="carol", submitter="bob") == []
    assert ids(states=[S.TRAIN, S.FAILED]) == ["a1", "a3"]
    assert ids(states=[]) == []
    unfinished = set(JobState) - TERMINAL
    assert ids(states=unfinished, dataset_id="ds1") == ["a0", "a1", "a2", "a4"]
    listed = store.list_jobs(dataset_id="ds1", states=[S.TRAIN]).items[0]
    assert listed == store.get_job("a1")  # history included
    with pytest.raises(InvalidInput, match="state 'nope' is not one of"):
        store.list_jobs(states=["nope"])  # type: ignore[list-item]


# ----------------------------------------------------------------- releases


def test_release_happens_at_most_once(store: MetadataStore) -> None:
    seed(store)
    job(store)
    drive(store, "job1", S.RELEASE)
    first = store.record_release("job1", model_sha256=SHA_A)
    with pytest.raises(FailedPrecondition, match="already released at .*at most once"):
        store.record_release("job1", model_sha256=SHA_B)
    assert store.get_release("job1") == first


def test_release_only_from_release_state(store: MetadataStore) -> None:
    seed(store)
    job(store)
    drive(store, "job1", S.CHECKS)
    with pytest.raises(FailedPrecondition, match="state checks; a release is recorded only"):
        store.record_release("job1", model_sha256=SHA_A)
    with pytest.raises(InvalidInput, match="model_sha256"):
        store.record_release("job1", model_sha256="zz")
    with pytest.raises(NotFound, match="no job 'nope'"):
        store.record_release("nope", model_sha256=SHA_A)


def test_concurrent_releases_record_exactly_one(make: Factory) -> None:
    store = make()
    seed(store)
    job(store)
    drive(store, "job1", S.RELEASE)
    results: list[object] = []
    barrier = threading.Barrier(8)

    def release() -> None:
        barrier.wait()
        try:
            results.append(store.record_release("job1", model_sha256=SHA_A))
        except FailedPrecondition as error:
            results.append(error)

    threads = [threading.Thread(target=release) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(not isinstance(r, FailedPrecondition) for r in results) == 1


# ----------------------------------------------------------------- quotas


def test_quotas(store: MetadataStore) -> None:
    seed(store)
    assert store.quota_usage("bob", "jobs", "2024-06-01") == 0
    assert store.charge_quota("bob", "jobs", "2024-06-01", amount=2, limit=3) == 2
    assert store.charge_quota("bob", "jobs", "2024-06-01", amount=1, limit=3) == 3
    with pytest.raises(LimitExceeded, match="3 of 3 used, 1 more requested"):
        store.charge_quota("bob", "jobs", "2024-06-01", amount=1, limit=3)
    assert store.quota_usage("bob", "jobs", "2024-06-01") == 3  # unchanged by the refusal
    assert store.charge_quota("bob", "jobs", "2024-06-02", amount=1, limit=3) == 1
    assert store.charge_quota("alice", "jobs", "2024-06-01", amount=3, limit=3) == 3
    with pytest.raises(NotFound, match="quota holder 'ghost'"):
        store.charge_quota("ghost", "jobs", "d", amount=1, limit=1)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("bob", "Jobs", "d", 1, 1), "quota counter"),
        (("bob", "jobs", "", 1, 1), "quota period"),
        (("bob", "jobs", "d", 0, 1), "amount must be an integer >= 1"),
        (("bob", "jobs", "d", 1, -1), "limit must be an integer >= 0"),
    ],
)
def test_quota_validation(store: MetadataStore, args: tuple[Any, ...], message: str) -> None:
    seed(store)
    party, counter, period, amount, limit = args
    with pytest.raises(InvalidInput, match=message):
        store.charge_quota(party, counter, period, amount=amount, limit=limit)


def test_concurrent_charges_never_exceed_the_limit(make: Factory) -> None:
    store = make()
    seed(store)
    stores = [store]
    if isinstance(store, SqliteMetadataStore):
        stores.append(SqliteMetadataStore(store.path))
    granted: list[int] = []
    barrier = threading.Barrier(4)

    def charge(n: int) -> None:
        barrier.wait()
        for _ in range(10):
            with contextlib.suppress(LimitExceeded):
                granted.append(
                    stores[n % len(stores)].charge_quota("bob", "jobs", "d", amount=1, limit=17)
                )

    threads = [threading.Thread(target=charge, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for extra in stores[1:]:
        extra.close()
    assert sorted(granted) == list(range(1, 18))
    assert store.quota_usage("bob", "jobs", "d") == 17


def test_new_id() -> None:
    one, two = new_id("job"), new_id("job")
    assert one != two
    assert one.startswith("job_") and len(one) == 28


# ---------------------------------------------------------------- pre-approvals


def test_preapprovals(store: MetadataStore) -> None:
    seed(store)
    assert not store.is_preapproved("ds1", "alg1")
    store.preapprove("ds1", "alg1", by="alice")
    store.preapprove("ds1", "alg1", by="alice")  # idempotent
    assert store.is_preapproved("ds1", "alg1")
    assert not store.is_preapproved("ds2", "alg1")  # per dataset
    with pytest.raises(NotFound):
        store.preapprove("nope", "alg1", by="alice")
    with pytest.raises(NotFound):
        store.preapprove("ds1", "nope", by="alice")
    with pytest.raises(NotFound):
        store.preapprove("ds1", "alg1", by="mallory")
    with pytest.raises(InvalidInput):
        store.is_preapproved("../x", "alg1")


def test_list_jobs_by_algorithm_provider(store: MetadataStore) -> None:
    seed(store)
    store.add_party("pete", Role.PROVIDER)
    store.add_algorithm(id="alg2", provider="pete", name="mlp", version="1", blob_sha256=SHA_B)
    for job_id, algorithm in (("j1", "alg1"), ("j2", "alg2"), ("j3", "alg1")):
        store.create_job(
            id=job_id,
            dataset_id="ds1",
            algorithm_id=algorithm,
            submitter="alice",  # submitted by the owner: still the provider's jobs
            policy_name="default",
            policy_sha256=SHA_A,
            approval_required=False,
        )
    assert [j.id for j in store.list_jobs(algorithm_provider="bob").items] == ["j1", "j3"]
    assert [j.id for j in store.list_jobs(algorithm_provider="pete").items] == ["j2"]
    assert store.list_jobs(algorithm_provider="carol").items == ()
