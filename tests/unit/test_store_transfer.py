"""The parts of gateway/store/transfer.py that need no PostgreSQL: copy order, the "gateway still running"
refusal, value checks and row digests (the end-to-end moves are in tests/api/test_store_transfer.py)."""

from __future__ import annotations

import asyncio
import sqlite3
import sys
from pathlib import Path

import pytest

from gateway.store import SqliteStore
from gateway.store.transfer import (
    TransferError,
    TransferRefused,
    _checker,
    migrate_sqlite_to_postgres,
    open_snapshot,
    parents_first,
    processes_using,
    row_digest,
    source_tables,
)

UNREACHABLE = "postgresql://nobody@127.0.0.1:1/none"  # refusals happen before any connection


def test_parents_come_before_the_tables_that_reference_them() -> None:
    order = parents_first(
        {
            "webhook_attempts": {"webhook_deliveries"},
            "webhook_deliveries": {"webhook_endpoints"},
            "webhook_endpoints": {"merchants"},
            "invoices": {"merchants"},
            "payments": {"invoices"},
            "merchants": set(),
            "outbox": set(),
        }
    )
    assert order == [
        "merchants",
        "outbox",
        "invoices",
        "webhook_endpoints",
        "payments",
        "webhook_deliveries",
        "webhook_attempts",
    ]
    with pytest.raises(TransferRefused, match="cycle"):
        parents_first({"a": {"b"}, "b": {"a"}, "c": set()})


async def test_the_tables_and_their_keys_are_read_from_the_file(tmp_path: Path) -> None:
    store = await SqliteStore.open(tmp_path / "db.sqlite3")
    await store.close()
    conn = open_snapshot(tmp_path / "db.sqlite3")
    try:
        tables = source_tables(conn)
    finally:
        conn.close()
    assert "schema_migrations" not in tables and "sqlite_sequence" not in tables
    assert {"merchants", "invoices", "outbox", "ledger_lines", "audit_log"} <= tables.keys()
    columns, rowid, parents = tables["outbox"]
    assert rowid == "seq" and columns[0] == "seq" and parents == set()
    assert tables["ledger_lines"][2] == {"ledger_entries"}
    assert tables["ledger_lines"][1] is None  # a composite key is no rowid alias


async def test_a_file_another_process_holds_open_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    store = await SqliteStore.open(path)
    await store.close()
    holder = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); c.execute('PRAGMA journal_mode=WAL');"
        " c.execute('SELECT count(*) FROM merchants').fetchone(); print('open', flush=True);"
        " sys.stdin.read()",
        str(path),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert holder.stdin is not None and holder.stdout is not None
    try:
        assert (await holder.stdout.readline()).strip() == b"open"
        assert holder.pid in processes_using(path)
        with pytest.raises(TransferRefused, match=rf"open in other processes \(pid {holder.pid}\).*stop"):
            await migrate_sqlite_to_postgres(path, UNREACHABLE)
    finally:
        holder.stdin.close()
        await asyncio.wait_for(holder.wait(), timeout=10)
    assert processes_using(path) == set()


def test_our_own_connections_do_not_count_as_a_running_gateway(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    conn = sqlite3.connect(path)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE t (x)")
        assert processes_using(path) == set()
    finally:
        conn.close()


async def test_a_missing_file_or_a_file_that_is_no_store_is_refused(tmp_path: Path) -> None:
    with pytest.raises(TransferRefused, match="no such SQLite file"):
        await migrate_sqlite_to_postgres(tmp_path / "absent.sqlite3", UNREACHABLE)
    other = tmp_path / "other.sqlite3"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE t (x)")
    conn.close()
    with pytest.raises(TransferRefused, match="not a CryptoCity store"):
        await migrate_sqlite_to_postgres(other, UNREACHABLE)
    with pytest.raises(TransferRefused, match="lower-case SQL identifier"):
        await migrate_sqlite_to_postgres(other, UNREACHABLE, schema="Bad-Name")


def test_values_must_fit_their_column_exactly() -> None:
    as_bigint = _checker("payments", "confirmations", "bigint")
    assert as_bigint(6) == 6 and as_bigint(None) is None and as_bigint(2**62) == 2**62
    for wrong in ("6", 6.5, True, b"\x06"):
        with pytest.raises(TransferError, match=r"payments\.confirmations"):
            as_bigint(wrong)
    as_text = _checker("payments", "amount_minor", "text")
    wei = str(10**30)
    assert as_text(wei) == wei  # amounts beyond 64 bits are text on both sides
    with pytest.raises(TransferError, match="is not a valid text value"):
        as_text(10**30)
    with pytest.raises(TransferRefused, match="does not handle"):
        _checker("t", "c", "jsonb")


def test_row_digests_ignore_order_but_not_types() -> None:
    rows = [(1, "a", None), (2, "b", "x"), (3, "c", None)]
    forward = sum(row_digest(r) for r in rows) % (1 << 128)
    backward = sum(row_digest(r) for r in reversed(rows)) % (1 << 128)
    assert forward == backward
    assert row_digest((1, "a")) != row_digest(("1", "a"))
    assert row_digest((1, None)) != row_digest((1, ""))
