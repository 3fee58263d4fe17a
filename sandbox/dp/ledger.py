"""The privacy budget ledger: how much of each dataset's (epsilon, delta) is spent.

The data owner sets a total budget per dataset. Every release charges it:

- a DP release charges the accountant's (epsilon, delta) of its training run;
- a release WITHOUT DP is recorded as unbounded (epsilon = inf): after it no finite
  guarantee holds for the dataset, so every later DP charge is refused. A caller
  must pass `allow_unbounded=True` (the policy's choice) to record one at all.

Composition is basic: epsilons add and deltas add. That is conservative - advanced
composition, or accounting all releases jointly with the PRV accountant, would give
a smaller total - but it needs nothing beyond each release's own (epsilon, delta),
stays valid across different mechanisms and accountants, and an owner can check it
by hand.

A job is charged in two steps, so two jobs can never both pass the check and
overspend: `reserve` checks and records the charge in one transaction (SQLite:
`BEGIN IMMEDIATE`, the write lock taken before the read), and a reservation already
counts as spent; `commit` makes it final at release; `cancel` returns it, for a job
that ended before its DP training started (once DP training has run, anything the
provider learns - even a rejection - is post-processing of it: commit). Both steps
are idempotent per (dataset, job), so a restarted orchestrator may repeat them; a
cancelled charge may be reserved again (a job that planned DP, then released
without it, re-reserves as unbounded).

Two backends with one contract (tests/unit/test_dp_ledger.py runs against both):
`SqliteBudgetLedger` (one small file, WAL, one table) and `InMemoryBudgetLedger`.
"""

from __future__ import annotations

import contextlib
import math
import os
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Final, Literal

from sandbox.errors import FailedPrecondition, InvalidInput, LimitExceeded, NotFound

State = Literal["reserved", "committed", "cancelled"]
SPENDING: Final = ("reserved", "committed")
# Relative slack when comparing sums of floats with the budget (0.1 * 10 vs 1.0).
TOLERANCE: Final = 1e-9
MAX_ID: Final = 128
DEFAULT_BUSY_TIMEOUT_MS: Final = 10_000


@dataclass(frozen=True)
class Budget:
    """A dataset's total budget and what reserved and committed charges have spent."""

    dataset_id: str
    epsilon: float
    delta: float
    spent_epsilon: float
    spent_delta: float

    @property
    def remaining_epsilon(self) -> float:
        return max(0.0, self.epsilon - self.spent_epsilon)

    @property
    def remaining_delta(self) -> float:
        return max(0.0, self.delta - self.spent_delta)


@dataclass(frozen=True)
class Charge:
    dataset_id: str
    job_id: str
    epsilon: float  # inf: a release without DP
    delta: float
    state: State
    created: float
    updated: float

    @property
    def private(self) -> bool:
        return math.isfinite(self.epsilon)


# --------------------------------------------------------------------------- shared rules


def _check_id(value: object, what: str) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= MAX_ID or not value.isprintable():
        raise InvalidInput(f"{what} must be a printable string of 1 to {MAX_ID} characters")
    return value


def _check_budget(epsilon: float, delta: float) -> None:
    if not (isinstance(epsilon, float | int) and math.isfinite(epsilon) and epsilon > 0):
        raise InvalidInput(f"a privacy budget's epsilon must be finite and > 0, got {epsilon!r}")
    if not (isinstance(delta, float | int) and 0 <= delta < 1):
        raise InvalidInput(f"a privacy budget's delta must be in [0, 1), got {delta!r}")


def _check_charge(epsilon: float, delta: float) -> None:
    if not (isinstance(epsilon, float | int) and not math.isnan(epsilon) and epsilon > 0):
        raise InvalidInput(f"a charge's epsilon must be > 0 (inf without DP), got {epsilon!r}")
    if not (isinstance(delta, float | int) and 0 <= delta < 1):
        raise InvalidInput(f"a charge's delta must be in [0, 1), got {delta!r}")


def _fits(spent: float, need: float, total: float) -> bool:
    return spent + need <= total + TOLERANCE * max(1.0, total)


def _spent(charges: Iterable[Charge]) -> tuple[float, float]:
    live = [c for c in charges if c.state in SPENDING]
    if any(math.isinf(c.epsilon) for c in live):
        return math.inf, math.fsum(c.delta for c in live)
    return math.fsum(c.epsilon for c in live), math.fsum(c.delta for c in live)


