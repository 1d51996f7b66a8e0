"""The ledger's SQL on a real temporary store of each backend (SQLite, and PostgreSQL when
CRYPTOCITY_TEST_PG_DSN is set): idempotent posting, balances, append-only journal, pagination, and a
statement streamed in chunks over many rows."""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest

from gateway.clock import isoformat
from gateway.store import Row, Store, StoreError, Tx
from sandbox.ledger import store as ledger
from sandbox.ledger.model import (
    InvoiceBook,
    JournalEntry,
    Line,
    clearing_account,
    entry_id,
    fx_account,
    settlement_account,
)
from sandbox.ledger.store import LEDGER_SCHEMA_SQL, LedgerConflict, create_schema

T = TypeVar("T")
DAY0 = datetime(2026, 11, 1, tzinfo=UTC)
A, B = "mer_a", "mer_b"
BTC = clearing_account("BTC")


@pytest.fixture
def db(any_store: Store) -> Store:
    return any_store  # migration 0004 creates the ledger


def transfer(n: int, amount: int, merchant: str = A, *, at: datetime = DAY0, fx: int = 0) -> JournalEntry:
    """Entry n: clearing -> merchant settlement (and fx), as a settle would book it."""
    event_id = f"evt_{n:06d}"
    lines = [Line(BTC, -(amount + fx)), Line(settlement_account(merchant), amount)]
    if fx:
        lines.append(Line(fx_account(merchant), fx))
    return JournalEntry(
        id=entry_id(event_id, "settle"),
        event_id=event_id,
        event_type="invoice.settled",
        leg="settle",
        posted_at=isoformat(at),
        invoice_id=f"inv_{n:06d}",
        invoice_version=1,
        merchant_id=merchant,
        payment_key=None,
        lines=tuple(lines),
    )


def _run_sql(sql: str) -> Callable[[Tx], Coroutine[Any, Any, int]]:
    return lambda tx: tx.execute(sql)


def _page(merchant: str, cursor: str | None) -> Callable[[Tx], Coroutine[Any, Any, ledger.LedgerPage]]:
    return lambda tx: ledger.ledger_page(tx, merchant, limit=10, cursor=cursor)


def _post(entries: list[JournalEntry]) -> Callable[[Tx], Coroutine[Any, Any, int]]:
    return lambda tx: ledger.post(tx, entries)


async def count(db: Store, table: str) -> int:
    row = await db.read(lambda tx: tx.fetchone(f"SELECT count(*) AS n FROM {table}"))  # noqa: S608
    assert row is not None
    return int(row["n"])


def test_the_schema_constant_is_the_statements_for_a_migration() -> None:
    assert LEDGER_SCHEMA_SQL.count("CREATE TABLE") == 4
    assert "ledger_entries_append_only_update" in LEDGER_SCHEMA_SQL
    assert LEDGER_SCHEMA_SQL.endswith("END;\n")


def test_the_gateway_migration_creates_exactly_this_schema() -> None:
    migration = Path(__file__).resolve().parents[2] / "gateway/store/migrations/sqlite/0004_ledger.sql"
    body = "\n".join(line for line in migration.read_text().splitlines() if not line.startswith("--"))
    assert body.strip() == LEDGER_SCHEMA_SQL.strip(), "regenerate 0004_ledger.sql from LEDGER_SCHEMA_SQL"


async def test_create_schema_builds_the_ledger_on_an_empty_database(tmp_path: Path) -> None:
    conn_path = tmp_path / "bare.sqlite3"
    with sqlite3.connect(conn_path) as conn:
        conn.execute("SELECT 1")

    class Bare:
        def __init__(self, conn: sqlite3.Connection) -> None:
            self.conn = conn

        async def execute(self, sql: str, params: tuple[object, ...] = ()) -> int:
            return self.conn.execute(sql, params).rowcount

    with sqlite3.connect(conn_path) as conn:
        await create_schema(Bare(conn))  # type: ignore[arg-type]
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"ledger_entries", "ledger_lines", "ledger_balances", "ledger_invoices"} <= tables


