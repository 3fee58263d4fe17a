"""Schema migrations: fresh databases, re-opens, refusals, rollback, the DB's own guards."""

import sqlite3
import stat
from pathlib import Path

import pytest

from sandbox.errors import FailedPrecondition
from sandbox.store.metadata import TRANSITIONS, Decision, JobState, Role
from sandbox.store.metadata_sqlite import SqliteMetadataStore
from sandbox.store.migrations import (
    MIGRATIONS,
    Migration,
    migrate,
    schema_version,
    split_statements,
)

SHA = "ab" * 32


def ledger(path: Path) -> list[tuple[int, str, str, float]]:
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT * FROM schema_migrations ORDER BY version").fetchall()


def test_fresh_database_gets_every_migration(tmp_path: Path) -> None:
    path = tmp_path / "meta.db"
    SqliteMetadataStore(path).close()
    rows = ledger(path)
    assert [(r[0], r[1], r[2]) for r in rows] == [
        (m.version, m.name, m.checksum) for m in MIGRATIONS
    ]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_pragmas(tmp_path: Path) -> None:
    store = SqliteMetadataStore(tmp_path / "meta.db", busy_timeout_ms=1234)
    conn = store._conn
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 1234
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    store.close()


def test_reopen_applies_nothing_and_keeps_data(tmp_path: Path) -> None:
    path = tmp_path / "meta.db"
    with SqliteMetadataStore(path) as store:
        store.add_party("alice", Role.DATA_OWNER)
    before = ledger(path)
    with SqliteMetadataStore(path) as store:
        assert store.get_party("alice").role is Role.DATA_OWNER
    assert ledger(path) == before  # same rows, same applied_at


