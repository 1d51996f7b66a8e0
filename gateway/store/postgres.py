"""The PostgreSQL store: asyncpg, one pooled connection and one SERIALIZABLE transaction per unit.

Why this shape: on SQLite every unit ran under the single writer, so callers were written as plain
read-modify-write (allocate the next derivation index, check a resident's monthly limit and then record
the payment, append the audit log at ``last seq + 1``, count a merchant's endpoints and then add one, load
an invoice's state and write the next version). Here units from several connections and processes run
at the same time, and the store keeps those callers correct without changing them:

- **Isolation: SERIALIZABLE, with the unit retried.** PostgreSQL's serializable snapshot isolation aborts
  one of two units whose interleaving no serial order could give (40001), and its deadlock detector one of
  two that wait on each other (40P01). The store then runs the whole unit again on a new snapshot, up to
  ``max_attempts`` times with a short jittered pause, so the caller sees the same result as under a single
  writer: "two payments over the limit, exactly one held", no audit fork, no lost invoice update. Explicit
  locks would need every caller to know which rows to lock; this needs none to. Each attempt gets a
  fresh ``tx``, so ``after_commit`` callbacks come only from the attempt that committed. A unit's coroutine
  may be started more than once; units keep their effects inside ``tx`` (the SQLite backend already
  requires that, for its rollbacks), so a retry repeats nothing else but log lines. A unit that still
  conflicts after the last attempt fails with :class:`StoreUnavailable` (nothing written, retry later).
- **Outbox order = commit order.** Consumers read ``seq > cursor``. A sequence hands out numbers when rows
  are inserted, not when they commit, so with concurrent units a row with a lower seq could become visible
  after a consumer has passed it. Before a unit's first ``INSERT INTO outbox`` the store takes the
  transaction-level advisory lock ``pg_advisory_xact_lock(OUTBOX_LOCK)``; it is held until commit, so units
  that write the outbox draw their seq values and commit one after another, and every snapshot that sees a
  row also sees every row with a lower seq. (Seq may have gaps, from rolled-back units; consumers never
  rely on the absence of gaps.) Outbox statements must therefore begin with ``INSERT INTO outbox``.
- **Commit notifications.** The same statement that takes the outbox lock also queues
  ``pg_notify('cryptocity_outbox', '<schema>/<store instance>')``; PostgreSQL delivers a notification only
  when (and if) its transaction commits, so every process listening on that channel (gateway/cluster/
  notify.py) learns at once that the outbox grew, and calls its store's ``on_commit`` listeners as a local
  commit would: the outbox consumers, the webhook dispatcher and the checkout hub wake for changes another
  process made. The payload names the schema (gateways in other schemas ignore it) and this store instance
  (its own commits already woke its listeners). Riding on the lock statement costs no extra round trip.
- **Reads** run in ``REPEATABLE READ READ ONLY`` transactions: one snapshot for all the queries of a read
  function, as on SQLite's readers; writes are refused by the server.
- **Errors** map onto the backend-neutral tree: unique violation -> UniqueViolation; the server or the
  network unable to serve (connection refused or lost, shutting down, too many connections, disk full, I/O
  error, timeouts) -> StoreUnavailable, so the API answers 503; anything else -> StoreError. A unit whose
  connection broke before COMMIT was sent is rolled back by the server and is run again on a new
  connection; one that broke during COMMIT is not (its outcome is unknown) and fails with
  StoreUnavailable. The pool replaces broken connections, so after the server restarts new units succeed
  without reopening the store.
- **Values** come back as on SQLite: BIGINT columns as int, TEXT as str; ``numeric`` results (SUM, AVG) are
  decoded to int when integral and float otherwise, booleans to 0/1. Parameters are bound with SQLite's
  column-affinity leniency: when asyncpg refuses a Python value for a parameter's type (an int for a text
  column, a digit string for a bigint), the statement's parameter types are read once and such values are
  converted the way SQLite would store them.

SQL is written once with ``?`` placeholders; they are rewritten to ``$1..$n`` (outside string literals,
quoted identifiers and comments) and the result is cached per statement text.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
import re
import secrets
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import asyncpg
import structlog

from gateway.store.base import Row, StoreError, StoreUnavailable, Tx, UniqueViolation
from gateway.store.migrations import apply_postgres_migrations

T = TypeVar("T")
log = structlog.get_logger("gateway.store")

# pg_advisory_xact_lock key serialising outbox inserts (any constant; "cc outbox" in ASCII).
OUTBOX_LOCK = 0x6363_206F_7574_626F
# Channel of the commit notifications (see the module docstring); the payload is "<schema>/<instance>".
NOTIFY_CHANNEL = "cryptocity_outbox"
_OUTBOX_INSERT = re.compile(r"^\s*INSERT\s+INTO\s+outbox\b", re.IGNORECASE)
_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_RETRY_SQLSTATES = {"40001", "40P01"}  # serialization failure, deadlock detected
# SQLSTATE classes meaning the server cannot serve now: connection exception, insufficient resources
# (disk full, out of memory, too many connections), operator intervention (shutdown, cannot connect
# now, query cancelled), system error (I/O), and 55P03 lock not available.
_UNAVAILABLE_CLASSES = {"08", "53", "57", "58"}
_UNAVAILABLE_SQLSTATES = {"55P03"}


# -- statements ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Statement:
    """A ``?`` statement rewritten for PostgreSQL, and whether it writes the outbox."""

    sql: str
    parameters: int
    inserts_outbox: bool


@functools.lru_cache(maxsize=4096)
def rewrite(sql: str) -> Statement:
    """``?`` -> ``$1..$n``, leaving string literals, quoted identifiers, comments and dollar quotes alone."""
    out: list[str] = []
    n = 0
    i = 0
    length = len(sql)
    while i < length:
        char = sql[i]
        if char == "?":
            n += 1
            out.append(f"${n}")
            i += 1
            continue
        end = i + 1
        if char in ("'", '"'):
            end = _closing_quote(sql, i, char)
        elif sql.startswith("--", i):
            newline = sql.find("\n", i)
            end = length if newline < 0 else newline + 1
        elif sql.startswith("/*", i):
            close = sql.find("*/", i + 2)
            end = length if close < 0 else close + 2
        elif char == "$":
            match = re.match(r"\$([A-Za-z_][A-Za-z0-9_]*)?\$", sql[i:])
            if match is not None:
                tag = match.group(0)
                close = sql.find(tag, i + len(tag))
                end = length if close < 0 else close + len(tag)
        out.append(sql[i:end])
        i = end
    return Statement("".join(out), n, bool(_OUTBOX_INSERT.match(sql)))


def _closing_quote(sql: str, start: int, quote: str) -> int:
    """Index just past the quote that closes the one at ``start`` (a doubled quote is an escaped one)."""
    i = start + 1
    while True:
        close = sql.find(quote, i)
        if close < 0:
            return len(sql)
        if sql.startswith(quote * 2, close):
            i = close + 2
            continue
        return close + 1


# -- values -------------------------------------------------------------------------------------------


def _decode_numeric(text: str) -> int | float:
    """numeric results (SUM over BIGINT, AVG) as SQLite gives them: int when integral, else float."""
    try:
        return int(text)
    except ValueError:
        return float(text)


def _decode_bool(text: str) -> int:
    return 1 if text == "t" else 0


def _encode_bool(value: Any) -> str:
    return "t" if value else "f"


async def _init_connection(conn: Any) -> None:
    """Per pooled connection: result codecs that give SQLite's Python types."""
    await conn.set_type_codec(
        "numeric", schema="pg_catalog", encoder=str, decoder=_decode_numeric, format="text"
    )
    await conn.set_type_codec(
        "bool", schema="pg_catalog", encoder=_encode_bool, decoder=_decode_bool, format="text"
    )