async def test_posting_again_is_a_no_op(db: Store) -> None:
    entries = [transfer(1, 1_000, fx=3), transfer(2, 500)]
    assert await db.transaction(lambda tx: ledger.post(tx, entries)) == 2
    assert await db.transaction(lambda tx: ledger.post(tx, entries)) == 0
    assert await db.transaction(lambda tx: ledger.post(tx, [*entries, transfer(3, 7)])) == 1
    assert await count(db, "ledger_entries") == 3
    assert await count(db, "ledger_lines") == 7
    assert await db.read(lambda tx: ledger.balance(tx, settlement_account(A))) == 1_507
    assert await db.read(lambda tx: ledger.balance(tx, BTC)) == -1_510
    assert await db.read(lambda tx: ledger.balance(tx, fx_account(A))) == 3
    assert await db.read(lambda tx: ledger.balance(tx, "held:mer_a")) == 0
    assert await db.read(ledger.trial_balance) == 0
    assert await db.read(ledger.verify_balances) == []
    assert await db.read(ledger.unbalanced_entries) == []
    assert await db.read(lambda tx: ledger.balances(tx, "merchant:")) == {settlement_account(A): 1_507}


async def test_a_different_entry_under_a_booked_id_is_refused_and_the_unit_rolls_back(
    db: Store,
) -> None:
    await db.transaction(lambda tx: ledger.post(tx, [transfer(1, 1_000)]))
    changed = transfer(1, 1_001)  # same event and leg, other amount: postings were not deterministic
    with pytest.raises(LedgerConflict, match="already booked differently"):
        await db.transaction(lambda tx: ledger.post(tx, [transfer(2, 5), changed]))
    assert await count(db, "ledger_entries") == 1  # entry 2 of that unit is not kept either
    assert await db.read(lambda tx: ledger.balance(tx, settlement_account(A))) == 1_000


async def test_the_journal_is_append_only(db: Store) -> None:
    await db.transaction(lambda tx: ledger.post(tx, [transfer(1, 1_000)]))
    for sql in (
        "UPDATE ledger_lines SET amount_tiyn = 5",
        "DELETE FROM ledger_lines",
        "UPDATE ledger_entries SET leg = 'x'",
        "DELETE FROM ledger_entries",
    ):
        with pytest.raises(StoreError, match="append-only"):
            await db.transaction(_run_sql(sql))
    assert await count(db, "ledger_lines") == 2


async def test_a_tampered_balance_row_is_reported(db: Store) -> None:
    await db.transaction(lambda tx: ledger.post(tx, [transfer(1, 1_000), transfer(2, 250)]))
    await db.transaction(
        lambda tx: tx.execute("UPDATE ledger_balances SET balance_tiyn = 1 WHERE account = ?", (BTC,))
    )
    (mismatch,) = await db.read(ledger.verify_balances)
    assert (mismatch.account, mismatch.maintained_tiyn, mismatch.from_lines_tiyn) == (BTC, 1, -1_250)
    assert await db.read(lambda tx: ledger.balance_from_lines(tx, BTC)) == -1_250
    assert await db.read(ledger.trial_balance) == 0  # the journal itself is sound


async def test_the_booked_state_is_saved_and_loaded(db: Store) -> None:
    book = InvoiceBook(
        invoice_id="inv_1", merchant_id=A, last_seq=7, version=3, settlements=1, settlement=(Line(BTC, -5),)
    )
    assert await db.read(lambda tx: ledger.load_book(tx, "inv_1")) is None
    await db.transaction(lambda tx: ledger.save_book(tx, book, "2026-11-01T00:00:00.000Z"))
    await db.transaction(lambda tx: ledger.save_book(tx, book, "2026-11-01T00:00:00.000Z"))
    assert await db.read(lambda tx: ledger.load_book(tx, "inv_1")) == book
    row = await db.read(lambda tx: tx.fetchone("SELECT settled, last_seq FROM ledger_invoices"))
    assert row == {"settled": 1, "last_seq": 7}


