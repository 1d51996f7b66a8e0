"""The store contract on both backends (units all-or-nothing, after_commit, read snapshots, migrations,
closed stores), and what only SQLite has: durability settings, group commit, per-unit savepoints inside one
batch, disk-full faults that keep nothing. PostgreSQL-only behaviour is in test_store_postgres.py."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import sys
from pathlib import Path

import pytest

from gateway.config import StoreConfig
from gateway.store import SqliteStore, Store, StoreError, StoreUnavailable, Tx, UniqueViolation, open_store
from gateway.store.migrations import load_migrations
from tests.conftest import StoreFactory


async def _put(tx: Tx, name: str, position: int = 0) -> str:
    await tx.execute(
        "INSERT INTO consumer_cursors (consumer, position, updated_at) VALUES (?, ?, 't')", (name, position)
    )
    return name


async def _count(store: Store) -> int:
    row = await store.read(lambda tx: tx.fetchone("SELECT count(*) AS n FROM consumer_cursors"))
    assert row is not None
    return int(row["n"])


@pytest.fixture
async def store(tmp_path: Path):  # type: ignore[no-untyped-def]
    opened = await SqliteStore.open(tmp_path / "db.sqlite3")
    yield opened
    await opened.close()


async def test_wal_full_sync_and_foreign_keys_are_on(tmp_path: Path, store: SqliteStore) -> None:
    conn = sqlite3.connect(tmp_path / "db.sqlite3")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()

    async def pragmas(tx: Tx) -> tuple[int, int]:
        sync = await tx.fetchone("PRAGMA synchronous")
        fks = await tx.fetchone("PRAGMA foreign_keys")
        assert sync is not None and fks is not None
        return int(next(iter(sync.values()))), int(next(iter(fks.values())))

    assert await store.transaction(pragmas) == (2, 1)  # 2 = FULL


async def test_foreign_keys_are_enforced(any_store: Store) -> None:
    with pytest.raises(StoreError, match=r"(?i)foreign key") as raised:
        await any_store.transaction(
            lambda tx: tx.execute(
                "INSERT INTO api_keys (id, merchant_id, lookup, secret_hash, created_at) VALUES ('k', 'nobody', 'l', 'h', 't')"
            )
        )
    assert not isinstance(raised.value, StoreUnavailable | UniqueViolation)
    assert await any_store.read(lambda tx: tx.fetchone("SELECT count(*) AS n FROM api_keys")) == {"n": 0}


async def test_concurrent_units_all_commit(any_store: Store) -> None:
    units = 2000 if any_store.backend == "sqlite" else 400
    names = await asyncio.gather(
        *(any_store.transaction(lambda tx, i=i: _put(tx, f"c{i}", i)) for i in range(units))
    )
    assert len(set(names)) == units
    assert await _count(any_store) == units


async def test_concurrent_units_share_commits(store: SqliteStore) -> None:
    names = await asyncio.gather(
        *(store.transaction(lambda tx, i=i: _put(tx, f"c{i}", i)) for i in range(2000))
    )
    assert len(set(names)) == 2000
    assert store.stats.units == 2000
    assert store.stats.commits < 2000 / 10  # many units per fsync


async def test_a_failing_unit_rolls_back_alone(any_store: Store) -> None:
    store = any_store
    await store.transaction(lambda tx: _put(tx, "taken"))

    async def half_then_fail(tx: Tx) -> None:
        await _put(tx, "partial")
        await _put(tx, "taken")  # unique violation after a successful insert

    results = await asyncio.gather(
        store.transaction(lambda tx: _put(tx, "a")),
        store.transaction(half_then_fail),
        store.transaction(lambda tx: _put(tx, "b")),
        return_exceptions=True,
    )
    assert results[0] == "a" and results[2] == "b"
    assert isinstance(results[1], UniqueViolation)
    names = await store.read(
        lambda tx: tx.fetchall("SELECT consumer FROM consumer_cursors ORDER BY consumer")
    )
    assert [r["consumer"] for r in names] == [
        "a",
        "b",
        "taken",
    ]  # nothing of the failed unit, not even "partial"


async def test_units_see_earlier_units_of_the_same_batch(store: SqliteStore) -> None:
    async def reader(tx: Tx) -> int:
        row = await tx.fetchone("SELECT position FROM consumer_cursors WHERE consumer = 'x'")
        return -1 if row is None else int(row["position"])

    first = store.transaction(lambda tx: _put(tx, "x", 41))
    second = store.transaction(reader)
    assert await asyncio.gather(first, second) == ["x", 41]


async def test_after_commit_runs_only_for_committed_units(any_store: Store) -> None:
    store = any_store
    ran: list[str] = []

    async def ok(tx: Tx) -> None:
        tx.after_commit(lambda: ran.append("ok"))
        await _put(tx, "ok")

    async def bad(tx: Tx) -> None:
        tx.after_commit(lambda: ran.append("bad"))
        raise RuntimeError("boom")

    listener_calls: list[int] = []
    store.on_commit(lambda: listener_calls.append(1))
    results = await asyncio.gather(store.transaction(ok), store.transaction(bad), return_exceptions=True)
    assert isinstance(results[1], RuntimeError)
    assert ran == ["ok"]
    assert listener_calls


async def test_reads_cannot_write(any_store: Store) -> None:
    with pytest.raises(StoreError):
        await any_store.read(lambda tx: _put(tx, "nope"))
    with pytest.raises(StoreError):
        await any_store.read(
            lambda tx: tx.executemany("DELETE FROM consumer_cursors WHERE consumer = ?", [("x",)])
        )

    async def register(tx: Tx) -> None:
        tx.after_commit(lambda: None)

    with pytest.raises(StoreError):
        await any_store.read(register)
    assert await _count(any_store) == 0


async def test_disk_full_fails_the_batch_keeps_old_data_and_recovers(tmp_path: Path) -> None:
    store = await SqliteStore.open(tmp_path / "full.sqlite3")
    try:
        await store.transaction(lambda tx: _put(tx, "before"))
        pages = await store.transaction(lambda tx: tx.fetchone("PRAGMA page_count"))
        assert pages is not None
        limit = int(next(iter(pages.values()))) + 1
        await store.transaction(lambda tx: tx.fetchone(f"PRAGMA max_page_count = {limit}"))

        async def big(tx: Tx) -> None:
            for i in range(400):
                await tx.execute("INSERT INTO consumer_cursors VALUES (?, ?, ?)", (f"big{i}", i, "x" * 2000))

        with pytest.raises(StoreUnavailable):
            await store.transaction(big)
        assert await _count(store) == 1  # nothing half-written
        await store.transaction(lambda tx: tx.fetchone("PRAGMA max_page_count = 1073741823"))
        await store.transaction(big)  # space is back: service resumes without restart
        assert await _count(store) == 401
        check = await store.read(lambda tx: tx.fetchone("PRAGMA integrity_check"))
        assert check is not None and next(iter(check.values())) == "ok"
    finally:
        await store.close()


async def test_store_max_pages_caps_the_file_and_freed_pages_are_written_again(tmp_path: Path) -> None:
    """store.max_pages: the configured cap is the writer's max_page_count, so the gateway meets a full disk
    where the operator (or a test, tests/reliability/test_disk_full.py) says; pages freed by a delete from
    any connection are reused at once, without a restart."""
    path = tmp_path / "capped.sqlite3"
    first = await open_store(StoreConfig(path=str(path)))
    await first.close()
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE filler (pad BLOB)")
        conn.executemany("INSERT INTO filler VALUES (?)", [(b"x" * 3000,)] * 100)
        pages = int(conn.execute("PRAGMA page_count").fetchone()[0])
    store = await open_store(StoreConfig(path=str(path), max_pages=pages + 2))
    try:
        written = await _fill(store)
        assert 0 < written < 1000 and await _count(store) == written
        with pytest.raises(StoreUnavailable, match="full"):
            await store.transaction(lambda tx: _put_padded(tx, "one more"))
        with sqlite3.connect(path, timeout=10) as conn:
            conn.execute("DELETE FROM filler")
        await store.transaction(lambda tx: _put_padded(tx, "after"))
        assert await _count(store) == written + 1
    finally:
        await store.close()


async def _fill(store: Store) -> int:
    """Write padded rows until the store is full; how many were written."""
    for i in range(1000):
        try:
            await store.transaction(lambda tx, i=i: _put_padded(tx, f"c{i}"))
        except StoreUnavailable:
            return i
    return 1000


async def _put_padded(tx: Tx, name: str) -> None:
    await tx.execute("INSERT INTO consumer_cursors VALUES (?, 0, ?)", (name, "x" * 1500))


async def test_migrations_are_numbered_and_reapplying_is_a_no_op(store_factory: StoreFactory) -> None:
    versions = [m.version for m in load_migrations("sqlite")]
    assert versions == list(range(1, len(versions) + 1))
    postgres = load_migrations("postgres")
    assert [(m.version, m.name) for m in postgres] == [(m.version, m.name) for m in load_migrations("sqlite")]
    for _ in range(2):
        store = await store_factory.open("m")
        rows = await store.read(
            lambda tx: tx.fetchall("SELECT version FROM schema_migrations ORDER BY version")
        )
        assert [r["version"] for r in rows] == versions
        await store.close()


async def test_closed_store_refuses_work(store_factory: StoreFactory) -> None:
    store = await store_factory.open("c")
    await store.close()
    with pytest.raises(StoreUnavailable):
        await store.transaction(lambda tx: _put(tx, "late"))
    with pytest.raises(StoreUnavailable):
        await store.read(lambda tx: tx.fetchone("SELECT 1 AS one"))


@pytest.mark.parametrize("connections", [1, 3])
async def test_a_read_is_one_snapshot_and_sees_every_write_committed_before_it_began(
    store_factory: StoreFactory, connections: int
) -> None:
    """A read that started earlier and is still running must not hand its older snapshot to a later read
    (SQLite keeps one connection's read transaction open while any of its statements runs). With one
    connection a PostgreSQL store's later units and reads wait for the long read; give it two."""
    store = await store_factory.open(
        "r", connections=connections if store_factory.backend == "sqlite" else connections + 1
    )
    try:
        await store.transaction(lambda tx: tx.execute("INSERT INTO consumer_cursors VALUES ('c', 0, 'now')"))
        first_seen = asyncio.Event()
        written = asyncio.Event()

        async def long_read(tx: Tx) -> tuple[int, int]:
            row = await tx.fetchone("SELECT position FROM consumer_cursors WHERE consumer = 'c'")
            first_seen.set()
            await written.wait()
            again = await tx.fetchone("SELECT position FROM consumer_cursors WHERE consumer = 'c'")
            assert row is not None and again is not None
            return int(row["position"]), int(again["position"])

        running = asyncio.create_task(store.read(long_read))
        await first_seen.wait()
        await store.transaction(
            lambda tx: tx.execute("UPDATE consumer_cursors SET position = 7 WHERE consumer = 'c'")
        )
        written.set()
        later = await store.read(
            lambda tx: tx.fetchone("SELECT position FROM consumer_cursors WHERE consumer = 'c'")
        )
        assert later is not None and later["position"] == 7  # begun after the commit: sees it
        assert await running == (0, 0)  # the long read stayed on its own snapshot throughout
    finally:
        await store.close()


async def test_cancelled_reads_leave_their_connection_usable(store_factory: StoreFactory) -> None:
    """Readers cancelled at any point (before, during or after their BEGIN) must not hand on a connection
    still inside their transaction: the next read would fail or see their old snapshot."""
    store = await store_factory.open("c", connections=1)
    try:
        await store.transaction(lambda tx: _put(tx, "c", 1))

        async def slow(tx: Tx) -> None:
            await tx.fetchone("SELECT position FROM consumer_cursors")
            await asyncio.sleep(10)

        for delay in [0, 0, 0.0001, 0.0005, 0.001, 0.005]:
            task = asyncio.create_task(store.read(slow))
            await asyncio.sleep(delay)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await store.transaction(
                lambda tx, d=delay: tx.execute(  # type: ignore[misc]
                    "UPDATE consumer_cursors SET position = position + 1 WHERE consumer = 'c'"
                )
            )
            row = await store.read(lambda tx: tx.fetchone("SELECT position FROM consumer_cursors"))
            assert row is not None and row["position"] >= 2
        final = await store.read(lambda tx: tx.fetchone("SELECT position FROM consumer_cursors"))
        assert final is not None and final["position"] == 7  # every write seen by the read after it
    finally:
        await store.close()


async def test_cryptocity_migrate_prepares_an_empty_store(
    store_factory: StoreFactory, tmp_path: Path
) -> None:
    """`cryptocity migrate` as an operator runs it, on a fresh SQLite file or a fresh PostgreSQL schema."""
    env = {"PATH": "/usr/bin:/bin", "CRYPTOCITY_STORE__PATH": str(tmp_path / "migrated.sqlite3")}
    env.update(store_factory.env())
    for _ in range(2):  # the second run finds everything applied
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "sandbox.cli",
            "migrate",
            env=env,
            cwd=tmp_path,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(), timeout=120)
        assert process.returncode == 0, err.decode()
        assert out.decode().startswith("migrations applied to ")
        if store_factory.schema is not None:
            assert f"(schema {store_factory.schema})" in out.decode()
    store = await store_factory.open("migrated")
    try:
        rows = await store.read(
            lambda tx: tx.fetchall("SELECT version FROM schema_migrations ORDER BY version")
        )
    finally:
        await store.close()
    assert [int(r["version"]) for r in rows] == [m.version for m in load_migrations("sqlite")]
