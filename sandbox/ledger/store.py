"""The ledger's tables and queries, through the gateway's ``Tx`` protocol (``?`` placeholders, portable SQL).

- ``ledger_entries`` and ``ledger_lines`` are the journal: append-only (triggers refuse UPDATE and DELETE);
  an entry's id is unique, so posting an entry again is a no-op (and posting a *different* entry under an
  existing id raises ``LedgerConflict``, because ids are derived from what they book).
- ``ledger_balances`` is maintained by ``post`` in the same transaction; ``balance_from_lines`` is the SUM
  over lines it must always equal, and ``verify_balances`` lists any account where it does not.
- ``ledger_invoices`` holds each invoice's booked state (``model.InvoiceBook`` as JSON) for the consumer.

Statements are read in chunks through ``store.read`` (one short read per chunk, keyset pagination, bounded
by the journal's last entry when the statement started), so memory does not grow with the date range.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, TypeVar

from gateway import jsonutil
from gateway.clock import isoformat
from gateway.store import Row, Tx
from sandbox.ledger.model import InvoiceBook, JournalEntry, Line

T = TypeVar("T")

# One statement per item, so tests (and tools) can run them through Tx.execute one by one; the lead puts
# LEDGER_SCHEMA_SQL into a numbered migration (gateway/store/migrations/sqlite/NNNN_ledger.sql).
LEDGER_SCHEMA_STATEMENTS: tuple[str, ...] = (
    """CREATE TABLE ledger_entries (
    seq              INTEGER PRIMARY KEY AUTOINCREMENT,  -- journal order
    id               TEXT NOT NULL UNIQUE,               -- le_ + hash(outbox event id, leg): re-posting is a no-op
    event_id         TEXT NOT NULL,                      -- the outbox event that caused it
    event_type       TEXT NOT NULL,
    leg              TEXT NOT NULL,                      -- settle, reversal, hold, ... (sandbox/ledger/model.py)
    invoice_id       TEXT,
    invoice_version  INTEGER,
    merchant_id      TEXT,
    payment_key      TEXT,
    posted_at        TEXT NOT NULL,                      -- the event's created_at (domain clock), RFC 3339 UTC
    UNIQUE (event_id, leg)
)""",
    "CREATE INDEX ledger_entries_merchant ON ledger_entries(merchant_id, seq)",
    "CREATE INDEX ledger_entries_invoice ON ledger_entries(invoice_id, seq)",
    """CREATE TABLE ledger_lines (
    entry_seq    INTEGER NOT NULL REFERENCES ledger_entries(seq),
    line_no      INTEGER NOT NULL CHECK (line_no >= 0),
    account      TEXT NOT NULL,
    amount_tiyn  INTEGER NOT NULL CHECK (amount_tiyn <> 0),  -- > 0 into the account, < 0 out of it
    posted_at    TEXT NOT NULL,                              -- copied from the entry, for statements
    PRIMARY KEY (entry_seq, line_no),
    UNIQUE (entry_seq, account)
)""",
    "CREATE INDEX ledger_lines_account ON ledger_lines(account, posted_at, entry_seq)",
    """CREATE TABLE ledger_balances (
    account         TEXT PRIMARY KEY,
    balance_tiyn    INTEGER NOT NULL,    -- always equals SUM(ledger_lines.amount_tiyn) for the account
    line_count      INTEGER NOT NULL,
    last_entry_seq  INTEGER NOT NULL
)""",
    """CREATE TABLE ledger_invoices (
    invoice_id   TEXT PRIMARY KEY,
    merchant_id  TEXT NOT NULL,
    last_seq     INTEGER NOT NULL,       -- outbox seq of the last event booked for the invoice
    version      INTEGER NOT NULL,       -- its invoice version
    settled      INTEGER NOT NULL CHECK (settled IN (0, 1)),
    state        TEXT NOT NULL,          -- JSON: sandbox.ledger.model.InvoiceBook
    updated_at   TEXT NOT NULL           -- created_at of that event
)""",
    "CREATE INDEX ledger_invoices_merchant ON ledger_invoices(merchant_id, settled)",
    *(
        f"CREATE TRIGGER {table}_append_only_{action.lower()} BEFORE {action} ON {table}"
        f" BEGIN SELECT RAISE(ABORT, '{table} is append-only'); END"
        for table in ("ledger_entries", "ledger_lines")
        for action in ("UPDATE", "DELETE")
    ),
)
LEDGER_SCHEMA_SQL = ";\n\n".join(LEDGER_SCHEMA_STATEMENTS) + ";\n"


class LedgerConflict(Exception):
    """An entry id already in the journal with different content: postings were not deterministic."""


async def create_schema(tx: Tx) -> None:
    """Create the ledger tables inside ``tx`` (tests and tools; the gateway uses the migration)."""
    for statement in LEDGER_SCHEMA_STATEMENTS:
        await tx.execute(statement)


# -- posting -------------------------------------------------------------------------------------------


async def post(tx: Tx, entries: Iterable[JournalEntry]) -> int:
    """Append entries to the journal and update the balances; returns how many were new.

    An entry whose id is already there is skipped (after checking that it books the same lines).
    """
    written = 0
    for entry in entries:
        inserted = await tx.fetchall(
            "INSERT INTO ledger_entries (id, event_id, event_type, leg, invoice_id, invoice_version,"
            " merchant_id, payment_key, posted_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (id) DO NOTHING RETURNING seq",
            (
                entry.id,
                entry.event_id,
                entry.event_type,
                entry.leg,
                entry.invoice_id,
                entry.invoice_version,
                entry.merchant_id,
                entry.payment_key,
                entry.posted_at,
            ),
        )
        if not inserted:
            await _check_same(tx, entry)
            continue
        seq = int(inserted[0]["seq"])
        await tx.executemany(
            "INSERT INTO ledger_lines (entry_seq, line_no, account, amount_tiyn, posted_at)"
            " VALUES (?, ?, ?, ?, ?)",
            [(seq, n, line.account, line.amount_tiyn, entry.posted_at) for n, line in enumerate(entry.lines)],
        )
        await tx.executemany(
            "INSERT INTO ledger_balances (account, balance_tiyn, line_count, last_entry_seq) VALUES (?, ?, 1, ?)"
            " ON CONFLICT (account) DO UPDATE SET balance_tiyn = ledger_balances.balance_tiyn + excluded.balance_tiyn,"
            " line_count = ledger_balances.line_count + 1, last_entry_seq = excluded.last_entry_seq",
            [(line.account, line.amount_tiyn, seq) for line in entry.lines],
        )
        written += 1
    return written


async def _check_same(tx: Tx, entry: JournalEntry) -> None:
    row = await tx.fetchone(
        "SELECT seq, event_id, leg, invoice_id, merchant_id FROM ledger_entries WHERE id = ?", (entry.id,)
    )
    assert row is not None
    lines = await tx.fetchall(
        "SELECT account, amount_tiyn FROM ledger_lines WHERE entry_seq = ? ORDER BY line_no", (row["seq"],)
    )
    stored = [(r["account"], int(r["amount_tiyn"])) for r in lines]
    if (row["event_id"], row["leg"], row["invoice_id"], row["merchant_id"]) != (
        entry.event_id,
        entry.leg,
        entry.invoice_id,
        entry.merchant_id,
    ) or stored != [(line.account, line.amount_tiyn) for line in entry.lines]:
        raise LedgerConflict(
            f"entry {entry.id} ({entry.leg} of {entry.event_id}) is already booked differently"
        )


# -- balances ------------------------------------------------------------------------------------------


async def balance(tx: Tx, account: str) -> int:
    """An account's balance in tiyn (from the maintained table; 0 for an account with no lines)."""
    row = await tx.fetchone("SELECT balance_tiyn FROM ledger_balances WHERE account = ?", (account,))
    return 0 if row is None else int(row["balance_tiyn"])


