"""Commits of other processes, as wake-ups: LISTEN for the PostgreSQL store's commit notifications.

Everything that waits for new outbox events (the outbox runner, the webhook dispatcher, the checkout
hub) wakes on ``store.on_commit``, which fires after commits made *by this process*. With several
processes on one PostgreSQL store, the change that matters is often another one's: a follower creates an
invoice the leader's outbox runner must fan out; the leader's watcher settles an invoice whose checkout
page is open on a follower. Each unit that writes the outbox also queues a ``pg_notify`` (postgres.py),
delivered by the server when, and only if, that unit commits.

:class:`CommitNotifications` keeps a connection of its own LISTENing on that channel and calls the store's
``on_commit`` listeners (``PostgresStore.wake``) for every notification from another store instance on the
same schema, so those loops wake within a round trip of the other process's commit instead of at their
next poll. Nothing depends on it for correctness: every loop still polls (the outbox runner and the hub
every second, the dispatcher every half second), so while the connection is down changes arrive at
the poll's pace. A lost connection is reopened with exponential backoff (capped at
``reconnect_max_seconds``), and the listeners are woken once after every (re)connection, for whatever
was committed while nobody listened. The connection is checked every ``check_seconds`` (asyncpg notices a
closed socket only when it reads).
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any

import structlog

from gateway.aio import cancel_and_wait, wait_for_event
from gateway.store.postgres import NOTIFY_CHANNEL, PostgresStore

log = structlog.get_logger("gateway.cluster")

LISTEN_SESSION = {"application_name": "cryptocity-listen"}


class CommitNotifications:
    """Wakes ``store``'s commit listeners when another process commits to the outbox of the same schema."""

    def __init__(
        self,
        store: PostgresStore,
        *,
        check_seconds: float = 1.0,
        check_timeout_seconds: float = 2.0,
        reconnect_initial_seconds: float = 0.5,
        reconnect_max_seconds: float = 10.0,
    ) -> None:
        self._store = store
        self._check = check_seconds
        self._timeout = check_timeout_seconds
        self._initial = reconnect_initial_seconds
        self._max = reconnect_max_seconds
        self._schema = store.schema or ""
        self._task: asyncio.Task[None] | None = None
        self._listening = asyncio.Event()
        self.connected = False
        self.backend_pid: int | None = None  # the LISTEN session's server process, while connected
        self.received = 0  # notifications from other store instances that woke the listeners
        self.reconnects = 0

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="cluster-notifications")

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)

    async def wait_listening(self, timeout: float) -> bool:
        """True once the LISTEN is in place (tests, and start-up when a caller wants it)."""
        return await wait_for_event(self._listening, timeout)

    def notified(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        """asyncpg's listener callback: ``payload`` is ``<schema>/<store instance>`` (postgres.py)."""
        schema, _, instance = payload.partition("/")
        if schema != self._schema or instance == self._store.instance:
            return  # another schema's gateways, or our own commit (its listeners already ran)
        self.received += 1
        self._store.wake()

    async def _run(self) -> None:
        failures = 0
        while True:
            conn: Any = None
            delay = self._initial
            try:
                conn = await self._store.connect_dedicated(settings=LISTEN_SESSION)
                closed = asyncio.Event()
                conn.add_termination_listener(functools.partial(_set_event, closed))
                await conn.add_listener(NOTIFY_CHANNEL, self.notified)
                self.backend_pid = int(conn.get_server_pid())
                self.connected = True
                self._listening.set()
                if failures:
                    self.reconnects += 1
                    log.info("cluster.listening_again", after_failures=failures)
                failures = 0
                self._store.wake()  # whatever was committed while no one listened
                while True:
                    if await wait_for_event(closed, self._check):
                        raise ConnectionError("the notification connection closed")
                    await conn.fetchval("SELECT 1", timeout=self._timeout)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures += 1
                delay = min(self._max, self._initial * 2 ** min(failures - 1, 10))
                log.warning(
                    "cluster.listen_lost",
                    error=f"{type(exc).__name__}: {exc}",
                    retry_in=delay,
                    failures=failures,
                )
            finally:
                self.connected = False
                self.backend_pid = None
                self._listening.clear()
                if conn is not None:
                    conn.terminate()
            await asyncio.sleep(delay)


def _set_event(event: asyncio.Event, _conn: Any) -> None:
    event.set()
