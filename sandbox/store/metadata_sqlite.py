"""`SqliteMetadataStore`: the metadata backend the server runs on.

One connection per store, in autocommit mode, with explicit transactions: writes
take `BEGIN IMMEDIATE` (the write lock up front, so a read-then-write can neither
deadlock nor interleave with another process's write - this is what makes
`transition` a compare-and-set across processes), multi-query reads take `BEGIN`
(one consistent snapshot). A lock serialises the threads sharing the connection.

Settings: WAL (readers never block the writer), `synchronous=FULL` (a committed
release or state change survives power loss: a release must never be repeated),
`foreign_keys=ON` and a busy timeout so a second process waits instead of failing.
The database file is created 0600; SQLite gives its -wal and -shm files the same
mode. The schema comes from `sandbox.store.migrations`, checked on every open.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from pathlib import Path
from typing import Any, Final

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
    Release,
    Role,
    StateChange,
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
from sandbox.store.migrations import MIGRATIONS, Migration, migrate

#: STRICT tables need 3.37; row values (keyset pagination) need 3.15.
MIN_SQLITE: Final = (3, 37, 0)
DEFAULT_BUSY_TIMEOUT_MS: Final = 5000

_JOB_COLUMNS: Final = (
    "id, dataset_id, algorithm_id, submitter, policy_name, policy_sha256, state, decision, "
    "reasons, approval_state, approval_by, approval_at, created, updated"
)


def _party(row: sqlite3.Row) -> Party:
    return Party(name=row["name"], role=Role(row["role"]), created=row["created"])


def _dataset(row: sqlite3.Row) -> Dataset:
    return Dataset(
        id=row["id"],
        owner=row["owner"],
        name=row["name"],
        blob_sha256=row["blob_sha256"],
        plaintext_sha256=row["plaintext_sha256"],
        size=row["size"],
        num_classes=row["num_classes"],
        input_shape=tuple(json.loads(row["input_shape"])),
        created=row["created"],
    )


def _algorithm(row: sqlite3.Row) -> Algorithm:
    return Algorithm(
        id=row["id"],
        provider=row["provider"],
        name=row["name"],
        version=row["version"],
        blob_sha256=row["blob_sha256"],
        created=row["created"],
    )


def _job(row: sqlite3.Row, history: Sequence[StateChange]) -> Job:
    decision = row["decision"]
    return Job(
        id=row["id"],
        dataset_id=row["dataset_id"],
        algorithm_id=row["algorithm_id"],
        submitter=row["submitter"],
        policy_name=row["policy_name"],
        policy_sha256=row["policy_sha256"],
        state=JobState(row["state"]),
        history=tuple(history),
        decision=None if decision is None else Decision(decision),
        reasons=tuple(json.loads(row["reasons"])),
        approval=Approval(
            ApprovalState(row["approval_state"]), row["approval_by"], row["approval_at"]
        ),
        created=row["created"],
        updated=row["updated"],
    )


def _change(row: sqlite3.Row) -> StateChange:
    source = row["from_state"]
    return StateChange(
        from_state=None if source is None else JobState(source),
        to_state=JobState(row["to_state"]),
        at=row["at"],
        detail=row["detail"],
    )


class SqliteMetadataStore:
    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        clock: Callable[[], float] = time.time,
        busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS,
        migrations: Sequence[Migration] = MIGRATIONS,
    ) -> None:
        if sqlite3.sqlite_version_info < MIN_SQLITE:
            raise FailedPrecondition(
                f"SQLite {sqlite3.sqlite_version} is too old; the metadata store needs "
                f"{'.'.join(map(str, MIN_SQLITE))} or newer (use a newer Python build)"
            )
        self.path = Path(path)
        self._clock = clock
        self._lock = threading.RLock()
        with contextlib.suppress(FileExistsError):  # create it 0600 before SQLite does
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        self._conn = sqlite3.connect(
            self.path,
            isolation_level=None,
            check_same_thread=False,
            timeout=busy_timeout_ms / 1000,
        )
        try:
            self._conn.row_factory = sqlite3.Row
            self._conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
            mode = self._conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode != "wal":
                raise FailedPrecondition(
                    f"metadata database {self.path} cannot use WAL (journal mode is {mode}); "
                    "put it on a local filesystem"
                )
            self._conn.execute("PRAGMA synchronous = FULL")
            self._conn.execute("PRAGMA foreign_keys = ON")
            migrate(
                self._conn,
                migrations,
                where=f"metadata database {self.path}",
                clock=self._clock,
            )
        except BaseException:
            self._conn.close()
            raise

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> SqliteMetadataStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _now(self) -> float:
        return float(self._clock())

    @contextlib.contextmanager
    def _tx(self, *, write: bool) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield self._conn
                self._conn.execute("COMMIT")
            except sqlite3.IntegrityError as error:
                # A constraint or trigger caught what the checks above should have: the
                # database's own guard. Its text names a table or rule, nothing secret.
                self._conn.execute("ROLLBACK")
                raise FailedPrecondition(f"the database refused the change: {error}") from None
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise

    @staticmethod
    def _one(conn: sqlite3.Connection, sql: str, *params: Any) -> sqlite3.Row | None:
        row: sqlite3.Row | None = conn.execute(sql, params).fetchone()
        return row

    def _require_party(self, conn: sqlite3.Connection, name: str, what: str) -> None:
        if self._one(conn, "SELECT 1 FROM parties WHERE name = ?", name) is None:
            raise NotFound(f"{what} {name!r} is not a registered party; add the party first")

    def _load_job(self, conn: sqlite3.Connection, job_id: str) -> Job:
        row = self._one(conn, f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = ?", job_id)  # noqa: S608
        if row is None:
            raise NotFound(f"no job {job_id!r}")
        history = conn.execute(
            "SELECT from_state, to_state, at, detail FROM job_history WHERE job_id = ? "
            "ORDER BY seq",
            (job_id,),
        )
        return _job(row, [_change(h) for h in history])

    @staticmethod
    def _keyset(
        conn: sqlite3.Connection,
        table: str,
        columns: str,
        where: list[str],
        params: list[Any],
        listing: str,
        page_size: int,
        page_token: str | None,
    ) -> tuple[list[sqlite3.Row], str | None]:
        check_page_size(page_size)
        after = decode_page_token(listing, page_token)
        order = "name" if listing == "parties" else "created, id"
        if after is not None:
            where = [*where, f"({order}) > ({', '.join('?' * len(after))})"]
            params = [*params, *after]
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        sql = f"SELECT {columns} FROM {table} {clause} ORDER BY {order} LIMIT ?"  # noqa: S608
        rows = conn.execute(sql, [*params, page_size + 1]).fetchall()
        if len(rows) <= page_size:
            return rows, None
        last = rows[page_size - 1]
        position = (last["name"],) if listing == "parties" else (last["created"], last["id"])
        return rows[:page_size], encode_page_token(listing, position)

    # ------------------------------------------------------------ parties

    def add_party(self, name: str, role: Role) -> Party:
        check_party_name(name)
        checked = check_role(role)
        with self._tx(write=True) as conn:
            if self._one(conn, "SELECT 1 FROM parties WHERE name = ?", name) is not None:
                raise FailedPrecondition(f"party {name!r} already exists")
            party = Party(name=name, role=checked, created=self._now())
            conn.execute(
                "INSERT INTO parties (name, role, created) VALUES (?, ?, ?)",
                (party.name, party.role.value, party.created),
            )
            return party

    def get_party(self, name: str) -> Party:
        check_party_name(name)
        with self._lock:
            row = self._one(self._conn, "SELECT * FROM parties WHERE name = ?", name)
        if row is None:
            raise NotFound(f"no party {name!r}")
        return _party(row)

    def list_parties(
        self,
        *,
        role: Role | None = None,
        page_size: int = DEFAULT_PAGE_SIZE,
        page_token: str | None = None,
    ) -> Page[Party]:
        where, params = [], []
        if role is not None:
            where.append("role = ?")
            params.append(check_role(role).value)
        with self._tx(write=False) as conn:
            rows, token = self._keyset(
                conn, "parties", "*", where, params, "parties", page_size, page_token
            )
        return Page(tuple(_party(r) for r in rows), token)

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
        with self._tx(write=True) as conn:
            self._require_party(conn, owner, "dataset owner")
            if self._one(conn, "SELECT 1 FROM datasets WHERE id = ?", id) is not None:
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
            conn.execute(
                "INSERT INTO datasets (id, owner, name, blob_sha256, plaintext_sha256, size, "
                "num_classes, input_shape, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    id,
                    owner,
                    name,
                    blob_sha256,
                    plaintext_sha256,
                    size,
                    num_classes,
                    json.dumps(list(shape)),
                    dataset.created,
                ),
            )
            return dataset

    def get_dataset(self, dataset_id: str) -> Dataset:
        check_id(dataset_id, "dataset id")
        with self._lock:
            row = self._one(self._conn, "SELECT * FROM datasets WHERE id = ?", dataset_id)
        if row is None:
            raise NotFound(f"no dataset {dataset_id!r}")
        return _dataset(row)

    def list_datasets(
        self,
        *,
        owner: str | None = None,
        page_size: int = DEFAULT_PAGE_SIZE,
        page_token: str | None = None,
    ) -> Page[Dataset]:
        where, params = [], []
        if owner is not None:
            where.append("owner = ?")
            params.append(check_party_name(owner))
        with self._tx(write=False) as conn:
            rows, token = self._keyset(
                conn, "datasets", "*", where, params, "datasets", page_size, page_token
            )
        return Page(tuple(_dataset(r) for r in rows), token)

    # ------------------------------------------------------------ algorithms

    def add_algorithm(
        self, *, id: str, provider: str, name: str, version: str, blob_sha256: str
    ) -> Algorithm:
        check_id(id, "algorithm id")
        check_party_name(provider)
        check_text(name, "algorithm name")
        check_text(version, "algorithm version")
        check_sha256(blob_sha256, "algorithm blob_sha256")
        with self._tx(write=True) as conn:
            self._require_party(conn, provider, "algorithm provider")
            if self._one(conn, "SELECT 1 FROM algorithms WHERE id = ?", id) is not None:
                raise FailedPrecondition(f"algorithm {id!r} already exists")
            other = self._one(
                conn,
                "SELECT id FROM algorithms WHERE provider = ? AND name = ? AND version = ?",
                provider,
                name,
                version,
            )
            if other is not None:
                raise FailedPrecondition(
                    f"{provider} already has algorithm {name!r} version {version!r} "
                    f"({other['id']}); upload it under a new version"
                )
            algorithm = Algorithm(
                id=id,
                provider=provider,
                name=name,
                version=version,
                blob_sha256=blob_sha256,
                created=self._now(),
            )
            conn.execute(
                "INSERT INTO algorithms (id, provider, name, version, blob_sha256, created) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (id, provider, name, version, blob_sha256, algorithm.created),
            )
            return algorithm

    def get_algorithm(self, algorithm_id: str) -> Algorithm:
        check_id(algorithm_id, "algorithm id")
        with self._lock:
            row = self._one(self._conn, "SELECT * FROM algorithms WHERE id = ?", algorithm_id)
        if row is None:
            raise NotFound(f"no algorithm {algorithm_id!r}")
        return _algorithm(row)

    def list_algorithms(
        self,
        *,
        provider: str | None = None,
        page_size: int = DEFAULT_PAGE_SIZE,
        page_token: str | None = None,
    ) -> Page[Algorithm]:
        where, params = [], []
        if provider is not None:
            where.append("provider = ?")
            params.append(check_party_name(provider))
        with self._tx(write=False) as conn:
            rows, token = self._keyset(
                conn, "algorithms", "*", where, params, "algorithms", page_size, page_token
            )
        return Page(tuple(_algorithm(r) for r in rows), token)

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
        with self._tx(write=True) as conn:
            if self._one(conn, "SELECT 1 FROM datasets WHERE id = ?", dataset_id) is None:
                raise NotFound(f"no dataset {dataset_id!r}")
            if self._one(conn, "SELECT 1 FROM algorithms WHERE id = ?", algorithm_id) is None:
                raise NotFound(f"no algorithm {algorithm_id!r}")
            self._require_party(conn, submitter, "job submitter")
            if self._one(conn, "SELECT 1 FROM jobs WHERE id = ?", id) is not None:
                raise FailedPrecondition(f"job {id!r} already exists")
            now = self._now()
            approval = ApprovalState.PENDING if approval_required else ApprovalState.NOT_REQUIRED
            conn.execute(
                f"INSERT INTO jobs ({_JOB_COLUMNS}) "  # noqa: S608
                "VALUES (?, ?, ?, ?, ?, ?, ?, NULL, '[]', ?, NULL, NULL, ?, ?)",
                (
                    id,
                    dataset_id,
                    algorithm_id,
                    submitter,
                    policy_name,
                    policy_sha256,
                    JobState.QUEUED.value,
                    approval.value,
                    now,
                    now,
                ),
            )
            conn.execute(
                "INSERT INTO job_history (job_id, seq, from_state, to_state, at, detail) "
                "VALUES (?, 0, NULL, ?, ?, 'submitted')",
                (id, JobState.QUEUED.value, now),
            )
            return self._load_job(conn, id)

    def get_job(self, job_id: str) -> Job:
        check_id(job_id, "job id")
        with self._tx(write=False) as conn:
            return self._load_job(conn, job_id)

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
        where: list[str] = []
        params: list[Any] = []
        if dataset_id is not None:
            where.append("dataset_id = ?")
            params.append(check_id(dataset_id, "dataset id"))
        if algorithm_id is not None:
            where.append("algorithm_id = ?")
            params.append(check_id(algorithm_id, "algorithm id"))
        if submitter is not None:
            where.append("submitter = ?")
            params.append(check_party_name(submitter))
        if dataset_owner is not None:
            where.append("dataset_id IN (SELECT id FROM datasets WHERE owner = ?)")
            params.append(check_party_name(dataset_owner))
        if algorithm_provider is not None:
            where.append("algorithm_id IN (SELECT id FROM algorithms WHERE provider = ?)")
            params.append(check_party_name(algorithm_provider))
        if states is not None:
            wanted = sorted({check_state(s).value for s in states})
            where.append(f"state IN ({', '.join('?' * len(wanted))})")
            params.extend(wanted)
        with self._tx(write=False) as conn:
            rows, token = self._keyset(
                conn, "jobs", _JOB_COLUMNS, where, params, "jobs", page_size, page_token
            )
            histories: dict[str, list[StateChange]] = {row["id"]: [] for row in rows}
            if histories:
                marks = ", ".join("?" * len(histories))
                for h in conn.execute(
                    "SELECT job_id, from_state, to_state, at, detail FROM job_history "  # noqa: S608
                    f"WHERE job_id IN ({marks}) ORDER BY job_id, seq",
                    list(histories),
                ):
                    histories[h["job_id"]].append(_change(h))
        return Page(tuple(_job(r, histories[r["id"]]) for r in rows), token)

    def record_approval(self, job_id: str, *, by: str, approved: bool) -> Job:
        check_id(job_id, "job id")
        check_party_name(by)
        with self._tx(write=True) as conn:
            job = self._load_job(conn, job_id)
            self._require_party(conn, by, "approver")
            check_approval_against(job)
            state = ApprovalState.APPROVED if approved else ApprovalState.DENIED
            now = self._now()
            conn.execute(
                "UPDATE jobs SET approval_state = ?, approval_by = ?, approval_at = ?, "
                "updated = ? WHERE id = ? AND approval_state = 'pending'",
                (state.value, by, now, now, job_id),
            )
            return self._load_job(conn, job_id)

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
        with self._tx(write=True) as conn:
            job = self._load_job(conn, job_id)
            check_transition_against(job, source, target)
            now = self._now()
            cursor = conn.execute(
                "UPDATE jobs SET state = ?, decision = coalesce(?, decision), "
                "reasons = coalesce(?, reasons), updated = ? WHERE id = ? AND state = ?",
                (
                    target.value,
                    None if verdict is None else verdict.value,
                    json.dumps(list(checked)) if checked else None,
                    now,
                    job_id,
                    source.value,
                ),
            )
            if cursor.rowcount != 1:  # unreachable under BEGIN IMMEDIATE; kept as a guard
                raise FailedPrecondition(f"job {job_id} was moved by another worker")
            conn.execute(
                "INSERT INTO job_history (job_id, seq, from_state, to_state, at, detail) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (job_id, len(job.history), source.value, target.value, now, detail),
            )
            return self._load_job(conn, job_id)

    # ------------------------------------------------------------ releases

    def preapprove(self, dataset_id: str, algorithm_id: str, *, by: str) -> None:
        check_id(dataset_id, "dataset id")
        check_id(algorithm_id, "algorithm id")
        check_party_name(by)
        with self._tx(write=True) as conn:
            self._require_party(conn, by, "approver")
            if self._one(conn, "SELECT id FROM datasets WHERE id = ?", dataset_id) is None:
                raise NotFound(f"no dataset {dataset_id!r}")
            if self._one(conn, "SELECT id FROM algorithms WHERE id = ?", algorithm_id) is None:
                raise NotFound(f"no algorithm {algorithm_id!r}")
            conn.execute(
                "INSERT OR IGNORE INTO preapprovals (dataset_id, algorithm_id, by_party, at) "
                "VALUES (?, ?, ?, ?)",
                (dataset_id, algorithm_id, by, self._now()),
            )

    def is_preapproved(self, dataset_id: str, algorithm_id: str) -> bool:
        check_id(dataset_id, "dataset id")
        check_id(algorithm_id, "algorithm id")
        with self._lock:
            row = self._one(
                self._conn,
                "SELECT 1 FROM preapprovals WHERE dataset_id = ? AND algorithm_id = ?",
                dataset_id,
                algorithm_id,
            )
        return row is not None

    def record_release(self, job_id: str, *, model_sha256: str) -> Release:
        check_id(job_id, "job id")
        check_sha256(model_sha256, "model_sha256")
        with self._tx(write=True) as conn:
            job = self._load_job(conn, job_id)
            row = self._one(conn, "SELECT * FROM releases WHERE job_id = ?", job_id)
            existing = None if row is None else Release(**dict(row))
            check_release_against(job, existing)
            release = Release(job_id=job_id, model_sha256=model_sha256, released_at=self._now())
            conn.execute(
                "INSERT INTO releases (job_id, model_sha256, released_at) VALUES (?, ?, ?)",
                (job_id, model_sha256, release.released_at),
            )
            return release

    def get_release(self, job_id: str) -> Release:
        check_id(job_id, "job id")
        with self._lock:
            row = self._one(self._conn, "SELECT * FROM releases WHERE job_id = ?", job_id)
        if row is None:
            raise NotFound(f"job {job_id!r} has no release")
        return Release(**dict(row))

    # ------------------------------------------------------------ quotas

    def charge_quota(
        self, party: str, counter: str, period: str, *, amount: int, limit: int
    ) -> int:
        check_quota_request(party, counter, period, amount, limit)
        with self._tx(write=True) as conn:
            self._require_party(conn, party, "quota holder")
            row = self._one(
                conn,
                "SELECT used FROM quota_counters WHERE party = ? AND counter = ? AND period = ?",
                party,
                counter,
                period,
            )
            used = 0 if row is None else int(row["used"])
            if used + amount > limit:
                raise quota_exceeded(party, counter, period, used, amount, limit)
            conn.execute(
                "INSERT INTO quota_counters (party, counter, period, used) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (party, counter, period) DO UPDATE SET used = excluded.used",
                (party, counter, period, used + amount),
            )
            return used + amount

    def quota_usage(self, party: str, counter: str, period: str) -> int:
        check_quota_request(party, counter, period, 1, 0)
        with self._lock:
            row = self._one(
                self._conn,
                "SELECT used FROM quota_counters WHERE party = ? AND counter = ? AND period = ?",
                party,
                counter,
                period,
            )
        return 0 if row is None else int(row["used"])


def _conforms(store: SqliteMetadataStore) -> MetadataStore:
    return store  # mypy proves the class implements the protocol
