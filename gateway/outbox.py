"""The transactional outbox and the consumers that read it.

Every state change writes its event (``insert_event(tx, prepare_event(...))``) in the SAME store
transaction as the change, so an event exists iff the change committed. Preparing (serialising) is
separate from inserting so that hot paths can do it before their unit. Consumers (webhook dispatcher, ledger, audit log, metrics, checkout streams) each
keep a cursor in ``consumer_cursors`` and advance it in the same transaction as their own effects, so a
crash between reading and acting replays events rather than losing them (at-least-once; consumers make
their effects idempotent by event id).

With the single SQLite writer, ``seq`` grows in commit order, so "everything after my cursor" never skips a
row committed later with a smaller number. The PostgreSQL store keeps the same guarantee by serialising the
units that insert into the outbox from their first insert to their commit (an advisory lock; postgres.py),
which is why events are written with a statement that starts ``INSERT INTO outbox``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import structlog

from gateway import jsonutil
from gateway.aio import wait_for_event
from gateway.clock import Clock, isoformat
from gateway.ids import new_id
from gateway.store import Store, Tx

log = structlog.get_logger("gateway.outbox")


@dataclass(frozen=True, slots=True)
class OutboxEvent:
    seq: int
    id: str
    type: str
    merchant_id: str | None
    invoice_id: str | None
    invoice_version: int | None
    created_at: str
    payload: dict[str, Any]


def event_body(
    event_id: str, event_type: str, created_at: datetime, invoice_version: int | None, data: dict[str, Any]
) -> dict[str, Any]:
    """The JSON object consumers (and webhook receivers) get: id, type, created, version, data."""
    return {
        "id": event_id,
        "object": "event",
        "type": event_type,
        "created_at": isoformat(created_at),
        "invoice_version": invoice_version,
        "data": data,
    }


@dataclass(frozen=True, slots=True)
class PreparedEvent:
    """An event serialised ahead of its transaction, so the unit only inserts it."""

    id: str
    type: str
    merchant_id: str | None
    invoice_id: str | None
    invoice_version: int | None
    created_at: str
    payload: str


def prepare_event(
    *,
    event_type: str,
    now: datetime,
    data: dict[str, Any],
    merchant_id: str | None = None,
    invoice_id: str | None = None,
    invoice_version: int | None = None,
) -> PreparedEvent:
    event_id = new_id("evt")
    body = event_body(event_id, event_type, now, invoice_version, data)
    return PreparedEvent(
        event_id,
        event_type,
        merchant_id,
        invoice_id,
        invoice_version,
        body["created_at"],
        jsonutil.dumps(body),
    )


async def insert_event(tx: Tx, event: PreparedEvent) -> str:
    await tx.execute(
        "INSERT INTO outbox (id, type, merchant_id, invoice_id, invoice_version, created_at, payload)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        (
            event.id,
            event.type,
            event.merchant_id,
            event.invoice_id,
            event.invoice_version,
            event.created_at,
            event.payload,
        ),
    )
    return event.id


def row_to_event(row: dict[str, Any] | Any) -> OutboxEvent:
    return OutboxEvent(
        seq=int(row["seq"]),
        id=row["id"],
        type=row["type"],
        merchant_id=row["merchant_id"],
        invoice_id=row["invoice_id"],
        invoice_version=row["invoice_version"],
        created_at=row["created_at"],
        payload=jsonutil.loads(row["payload"]),
    )


async def read_events_after(tx: Tx, position: int, limit: int) -> list[OutboxEvent]:
    rows = await tx.fetchall(
        "SELECT seq, id, type, merchant_id, invoice_id, invoice_version, created_at, payload"
        " FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?",
        (position, limit),
    )
    return [row_to_event(row) for row in rows]


class OutboxConsumer(Protocol):
    """Something that must see every event exactly in order, at least once, across restarts."""

    name: str

    async def handle(self, tx: Tx, events: Sequence[OutboxEvent]) -> None:
        """Apply ``events`` inside ``tx``; the cursor advances in the same transaction."""
        ...


async def cursor_position(tx: Tx, consumer: str) -> int:
    row = await tx.fetchone("SELECT position FROM consumer_cursors WHERE consumer = ?", (consumer,))
    return 0 if row is None else int(row["position"])


class OutboxRunner:
    """Feeds each registered consumer the events after its cursor; wakes on commits, polls as a fallback."""

    def __init__(
        self,
        store: Store,
        clock: Clock,
        consumers: Sequence[OutboxConsumer],
        *,
        batch_size: int = 500,
        poll_seconds: float = 1.0,
    ) -> None:
        self._store = store
        self._clock = clock
        self._consumers = list(consumers)
        self._batch = batch_size
        self._poll = poll_seconds
        self._wakeups = {consumer.name: asyncio.Event() for consumer in self._consumers}
        self._tasks: list[asyncio.Task[None]] = []
        store.on_commit(self._notify)

    def _notify(self) -> None:
        for event in self._wakeups.values():
            event.set()

    def start(self) -> None:
        for consumer in self._consumers:
            self._tasks.append(asyncio.create_task(self._run(consumer), name=f"outbox:{consumer.name}"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()

    async def drain_once(self, consumer: OutboxConsumer) -> int:
        """Deliver one batch to ``consumer``; returns how many events it handled (0 = caught up)."""

        async def peek(tx: Tx) -> bool:
            position = await cursor_position(tx, consumer.name)
            return bool(await read_events_after(tx, position, 1))

        # Look first on a reader: an idle consumer must not commit empty transactions (each commit wakes
        # every consumer again).
        if not await self._store.read(peek):
            return 0

        async def unit(tx: Tx) -> int:
            position = await cursor_position(tx, consumer.name)
            events = await read_events_after(tx, position, self._batch)
            if not events:
                return 0
            await consumer.handle(tx, events)
            await tx.execute(
                "INSERT INTO consumer_cursors (consumer, position, updated_at) VALUES (?, ?, ?)"
                " ON CONFLICT (consumer) DO UPDATE SET position = excluded.position,"
                " updated_at = excluded.updated_at",
                (consumer.name, events[-1].seq, isoformat(self._clock.now())),
            )
            return len(events)

        return await self._store.transaction(unit)

    async def _run(self, consumer: OutboxConsumer) -> None:
        wakeup = self._wakeups[consumer.name]
        failures = 0
        while True:
            wakeup.clear()
            try:
                handled = await self.drain_once(consumer)
                failures = 0
            except Exception:
                failures += 1
                log.exception("outbox.consumer_failed", consumer=consumer.name, failures=failures)
                await asyncio.sleep(min(30.0, 0.5 * 2 ** min(failures, 6)))
                continue
            if handled:
                continue
            await wait_for_event(wakeup, self._poll)
