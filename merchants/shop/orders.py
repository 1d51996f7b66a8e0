"""The shop's orders and the webhook bookkeeping that keeps them right, in SQLite (aiosqlite).

Webhooks arrive at least once and in any order, so two rules decide everything:

1. **De-duplicate by event id.** Every event id ever processed is kept with how often it was delivered;
   a repeat changes nothing and only counts (``received`` / ``duplicates`` in :meth:`OrderStore.stats`).
2. **Apply only newer invoice versions.** Each event carries ``invoice_version``; an order remembers the
   last version it applied and ignores anything not newer ("outdated"). A ``settled`` that arrives after
   the ``reversed`` that undid it can therefore never mark a reversed order paid again.

Recording the event and changing the order happen in one transaction, so a crash or two concurrent
deliveries of the same event cannot apply it twice or lose it.

The order's status follows the invoice's status, never the event type: the event's invoice snapshot is
the truth at that version, which is what makes rule 2 sufficient.
"""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import aiosqlite

from merchants.sdk import Event, Invoice
from merchants.shop.catalog import Product

OrderStatus = Literal["pending", "paid", "expired", "cancelled", "reversed"]
Outcome = Literal["applied", "duplicate", "outdated", "unrelated"]

_BY_INVOICE_STATUS: dict[str, OrderStatus] = {
    "settled": "paid",
    "expired": "expired",
    "cancelled": "cancelled",
    "reversed": "reversed",  # a settled payment was undone (reorg, double spend): do not ship
}


def order_status_for(invoice_status: str) -> OrderStatus:
    """new and processing (and any status a newer gateway may add) keep the order pending: never ship
    on a status you do not know."""
    return _BY_INVOICE_STATUS.get(invoice_status, "pending")