async def balance_from_lines(tx: Tx, account: str) -> int:
    """The same balance as the SUM over the journal's lines (the definition ``balance`` must match)."""
    row = await tx.fetchone(
        "SELECT COALESCE(SUM(amount_tiyn), 0) AS total FROM ledger_lines WHERE account = ?", (account,)
    )
    assert row is not None
    return int(row["total"])


async def balances(tx: Tx, prefix: str = "") -> dict[str, int]:
    """Every account's maintained balance, optionally only accounts whose name starts with ``prefix``."""
    rows = await tx.fetchall(
        "SELECT account, balance_tiyn FROM ledger_balances WHERE substr(account, 1, ?) = ? ORDER BY account",
        (len(prefix), prefix),
    )
    return {r["account"]: int(r["balance_tiyn"]) for r in rows}


async def trial_balance(tx: Tx) -> int:
    """The sum of every line in the journal: 0 for a sound ledger."""
    row = await tx.fetchone("SELECT COALESCE(SUM(amount_tiyn), 0) AS total FROM ledger_lines")
    assert row is not None
    return int(row["total"])


@dataclass(frozen=True, slots=True)
class BalanceMismatch:
    account: str
    maintained_tiyn: int
    from_lines_tiyn: int


async def verify_balances(tx: Tx) -> list[BalanceMismatch]:
    """Accounts whose maintained balance differs from the SUM over their lines (empty: all agree)."""
    derived = {
        r["account"]: int(r["total"])
        for r in await tx.fetchall(
            "SELECT account, SUM(amount_tiyn) AS total FROM ledger_lines GROUP BY account"
        )
    }
    maintained = {
        r["account"]: int(r["balance_tiyn"])
        for r in await tx.fetchall("SELECT account, balance_tiyn FROM ledger_balances")
    }
    return [
        BalanceMismatch(account, maintained.get(account, 0), derived.get(account, 0))
        for account in sorted(derived.keys() | maintained.keys())
        if maintained.get(account, 0) != derived.get(account, 0)
    ]


