"""Moving the embedded SQLite store into a PostgreSQL schema without loss (``cryptocity store
migrate-sqlite-to-pg``, registered by sandbox/store_cli.py).

Why it is done this way:

- **One snapshot of the source.** The file is opened read-only (``mode=ro``: nothing can be written to
  it) and every table is read inside ONE read transaction, so the copy is a consistent cut even of a file
  that changed meanwhile. Writes a running gateway makes after that cut would not be copied, so the
  gateway must be stopped first; :func:`processes_using` refuses a file that another process holds open
  (Linux ``/proc/locks``, where every SQLite WAL connection keeps a lock on the ``-shm`` file).
- **Same schema version on both sides.** The target is migrated first with the code's own PostgreSQL
  migrations; the source must record exactly the code's SQLite migrations, else the tables would not line
  up. Tables and columns are discovered from the source file (every table but SQLite's own and
  ``schema_migrations``, which each side keeps for itself) and must exist in the target with the same
  columns, so a table added by a later migration is copied without anyone updating a list here.
- **All or nothing.** Copy, sequence reset and verification run in ONE PostgreSQL transaction that first
  locks every target table (so nothing else writes there meanwhile) and checks that they hold no rows. Any
  failure, including a failed verification, rolls back: the target keeps its empty tables and nothing else.
- **Foreign-key order.** Tables are copied parents first (a topological order of the source's declared
  foreign keys), because PostgreSQL checks each row's references as it arrives.
- **Fast, exact rows.** Rows go in batches through ``COPY`` (asyncpg ``copy_records_to_table``, binary
  format). Values keep their Python type: the PostgreSQL schema mirrors SQLite's (INTEGER is BIGINT, text
  is TEXT, crypto amounts stay decimal text), and a value that does not fit its column exactly (text in a
  BIGINT column, a float, a blob) stops the copy naming the table and column, instead of being converted.
- **Sequences continue.** Every identity/serial column is set so that the next value is one past the
  highest copied value, or past SQLite's ``sqlite_sequence`` record when that is higher (rows deleted from
  an AUTOINCREMENT table, such as pruned rate history, must not have their numbers handed out again: a
  consumer cursor may already point past them).
- **Verified before commit.** Per table: the source's count, the rows sent, the target's count, and an
  order-independent digest of every row read back from the target compared with the source's. Callers add
  domain checks (the sandbox's ledger balances and audit chain) that read both sides through the store's
  ``Tx`` protocol, so this module stays free of sandbox imports.
"""

from __future__ import annotations

import hashlib
import os
import re
import sqlite3
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import asyncpg

from gateway.store.base import Row, StoreError, Tx
from gateway.store.migrations import apply_postgres_migrations, load_migrations
from gateway.store.postgres import redact_dsn, rewrite, schema_from_dsn

T = TypeVar("T")
BOOKKEEPING_TABLE = "schema_migrations"
DEFAULT_BATCH_SIZE = 5000
_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_DIGEST_MODULUS = 1 << 128
_LOCK_TIMEOUT = "10s"


class TransferError(StoreError):
    """The transfer did not happen; ``str(error)`` is the one line an operator needs."""


class TransferRefused(TransferError):
    """A precondition failed before anything was copied (gateway running, versions, non-empty target)."""


class TransferFailed(TransferError):
    """Copying or verifying failed; the PostgreSQL transaction was rolled back and the target left empty."""

    def __init__(self, message: str, report: TransferReport) -> None:
        super().__init__(message)
        self.report = report


# -- reports ---------------------------------------------------------------------------------------------


@dataclass(slots=True)
class TableReport:
    """One table's figures: all three counts and both digests must agree."""

    name: str
    source_rows: int = 0
    copied_rows: int = 0
    target_rows: int = -1  # -1: not counted (the copy stopped before)
    source_digest: int = 0
    target_digest: int | None = None

    @property
    def ok(self) -> bool:
        return (
            self.source_rows == self.copied_rows == self.target_rows
            and self.source_digest == self.target_digest
        )


@dataclass(frozen=True, slots=True)
class SequenceReport:
    """An identity/serial column and the value its sequence hands out next."""

    table: str
    column: str
    next_value: int