async def _keep_session(conn: Any) -> None:
    """Pool reset hook: units leave no session state (locks are transaction-level), so skip the reset query
    asyncpg would otherwise send on every release (one round trip per unit)."""


_INTEGER_TYPES = {"int2", "int4", "int8", "oid"}
_TEXT_TYPES = {"text", "varchar", "bpchar", "name", "unknown"}
_INTEGER_TEXT = re.compile(r"^\s*[+-]?\d+\s*$")
Coercer = Callable[[Any], Any]


def _to_text(value: Any) -> Any:
    """TEXT affinity: numbers are stored as their text (booleans are SQLite integers, so 1 and 0)."""
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, int | float):
        return str(value)
    return value


def _to_integer(value: Any) -> Any:
    """INTEGER affinity: text that is an integer is stored as one."""
    if isinstance(value, str) and _INTEGER_TEXT.match(value):
        return int(value)
    return value


def _same(value: Any) -> Any:
    return value


def _coercers(type_names: Sequence[str]) -> tuple[Coercer, ...]:
    out: list[Coercer] = []
    for name in type_names:
        if name in _TEXT_TYPES:
            out.append(_to_text)
        elif name in _INTEGER_TYPES:
            out.append(_to_integer)
        else:
            out.append(_same)
    return tuple(out)


