"""The embedded store: SQLite in WAL mode with synchronous=FULL and a group-committing single writer.

Why this shape (measured in ../shared/performance-notes.md): one fsync per request caps durable writes at
a fraction of what the HTTP layer can serve, and every aiosqlite call is a thread hop. So:

- all writes go through ONE writer; it takes every unit queued since the last commit, runs each in its
  own SAVEPOINT directly on the event-loop thread (a unit is a coroutine that only awaits its ``tx``, whose
  methods never suspend, so it runs to completion in one step: no thread hop per statement), then performs
  the single COMMIT - the part that waits for the disk - on a dedicated thread while the loop keeps serving
  requests and queueing the next batch;
- reads that are not part of a write go through aiosqlite reader connections (WAL lets them run beside
  the writer and see the last committed state).

Some SQLite errors (disk full, I/O error) roll back the whole transaction by themselves; then every unit of
the batch fails with StoreUnavailable and nothing of it is kept, which is what callers are promised.

``max_pages`` caps the file (``PRAGMA max_page_count`` on the writer, the only connection that writes):
past it SQLite answers SQLITE_FULL exactly as on a full disk. An operator can keep the store from filling
the disk the logs and the node share; tests make a full disk with it where they cannot mount one.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite
import structlog

from gateway.store.base import Row, StoreError, StoreUnavailable, Tx, UniqueViolation
from gateway.store.migrations import apply_sqlite_migrations

T = TypeVar("T")
log = structlog.get_logger("gateway.store")

_UNAVAILABLE_CODES = {
    sqlite3.SQLITE_FULL,
    sqlite3.SQLITE_IOERR,
    sqlite3.SQLITE_CANTOPEN,
    sqlite3.SQLITE_READONLY,
    sqlite3.SQLITE_BUSY,
    sqlite3.SQLITE_LOCKED,
    sqlite3.SQLITE_CORRUPT,
    sqlite3.SQLITE_NOTADB,
}


def translate_error(exc: sqlite3.Error) -> StoreError:
    """Map a driver error onto the backend-neutral tree so callers never import sqlite3."""
    if isinstance(exc, sqlite3.IntegrityError) and "UNIQUE" in str(exc):
        return UniqueViolation(str(exc))
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None and (code & 0xFF) in _UNAVAILABLE_CODES:
        return StoreUnavailable(f"database unavailable: {exc}")
    if isinstance(exc, sqlite3.OperationalError) and ("disk" in str(exc) or "full" in str(exc)):
        return StoreUnavailable(f"database unavailable: {exc}")
    return StoreError(str(exc))


def _configure(conn: sqlite3.Connection, busy_timeout_ms: int) -> None:
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")


class _WriterTx:
    """Runs a unit's statements synchronously on the writer connection (no thread hop)."""

    __slots__ = ("_callbacks", "_conn")

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self._callbacks: list[Callable[[], None]] = []

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        try:
            return self._conn.execute(sql, params).rowcount
        except sqlite3.Error as exc:
            raise translate_error(exc) from exc

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        try:
            self._conn.executemany(sql, rows)
        except sqlite3.Error as exc:
            raise translate_error(exc) from exc

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        try:
            row = self._conn.execute(sql, params).fetchone()
        except sqlite3.Error as exc:
            raise translate_error(exc) from exc
        return None if row is None else dict(row)

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        try:
            return [dict(row) for row in self._conn.execute(sql, params).fetchall()]
        except sqlite3.Error as exc:
            raise translate_error(exc) from exc

    def after_commit(self, callback: Callable[[], None]) -> None:
        self._callbacks.append(callback)


class _ReaderTx:
    """Read-only handle on an aiosqlite connection; writes are refused by ``PRAGMA query_only``."""

    __slots__ = ("_conn",)

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        try:
            cursor = await self._conn.execute(sql, params)
        except sqlite3.Error as exc:
            raise translate_error(exc) from exc
        return int(cursor.rowcount)

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        raise StoreError("read transactions cannot write")

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        try:
            async with self._conn.execute(sql, params) as cursor:
                row = await cursor.fetchone()
        except sqlite3.Error as exc:
            raise translate_error(exc) from exc
        return None if row is None else dict(row)

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        try:
            async with self._conn.execute(sql, params) as cursor:
                rows = await cursor.fetchall()
        except sqlite3.Error as exc:
            raise translate_error(exc) from exc
        return [dict(row) for row in rows]

    def after_commit(self, callback: Callable[[], None]) -> None:
        raise StoreError("read transactions do not commit")


@dataclass(slots=True)
class _Unit:
    fn: Callable[[Tx], Coroutine[Any, Any, Any]]
    future: asyncio.Future[Any]
    callbacks: list[Callable[[], None]] = field(default_factory=list)
    result: Any = None
    error: BaseException | None = None