def _describe(budget: Budget, charges: Iterable[Charge]) -> str:
    unbounded = sorted(c.job_id for c in charges if c.state in SPENDING and not c.private)
    text = (
        f"epsilon {budget.remaining_epsilon:.6g} of {budget.epsilon:.6g} and "
        f"delta {budget.remaining_delta:.3g} of {budget.delta:.3g} remain"
    )
    if unbounded:
        text += f" (a release without DP, job {unbounded[0]}, spent an unbounded epsilon)"
    return text


def _admit(
    dataset_id: str,
    epsilon: float,
    delta: float,
    total: tuple[float, float] | None,
    charges: list[Charge],
    allow_unbounded: bool,
) -> None:
    """Raise unless a new charge of (epsilon, delta) fits; the one rule both backends use."""
    if math.isinf(epsilon):
        if not allow_unbounded:
            left = ""
            if total is not None:
                spent = _spent(charges)
                left = "; " + _describe(Budget(dataset_id, *total, *spent), charges)
            raise LimitExceeded(
                f"dataset {dataset_id}: the policy forbids releases without DP, whose epsilon "
                f"is unbounded{left}"
            )
        return
    if total is None:
        raise FailedPrecondition(
            f"dataset {dataset_id} has no privacy budget; its owner must set one "
            "(epsilon and delta) before a DP release"
        )
    budget = Budget(dataset_id, *total, *_spent(charges))
    if not (
        _fits(budget.spent_epsilon, epsilon, budget.epsilon)
        and _fits(budget.spent_delta, delta, budget.delta)
    ):
        raise LimitExceeded(
            f"dataset {dataset_id}: privacy budget exceeded: this job needs epsilon "
            f"{epsilon:.6g} and delta {delta:.3g}, but only {_describe(budget, charges)}"
        )


def _existing(found: Charge | None, epsilon: float, delta: float) -> Charge | None:
    """A repeated `reserve` of the same job: the same charge again, or an error.

    None when there is nothing to repeat: no charge, or a cancelled one (which may
    be reserved again, e.g. as unbounded by a job that planned DP and then released
    without it)."""
    if found is None or found.state == "cancelled":
        return None
    if found.epsilon != epsilon or found.delta != delta:
        raise FailedPrecondition(
            f"job {found.job_id} already holds a charge of epsilon {found.epsilon:.6g}, "
            f"delta {found.delta:.3g} on dataset {found.dataset_id}"
        )
    return found


def _transition(found: Charge | None, dataset_id: str, job_id: str, to: State) -> bool:
    """Whether to write `to`; False when the charge is already there (idempotent)."""
    if found is None:
        raise NotFound(f"job {job_id} holds no charge on dataset {dataset_id}")
    if found.state == to:
        return False
    if found.state != "reserved":
        raise FailedPrecondition(
            f"job {job_id}'s charge on dataset {dataset_id} is {found.state}; only a "
            f"reserved charge can become {to}"
        )
    return True


# --------------------------------------------------------------------------- the contract


class BudgetLedger(ABC):
    """Per-dataset privacy budgets and the charges against them."""

    @abstractmethod
    def set_budget(self, dataset_id: str, epsilon: float, delta: float) -> Budget:
        """Set (or change) the dataset's total budget; charges already made stay."""

    @abstractmethod
    def budget(self, dataset_id: str) -> Budget:
        """The total and the spent part (reserved + committed); NotFound if none was set."""

    @abstractmethod
    def reserve(
        self,
        dataset_id: str,
        job_id: str,
        epsilon: float,
        delta: float,
        *,
        allow_unbounded: bool = False,
    ) -> Charge:
        """Check that the charge fits and record it, atomically; LimitExceeded if not."""

    @abstractmethod
    def commit(self, dataset_id: str, job_id: str) -> Charge:
        """Make a reserved charge final (at release)."""

    @abstractmethod
    def cancel(self, dataset_id: str, job_id: str) -> Charge:
        """Return a reserved charge: only for a job whose DP training never started."""

    @abstractmethod
    def charges(self, dataset_id: str) -> list[Charge]:
        """Every charge on the dataset, oldest first."""


# --------------------------------------------------------------------------- in memory