def _is_argument_error(exc: BaseException) -> bool:
    """asyncpg refused a Python value while encoding it (nothing was sent; the transaction is intact)."""
    return isinstance(exc, asyncpg.DataError) and str(exc).startswith("invalid input for query argument")


def _rowcount(status: str) -> int:
    """Rows changed, from a command tag ("INSERT 0 1", "UPDATE 3"); -1 for other commands, as sqlite3 says."""
    verb, _, rest = status.partition(" ")
    if verb in ("INSERT", "UPDATE", "DELETE", "MERGE"):
        last = rest.rsplit(" ", 1)[-1]
        if last.isdigit():
            return int(last)
    return -1


# -- errors -------------------------------------------------------------------------------------------


def _sqlstate(exc: BaseException) -> str:
    return str(getattr(exc, "sqlstate", "") or "")


def is_retryable(exc: BaseException) -> bool:
    """A serialization failure or deadlock: the unit was rolled back and may simply run again."""
    return _sqlstate(exc) in _RETRY_SQLSTATES


def is_connection_lost(exc: BaseException) -> bool:
    """The connection or the server went away (nothing more can happen on this connection)."""
    if isinstance(exc, asyncpg.PostgresConnectionError | OSError | ConnectionError):
        return True
    # The driver's protocol is out of step with the server: typically a server shutting down sent its FATAL
    # to an idle pooled connection, which asyncpg could not place, and the socket's close has not been read
    # yet. Every further operation on that connection fails ("another operation is in progress").
    if isinstance(exc, asyncpg.InternalClientError):
        return True
    if isinstance(exc, asyncpg.InterfaceError) and ("closed" in str(exc) or "closing" in str(exc)):
        return True
    state = _sqlstate(exc)
    return state.startswith("08") or state in {"57P01", "57P02", "57P03"}


def translate_error(exc: BaseException) -> StoreError:
    """Map a driver or network error onto the backend-neutral tree so callers never import asyncpg."""
    if isinstance(exc, StoreError):
        return exc
    if isinstance(exc, asyncpg.UniqueViolationError):
        return UniqueViolation(_describe(exc))
    state = _sqlstate(exc)
    if (
        is_connection_lost(exc)
        or isinstance(exc, TimeoutError | asyncpg.CannotConnectNowError | asyncpg.TooManyConnectionsError)
        or state[:2] in _UNAVAILABLE_CLASSES
        or state in _UNAVAILABLE_SQLSTATES
    ):
        return StoreUnavailable(f"database unavailable: {_describe(exc)}")
    if state in _RETRY_SQLSTATES:
        return _Conflict(_describe(exc))
    return StoreError(_describe(exc))


