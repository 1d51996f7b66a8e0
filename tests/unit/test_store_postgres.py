"""What only the PostgreSQL store has to get right: placeholders, SQLite's value types, SERIALIZABLE units
that are retried, racing unique keys, the outbox read in commit order, an unreachable or restarting
server, schemas per DSN, and migrations that build the same schema as SQLite's.

The shared server is never stopped: an outage is a loopback proxy in front of it that stops forwarding.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import sqlite3
import urllib.parse
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from gateway.address_pool import IndexAllocator
from gateway.money import Chain
from gateway.outbox import insert_event, prepare_event, read_events_after
from gateway.store import PostgresStore, SqliteStore, StoreError, StoreUnavailable, Tx, UniqueViolation
from gateway.store.postgres import redact_dsn, rewrite, schema_from_dsn
from tests.conftest import drop_schema, pg_dsn

# -- pure helpers (no server needed) -----------------------------------------------------------------


def test_placeholders_are_numbered_outside_literals_identifiers_and_comments() -> None:
    sql = "SELECT '?', \"a?\", x -- why?\n FROM t WHERE a = ? AND b = 'it''s ?' AND c IN (?, ?) /* ? */"
    statement = rewrite(sql)
    assert statement.sql == (
        "SELECT '?', \"a?\", x -- why?\n FROM t WHERE a = $1 AND b = 'it''s ?' AND c IN ($2, $3) /* ? */"
    )
    assert statement.parameters == 3
    assert rewrite(sql) is statement  # cached
    assert rewrite("SELECT $tag$ ? $tag$, ?").sql == "SELECT $tag$ ? $tag$, $1"


def test_only_outbox_inserts_take_the_outbox_lock() -> None:
    assert rewrite("INSERT INTO outbox (id) VALUES (?)").inserts_outbox
    assert rewrite("  insert into OUTBOX(id) VALUES (?)").inserts_outbox
    assert not rewrite("INSERT INTO outbox_archive (id) VALUES (?)").inserts_outbox
    assert not rewrite("SELECT * FROM outbox WHERE seq > ?").inserts_outbox


def test_schema_and_redaction_from_the_dsn() -> None:
    assert schema_from_dsn("postgresql://u@h/db?options=-csearch_path%3Dt_abc") == "t_abc"
    assert schema_from_dsn("postgresql://u@h/db?options=-c%20search_path%3Dt_abc,public") == "t_abc"
    assert schema_from_dsn("postgresql://u@h/db?search_path=s1") == "s1"
    assert schema_from_dsn("postgresql://u@h/db") is None
    assert (
        redact_dsn("postgresql://cc:pw@db:5432/x?sslmode=require")
        == "postgresql://cc:***@db:5432/x?sslmode=require"
    )
    assert redact_dsn("postgresql://cc@db/x") == "postgresql://cc@db/x"


# -- against the test server ----------------------------------------------------------------------------


@pytest.fixture
async def pg(pg_schema: str) -> AsyncIterator[PostgresStore]:
    store = await PostgresStore.open(pg_dsn(), schema=pg_schema, pool_size=6)
    try:
        yield store
    finally:
        await store.close()


async def _put(tx: Tx, name: str, position: int = 0) -> str:
    await tx.execute(
        "INSERT INTO consumer_cursors (consumer, position, updated_at) VALUES (?, ?, 't')", (name, position)
    )
    return name


async def _position(store: PostgresStore, name: str) -> int:
    row = await store.read(
        lambda tx: tx.fetchone("SELECT position FROM consumer_cursors WHERE consumer = ?", (name,))
    )
    assert row is not None
    return int(row["position"])


async def test_values_come_back_as_sqlite_gives_them(pg: PostgresStore) -> None:
    await pg.transaction(lambda tx: _put(tx, "a", 2))
    await pg.transaction(lambda tx: _put(tx, "b", 5))
    row = await pg.read(
        lambda tx: tx.fetchone(
            "SELECT count(*) AS n, sum(position) AS total, avg(position) AS mean, max(updated_at) AS at,"
            " min(position) = 2 AS flag, coalesce(sum(position), 0) AS z FROM consumer_cursors"
        )
    )
    assert row == {"n": 2, "total": 7, "mean": 3.5, "at": "t", "flag": 1, "z": 7}
    assert [type(v) for v in row.values()] == [int, int, float, str, int, int]
    empty = await pg.read(
        lambda tx: tx.fetchone("SELECT sum(position) AS total FROM consumer_cursors WHERE false")
    )
    assert empty == {"total": None}


async def test_parameters_bind_with_sqlite_affinity(pg: PostgresStore) -> None:
    """An int for a text column is stored as its text, a digit string for a bigint as the number."""
    sql = "INSERT INTO consumer_cursors (consumer, position, updated_at) VALUES (?, ?, ?)"
    assert await pg.transaction(lambda tx: tx.execute(sql, (7, "12", True))) == 1
    assert await pg.transaction(lambda tx: tx.execute(sql, ("eight", 8, "t"))) == 1  # plain types still fine
    rows = await pg.read(lambda tx: tx.fetchall("SELECT * FROM consumer_cursors ORDER BY consumer"))
    assert rows == [
        {"consumer": "7", "position": 12, "updated_at": "1"},
        {"consumer": "eight", "position": 8, "updated_at": "t"},
    ]
    with pytest.raises(StoreError):  # not a number: refused, as a text in a bigint column must be
        await pg.transaction(lambda tx: tx.execute(sql, ("x", "twelve", "t")))
    # executemany sends rows as it goes: a row that needs converting after 3000 good ones runs once too
    many = "INSERT INTO consumer_cursors (updated_at, consumer, position) VALUES (?, ?, ?)"
    rows = [("t", f"m{i}", i) for i in range(3000)] + [("t", 3001, "3001")]
    await pg.transaction(lambda tx: tx.executemany(many, rows))
    count = await pg.read(
        lambda tx: tx.fetchone("SELECT count(*) AS n FROM consumer_cursors WHERE consumer <> 'eight'")
    )
    assert count == {"n": 3002}


async def test_execute_counts_changed_rows(pg: PostgresStore) -> None:
    for name in ("a", "b", "c"):
        await pg.transaction(lambda tx, name=name: _put(tx, name))  # type: ignore[misc]
    changed = await pg.transaction(
        lambda tx: tx.execute(
            "UPDATE consumer_cursors SET position = position + ? WHERE consumer <> ?", (1, "a")
        )
    )
    assert changed == 2
    assert (
        await pg.transaction(lambda tx: tx.execute("DELETE FROM consumer_cursors WHERE consumer = 'zz'")) == 0
    )


async def test_units_racing_on_one_unique_key_give_one_unique_violation(pg: PostgresStore) -> None:
    first_inserted = asyncio.Event()

    async def first(tx: Tx) -> str:
        await _put(tx, "key", 1)
        first_inserted.set()
        await asyncio.sleep(0.2)  # still uncommitted while the second one inserts the same key
        return "first"

    async def second(tx: Tx) -> str:
        await first_inserted.wait()
        await _put(tx, "key", 2)  # waits for the first unit, then finds its committed row
        return "second"

    results = await asyncio.gather(pg.transaction(first), pg.transaction(second), return_exceptions=True)
    assert results[0] == "first"
    assert isinstance(results[1], UniqueViolation)
    assert await _position(pg, "key") == 1


async def test_read_modify_write_units_lose_no_update(pg: PostgresStore) -> None:
    """The invoice/counter pattern: read a row, write a value computed from it. SERIALIZABLE aborts the
    units that read a value another unit changed meanwhile, and the store runs them again."""
    await pg.transaction(lambda tx: _put(tx, "counter", 0))

    async def increment(tx: Tx) -> None:
        row = await tx.fetchone("SELECT position FROM consumer_cursors WHERE consumer = 'counter'")
        assert row is not None
        await asyncio.sleep(random.uniform(0, 0.01))
        await tx.execute(
            "UPDATE consumer_cursors SET position = ? WHERE consumer = 'counter'", (int(row["position"]) + 1,)
        )

    await asyncio.gather(*(pg.transaction(increment) for _ in range(20)))
    assert await _position(pg, "counter") == 20
    assert pg.stats.retries > 0


async def test_a_limit_checked_by_two_units_at_once_admits_only_one(pg: PostgresStore) -> None:
    """Write skew, as in "two payments over the monthly limit": each unit counts, then inserts."""
    both_counted = asyncio.Barrier(2)
    attempts: list[str] = []

    async def take_the_last_place(tx: Tx, name: str) -> bool:
        row = await tx.fetchone("SELECT count(*) AS n FROM consumer_cursors WHERE consumer LIKE 'seat%'")
        assert row is not None
        attempts.append(name)
        if len(attempts) <= 2:  # the first two attempts both count before either inserts
            await both_counted.wait()
        if row["n"] >= 1:
            return False
        await _put(tx, name)
        return True

    results = await asyncio.gather(
        pg.transaction(lambda tx: take_the_last_place(tx, "seat-a")),
        pg.transaction(lambda tx: take_the_last_place(tx, "seat-b")),
    )
    assert sorted(results) == [False, True]
    assert len(attempts) == 3  # one of the two was refused at its insert or commit and ran again
    rows = await pg.read(lambda tx: tx.fetchall("SELECT consumer FROM consumer_cursors"))
    assert len(rows) == 1


async def test_after_commit_callbacks_come_only_from_the_attempt_that_committed(pg: PostgresStore) -> None:
    await pg.transaction(lambda tx: _put(tx, "row", 0))
    both_read = asyncio.Barrier(2)
    calls: list[str] = []
    attempts: list[str] = []

    def unit(name: str) -> Any:
        async def run(tx: Tx) -> None:
            attempts.append(name)
            tx.after_commit(lambda: calls.append(name))
            await tx.fetchone("SELECT position FROM consumer_cursors WHERE consumer = 'row'")
            if len(attempts) <= 2:  # the first attempts both read before either writes
                await both_read.wait()
            await tx.execute("UPDATE consumer_cursors SET position = position + 1 WHERE consumer = 'row'")

        return run

    await asyncio.gather(pg.transaction(unit("a")), pg.transaction(unit("b")))
    assert len(attempts) > 2  # one of them conflicted and ran again
    assert sorted(calls) == ["a", "b"]  # yet each callback ran once
    assert await _position(pg, "row") == 2


async def test_a_unit_that_keeps_conflicting_fails_as_unavailable(pg_schema: str) -> None:
    store = await PostgresStore.open(pg_dsn(), schema=pg_schema, pool_size=4, max_attempts=1)
    try:
        await store.transaction(lambda tx: _put(tx, "row", 0))
        both_read = asyncio.Barrier(2)

        async def bump(tx: Tx) -> None:
            await tx.fetchone("SELECT position FROM consumer_cursors WHERE consumer = 'row'")
            await both_read.wait()
            await tx.execute("UPDATE consumer_cursors SET position = position + 1 WHERE consumer = 'row'")

        results = await asyncio.gather(
            store.transaction(bump), store.transaction(bump), return_exceptions=True
        )
        failures = [r for r in results if isinstance(r, BaseException)]
        assert len(failures) == 1 and isinstance(failures[0], StoreUnavailable), results
        assert "could not commit after 1 attempts" in str(failures[0])
    finally:
        await store.close()


async def test_a_swallowed_statement_error_still_rolls_the_unit_back(pg: PostgresStore) -> None:
    """SQLite undoes only the failed statement; PostgreSQL aborts the whole transaction. A unit that catches
    the error and goes on must not be reported as committed."""
    await pg.transaction(lambda tx: _put(tx, "taken"))

    async def careless(tx: Tx) -> str:
        with contextlib.suppress(UniqueViolation):
            await _put(tx, "taken")
        return "done"

    with pytest.raises(UniqueViolation):
        await pg.transaction(careless)

    async def careless_then_more(tx: Tx) -> None:
        with contextlib.suppress(UniqueViolation):
            await _put(tx, "taken")
        await _put(tx, "later")  # refused without a round trip: the transaction already failed

    with pytest.raises(UniqueViolation, match="already failed"):
        await pg.transaction(careless_then_more)
    rows = await pg.read(lambda tx: tx.fetchall("SELECT consumer FROM consumer_cursors"))
    assert rows == [{"consumer": "taken"}]


async def test_concurrent_outbox_inserts_are_consumed_in_commit_order_without_skipping(
    pg: PostgresStore,
) -> None:
    """Producers insert an event and commit after a random delay; a consumer reads "seq > cursor" all the
    while. Without the outbox lock an event with a lower seq that commits later would be stepped over."""
    produced: list[str] = []
    done = asyncio.Event()

    async def produce(i: int) -> None:
        event = prepare_event(event_type="test.event", now=_now(), data={"i": i})

        async def unit(tx: Tx) -> None:
            await asyncio.sleep(random.uniform(0, 0.005))
            await insert_event(tx, event)
            await asyncio.sleep(random.uniform(0, 0.02))  # between drawing seq and committing

        await pg.transaction(unit)
        produced.append(event.id)

    seen: list[tuple[int, str]] = []

    async def consume() -> None:
        cursor = 0
        while True:
            finished = done.is_set()
            events = await pg.read(lambda tx, after=cursor: read_events_after(tx, after, 1000))
            for event in events:
                assert event.seq > cursor
                seen.append((event.seq, event.id))
                cursor = event.seq
            if finished and not events:
                return
            await asyncio.sleep(0.001)

    consumer = asyncio.create_task(consume())
    await asyncio.gather(*(produce(i) for i in range(60)))
    done.set()
    await consumer
    assert sorted(event_id for _, event_id in seen) == sorted(produced)  # every event, once
    assert [seq for seq, _ in seen] == sorted(seq for seq, _ in seen)


async def test_two_processes_reserving_derivation_indexes_never_share_one(pg: PostgresStore) -> None:
    """Two gateways on one database (two stores, two allocators) reserve blocks from the same counter at
    the same time: every index is handed out once."""
    await pg.transaction(
        lambda tx: tx.execute(
            "INSERT INTO address_counters (chain, account_key, next_index) VALUES ('bitcoin', 'k', 0)"
        )
    )
    other = await PostgresStore.open(pg_dsn(), schema=pg.schema, pool_size=4)
    try:
        allocators = [IndexAllocator(pg, block_size=3), IndexAllocator(other, block_size=3)]
        taken = await asyncio.gather(*(allocators[i % 2].take(Chain.BITCOIN, "k") for i in range(60)))
        assert len(set(taken)) == 60
        for allocator in allocators:
            await allocator.close()
    finally:
        await other.close()


def _now() -> Any:
    from gateway.clock import ManualClock

    return ManualClock().now()


async def test_a_schema_in_the_dsn_is_used_and_created(pg_schema: str) -> None:
    dsn = pg_dsn()
    joiner = "&" if "?" in dsn else "?"
    store = await PostgresStore.open(f"{dsn}{joiner}options=-csearch_path%3D{pg_schema}", pool_size=2)
    try:
        assert store.schema == pg_schema
        await store.transaction(lambda tx: _put(tx, "here"))
    finally:
        await store.close()
    conn = await asyncpg.connect(dsn)
    try:
        count = await conn.fetchval(f'SELECT count(*) FROM "{pg_schema}".consumer_cursors')  # noqa: S608
    finally:
        await conn.close()
    assert count == 1


async def test_schemas_are_separate_databases(pg: PostgresStore) -> None:
    other = f"{pg.schema}_b"
    second = await PostgresStore.open(pg_dsn(), schema=other, pool_size=2)
    try:
        await pg.transaction(lambda tx: _put(tx, "only-in-a"))
        rows = await second.read(lambda tx: tx.fetchall("SELECT consumer FROM consumer_cursors"))
        assert rows == []
    finally:
        await second.close()
        await drop_schema(pg_dsn(), other)


async def test_a_bad_schema_name_is_refused() -> None:
    with pytest.raises(StoreError, match="lower-case SQL identifier"):
        await PostgresStore.open(pg_dsn(), schema='x"; DROP SCHEMA public; --')


# -- the server away --------------------------------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # nobody listens once the socket is closed


def _with_address(dsn: str, host: str, port: int) -> str:
    parts = urllib.parse.urlsplit(dsn)
    user = f"{parts.username}@" if parts.username else ""
    if parts.password:
        user = f"{parts.username}:{parts.password}@"
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}{host}:{port}"))


async def test_an_unreachable_server_is_store_unavailable() -> None:
    dsn = _with_address(pg_dsn(), "127.0.0.1", _closed_port())
    with pytest.raises(StoreUnavailable, match="database unavailable"):
        await PostgresStore.open(dsn, connect_timeout=5)


class LoopbackProxy:
    """Forwards a loopback port to the test server; ``stop`` drops every connection and stops listening."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self._target = (target_host, target_port)
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port, reuse_address=True)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._pipes):
            task.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._pipes.add(task)
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.close()
            self._pipes.discard(task)
            return
        try:
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        except asyncio.CancelledError:
            pass
        finally:
            for w in (writer, up_writer):
                w.transport.abort()
            self._pipes.discard(task)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.transport.abort()