async def unbalanced_entries(tx: Tx) -> list[str]:
    """Ids of entries whose stored lines do not sum to zero (empty for a sound journal)."""
    rows = await tx.fetchall(
        "SELECT e.id FROM ledger_entries e JOIN ledger_lines l ON l.entry_seq = e.seq"
        " GROUP BY e.seq, e.id HAVING SUM(l.amount_tiyn) <> 0 ORDER BY e.seq"
    )
    return [r["id"] for r in rows]


# -- per-invoice booked state ------------------------------------------------------------------------


async def load_book(tx: Tx, invoice_id: str) -> InvoiceBook | None:
    row = await tx.fetchone("SELECT state FROM ledger_invoices WHERE invoice_id = ?", (invoice_id,))
    return None if row is None else InvoiceBook.from_doc(jsonutil.loads(row["state"]))


async def save_book(tx: Tx, book: InvoiceBook, updated_at: str) -> None:
    await tx.execute(
        "INSERT INTO ledger_invoices (invoice_id, merchant_id, last_seq, version, settled, state, updated_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (invoice_id) DO UPDATE SET last_seq = excluded.last_seq,"
        " version = excluded.version, settled = excluded.settled, state = excluded.state,"
        " updated_at = excluded.updated_at",
        (
            book.invoice_id,
            book.merchant_id,
            book.last_seq,
            book.version,
            int(book.settled),
            jsonutil.dumps(book.to_doc()),
            updated_at,
        ),
    )


# -- reading the journal -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PostedEntry:
    """A journal entry as stored, with its position in the journal."""

    seq: int
    entry: JournalEntry


@dataclass(frozen=True, slots=True)
class LedgerPage:
    entries: list[PostedEntry]  # newest first
    next_cursor: str | None  # pass as ``cursor`` for the next (older) page; None: this was the last


_ENTRY_COLUMNS = (
    "seq, id, event_id, event_type, leg, invoice_id, invoice_version, merchant_id, payment_key, posted_at"
)


async def _with_lines(tx: Tx, rows: Sequence[Row]) -> list[PostedEntry]:
    if not rows:
        return []
    seqs = [int(r["seq"]) for r in rows]
    marks = ", ".join("?" for _ in seqs)
    lines: dict[int, list[Line]] = {seq: [] for seq in seqs}
    for line in await tx.fetchall(
        f"SELECT entry_seq, account, amount_tiyn FROM ledger_lines WHERE entry_seq IN ({marks})"  # noqa: S608
        " ORDER BY entry_seq, line_no",
        seqs,
    ):
        lines[int(line["entry_seq"])].append(Line(line["account"], int(line["amount_tiyn"])))
    return [
        PostedEntry(
            int(r["seq"]),
            JournalEntry(
                id=r["id"],
                event_id=r["event_id"],
                event_type=r["event_type"],
                leg=r["leg"],
                posted_at=r["posted_at"],
                invoice_id=r["invoice_id"],
                invoice_version=r["invoice_version"],
                merchant_id=r["merchant_id"],
                payment_key=r["payment_key"],
                lines=tuple(lines[int(r["seq"])]),
            ),
        )
        for r in rows
    ]


def _cursor_seq(cursor: str | None) -> int | None:
    if cursor is None:
        return None
    if not cursor.startswith("le") or not cursor[2:].isdigit():
        raise ValueError(f"not a ledger cursor: {cursor!r}")
    return int(cursor[2:])