@dataclass(frozen=True, slots=True)
class CheckResult:
    """A domain check comparing source and target (e.g. ledger balances); ``detail`` says what was compared."""

    name: str
    ok: bool
    detail: str


@dataclass(slots=True)
class TransferReport:
    source: str
    target: str
    schema: str
    migration_version: int
    tables: list[TableReport] = field(default_factory=list)
    sequences: list[SequenceReport] = field(default_factory=list)
    checks: list[CheckResult] = field(default_factory=list)
    committed: bool = False

    @property
    def ok(self) -> bool:
        return all(t.ok for t in self.tables) and all(c.ok for c in self.checks)

    def problems(self) -> list[str]:
        """One line per mismatch, for the failure message."""
        lines = [
            f"{t.name}: source {t.source_rows} rows, copied {t.copied_rows}, target {t.target_rows}"
            + ("" if t.source_digest == t.target_digest else ", row digests differ")
            for t in self.tables
            if not t.ok
        ]
        return lines + [f"{c.name}: {c.detail}" for c in self.checks if not c.ok]

    def view(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "committed": self.committed,
            "source": self.source,
            "target": self.target,
            "schema": self.schema,
            "migration_version": self.migration_version,
            "tables": [
                {
                    "table": t.name,
                    "source_rows": t.source_rows,
                    "copied_rows": t.copied_rows,
                    "target_rows": t.target_rows,
                    "digest_match": t.source_digest == t.target_digest,
                    "ok": t.ok,
                }
                for t in self.tables
            ],
            "sequences": [
                {"table": s.table, "column": s.column, "next_value": s.next_value} for s in self.sequences
            ],
            "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in self.checks],
        }


# Called with a table's name and the rows copied so far, after every batch.
Progress = Callable[[str, int], None]


# -- the source ----------------------------------------------------------------------------------------------


def processes_using(path: Path) -> set[int]:
    """Ids of other processes holding SQLite locks on ``path`` or its ``-shm``/``-wal`` files.

    Every connection to a WAL database keeps a shared POSIX lock on the ``-shm`` file (and the main file)
    for as long as it is open, and Linux lists those in ``/proc/locks`` as ``PID MAJ:MIN:INODE``. Empty
    where ``/proc/locks`` does not exist: then the documented rule (stop the gateway first) is all there is.
    """
    wanted: set[tuple[int, int, int]] = set()
    for candidate in (path, path.with_name(path.name + "-shm"), path.with_name(path.name + "-wal")):
        try:
            info = candidate.stat()
        except OSError:
            continue
        wanted.add((os.major(info.st_dev), os.minor(info.st_dev), info.st_ino))
    try:
        text = Path("/proc/locks").read_text(encoding="ascii", errors="replace")
    except OSError:
        return set()
    found: set[int] = set()
    for line in text.splitlines():
        parts = [part for part in line.split() if part != "->"]  # "->" marks a waiter, not a holder
        if len(parts) < 6:
            continue
        try:
            pid = int(parts[4])
            major, minor, inode = parts[5].split(":")
            key = (int(major, 16), int(minor, 16), int(inode))
        except ValueError:
            continue
        if key in wanted and pid not in (os.getpid(), -1):
            found.add(pid)
    return found


def open_snapshot(path: Path) -> sqlite3.Connection:
    """The file opened read-only, inside a read transaction that has already taken its snapshot."""
    if not path.is_file():
        raise TransferRefused(f"{path}: no such SQLite file")
    try:
        conn = sqlite3.connect(
            f"file:{quote(str(path.resolve()))}?mode=ro",
            uri=True,
            isolation_level=None,
            check_same_thread=False,
        )
    except sqlite3.Error as exc:
        raise TransferRefused(f"{path}: cannot open read-only: {exc}") from None
    try:
        conn.execute("BEGIN")
        conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()  # the first read fixes the snapshot
    except sqlite3.Error as exc:
        conn.close()
        raise TransferRefused(f"{path}: not an SQLite database: {exc}") from None
    return conn


