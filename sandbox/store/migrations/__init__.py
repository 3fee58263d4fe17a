"""Versioned schema migrations for the SQLite metadata store.

Each migration is a Python module holding its SQL (Python, not .sql files, so the
package needs no package-data to ship them) listed in `MIGRATIONS` in order.
`migrate()` applies the missing ones inside one `BEGIN IMMEDIATE` transaction,
recording version, name, sha256 of the SQL and time in `schema_migrations`; a
failure rolls everything back, and two processes opening a fresh database at once
serialise on the write lock, so each migration runs exactly once.

A database is refused, before anything is written, when it records a version newer
than the code knows (an older server must not write to a newer schema), a migration
the code does not know, a migration whose SQL differs from the code's (it was edited
after it shipped), or when it holds tables but no `schema_migrations` (it is not a
sandbox metadata database).
"""

from __future__ import annotations

import hashlib
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

from sandbox.errors import FailedPrecondition
from sandbox.store.migrations import m0001_initial, m0002_preapprovals


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


MIGRATIONS: Final[tuple[Migration, ...]] = (
    Migration(1, "initial", m0001_initial.SQL),
    Migration(2, "preapprovals", m0002_preapprovals.SQL),
)

_LEDGER: Final = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    checksum TEXT NOT NULL,
    applied_at REAL NOT NULL
) STRICT
"""


def split_statements(sql: str) -> list[str]:
    """Split a script into complete statements (trigger bodies stay whole)."""
    statements: list[str] = []
    pending = ""
    for line in sql.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            if pending.strip():
                statements.append(pending.strip())
            pending = ""
    if pending.strip():
        raise ValueError(f"incomplete SQL statement at the end of a migration: {pending[:80]!r}")
    return statements


def _check_applied(
    applied: Sequence[tuple[int, str, str]], migrations: Sequence[Migration], where: str
) -> None:
    known = {m.version: m for m in migrations}
    latest = migrations[-1].version if migrations else 0
    for version, name, checksum in applied:
        if version > latest:
            raise FailedPrecondition(
                f"{where} has schema version {version} ({name}), newer than this code knows "
                f"(up to {latest}); run a newer sandbox server against it, or restore a "
                "backup taken before the upgrade"
            )
        migration = known.get(version)
        if migration is None or migration.name != name:
            raise FailedPrecondition(
                f"{where} records migration {version} ({name}), which this code does not "
                "know; it was written by a different build of the sandbox"
            )
        if migration.checksum != checksum:
            raise FailedPrecondition(
                f"{where}: migration {version} ({name}) was applied from different SQL than "
                "this code's; migrations must never be edited after they ship"
            )


def migrate(
    conn: sqlite3.Connection,
    migrations: Sequence[Migration] = MIGRATIONS,
    *,
    where: str = "the metadata database",
    clock: Callable[[], float] = time.time,
) -> list[int]:
    """Bring the schema up to date in one transaction; return the versions applied.

    `conn` must be in autocommit mode (isolation_level=None).
    """
    versions = [m.version for m in migrations]
    if versions != sorted(set(versions)):
        raise ValueError("migrations must have unique, increasing versions")
    conn.execute("BEGIN IMMEDIATE")
    try:
        tables = {
            row[0]
            for row in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            )
        }
        if tables and "schema_migrations" not in tables:
            raise FailedPrecondition(
                f"{where} holds tables ({', '.join(sorted(tables)[:5])}) but no "
                "schema_migrations: it is not a sandbox metadata database; point the server "
                "at a new file"
            )
        conn.execute(_LEDGER)
        applied = conn.execute(
            "SELECT version, name, checksum FROM schema_migrations ORDER BY version"
        ).fetchall()
        _check_applied(applied, migrations, where)
        done = {row[0] for row in applied}
        ran: list[int] = []
        for migration in migrations:
            if migration.version in done:
                continue
            try:
                for statement in split_statements(migration.sql):
                    conn.execute(statement)
            except sqlite3.Error as error:
                raise FailedPrecondition(
                    f"{where}: migration {migration.version} ({migration.name}) failed: "
                    f"{error}; nothing was changed"
                ) from error
            conn.execute(
                "INSERT INTO schema_migrations (version, name, checksum, applied_at) "
                "VALUES (?, ?, ?, ?)",
                (migration.version, migration.name, migration.checksum, float(clock())),
            )
            ran.append(migration.version)
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return ran


def schema_version(conn: sqlite3.Connection) -> int:
    """The highest applied migration, 0 for a database never migrated."""
    try:
        row = conn.execute("SELECT max(version) FROM schema_migrations").fetchone()
    except sqlite3.OperationalError:
        return 0
    return int(row[0] or 0)