def test_database_from_a_newer_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "meta.db"
    SqliteMetadataStore(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute("INSERT INTO schema_migrations VALUES (99, 'future', 'x', 0)")
    with pytest.raises(FailedPrecondition, match="schema version 99 .*newer than this code knows"):
        SqliteMetadataStore(path)
    assert max(r[0] for r in ledger(path)) == 99  # nothing touched


def test_edited_migration_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "meta.db"
    SqliteMetadataStore(path).close()
    edited = (Migration(1, "initial", MIGRATIONS[0].sql + "\n-- tweak\n"),)
    with pytest.raises(FailedPrecondition, match="applied from different SQL"):
        SqliteMetadataStore(path, migrations=edited)


def test_unknown_migration_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "meta.db"
    SqliteMetadataStore(path).close()
    renamed = (Migration(1, "first", MIGRATIONS[0].sql),)
    with pytest.raises(FailedPrecondition, match="does not know"):
        SqliteMetadataStore(path, migrations=renamed)


def test_foreign_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE customers (id INTEGER)")
    with pytest.raises(FailedPrecondition, match="not a sandbox metadata database"):
        SqliteMetadataStore(path)


def test_new_migration_is_applied_on_reopen(tmp_path: Path) -> None:
    path = tmp_path / "meta.db"
    SqliteMetadataStore(path).close()
    nxt = len(MIGRATIONS) + 1
    second = (*MIGRATIONS, Migration(nxt, "notes", "CREATE TABLE notes (t TEXT) STRICT;"))
    SqliteMetadataStore(path, migrations=second).close()
    assert [r[0] for r in ledger(path)] == list(range(1, nxt + 1))
    SqliteMetadataStore(path, migrations=second).close()
    # the code that knows only the shipped migrations now refuses the upgraded database
    with pytest.raises(FailedPrecondition, match=f"schema version {nxt}"):
        SqliteMetadataStore(path)


def test_failed_migration_rolls_back_everything(tmp_path: Path) -> None:
    path = tmp_path / "meta.db"
    nxt = len(MIGRATIONS) + 1
    broken = (
        *MIGRATIONS,
        Migration(nxt, "half", "CREATE TABLE fine (a TEXT) STRICT;\nCREATE TABLE oops (;\n"),
    )
    with pytest.raises(FailedPrecondition, match=rf"migration {nxt} \(half\) failed.*nothing"):
        SqliteMetadataStore(path, migrations=broken)
    with sqlite3.connect(path) as conn:
        assert schema_version(conn) == 0
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert "parties" not in tables and "fine" not in tables


def test_migrate_runs_once_across_connections(tmp_path: Path) -> None:
    path = tmp_path / "meta.db"
    one = sqlite3.connect(path, isolation_level=None)
    two = sqlite3.connect(path, isolation_level=None)
    assert migrate(one) == [m.version for m in MIGRATIONS]
    assert migrate(two) == []
    one.close()
    two.close()


def test_split_statements_keeps_triggers_whole() -> None:
    statements = split_statements(MIGRATIONS[0].sql)
    triggers = [s for s in statements if s.startswith("CREATE TRIGGER")]
    assert triggers and all(s.endswith("END;") for s in triggers)
    with pytest.raises(ValueError, match="incomplete"):
        split_statements("CREATE TABLE x (a TEXT)")


# ---------------------------------------------------------------- the database's own guards


@pytest.fixture
def seeded(tmp_path: Path) -> SqliteMetadataStore:
    store = SqliteMetadataStore(tmp_path / "meta.db")
    store.add_party("alice", Role.DATA_OWNER)
    store.add_party("bob", Role.PROVIDER)
    store.add_dataset(
        id="ds1",
        owner="alice",
        name="d",
        blob_sha256=SHA,
        plaintext_sha256=SHA,
        size=1,
        num_classes=2,
        input_shape=[1],
    )
    store.add_algorithm(id="alg1", provider="bob", name="a", version="1", blob_sha256=SHA)
    store.create_job(
        id="job1",
        dataset_id="ds1",
        algorithm_id="alg1",
        submitter="bob",
        policy_name="default",
        policy_sha256=SHA,
        approval_required=False,
    )
    return store


def test_sql_transition_table_matches_the_code(seeded: SqliteMetadataStore) -> None:
    rows = seeded._conn.execute("SELECT from_state, to_state FROM job_transitions").fetchall()
    in_sql = {(JobState(a), JobState(b)) for a, b in rows}
    in_code = {(a, b) for a, targets in TRANSITIONS.items() for b in targets}
    assert in_sql == in_code
    seeded.close()


def test_raw_sql_cannot_skip_states(seeded: SqliteMetadataStore) -> None:
    with pytest.raises(sqlite3.IntegrityError, match="illegal job state transition"):
        seeded._conn.execute("UPDATE jobs SET state = 'release' WHERE id = 'job1'")
    seeded.close()


def test_raw_sql_cannot_insert_release_outside_release_state(
    seeded: SqliteMetadataStore,
) -> None:
    with pytest.raises(sqlite3.IntegrityError, match="only for a job in state release"):
        seeded._conn.execute("INSERT INTO releases VALUES ('job1', ?, 0)", (SHA,))
    seeded.close()


def test_raw_sql_cannot_repeat_change_or_delete_a_release(seeded: SqliteMetadataStore) -> None:
    for source, target in [
        (JobState.QUEUED, JobState.ARCHITECTURE),
        (JobState.ARCHITECTURE, JobState.DECIDE),
    ]:
        seeded.transition("job1", source, target)
    seeded.transition("job1", JobState.DECIDE, JobState.RELEASE, decision=Decision.RELEASED)
    seeded.record_release("job1", model_sha256=SHA)
    conn = seeded._conn
    with pytest.raises(sqlite3.IntegrityError, match="UNIQUE"):
        conn.execute("INSERT INTO releases VALUES ('job1', ?, 1)", (SHA,))
    with pytest.raises(sqlite3.IntegrityError, match="releases are permanent"):
        conn.execute("UPDATE releases SET model_sha256 = ? WHERE job_id = 'job1'", ("cd" * 32,))
    with pytest.raises(sqlite3.IntegrityError, match="releases are permanent"):
        conn.execute("DELETE FROM releases")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute("DELETE FROM job_history")
    seeded.close()


def test_foreign_keys_are_enforced(seeded: SqliteMetadataStore) -> None:
    with pytest.raises(sqlite3.IntegrityError, match="FOREIGN KEY"):
        seeded._conn.execute("DELETE FROM parties WHERE name = 'alice'")
    seeded.close()