class InMemoryBudgetLedger(BudgetLedger):
    """The fake: the same rules on dicts, under a lock."""

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._budgets: dict[str, tuple[float, float]] = {}
        self._charges: dict[str, dict[str, Charge]] = {}

    def set_budget(self, dataset_id: str, epsilon: float, delta: float) -> Budget:
        _check_id(dataset_id, "dataset id")
        _check_budget(epsilon, delta)
        with self._lock:
            self._budgets[dataset_id] = (float(epsilon), float(delta))
        return self.budget(dataset_id)

    def budget(self, dataset_id: str) -> Budget:
        _check_id(dataset_id, "dataset id")
        with self._lock:
            total = self._budgets.get(dataset_id)
            charges = list(self._charges.get(dataset_id, {}).values())
        if total is None:
            raise NotFound(f"dataset {dataset_id} has no privacy budget")
        return Budget(dataset_id, *total, *_spent(charges))

    def reserve(
        self,
        dataset_id: str,
        job_id: str,
        epsilon: float,
        delta: float,
        *,
        allow_unbounded: bool = False,
    ) -> Charge:
        _check_id(dataset_id, "dataset id")
        _check_id(job_id, "job id")
        _check_charge(epsilon, delta)
        epsilon, delta = float(epsilon), float(delta)
        with self._lock:
            ours = self._charges.setdefault(dataset_id, {})
            repeated = _existing(ours.get(job_id), epsilon, delta)
            if repeated is not None:
                return repeated
            _admit(
                dataset_id,
                epsilon,
                delta,
                self._budgets.get(dataset_id),
                list(ours.values()),
                allow_unbounded,
            )
            now = float(self._clock())
            created = ours[job_id].created if job_id in ours else now
            charge = Charge(dataset_id, job_id, epsilon, delta, "reserved", created, now)
            ours.pop(job_id, None)  # a re-reserved charge moves to the end, as in SQLite
            ours[job_id] = charge
            return charge

    def _move(self, dataset_id: str, job_id: str, to: State) -> Charge:
        _check_id(dataset_id, "dataset id")
        _check_id(job_id, "job id")
        with self._lock:
            found = self._charges.get(dataset_id, {}).get(job_id)
            if not _transition(found, dataset_id, job_id, to):
                assert found is not None
                return found
            assert found is not None
            moved = replace(found, state=to, updated=float(self._clock()))
            self._charges[dataset_id][job_id] = moved
            return moved

    def commit(self, dataset_id: str, job_id: str) -> Charge:
        return self._move(dataset_id, job_id, "committed")

    def cancel(self, dataset_id: str, job_id: str) -> Charge:
        return self._move(dataset_id, job_id, "cancelled")

    def charges(self, dataset_id: str) -> list[Charge]:
        _check_id(dataset_id, "dataset id")
        with self._lock:
            return list(self._charges.get(dataset_id, {}).values())