async def test_units_fail_as_unavailable_while_the_server_is_away_and_succeed_when_it_is_back(
    pg_schema: str,
) -> None:
    target = urllib.parse.urlsplit(pg_dsn())
    proxy = LoopbackProxy(target.hostname or "127.0.0.1", target.port or 5432)
    await proxy.start()
    store = await PostgresStore.open(
        _with_address(pg_dsn(), "127.0.0.1", proxy.port), schema=pg_schema, pool_size=3, connect_timeout=5
    )
    try:
        await store.transaction(lambda tx: _put(tx, "before"))
        await proxy.stop()  # "the server went away": every connection drops, new ones are refused
        with pytest.raises(StoreUnavailable):
            await store.transaction(lambda tx: _put(tx, "during"))
        with pytest.raises(StoreUnavailable):
            await store.read(lambda tx: tx.fetchone("SELECT 1 AS one"))
        await proxy.start()  # back on the same port
        await store.transaction(lambda tx: _put(tx, "after"))  # no reopening
        rows = await store.read(
            lambda tx: tx.fetchall("SELECT consumer FROM consumer_cursors ORDER BY consumer")
        )
        assert [r["consumer"] for r in rows] == ["after", "before"]
    finally:
        await store.close()
        with contextlib.suppress(AssertionError, RuntimeError):
            await proxy.stop()