@dataclass(slots=True)
class WriterStats:
    """Counters for /metrics and the benchmark: how well group commit batches."""

    commits: int = 0
    units: int = 0
    failed_units: int = 0
    largest_batch: int = 0
    unit_seconds: float = 0.0  # time running units (event loop)
    commit_seconds: float = 0.0  # time from handing COMMIT to the thread until the loop has the answer
    disk_seconds: float = 0.0  # time inside COMMIT itself (write-ahead log write and fsync)


class SqliteStore:
    """The embedded default store. Create with :meth:`open`."""

    backend = "sqlite"

    def __init__(
        self, path: Path, *, max_batch: int, readers: int, busy_timeout_ms: int, max_pages: int = 0
    ) -> None:
        self.path = path
        self._max_pages = max_pages
        self._max_batch = max_batch
        self._reader_count = readers
        self._busy_timeout_ms = busy_timeout_ms
        self._writer_conn: sqlite3.Connection | None = None
        self._readers: list[aiosqlite.Connection] = []
        # Idle reader connections. A read takes one for its whole function, inside BEGIN … COMMIT: a
        # consistent snapshot that starts after every write committed before the read began. Sharing a
        # connection between two reads would let the second join the first one's older snapshot (SQLite
        # keeps a connection's read transaction open while any of its statements is active).
        self._idle_readers: asyncio.Queue[aiosqlite.Connection] | None = None
        self._pending: list[_Unit] = []
        self._wake = asyncio.Event()
        self._closing = False
        self._writer_task: asyncio.Task[None] | None = None
        self._commit_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-commit")
        self._listeners: list[Callable[[], None]] = []
        self.stats = WriterStats()

    @classmethod
    async def open(
        cls,
        path: Path | str,
        *,
        max_batch: int = 512,
        readers: int = 2,
        busy_timeout_ms: int = 5000,
        max_pages: int = 0,
    ) -> SqliteStore:
        """Open (creating and migrating) the store; ``max_pages`` > 0 caps the file's size in pages."""
        store = cls(
            Path(path),
            max_batch=max_batch,
            readers=readers,
            busy_timeout_ms=busy_timeout_ms,
            max_pages=max_pages,
        )
        await store._start()
        return store

    async def _start(self) -> None:
        if str(self.path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        loop = asyncio.get_running_loop()

        def connect() -> sqlite3.Connection:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            conn.row_factory = sqlite3.Row
            _configure(conn, self._busy_timeout_ms)
            apply_sqlite_migrations(conn)
            if self._max_pages:  # after the migrations, which must never be what the cap refuses
                conn.execute(f"PRAGMA max_page_count={int(self._max_pages)}")
            return conn

        try:
            self._writer_conn = await loop.run_in_executor(self._commit_thread, connect)
            for _ in range(self._reader_count):
                reader = await aiosqlite.connect(self.path, isolation_level=None)
                reader.row_factory = sqlite3.Row
                await reader.execute("PRAGMA foreign_keys=ON")
                await reader.execute(f"PRAGMA busy_timeout={int(self._busy_timeout_ms)}")
                await reader.execute("PRAGMA query_only=ON")
                self._readers.append(reader)
        except sqlite3.Error as exc:
            await self.close()
            raise translate_error(exc) from exc
        self._idle_readers = asyncio.Queue()
        for reader in self._readers:
            self._idle_readers.put_nowait(reader)
        self._writer_task = asyncio.create_task(self._writer_loop(), name="sqlite-writer")

    # -- the public interface -------------------------------------------------------------------------

    async def transaction(self, fn: Callable[[Tx], Coroutine[Any, Any, T]]) -> T:
        if self._closing or self._writer_task is None:
            raise StoreUnavailable("store is closed")
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._pending.append(_Unit(fn, future))
        self._wake.set()
        return await future

    async def read(self, fn: Callable[[Tx], Awaitable[T]]) -> T:
        idle = self._idle_readers
        if idle is None:
            raise StoreUnavailable("store is closed")
        conn = await idle.get()
        try:
            try:
                # aiosqlite runs a connection's calls in order, so this rollback comes after anything an
                # earlier read left queued when it was cancelled (a BEGIN whose caller stopped waiting).
                await conn.rollback()
                await conn.execute("BEGIN")
            except sqlite3.Error as exc:
                raise translate_error(exc) from exc
            try:
                return await fn(_ReaderTx(conn))
            finally:
                # End the snapshot now: an idle reader holding one would keep the WAL from being
                # checkpointed. A rollback, not a commit: nothing was written, and it also succeeds while a
                # cursor the function left open still has rows.
                with contextlib.suppress(sqlite3.Error):
                    await conn.rollback()
        finally:
            idle.put_nowait(conn)

    def on_commit(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)

    async def close(self) -> None:
        self._closing = True
        self._wake.set()
        if self._writer_task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer_task
            self._writer_task = None
        for reader in self._readers:
            await reader.close()
        self._readers.clear()
        self._idle_readers = None
        if self._writer_conn is not None:
            conn, self._writer_conn = self._writer_conn, None
            await asyncio.get_running_loop().run_in_executor(self._commit_thread, conn.close)
        self._commit_thread.shutdown(wait=True)

    # -- the writer -----------------------------------------------------------------------------------

    async def _writer_loop(self) -> None:
        while True:
            if not self._pending:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = self._pending[: self._max_batch]
            del self._pending[: self._max_batch]
            try:
                await self._run_batch(batch)
            except Exception as exc:  # a bug in the writer itself must not strand callers
                log.exception("store.writer_failed")
                for unit in batch:
                    _fail(unit, StoreUnavailable(f"store writer failed: {exc}"))

    async def _run_batch(self, batch: list[_Unit]) -> None:
        """Run the batch on the writer thread, then settle the callers' futures on the event loop."""
        started = time.perf_counter()
        failure = self._run_units(batch)
        ran = time.perf_counter()
        if failure is None:
            failure = await asyncio.get_running_loop().run_in_executor(self._commit_thread, self._commit)
        self.stats.unit_seconds += ran - started
        self.stats.commit_seconds += time.perf_counter() - ran
        if failure is not None:
            log.error("store.batch_rolled_back", units=len(batch), error=str(failure))
            for unit in batch:
                if unit.error is None:
                    unit.error = failure
        committed = 0
        for unit in batch:
            if unit.error is not None:
                _fail(unit, unit.error)
                continue
            committed += 1
            if not unit.future.done():
                unit.future.set_result(unit.result)
            for callback in unit.callbacks:
                _run_callback(callback)
        if failure is None:
            self.stats.commits += 1
            self.stats.units += committed
            self.stats.failed_units += len(batch) - committed
            self.stats.largest_batch = max(self.stats.largest_batch, len(batch))
            for listener in self._listeners:
                _run_callback(listener)

    def _run_units(self, batch: list[_Unit]) -> StoreError | None:
        """BEGIN, then every unit in its own savepoint, on the event-loop thread.

        Units are coroutines that only await their ``tx``, whose methods never suspend, so each runs to
        completion with a single ``send``: the whole batch executes without yielding to other tasks and
        without a thread hop per statement. (Running units on the commit thread was measured slower: the
        thread has to win the GIL back from the event loop after every SQLite call.) Returns the error that
        undid the whole batch, or None (units may still have failed alone, in ``unit.error``).
        """
        conn = self._writer_conn
        assert conn is not None
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            return translate_error(exc)
        for unit in batch:
            tx = _WriterTx(conn)
            conn.execute("SAVEPOINT unit")
            try:
                unit.result = _drive(unit.fn(tx))
            except Exception as exc:
                if not conn.in_transaction:  # SQLite rolled the whole batch back (disk full, I/O error)
                    return _unavailable(exc)
                conn.execute("ROLLBACK TO unit")
                conn.execute("RELEASE unit")
                unit.error = exc
                continue
            conn.execute("RELEASE unit")
            unit.callbacks = tx._callbacks
        return None

    def _commit(self) -> StoreError | None:
        """The one fsync of the batch, on the commit thread, while the loop serves requests."""
        conn = self._writer_conn
        assert conn is not None
        started = time.perf_counter()
        try:
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            return _unavailable(exc)
        finally:
            self.stats.disk_seconds += time.perf_counter() - started
        return None


class UnitSuspended(StoreError):
    """A transaction unit awaited something other than its ``tx``; units must not wait on I/O."""


def _drive(coroutine: Coroutine[Any, Any, Any]) -> Any:
    try:
        coroutine.send(None)
    except StopIteration as done:
        return done.value
    coroutine.close()
    raise UnitSuspended(
        "a store unit awaited something other than its transaction; do that work before the unit"
    )


def _unavailable(cause: BaseException) -> StoreError:
    error = translate_error(cause) if isinstance(cause, sqlite3.Error) else cause
    if isinstance(error, StoreUnavailable):
        return error
    return StoreUnavailable(f"database unavailable: {cause}")


def _fail(unit: _Unit, exc: BaseException) -> None:
    if not unit.future.done():
        unit.future.set_exception(exc)


def _run_callback(callback: Callable[[], None]) -> None:
    try:
        callback()
    except Exception:
        log.exception("store.after_commit_callback_failed")