# --------------------------------------------------------------------------- SQLite

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS privacy_ledger (
    dataset_id TEXT NOT NULL,
    job_id TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('budget', 'reserved', 'committed', 'cancelled')),
    epsilon REAL NOT NULL CHECK (epsilon > 0),
    delta REAL NOT NULL CHECK (delta >= 0 AND delta < 1),
    seq INTEGER NOT NULL,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    PRIMARY KEY (dataset_id, job_id),
    CHECK ((job_id = '') = (kind = 'budget'))
) STRICT
"""
# One table: the budget of a dataset is its row with job_id '' (kind 'budget'); every
# other row is one job's charge. epsilon is +inf for a release without DP.


class SqliteBudgetLedger(BudgetLedger):
    """The ledger in one SQLite file (created 0600), WAL, one table, BEGIN IMMEDIATE writes."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        clock: Callable[[], float] = time.time,
        busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS,
    ) -> None:
        self.path = Path(path)
        self._clock = clock
        self._lock = threading.RLock()
        with contextlib.suppress(FileExistsError):  # create it 0600 before SQLite does
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        self._conn = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=busy_timeout_ms / 1000
        )
        try:
            self._conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
            mode = self._conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode != "wal":
                raise FailedPrecondition(
                    f"ledger database {self.path} cannot use WAL (journal mode is {mode}); "
                    "put it on a local filesystem"
                )
            self._conn.execute("PRAGMA synchronous = FULL")
            with self._tx():
                self._conn.execute(_SCHEMA)
        except BaseException:
            self._conn.close()
            raise

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> SqliteBudgetLedger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _tx(self, *, write: bool = True) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield self._conn
                self._conn.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise

    @staticmethod
    def _rows(
        conn: sqlite3.Connection, dataset_id: str
    ) -> tuple[tuple[float, float] | None, list[Charge]]:
        total: tuple[float, float] | None = None
        charges: list[Charge] = []
        query = (
            "SELECT job_id, kind, epsilon, delta, created, updated FROM privacy_ledger "
            "WHERE dataset_id = ? ORDER BY seq"
        )
        for job_id, kind, epsilon, delta, created, updated in conn.execute(query, (dataset_id,)):
            if kind == "budget":
                total = (epsilon, delta)
            else:
                charges.append(Charge(dataset_id, job_id, epsilon, delta, kind, created, updated))
        return total, charges

    def set_budget(self, dataset_id: str, epsilon: float, delta: float) -> Budget:
        _check_id(dataset_id, "dataset id")
        _check_budget(epsilon, delta)
        now = float(self._clock())
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO privacy_ledger VALUES (?, '', 'budget', ?, ?, 0, ?, ?) "
                "ON CONFLICT (dataset_id, job_id) DO UPDATE SET "
                "epsilon = excluded.epsilon, delta = excluded.delta, updated = excluded.updated",
                (dataset_id, float(epsilon), float(delta), now, now),
            )
            total, charges = self._rows(conn, dataset_id)
        assert total is not None
        return Budget(dataset_id, *total, *_spent(charges))

    def budget(self, dataset_id: str) -> Budget:
        _check_id(dataset_id, "dataset id")
        with self._tx(write=False) as conn:
            total, charges = self._rows(conn, dataset_id)
        if total is None:
            raise NotFound(f"dataset {dataset_id} has no privacy budget")
        return Budget(dataset_id, *total, *_spent(charges))

    def reserve(
        self,
        dataset_id: str,
        job_id: str,
        epsilon: float,
        delta: float,
        *,
        allow_unbounded: bool = False,
    ) -> Charge:
        _check_id(dataset_id, "dataset id")
        _check_id(job_id, "job id")
        _check_charge(epsilon, delta)
        epsilon, delta = float(epsilon), float(delta)
        with self._tx() as conn:  # BEGIN IMMEDIATE: check and charge under one write lock
            total, charges = self._rows(conn, dataset_id)
            found = next((c for c in charges if c.job_id == job_id), None)
            repeated = _existing(found, epsilon, delta)
            if repeated is not None:
                return repeated
            _admit(dataset_id, epsilon, delta, total, charges, allow_unbounded)
            now = float(self._clock())
            created = found.created if found is not None else now
            seq = conn.execute(
                "SELECT COALESCE(MAX(seq), 0) + 1 FROM privacy_ledger WHERE dataset_id = ?",
                (dataset_id,),
            ).fetchone()[0]
            conn.execute(
                "INSERT INTO privacy_ledger VALUES (?, ?, 'reserved', ?, ?, ?, ?, ?) "
                "ON CONFLICT (dataset_id, job_id) DO UPDATE SET kind = 'reserved', "
                "epsilon = excluded.epsilon, delta = excluded.delta, seq = excluded.seq, "
                "updated = excluded.updated WHERE kind = 'cancelled'",
                (dataset_id, job_id, epsilon, delta, seq, created, now),
            )
        return Charge(dataset_id, job_id, epsilon, delta, "reserved", created, now)

    def _move(self, dataset_id: str, job_id: str, to: State) -> Charge:
        _check_id(dataset_id, "dataset id")
        _check_id(job_id, "job id")
        with self._tx() as conn:
            _, charges = self._rows(conn, dataset_id)
            found = next((c for c in charges if c.job_id == job_id), None)
            if not _transition(found, dataset_id, job_id, to):
                assert found is not None
                return found
            assert found is not None
            now = float(self._clock())
            conn.execute(
                "UPDATE privacy_ledger SET kind = ?, updated = ? "
                "WHERE dataset_id = ? AND job_id = ? AND kind = 'reserved'",
                (to, now, dataset_id, job_id),
            )
        return replace(found, state=to, updated=now)

    def commit(self, dataset_id: str, job_id: str) -> Charge:
        return self._move(dataset_id, job_id, "committed")

    def cancel(self, dataset_id: str, job_id: str) -> Charge:
        return self._move(dataset_id, job_id, "cancelled")

    def charges(self, dataset_id: str) -> list[Charge]:
        _check_id(dataset_id, "dataset id")
        with self._tx(write=False) as conn:
            return self._rows(conn, dataset_id)[1]