async def test_a_connection_that_broke_while_idle_is_replaced_without_failing_the_unit(
    pg_schema: str,
) -> None:
    """Connections the pool holds can die unseen (a server restart, a firewall); a unit that finds its
    connection gone before COMMIT was sent is run again on a new one."""
    target = urllib.parse.urlsplit(pg_dsn())
    proxy = LoopbackProxy(target.hostname or "127.0.0.1", target.port or 5432)
    await proxy.start()
    store = await PostgresStore.open(
        _with_address(pg_dsn(), "127.0.0.1", proxy.port), schema=pg_schema, pool_size=2, connect_timeout=5
    )
    try:
        await store.transaction(lambda tx: _put(tx, "before"))
        await proxy.stop()
        await proxy.start()
        assert await store.transaction(lambda tx: _put(tx, "after")) == "after"
        assert await store.read(lambda tx: tx.fetchone("SELECT count(*) AS n FROM consumer_cursors")) == {
            "n": 2
        }
    finally:
        await store.close()
        await proxy.stop()


# -- the schema the migrations build ------------------------------------------------------------------------


def _sqlite_schema(path: Path) -> dict[str, Any]:
    conn = sqlite3.connect(path)
    try:
        tables: dict[str, Any] = {}
        names = [
            r[0]
            for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name"
            )
        ]
        for table in names:
            columns = [
                (r[1], bool(r[3]) or bool(r[5]), r[5]) for r in conn.execute(f"PRAGMA table_info({table})")
            ]
            unique = set()
            indexes = {}
            for _, name, is_unique, origin, partial in conn.execute(f"PRAGMA index_list({table})"):
                cols = tuple(r[2] for r in conn.execute(f"PRAGMA index_info({name})"))
                if origin == "c":
                    indexes[name] = (cols, bool(is_unique), bool(partial))
                elif is_unique:
                    unique.add(cols)
            pk = tuple(name for name, _, position in sorted(columns, key=lambda c: c[2]) if position)
            tables[table] = {
                "columns": [(name, notnull) for name, notnull, _ in columns],
                "pk": pk,
                "unique": unique - {pk},
                "indexes": indexes,
            }
        triggers = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")}
        return {"tables": tables, "triggers": triggers}
    finally:
        conn.close()