def _describe(exc: BaseException) -> str:
    """The server's message without its DETAIL line, which quotes row values (keys, amounts)."""
    message = getattr(exc, "message", None) if isinstance(exc, asyncpg.PostgresError) else None
    return str(message or exc) or type(exc).__name__


class _Conflict(StoreUnavailable):
    """A serialization failure or deadlock inside a unit; the store runs the unit again."""


class _Broken(StoreUnavailable):
    """The connection broke before COMMIT was sent: the server rolled the unit back, so it may run again."""


# -- connection settings --------------------------------------------------------------------------------


def schema_from_dsn(dsn: str) -> str | None:
    """The first schema of a ``search_path`` carried by the DSN (``?options=-csearch_path%3Dxyz`` or
    ``?search_path=xyz``), or None."""
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(dsn).query)
    for path in query.get("search_path", []):
        return _first_schema(path)
    for options in query.get("options", []):
        match = re.search(r"(?:-c\s*|--)search_path\s*=\s*(\S+)", options)
        if match is not None:
            return _first_schema(match.group(1))
    return None


def _first_schema(search_path: str) -> str | None:
    first = search_path.split(",", 1)[0].strip().strip('"')
    return first or None


def redact_dsn(dsn: str) -> str:
    """The DSN without its password, for messages and logs."""
    parts = urllib.parse.urlsplit(dsn)
    if parts.password is None:
        return dsn
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}{host}"))


def _has_query_parameter(dsn: str, name: str) -> bool:
    return name in urllib.parse.parse_qs(urllib.parse.urlsplit(dsn).query)


# -- transaction handles ----------------------------------------------------------------------------------


class _PgTx:
    """A unit's (or a read's) handle on its connection.

    After a statement fails, PostgreSQL refuses every further statement of the transaction; the handle
    remembers the first failure, raises it again for later statements without a round trip, and the store
    rolls back instead of committing even if the unit swallowed the exception.
    """

    __slots__ = ("_callbacks", "_conn", "_outbox_locked", "_readonly", "_store", "failure")

    def __init__(self, conn: Any, store: PostgresStore, *, readonly: bool) -> None:
        self._conn = conn
        self._store = store
        self._readonly = readonly
        self._callbacks: list[Callable[[], None]] = []
        self._outbox_locked = False
        self.failure: StoreError | None = None

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        statement = await self._prepare_write(sql)
        status = await self._call(self._conn.execute, statement, params)
        return _rowcount(str(status))

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if self._readonly:
            raise StoreError("read transactions cannot write")
        if not rows:
            return
        statement = await self._prepare_write(sql)
        await self._call(self._conn.executemany, statement, rows, many=True)

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        statement = await self._prepare_write(sql)
        record = await self._call(self._conn.fetchrow, statement, params)
        return None if record is None else dict(record.items())

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        statement = await self._prepare_write(sql)
        records = await self._call(self._conn.fetch, statement, params)
        return [dict(record.items()) for record in records]

    def after_commit(self, callback: Callable[[], None]) -> None:
        if self._readonly:
            raise StoreError("read transactions do not commit")
        self._callbacks.append(callback)

    @property
    def callbacks(self) -> list[Callable[[], None]]:
        return self._callbacks

    async def _prepare_write(self, sql: str) -> Statement:
        statement = rewrite(sql)
        if statement.inserts_outbox and not self._outbox_locked and not self._readonly:
            await self._call(self._conn.execute, self._store.outbox_lock_statement, ())
            self._outbox_locked = True
        return statement

    async def _call(self, method: Any, statement: Statement, params: Any, *, many: bool = False) -> Any:
        if self.failure is not None:
            raise _again(self.failure)
        coerce = self._store.coercion(statement.sql)
        try:
            if many and coerce is None:
                # executemany sends rows as it encodes them: a value refused in a later row would come after
                # earlier rows ran. So its parameter types are learnt before the first row, not on refusal.
                coerce = await self._store.learn_coercion(self._conn, statement.sql)
            try:
                return await method(statement.sql, *_bind(coerce, params, many))
            except asyncpg.DataError as exc:
                if not _is_argument_error(exc) or coerce is not None:
                    raise
                # Nothing was sent: learn the parameter types once and bind the values as SQLite would.
                coerce = await self._store.learn_coercion(self._conn, statement.sql)
                return await method(statement.sql, *_bind(coerce, params, many))
        except Exception as exc:
            error = translate_error(exc)
            if is_connection_lost(exc):
                error = _Broken(str(error))
            self.failure = error
            raise error from exc