SCHEMA = """
CREATE TABLE IF NOT EXISTS orders (
    id TEXT PRIMARY KEY,
    product_id TEXT NOT NULL,
    amount_kzt TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending',
    invoice_id TEXT UNIQUE,
    checkout_url TEXT,
    invoice_status TEXT,
    invoice_flags TEXT NOT NULL DEFAULT '',
    invoice_version INTEGER NOT NULL DEFAULT -1,  -- the last invoice version applied; -1: none yet
    paid_at TEXT,                                  -- the first time it was paid: fulfil once
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS order_history (
    order_id TEXT NOT NULL REFERENCES orders(id),
    from_status TEXT NOT NULL,
    to_status TEXT NOT NULL,
    invoice_version INTEGER NOT NULL,
    event_id TEXT,                                 -- NULL when the change came from an API answer
    at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS webhook_events (
    event_id TEXT PRIMARY KEY,
    type TEXT NOT NULL,
    order_id TEXT,
    invoice_version INTEGER,
    outcome TEXT NOT NULL,                         -- applied, outdated or unrelated
    deliveries INTEGER NOT NULL DEFAULT 1,         -- > 1: the gateway sent it again
    first_received_at TEXT NOT NULL,
    last_received_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


@dataclass(frozen=True, slots=True)
class Order:
    id: str
    product_id: str
    amount_kzt: str
    status: OrderStatus
    invoice_id: str | None
    checkout_url: str | None
    invoice_status: str | None
    invoice_flags: tuple[str, ...]
    invoice_version: int
    paid_at: str | None
    created_at: str
    updated_at: str


@dataclass(frozen=True, slots=True)
class WebhookStats:
    received: int  # verified deliveries, repeats included
    duplicates: int  # deliveries of an event id already processed
    applied: int  # events that changed an order
    outdated: int  # events whose invoice version was not newer than the order's
    unrelated: int  # events about no order of this shop (or without an invoice)
    rejected: int  # deliveries refused: bad or missing signature, stale timestamp

    def as_dict(self) -> dict[str, int]:
        return {
            "received": self.received,
            "duplicates": self.duplicates,
            "applied": self.applied,
            "outdated": self.outdated,
            "unrelated": self.unrelated,
            "rejected": self.rejected,
        }


def _stamp(unix: float) -> str:
    return datetime.fromtimestamp(unix, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _order(row: aiosqlite.Row) -> Order:
    return Order(
        id=row["id"],
        product_id=row["product_id"],
        amount_kzt=row["amount_kzt"],
        status=row["status"],
        invoice_id=row["invoice_id"],
        checkout_url=row["checkout_url"],
        invoice_status=row["invoice_status"],
        invoice_flags=tuple(f for f in row["invoice_flags"].split(",") if f),
        invoice_version=row["invoice_version"],
        paid_at=row["paid_at"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


class OrderStore:
    """Orders, their history and the processed webhook events, in one SQLite file."""

    def __init__(self, db: aiosqlite.Connection) -> None:
        self._db = db
        self._lock = asyncio.Lock()  # one writer at a time: each unit below is read-decide-write

    @classmethod
    async def open(cls, path: str) -> OrderStore:
        db = await aiosqlite.connect(path)
        db.row_factory = aiosqlite.Row
        await db.execute("PRAGMA journal_mode=WAL")
        await db.executescript(SCHEMA)
        await db.commit()
        return cls(db)

    async def close(self) -> None:
        await self._db.close()

    async def create_order(self, product: Product, now: float) -> Order:
        order_id = "ord_" + secrets.token_hex(10)  # unguessable: the order page is reachable by id alone
        stamp = _stamp(now)
        async with self._lock:
            await self._db.execute(
                "INSERT INTO orders (id, product_id, amount_kzt, created_at, updated_at) VALUES (?, ?, ?, ?, ?)",
                (order_id, product.id, product.price_kzt, stamp, stamp),
            )
            await self._db.commit()
        order = await self.get(order_id)
        assert order is not None
        return order

    async def get(self, order_id: str) -> Order | None:
        async with self._db.execute("SELECT * FROM orders WHERE id = ?", (order_id,)) as cursor:
            row = await cursor.fetchone()
        return None if row is None else _order(row)

    async def history(self, order_id: str) -> list[tuple[str, str, int, str | None]]:
        """(from, to, invoice version, event id) of every status change, oldest first."""
        async with self._db.execute(
            "SELECT from_status, to_status, invoice_version, event_id FROM order_history"
            " WHERE order_id = ? ORDER BY rowid",
            (order_id,),
        ) as cursor:
            return [(r[0], r[1], r[2], r[3]) for r in await cursor.fetchall()]

    async def attach_invoice(self, order_id: str, invoice: Invoice, now: float) -> Order:
        """Link the invoice the API just created (or replayed) and apply it like any newer snapshot."""
        async with self._lock:
            await self._db.execute("BEGIN IMMEDIATE")
            order = await self.get(order_id)
            assert order is not None
            await self._apply(order, invoice, invoice.version, None, _stamp(now))
            await self._db.commit()
        updated = await self.get(order_id)
        assert updated is not None
        return updated

    async def record_event(self, event: Event, now: float) -> Outcome:
        """Process one verified delivery exactly once; returns what it did to the shop."""
        stamp = _stamp(now)
        async with self._lock:
            # IMMEDIATE takes SQLite's write lock before the read, so even a second shop process on the
            # same file cannot interleave between "seen?" and "record it".
            await self._db.execute("BEGIN IMMEDIATE")
            try:
                outcome = await self._record(event, stamp)
                await self._db.commit()
            except BaseException:
                await self._db.rollback()
                raise
        return outcome

    async def _record(self, event: Event, stamp: str) -> Outcome:
        async with self._db.execute(
            "SELECT outcome FROM webhook_events WHERE event_id = ?", (event.id,)
        ) as cursor:
            seen = await cursor.fetchone()
        if seen is not None:
            await self._db.execute(
                "UPDATE webhook_events SET deliveries = deliveries + 1, last_received_at = ?"
                " WHERE event_id = ?",
                (stamp, event.id),
            )
            return "duplicate"
        invoice = event.data.invoice
        version = event.invoice_version
        if version is None and invoice is not None:
            version = invoice.version
        order = await self.get(invoice.order_id) if invoice and invoice.order_id else None
        outcome: Outcome
        if invoice is None or version is None or order is None:
            outcome = "unrelated"
        elif order.invoice_id is not None and order.invoice_id != invoice.id:
            outcome = "unrelated"  # another invoice that happens to carry this order id
        elif version <= order.invoice_version:
            outcome = "outdated"
        else:
            await self._apply(order, invoice, version, event.id, stamp)
            outcome = "applied"
        await self._db.execute(
            "INSERT INTO webhook_events (event_id, type, order_id, invoice_version, outcome,"
            " first_received_at, last_received_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (event.id, event.type, order.id if order else None, version, outcome, stamp, stamp),
        )
        return outcome

    async def _apply(
        self, order: Order, invoice: Invoice, version: int, event_id: str | None, stamp: str
    ) -> None:
        if version <= order.invoice_version:
            return
        status = order_status_for(invoice.status)
        await self._db.execute(
            "UPDATE orders SET status = ?, invoice_id = ?, checkout_url = ?, invoice_status = ?,"
            " invoice_flags = ?, invoice_version = ?, updated_at = ?,"
            " paid_at = CASE WHEN ? = 'paid' THEN COALESCE(paid_at, ?) ELSE paid_at END"
            " WHERE id = ?",
            (
                status,
                invoice.id,
                invoice.checkout_url,
                invoice.status,
                ",".join(invoice.flags),
                version,
                stamp,
                status,
                stamp,
                order.id,
            ),
        )
        if status != order.status:
            await self._db.execute(
                "INSERT INTO order_history (order_id, from_status, to_status, invoice_version, event_id, at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (order.id, order.status, status, version, event_id, stamp),
            )

    async def count_rejected(self) -> None:
        async with self._lock:
            await self._db.execute(
                "INSERT INTO counters (name, value) VALUES ('rejected', 1)"
                " ON CONFLICT(name) DO UPDATE SET value = value + 1"
            )
            await self._db.commit()

    async def stats(self) -> WebhookStats:
        async with self._db.execute(
            "SELECT COALESCE(SUM(deliveries), 0), COALESCE(SUM(deliveries - 1), 0),"
            " COUNT(*) FILTER (WHERE outcome = 'applied'), COUNT(*) FILTER (WHERE outcome = 'outdated'),"
            " COUNT(*) FILTER (WHERE outcome = 'unrelated'),"
            " (SELECT COALESCE(MAX(value), 0) FROM counters WHERE name = 'rejected')"
            " FROM webhook_events"
        ) as cursor:
            row: Any = await cursor.fetchone()
        return WebhookStats(*(int(v) for v in row))