async def test_a_merchants_ledger_pages_newest_first_without_gaps_or_overlaps(db: Store) -> None:
    entries = [transfer(n, 100 + n, A if n % 6 else B) for n in range(1, 31)]  # 25 of A, 5 of B
    await db.transaction(lambda tx: ledger.post(tx, entries))
    pages, cursor = [], None
    while True:
        page = await db.read(_page(A, cursor))
        pages.append([p.entry.event_id for p in page.entries])
        if len(pages) == 1:  # posting while a client pages does not shift the later pages
            await db.transaction(lambda tx: ledger.post(tx, [transfer(99, 1)]))
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert [len(p) for p in pages] == [10, 10, 5]
    seen = [e for p in pages for e in p]
    assert seen == [e.event_id for e in reversed(entries) if e.merchant_id == A]
    first = await db.read(lambda tx: ledger.ledger_page(tx, A, limit=1))
    assert first.entries[0].entry == transfer(99, 1)  # with its lines, as posted
    b_page = await db.read(lambda tx: ledger.ledger_page(tx, B, limit=50))
    assert len(b_page.entries) == 5 and b_page.next_cursor is None
    with pytest.raises(ValueError, match="not a ledger cursor"):
        await db.read(lambda tx: ledger.ledger_page(tx, A, cursor="42"))
    with pytest.raises(ValueError, match="limit"):
        await db.read(lambda tx: ledger.ledger_page(tx, A, limit=0))


class CountingReader:
    """A store reader that records how many rows each read fetched."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.fetched: list[int] = []

    async def read(self, fn: Callable[[Tx], Awaitable[T]]) -> T:
        reader = self

        class Counting:
            def __init__(self, tx: Tx) -> None:
                self.tx = tx

            async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
                reader.fetched.append(1)
                return await self.tx.fetchone(sql, params)

            async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
                rows = await self.tx.fetchall(sql, params)
                reader.fetched.append(len(rows))
                return rows

        return await self.store.read(lambda tx: fn(Counting(tx)))  # type: ignore[arg-type]


async def test_a_statement_streams_many_rows_in_bounded_chunks(db: Store) -> None:
    # 3 000 settles of merchant A over 30 days, posted out of time order within each day (the journal
    # order is not the time order), plus merchant B's, which are not on A's account.
    entries = []
    for n in range(3_000):
        at = DAY0 + timedelta(days=n // 100, minutes=(n * 37) % 100)
        entries.append(transfer(n, 1 + n % 17, A if n % 10 else B, at=at))
    for first_of_part in range(0, len(entries), 500):
        await db.transaction(_post(entries[first_of_part : first_of_part + 500]))

    account = settlement_account(A)
    start, end = DAY0 + timedelta(days=5), DAY0 + timedelta(days=25)
    in_range = sorted(
        (e for e in entries if e.merchant_id == A and isoformat(start) <= e.posted_at < isoformat(end)),
        key=lambda e: (e.posted_at, int(e.event_id[4:])),
    )
    opening = sum(e.amount(account) for e in entries if e.posted_at < isoformat(start))
    reader = CountingReader(db)
    rows = ledger.statement(reader, account, start, end, chunk_size=128)
    first = await anext(rows)
    assert len(reader.fetched) == 3 and max(reader.fetched) <= 128  # lazy: snapshot, opening, one chunk
    # Appended after the statement began, inside its range: not part of this statement.
    await db.transaction(lambda tx: ledger.post(tx, [transfer(10_001, 5, A, at=start + timedelta(hours=1))]))
    rest = [row async for row in rows]
    streamed = [first, *rest]
    assert [r.entry_id for r in streamed] == [e.id for e in in_range]
    assert len(streamed) == 1_800
    assert max(reader.fetched) <= 128
    assert len(reader.fetched) == 2 + -(-1_800 // 128) + (1_800 % 128 == 0)
    running = opening
    for row, entry in zip(streamed, in_range, strict=True):
        running += entry.amount(account)
        assert (row.amount_tiyn, row.balance_tiyn, row.leg, row.invoice_id) == (
            entry.amount(account),
            running,
            "settle",
            entry.invoice_id,
        )
    assert streamed[0].balance_tiyn - streamed[0].amount_tiyn == opening
    # An empty range yields nothing; a bad chunk size is refused.
    assert [
        r async for r in ledger.statement(db, account, end + timedelta(days=30), end + timedelta(days=31))
    ] == []
    with pytest.raises(ValueError, match="chunk_size"):
        await anext(ledger.statement(db, account, start, end, chunk_size=0))
