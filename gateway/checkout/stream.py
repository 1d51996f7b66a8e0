"""The checkout status hub: tells open checkout pages that their invoice changed.

Every invoice change commits an outbox event that names the invoice, so the hub tails the ``outbox`` table
and wakes the pages (Server-Sent Events streams) subscribed to that invoice; each stream then re-reads the
invoice itself. The hub therefore carries no invoice data and needs no durable cursor: a page that
(re)connects reads the invoice first and only needs changes committed after that read.

Why it is built this way:

- It wakes on the store's commit hook, the same wake-up :class:`gateway.outbox.OutboxRunner` uses, so a
  change reaches the page within one read of its commit. On PostgreSQL that hook also fires for commits
  of other gateway processes on the same schema (their NOTIFY, gateway/cluster/notify.py: the leader's
  watcher settling an invoice whose page is open here); a slow fallback poll covers the rest (the CLI on
  SQLite, or the notification connection being down). It reads nothing at all while no page is open.
- The cursor starts at the outbox's current end when the first page subscribes (there is nothing older
  worth reading) and is forgotten when the last one leaves, so an idle gateway never builds a backlog.
  A subscriber's cursor read completes before the page reads the invoice, so no change committed after
  that read can be missed.
- A subscription is a plain object in a dict, not a task: a stream that ends, however it ends (client
  gone, handler cancelled, shutdown), removes it in a ``finally`` and leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import structlog
from aiohttp import web

from gateway import jsonutil
from gateway.store import Store, Tx

__all__ = ["HUB", "CheckoutHub", "HubClosed", "Subscription", "sse_comment", "sse_event"]

log = structlog.get_logger("gateway.checkout")


class HubClosed(Exception):
    """The gateway is shutting down: no new stream is started."""


@dataclass(eq=False, slots=True)
class Subscription:
    """One open stream's interest in one invoice; ``changed`` is set when the invoice may have changed."""

    invoice_id: str
    changed: asyncio.Event = field(default_factory=asyncio.Event)


class CheckoutHub:
    """Fans outbox events out to the subscribers of each invoice (see the module docstring)."""

    def __init__(
        self,
        store: Store,
        *,
        poll_seconds: float = 1.0,
        heartbeat_seconds: float = 15.0,
        liveness_seconds: float = 1.0,
        batch_size: int = 1000,
    ) -> None:
        self._store = store
        self.poll_seconds = poll_seconds  # fallback for commits no notification announced
        self.heartbeat_seconds = heartbeat_seconds  # SSE comment lines keep proxies from closing idle streams
        self.liveness_seconds = liveness_seconds  # how often a stream checks that its client is still there
        self._batch = batch_size
        self._subscribers: dict[str, set[Subscription]] = {}
        self._count = 0
        self._cursor: int | None = None  # last outbox seq looked at; None while no one listens
        self._active = asyncio.Event()  # set while there are subscribers
        self._wake = asyncio.Event()  # set by every commit
        self._task: asyncio.Task[None] | None = None
        self.closing = False
        self.reads = 0  # outbox reads so far (tests check the hub is idle without subscribers)
        store.on_commit(self._wake.set)

    # -- lifecycle -----------------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="checkout-hub")

    def close_streams(self) -> None:
        """Refuse new streams and wake every open one so that it ends (on shutdown, before the wait)."""
        self.closing = True
        for subscriptions in self._subscribers.values():
            for subscription in subscriptions:
                subscription.changed.set()

    async def stop(self) -> None:
        self.close_streams()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    # -- subscribers ---------------------------------------------------------------------------------

    @property
    def subscriber_count(self) -> int:
        return self._count

    @contextlib.asynccontextmanager
    async def subscribe(self, invoice_id: str) -> AsyncIterator[Subscription]:
        """Be woken whenever an outbox event about ``invoice_id`` commits, for the ``async with`` block."""
        if self.closing:
            raise HubClosed("the gateway is shutting down")
        if self._cursor is None:
            end = await self._store.read(_outbox_end)
            if self._cursor is None:  # another first subscriber may have set it meanwhile: keep the lower
                self._cursor = end
        subscription = Subscription(invoice_id)
        self._subscribers.setdefault(invoice_id, set()).add(subscription)
        self._count += 1
        self._active.set()
        try:
            yield subscription
        finally:
            peers = self._subscribers.get(invoice_id)
            if peers is not None:
                peers.discard(subscription)
                if not peers:
                    del self._subscribers[invoice_id]
            self._count -= 1
            if self._count == 0:
                self._active.clear()
                self._cursor = None

    # -- the tail ------------------------------------------------------------------------------------

    async def _run(self) -> None:
        failures = 0
        while True:
            await self._active.wait()
            self._wake.clear()
            try:
                more = await self.tail_once()
                failures = 0
            except Exception:
                failures += 1
                log.exception("checkout.hub_read_failed", failures=failures)
                await asyncio.sleep(min(10.0, 0.25 * 2 ** min(failures, 6)))
                continue
            if more:
                continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.poll_seconds):
                    await self._wake.wait()

    async def tail_once(self) -> bool:
        """Read the events after the cursor and wake their invoices' subscribers; True if a batch was full."""
        cursor = self._cursor
        if cursor is None:
            return False

        async def read(tx: Tx) -> list[tuple[int, str | None]]:
            rows = await tx.fetchall(
                "SELECT seq, invoice_id FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?", (cursor, self._batch)
            )
            return [(int(row["seq"]), row["invoice_id"]) for row in rows]

        self.reads += 1
        rows = await self._store.read(read)
        for _, invoice_id in rows:
            for subscription in self._subscribers.get(invoice_id or "", ()):
                subscription.changed.set()
        if rows and self._cursor is not None:  # None: everyone left while we read; start afresh next time
            self._cursor = max(self._cursor, rows[-1][0])
        return len(rows) == self._batch


async def _outbox_end(tx: Tx) -> int:
    row = await tx.fetchone("SELECT COALESCE(MAX(seq), 0) AS seq FROM outbox")
    return 0 if row is None else int(row["seq"])


# -- the Server-Sent Events wire format ---------------------------------------------------------------


def sse_event(event: str, data: object, event_id: str | None = None) -> bytes:
    """One SSE message. The JSON has no raw newlines, so it is always a single ``data:`` line."""
    lines = [f"event: {event}"]
    if event_id is not None:
        lines.append(f"id: {event_id}")
    lines.append("data: " + jsonutil.dumps(data))
    return ("\n".join(lines) + "\n\n").encode()


def sse_comment(text: str) -> bytes:
    """A comment line: ignored by EventSource, but it keeps the connection (and proxies) awake."""
    return f": {text}\n\n".encode()


HUB = web.AppKey("checkout_hub", CheckoutHub)