async def ledger_page(tx: Tx, merchant_id: str, *, limit: int = 50, cursor: str | None = None) -> LedgerPage:
    """One page of a merchant's journal entries, newest first; ``cursor`` is a previous page's ``next_cursor``.

    Keyset pagination on the journal order: entries posted while a client pages never shift the pages.
    """
    if not 1 <= limit <= 1000:
        raise ValueError("limit must be between 1 and 1000")
    before = _cursor_seq(cursor)
    params: list[Any] = [merchant_id]
    where = "merchant_id = ?"
    if before is not None:
        where += " AND seq < ?"
        params.append(before)
    rows = await tx.fetchall(
        f"SELECT {_ENTRY_COLUMNS} FROM ledger_entries WHERE {where} ORDER BY seq DESC LIMIT ?",  # noqa: S608
        (*params, limit + 1),
    )
    more = len(rows) > limit
    entries = await _with_lines(tx, rows[:limit])
    return LedgerPage(entries, f"le{entries[-1].seq}" if more else None)


async def invoice_entries(tx: Tx, invoice_id: str) -> list[PostedEntry]:
    """Every entry booked for one invoice, in journal order."""
    rows = await tx.fetchall(
        f"SELECT {_ENTRY_COLUMNS} FROM ledger_entries WHERE invoice_id = ? ORDER BY seq",  # noqa: S608
        (invoice_id,),
    )
    return await _with_lines(tx, rows)


class Reader(Protocol):
    """Anything with the store's ``read`` (gateway.store.Store)."""

    async def read(self, fn: Callable[[Tx], Awaitable[T]]) -> T: ...


@dataclass(frozen=True, slots=True)
class StatementRow:
    posted_at: str
    entry_seq: int
    entry_id: str
    event_type: str
    leg: str
    invoice_id: str | None
    payment_key: str | None
    amount_tiyn: int
    balance_tiyn: int  # the account's running balance after this line


@dataclass(frozen=True, slots=True)
class _StatementStart:
    last_seq: int
    opening_tiyn: int


async def statement(
    store: Reader, account: str, start: datetime, end: datetime, *, chunk_size: int = 1000
) -> AsyncIterator[StatementRow]:
    """An account's lines posted in ``[start, end)``, in posting order, with the running balance.

    Each chunk is one short read of at most ``chunk_size`` lines, so memory stays flat however long the
    range. The statement is a snapshot: lines appended after it started are left out. The opening balance
    (everything before ``start``) is ``balance_tiyn - amount_tiyn`` of the first row.
    """
    if chunk_size < 1:
        raise ValueError("chunk_size must be positive")
    start_at, end_at = isoformat(start), isoformat(end)

    async def begin(tx: Tx) -> _StatementStart:
        last = await tx.fetchone("SELECT COALESCE(MAX(seq), 0) AS last FROM ledger_entries")
        assert last is not None
        opening = await tx.fetchone(
            "SELECT COALESCE(SUM(amount_tiyn), 0) AS total FROM ledger_lines"
            " WHERE account = ? AND posted_at < ? AND entry_seq <= ?",
            (account, start_at, int(last["last"])),
        )
        assert opening is not None
        return _StatementStart(int(last["last"]), int(opening["total"]))

    snapshot = await store.read(begin)
    running = snapshot.opening_tiyn
    after: tuple[str, int] = (start_at, -1)
    while True:

        async def chunk(tx: Tx, after: tuple[str, int] = after) -> list[Row]:
            return await tx.fetchall(
                "SELECT l.posted_at, l.entry_seq, l.amount_tiyn, e.id, e.event_type, e.leg, e.invoice_id,"
                " e.payment_key FROM ledger_lines l JOIN ledger_entries e ON e.seq = l.entry_seq"
                " WHERE l.account = ? AND l.posted_at < ? AND l.entry_seq <= ?"
                " AND (l.posted_at > ? OR (l.posted_at = ? AND l.entry_seq > ?))"
                " ORDER BY l.posted_at, l.entry_seq LIMIT ?",
                (account, end_at, snapshot.last_seq, after[0], after[0], after[1], chunk_size),
            )

        rows = await store.read(chunk)
        for r in rows:
            running += int(r["amount_tiyn"])
            yield StatementRow(
                posted_at=r["posted_at"],
                entry_seq=int(r["entry_seq"]),
                entry_id=r["id"],
                event_type=r["event_type"],
                leg=r["leg"],
                invoice_id=r["invoice_id"],
                payment_key=r["payment_key"],
                amount_tiyn=int(r["amount_tiyn"]),
                balance_tiyn=running,
            )
        if len(rows) < chunk_size:
            return
        after = (rows[-1]["posted_at"], int(rows[-1]["entry_seq"]))