class SnapshotTx:
    """The source snapshot behind the store's ``Tx`` protocol (reads only), for checks.

    Queries run synchronously: this is a one-off batch command, and the snapshot lives on one connection.
    """

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        raise TransferError("the source database is read-only")

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        raise TransferError("the source database is read-only")

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        rows = await self.fetchall(sql, params)
        return rows[0] if rows else None

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        cursor = self._conn.execute(sql, params)
        names = [d[0] for d in cursor.description or ()]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    def after_commit(self, callback: Callable[[], None]) -> None:
        raise TransferError("the source database is read-only")

    async def read(self, fn: Callable[[Tx], Awaitable[T]]) -> T:
        """So that code written against ``store.read`` (the audit verifier) reads the snapshot."""
        return await fn(self)


class TargetTx:
    """The target connection, inside the copy's transaction, behind the ``Tx`` protocol (reads only).

    Rows come back as the PostgreSQL store gives them, so checks written for the store work unchanged:
    ``numeric`` (SUM over BIGINT) as int when integral, booleans as 0/1.
    """

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        raise TransferError("checks only read the target")

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        raise TransferError("checks only read the target")

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        rows = await self.fetchall(sql, params)
        return rows[0] if rows else None

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        records = await self._conn.fetch(rewrite(sql).sql, *params)
        return [{key: _plain(value) for key, value in record.items()} for record in records]

    def after_commit(self, callback: Callable[[], None]) -> None:
        raise TransferError("checks only read the target")

    async def read(self, fn: Callable[[Tx], Awaitable[T]]) -> T:
        """So that code written against ``store.read`` reads inside the copy's transaction."""
        return await fn(self)


# A domain check: reads the source snapshot and the target (inside the copy's transaction), says what it found.
Check = Callable[[SnapshotTx, TargetTx], Awaitable[CheckResult]]


def _plain(value: Any) -> Any:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    return value


# -- planning ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TablePlan:
    """A table to copy: its columns in one fixed order, how each value is checked, its AUTOINCREMENT mark."""

    name: str
    columns: tuple[str, ...]
    pg_types: tuple[str, ...]
    rowid_column: str | None  # the INTEGER PRIMARY KEY (an alias of SQLite's rowid), if any
    sqlite_sequence: int  # the highest value SQLite's AUTOINCREMENT ever handed out (0: none recorded)


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def source_versions(conn: sqlite3.Connection) -> list[int]:
    found = conn.execute(
        "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = ?", (BOOKKEEPING_TABLE,)
    ).fetchone()[0]
    if not found:
        raise TransferRefused("the source has no schema_migrations table: not a CryptoCity store")
    return sorted(int(row[0]) for row in conn.execute(f"SELECT version FROM {BOOKKEEPING_TABLE}"))  # noqa: S608


def check_versions(side: str, versions: Sequence[int], expected: Sequence[int], fix: str) -> None:
    """Refuse unless ``versions`` are exactly the migrations this code has."""
    if list(versions) == list(expected):
        return
    have, want = (max(versions) if versions else 0), (max(expected) if expected else 0)
    if have > want or set(versions) - set(expected):
        raise TransferRefused(
            f"the {side} is at migration {have}, newer than this cryptocity (which knows 1..{want}):"
            " run the migration with the cryptocity version that wrote it"
        )
    missing = sorted(set(expected) - set(versions))
    raise TransferRefused(
        f"the {side} is at migration {have} and lacks {missing} (this cryptocity: {want}): {fix}"
    )


def source_tables(conn: sqlite3.Connection) -> dict[str, tuple[list[str], str | None, set[str]]]:
    """Every table of the source but SQLite's own and the bookkeeping: columns, rowid alias, parents."""
    names = [
        row[0]
        for row in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'"
            " AND name <> ? ORDER BY name",
            (BOOKKEEPING_TABLE,),
        )
    ]
    tables: dict[str, tuple[list[str], str | None, set[str]]] = {}
    for name in names:
        info = conn.execute(f"PRAGMA table_info({_quote(name)})").fetchall()
        columns = [row[1] for row in info]
        keys = [row for row in info if row[5]]
        rowid = keys[0][1] if len(keys) == 1 and str(keys[0][2]).upper() == "INTEGER" else None
        parents = {row[2] for row in conn.execute(f"PRAGMA foreign_key_list({_quote(name)})")} - {name}
        tables[name] = (columns, rowid, parents)
    return tables