def _bind(coerce: tuple[Coercer, ...] | None, params: Any, many: bool) -> tuple[Any, ...]:
    if many:
        rows = params if coerce is None else [_apply(coerce, row) for row in params]
        return (rows,)
    return tuple(params) if coerce is None else _apply(coerce, params)


def _apply(coerce: tuple[Coercer, ...], params: Sequence[Any]) -> tuple[Any, ...]:
    return tuple(convert(value) for convert, value in zip(coerce, params, strict=False))


def _again(failure: StoreError) -> StoreError:
    """The error for a statement after the transaction failed: the same kind, so a conflict stays one."""
    kind = type(failure)
    return kind(f"the transaction already failed: {failure}")


# -- the store ----------------------------------------------------------------------------------------------


@dataclass(slots=True)
class PostgresStats:
    """Counters for /metrics since this process started: commits, units that failed, attempts run again."""

    commits: int = 0  # units committed (each unit is one transaction here: units == commits)
    failed_units: int = 0  # units whose caller got an exception (rolled back)
    retries: int = 0  # attempts run again after a serialization failure, deadlock or broken connection
    unit_seconds: float = 0.0  # wall time of committed units, BEGIN to the COMMIT answer


class PostgresStore:
    """The PostgreSQL store. Create with :meth:`open`."""

    backend = "postgresql"

    def __init__(
        self,
        pool: Any,
        *,
        schema: str | None,
        max_attempts: int,
        acquire_timeout: float,
        dsn: str = "",
        settings: dict[str, str] | None = None,
        connect_timeout: float = 10.0,
    ) -> None:
        self._pool = pool
        self.schema = schema
        self._dsn = dsn
        self._settings = dict(settings or {})
        self._connect_timeout = connect_timeout
        # Names this store in its commit notifications, so that its own are told from other processes'.
        self.instance = secrets.token_hex(6)
        self.notify_payload = f"{schema or ''}/{self.instance}"
        # schema matches _SCHEMA_NAME and instance is hex, so the payload is a safe literal.
        self.outbox_lock_statement = Statement(
            f"SELECT pg_advisory_xact_lock({OUTBOX_LOCK}), pg_notify('{NOTIFY_CHANNEL}', '{self.notify_payload}')",
            0,
            False,
        )
        self._max_attempts = max_attempts
        self._acquire_timeout = acquire_timeout
        self._listeners: list[Callable[[], None]] = []
        self._coercions: dict[str, tuple[Coercer, ...]] = {}
        self._closed = False
        self.stats = PostgresStats()

    @classmethod
    async def open(
        cls,
        dsn: str,
        *,
        schema: str | None = None,
        pool_size: int = 10,
        max_attempts: int = 12,
        connect_timeout: float = 10.0,
        acquire_timeout: float = 30.0,
        migrate: bool = True,
    ) -> PostgresStore:
        """Connect a pool to ``dsn``, create ``schema`` if needed and apply pending migrations there.

        ``schema`` (else the DSN's ``search_path``) becomes every connection's search_path, so that several
        gateways (or every test) can share one database in schemas of their own; None keeps the server's
        default search_path (normally ``public``). ``migrate=False`` opens an existing schema as it is,
        creating and changing nothing (the audit commands read a live gateway's store that way).
        """
        if schema is None:
            schema = schema_from_dsn(dsn)
        if schema is not None and not _SCHEMA_NAME.match(schema):
            raise StoreError(f"store.schema must be a lower-case SQL identifier, got {schema!r}")
        settings: dict[str, str] = {}
        if schema is not None:
            settings["search_path"] = schema
        if not _has_query_parameter(dsn, "application_name"):
            settings["application_name"] = "cryptocity"
        try:
            if schema is not None and migrate:
                await _create_schema(dsn, schema, settings, connect_timeout)
            pool = await asyncpg.create_pool(
                dsn,
                min_size=min(2, pool_size),
                max_size=pool_size,
                timeout=connect_timeout,
                server_settings=settings,
                statement_cache_size=512,
                init=_init_connection,
                reset=_keep_session,
            )
        except Exception as exc:
            raise translate_error(exc) from exc
        store = cls(
            pool,
            schema=schema,
            max_attempts=max_attempts,
            acquire_timeout=acquire_timeout,
            dsn=dsn,
            settings=settings,
            connect_timeout=connect_timeout,
        )
        if migrate:
            try:
                async with pool.acquire(timeout=acquire_timeout) as conn:
                    await apply_postgres_migrations(conn)
            except BaseException as exc:
                await store.close()
                if isinstance(exc, Exception):
                    raise translate_error(exc) from exc
                raise
        log.info("store.opened", backend="postgresql", dsn=redact_dsn(dsn), schema=schema)
        return store

    # -- the public interface -------------------------------------------------------------------------

    async def transaction(self, fn: Callable[[Tx], Coroutine[Any, Any, T]]) -> T:
        attempt = 0
        while True:
            attempt += 1
            started = time.perf_counter()
            try:
                result, callbacks = await self._attempt(fn)
            except (_Conflict, _Broken) as exc:
                if attempt >= self._max_attempts:
                    self.stats.failed_units += 1
                    raise StoreUnavailable(
                        f"the unit could not commit after {attempt} attempts: {exc}"
                    ) from exc
                self.stats.retries += 1
                await asyncio.sleep(random.uniform(0, min(0.05, 0.001 * 2**attempt)))
                continue
            except BaseException:
                self.stats.failed_units += 1
                raise
            self.stats.commits += 1
            self.stats.unit_seconds += time.perf_counter() - started
            for callback in callbacks:
                _run_callback(callback)
            for listener in self._listeners:
                _run_callback(listener)
            return result

    async def read(self, fn: Callable[[Tx], Awaitable[T]]) -> T:
        attempt = 0
        while True:
            attempt += 1
            try:
                return await self._read_once(fn)
            except _Broken:
                if attempt >= 2:  # a second broken connection in a row: the server is away, answer now
                    raise
                self.stats.retries += 1

    def on_commit(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)

    def wake(self) -> None:
        """Call the ``on_commit`` listeners as after a local commit: another process committed to the outbox
        (a notification arrived), or notifications were missed while the listening connection was down."""
        if self._closed:
            return
        for listener in self._listeners:
            _run_callback(listener)

    async def connect_dedicated(self, *, settings: dict[str, str] | None = None) -> Any:
        """A connection of its own, outside the pool, with the pool's session settings (plus ``settings``).

        For what must outlive a transaction: the leader election's session-level advisory lock and the
        LISTEN for commit notifications (gateway/cluster/). The caller closes it.
        """
        if self._closed:
            raise StoreUnavailable("store is closed")
        if not self._dsn:
            raise StoreError("this store was not opened from a DSN; it cannot open a dedicated connection")
        try:
            return await asyncpg.connect(
                self._dsn,
                timeout=self._connect_timeout,
                server_settings={**self._settings, **(settings or {})},
            )
        except Exception as exc:
            raise translate_error(exc) from exc

    @property
    def closed(self) -> bool:
        return self._closed

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            await asyncio.wait_for(self._pool.close(), timeout=10)
        except Exception:  # a unit still running, or a broken connection: do not wait for it
            self._pool.terminate()

    # -- parameter binding (SQLite's affinity, learnt per statement) ------------------------------------

    def coercion(self, sql: str) -> tuple[Coercer, ...] | None:
        return self._coercions.get(sql)

    async def learn_coercion(self, conn: Any, sql: str) -> tuple[Coercer, ...]:
        prepared = await conn.prepare(sql)
        coerce = _coercers([t.name for t in prepared.get_parameters()])
        if len(self._coercions) > 4096:
            self._coercions.clear()
        self._coercions[sql] = coerce
        return coerce

    # -- units --------------------------------------------------------------------------------------------

    async def _acquire(self) -> Any:
        if self._closed:
            raise StoreUnavailable("store is closed")
        try:
            return await self._pool.acquire(timeout=self._acquire_timeout)
        except Exception as exc:
            raise translate_error(exc) from exc

    async def _attempt(
        self, fn: Callable[[Tx], Coroutine[Any, Any, T]]
    ) -> tuple[T, list[Callable[[], None]]]:
        conn = await self._acquire()
        try:
            tx = _PgTx(conn, self, readonly=False)
            try:
                await conn.execute("BEGIN ISOLATION LEVEL SERIALIZABLE")
            except Exception as exc:
                raise _broken_or(exc) from exc
            committing = False
            try:
                result = await fn(tx)
                if tx.failure is not None:
                    raise tx.failure  # the unit swallowed a failed statement: PostgreSQL rolls back anyway
                committing = True
                await conn.execute("COMMIT")
            except BaseException as exc:
                await _rollback(conn)
                if isinstance(exc, Exception) and isinstance(tx.failure, _Conflict | _Broken):
                    raise tx.failure from exc  # whatever the unit made of it, the attempt may run again
                if committing and isinstance(exc, Exception):
                    error = translate_error(exc)
                    if isinstance(error, _Conflict):  # refused at commit: rolled back, run again
                        raise error from exc
                    if is_connection_lost(exc):
                        raise StoreUnavailable(
                            f"the connection broke during COMMIT; the unit may or may not be stored: {exc}"
                        ) from exc
                    raise error from exc
                raise
            return result, tx.callbacks
        finally:
            await self._release(conn)

    async def _read_once(self, fn: Callable[[Tx], Awaitable[T]]) -> T:
        conn = await self._acquire()
        try:
            tx = _PgTx(conn, self, readonly=True)
            try:
                await conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            except Exception as exc:
                raise _broken_or(exc) from exc
            try:
                return await fn(tx)
            finally:
                await _rollback(conn)  # nothing to keep: ending a read-only snapshot
        finally:
            await self._release(conn)

    async def _release(self, conn: Any) -> None:
        try:
            await self._pool.release(conn)
        except Exception:  # a broken connection is dropped by the pool; the next acquire reconnects
            log.debug("store.release_failed", exc_info=True)


async def _create_schema(dsn: str, schema: str, settings: dict[str, str], timeout: float) -> None:
    conn = await asyncpg.connect(dsn, timeout=timeout, server_settings=settings)
    try:
        await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
    except asyncpg.UniqueViolationError:
        pass  # created at the same moment by another process
    finally:
        await conn.close()


async def _rollback(conn: Any) -> None:
    try:
        if conn.is_closed():
            return
    except asyncpg.InterfaceError:
        # The connection closed under the unit (server shutdown, network) and the pool has taken it back
        # already (its proxy is detached): the server rolled back by itself, and there is nothing to end.
        return
    try:
        await conn.execute("ROLLBACK")
    except Exception:  # the connection is broken; the server rolls back by itself
        with contextlib.suppress(asyncpg.InterfaceError):  # unless the pool has taken it back meanwhile
            conn.terminate()


def _broken_or(exc: Exception) -> StoreError:
    error = translate_error(exc)
    return _Broken(str(error)) if is_connection_lost(exc) else error


def _run_callback(callback: Callable[[], None]) -> None:
    try:
        callback()
    except Exception:
        log.exception("store.after_commit_callback_failed")