async def _postgres_schema(dsn: str, schema: str) -> dict[str, Any]:
    conn = await asyncpg.connect(dsn)
    try:
        tables: dict[str, Any] = {}
        names = [
            r["table_name"]
            for r in await conn.fetch(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = $1 ORDER BY table_name",
                schema,
            )
        ]
        for table in names:
            columns = [
                (r["column_name"], r["is_nullable"] == "NO")
                for r in await conn.fetch(
                    "SELECT column_name, is_nullable FROM information_schema.columns"
                    " WHERE table_schema = $1 AND table_name = $2 ORDER BY ordinal_position",
                    schema,
                    table,
                )
            ]
            constraints = await conn.fetch(
                "SELECT c.contype::text AS contype, array_agg(a.attname::text ORDER BY k.ord) AS cols FROM pg_constraint c"
                " CROSS JOIN LATERAL unnest(c.conkey) WITH ORDINALITY k(attnum, ord)"
                " JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.attnum"
                " WHERE c.conrelid = ($1 || '.' || $2)::regclass AND c.contype IN ('p', 'u')"
                " GROUP BY c.oid, c.contype",
                schema,
                table,
            )
            pk = next((tuple(r["cols"]) for r in constraints if r["contype"] == "p"), ())
            unique = {tuple(r["cols"]) for r in constraints if r["contype"] == "u"}
            indexes = {}
            for r in await conn.fetch(
                "SELECT i.relname AS name, x.indisunique AS is_unique, x.indpred IS NOT NULL AS partial,"
                " array_agg(a.attname::text ORDER BY k.ord) AS cols"
                " FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid"
                " CROSS JOIN LATERAL unnest(x.indkey) WITH ORDINALITY k(attnum, ord)"
                " JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = k.attnum"
                " WHERE x.indrelid = ($1 || '.' || $2)::regclass"
                " AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = x.indexrelid)"
                " GROUP BY i.relname, x.indisunique, x.indpred IS NOT NULL",
                schema,
                table,
            ):
                indexes[r["name"]] = (tuple(r["cols"]), r["is_unique"], r["partial"])
            tables[table] = {"columns": columns, "pk": pk, "unique": unique, "indexes": indexes}
        triggers = {
            r["tgname"]
            for r in await conn.fetch(
                "SELECT t.tgname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid"
                " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND NOT t.tgisinternal",
                schema,
            )
        }
        return {"tables": tables, "triggers": triggers}
    finally:
        await conn.close()


async def test_the_postgres_migrations_build_the_sqlite_schema(tmp_path: Path, pg: PostgresStore) -> None:
    sqlite_store = await SqliteStore.open(tmp_path / "schema.sqlite3")
    await sqlite_store.close()
    assert pg.schema is not None
    expected = _sqlite_schema(tmp_path / "schema.sqlite3")
    actual = await _postgres_schema(pg_dsn(), pg.schema)
    assert sorted(actual["tables"]) == sorted(expected["tables"])
    for table, want in expected["tables"].items():
        got = actual["tables"][table]
        assert got["columns"] == want["columns"], table
        assert got["pk"] == want["pk"], table
        assert got["unique"] == want["unique"], table
        assert got["indexes"] == want["indexes"], table
    assert actual["triggers"] == expected["triggers"]