def parents_first(parents: dict[str, set[str]]) -> list[str]:
    """Tables ordered so that every table comes after those its foreign keys reference (ties by name)."""
    waiting = {name: set(refs) & parents.keys() for name, refs in parents.items()}
    order: list[str] = []
    while waiting:
        ready = sorted(name for name, refs in waiting.items() if not refs)
        if not ready:
            raise TransferRefused(
                f"foreign keys form a cycle between {sorted(waiting)}; cannot order the copy"
            )
        for name in ready:
            order.append(name)
            del waiting[name]
        for refs in waiting.values():
            refs.difference_update(ready)
    return order


def _checker(table: str, column: str, pg_type: str) -> Callable[[Any], Any]:
    """Accept a value only when PostgreSQL stores it as the same Python value (no silent conversion)."""
    if pg_type in ("bigint", "integer", "smallint"):
        wanted: tuple[type, ...] = (int,)
    elif pg_type in ("text", "character varying", "character"):
        wanted = (str,)
    elif pg_type in ("double precision", "real"):
        wanted = (float, int)
    elif pg_type == "bytea":
        wanted = (bytes,)
    else:
        raise TransferRefused(f"{table}.{column} is {pg_type} in PostgreSQL, which this copy does not handle")

    def check(value: Any) -> Any:
        if value is None or (isinstance(value, wanted) and not isinstance(value, bool)):
            return value
        shown = repr(value)
        shown = shown if len(shown) <= 40 else shown[:37] + "..."
        raise TransferError(
            f"{table}.{column}: {shown} ({type(value).__name__}) is not a valid {pg_type} value"
        )

    return check


def row_digest(values: Iterable[Any]) -> int:
    """One row's 128-bit hash; a table's digest is the sum of its rows' (mod 2**128), whatever their order."""
    return int.from_bytes(hashlib.blake2b(repr(tuple(values)).encode(), digest_size=16).digest(), "big")


# -- the transfer ------------------------------------------------------------------------------------------


async def migrate_sqlite_to_postgres(
    source: Path | str,
    dsn: str,
    *,
    schema: str | None = None,
    checks: Sequence[Check] = (),
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: Progress | None = None,
) -> TransferReport:
    """Copy the SQLite store at ``source`` into ``schema`` (else the DSN's search_path, else the server's
    default) of the PostgreSQL database ``dsn``; returns the committed, verified report.

    Raises :class:`TransferRefused` when a precondition fails (nothing written but, possibly, the target's
    migrations) and :class:`TransferFailed` (with the report so far) when copying or a check failed.
    """
    path = Path(source)
    if batch_size < 1:
        raise TransferRefused("the batch size must be at least 1")
    schema = schema or schema_from_dsn(dsn)
    if schema is not None and not _SCHEMA_NAME.match(schema):
        raise TransferRefused(f"the schema must be a lower-case SQL identifier, got {schema!r}")
    users = processes_using(path)
    if users:
        raise TransferRefused(
            f"{path} is open in other processes (pid {', '.join(map(str, sorted(users)))}): stop the gateway"
            " (and every other cryptocity command on this file) first"
        )
    snapshot = open_snapshot(path)
    try:
        expected = [m.version for m in load_migrations("sqlite")]
        check_versions(
            "source",
            source_versions(snapshot),
            expected,
            f"stop the gateway, run `cryptocity migrate` with store.path = {path} (and store.dsn empty), then"
            " run this again",
        )
        conn = await _connect_target(dsn, schema)
        try:
            return await _transfer(snapshot, conn, path, dsn, expected, checks, batch_size, progress)
        finally:
            await conn.close()
    finally:
        snapshot.rollback()
        snapshot.close()


async def _connect_target(dsn: str, schema: str | None) -> Any:
    settings = {"application_name": "cryptocity-transfer"}
    if schema is not None:
        settings["search_path"] = schema
    try:
        conn = await asyncpg.connect(dsn, timeout=10, server_settings=settings)
    except (OSError, TimeoutError, ValueError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise TransferRefused(f"cannot connect to {redact_dsn(dsn)}: {exc}") from None
    try:
        if schema is not None:
            await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {_quote(schema)}")
        await apply_postgres_migrations(conn)
    except Exception as exc:
        await conn.close()
        raise TransferRefused(f"cannot migrate the target schema: {exc}") from None
    return conn


async def _transfer(
    snapshot: sqlite3.Connection,
    conn: Any,
    path: Path,
    dsn: str,
    expected: list[int],
    checks: Sequence[Check],
    batch_size: int,
    progress: Progress | None,
) -> TransferReport:
    target_schema = str(await conn.fetchval("SELECT current_schema()"))
    target_versions = sorted(
        int(r["version"])
        for r in await conn.fetch(f"SELECT version FROM {BOOKKEEPING_TABLE}")  # noqa: S608
    )
    check_versions("target", target_versions, expected, "run `cryptocity migrate` on it")
    plans = await _plan(snapshot, conn)
    report = TransferReport(str(path), redact_dsn(dsn), target_schema, max(expected, default=0))
    try:
        async with conn.transaction():
            await _lock_and_check_empty(conn, [p.name for p in plans])
            for plan in plans:
                report.tables.append(
                    await _copy_table(snapshot, conn, target_schema, plan, batch_size, progress)
                )
            report.sequences = await _reset_sequences(conn, plans)
            for plan, table in zip(plans, report.tables, strict=True):
                await _read_back(conn, plan, table, batch_size)
            for check in checks:
                report.checks.append(await _run_check(check, SnapshotTx(snapshot), TargetTx(conn)))
            if not report.ok:
                raise _Mismatch
    except _Mismatch:
        raise TransferFailed(
            "verification failed, nothing was kept in the target: " + "; ".join(report.problems()), report
        ) from None
    except TransferRefused:
        raise
    except (TransferError, asyncpg.PostgresError, OSError, sqlite3.Error) as exc:
        raise TransferFailed(
            f"the copy failed and was rolled back, the target is empty: {exc}", report
        ) from exc
    report.committed = True
    return report


class _Mismatch(Exception):
    """Raised inside the transaction to roll it back when verification finds a difference."""


async def _plan(snapshot: sqlite3.Connection, conn: Any) -> list[TablePlan]:
    tables = source_tables(snapshot)
    target: dict[str, dict[str, str]] = {}
    for row in await conn.fetch(
        "SELECT table_name, column_name, data_type FROM information_schema.columns"
        " WHERE table_schema = current_schema()"
    ):
        target.setdefault(row["table_name"], {})[row["column_name"]] = row["data_type"]
    missing = sorted(set(tables) - set(target))
    if missing:
        raise TransferRefused(f"tables of the source missing from the target: {', '.join(missing)}")
    for name, (columns, _, _) in tables.items():
        if set(columns) != set(target[name]):
            raise TransferRefused(
                f"{name} has columns {sorted(columns)} in the source but {sorted(target[name])} in the target"
            )
    sequence = _sqlite_sequence(snapshot)
    plans = []
    for name in parents_first({name: parents for name, (_, _, parents) in tables.items()}):
        columns, rowid, _ = tables[name]
        types = tuple(target[name][c] for c in columns)
        for column, pg_type in zip(columns, types, strict=True):
            _checker(name, column, pg_type)  # refuses an unsupported type before anything is copied
        plans.append(TablePlan(name, tuple(columns), types, rowid, sequence.get(name, 0)))
    return plans


def _sqlite_sequence(snapshot: sqlite3.Connection) -> dict[str, int]:
    exists = snapshot.execute(
        "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'sqlite_sequence'"
    ).fetchone()[0]
    if not exists:
        return {}
    return {
        str(name): int(seq or 0) for name, seq in snapshot.execute("SELECT name, seq FROM sqlite_sequence")
    }


async def _lock_and_check_empty(conn: Any, tables: Sequence[str]) -> None:
    """Keep other writers out until commit, then refuse unless every table is empty."""
    await conn.execute(f"SET LOCAL lock_timeout = '{_LOCK_TIMEOUT}'")
    try:
        await conn.execute(f"LOCK TABLE {', '.join(_quote(t) for t in tables)} IN EXCLUSIVE MODE")
    except asyncpg.LockNotAvailableError:
        raise TransferRefused(
            f"the target tables are in use (no lock within {_LOCK_TIMEOUT}): stop gateways using that schema"
        ) from None
    filled = [t for t in tables if await conn.fetchval(f"SELECT EXISTS (SELECT 1 FROM {_quote(t)})")]  # noqa: S608
    if filled:
        raise TransferRefused(
            f"the target already holds rows in {', '.join(filled)}: migrate into an empty schema"
            " (a new --schema, or drop the old one after checking it holds nothing you need)"
        )


async def _copy_table(
    snapshot: sqlite3.Connection,
    conn: Any,
    schema: str,
    plan: TablePlan,
    batch_size: int,
    progress: Progress | None,
) -> TableReport:
    table = TableReport(plan.name)
    table.source_rows = int(snapshot.execute(f"SELECT COUNT(*) FROM {_quote(plan.name)}").fetchone()[0])  # noqa: S608
    checkers = [_checker(plan.name, c, t) for c, t in zip(plan.columns, plan.pg_types, strict=True)]
    cursor = snapshot.execute(
        f"SELECT {', '.join(_quote(c) for c in plan.columns)} FROM {_quote(plan.name)}"  # noqa: S608
    )
    digest = 0
    while True:
        batch = cursor.fetchmany(batch_size)
        if not batch:
            break
        records = [tuple(check(v) for check, v in zip(checkers, row, strict=True)) for row in batch]
        for record in records:
            digest += row_digest(record)
        await conn.copy_records_to_table(
            plan.name, records=records, columns=list(plan.columns), schema_name=schema
        )
        table.copied_rows += len(records)
        if progress is not None:
            progress(plan.name, table.copied_rows)
    table.source_digest = digest % _DIGEST_MODULUS
    if progress is not None and table.copied_rows == 0:
        progress(plan.name, 0)
    return table


async def _reset_sequences(conn: Any, plans: Sequence[TablePlan]) -> list[SequenceReport]:
    """Point every identity/serial sequence of the copied tables just past what was copied (or handed out)."""
    by_name = {p.name: p for p in plans}
    rows = await conn.fetch(
        "SELECT c.relname AS table_name, a.attname AS column_name,"
        " pg_get_serial_sequence(format('%I.%I', n.nspname, c.relname), a.attname) AS sequence"
        " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped"
        " WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p')"
        " ORDER BY c.relname, a.attnum"
    )
    reports = []
    for row in rows:
        plan = by_name.get(row["table_name"])
        if row["sequence"] is None or plan is None:
            continue
        column = row["column_name"]
        highest = await conn.fetchval(f"SELECT MAX({_quote(column)}) FROM {_quote(plan.name)}")  # noqa: S608
        handed_out = plan.sqlite_sequence if column == plan.rowid_column else 0
        next_value = max(int(highest or 0), handed_out) + 1
        await conn.execute("SELECT setval($1::text::regclass, $2, false)", row["sequence"], next_value)
        reports.append(SequenceReport(plan.name, column, next_value))
    return reports


async def _read_back(conn: Any, plan: TablePlan, table: TableReport, batch_size: int) -> None:
    """Count and digest what the target now holds, as a reader of the schema would see it."""
    table.target_rows = int(await conn.fetchval(f"SELECT count(*) FROM {_quote(plan.name)}"))  # noqa: S608
    digest = 0
    query = f"SELECT {', '.join(_quote(c) for c in plan.columns)} FROM {_quote(plan.name)}"  # noqa: S608
    async for record in conn.cursor(query, prefetch=batch_size):
        digest += row_digest(tuple(record))
    table.target_digest = digest % _DIGEST_MODULUS


async def _run_check(check: Check, source: SnapshotTx, target: TargetTx) -> CheckResult:
    name = getattr(check, "__name__", type(check).__name__)
    try:
        return await check(source, target)
    except (StoreError, asyncpg.PostgresError, sqlite3.Error, ValueError, KeyError) as exc:
        return CheckResult(name, False, f"the check could not run: {exc}")
