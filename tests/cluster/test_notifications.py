"""LISTEN/NOTIFY: a commit to the outbox through one store wakes the on_commit listeners of another."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from gateway.checkout.stream import HUB
from gateway.clock import SystemClock
from gateway.cluster import CommitNotifications
from gateway.outbox import insert_event, prepare_event
from gateway.store import PostgresStore, StoreError, Tx
from tests.api.test_checkout_page import MEDIUM, SseReader, Streams, btc_fact
from tests.conftest import GatewayFactory, pg_dsn


@pytest.fixture
async def two_stores(pg_schema: str) -> AsyncIterator[tuple[PostgresStore, PostgresStore]]:
    writer = await PostgresStore.open(pg_dsn(), schema=pg_schema, pool_size=2)
    reader = await PostgresStore.open(pg_dsn(), schema=pg_schema, pool_size=2)
    try:
        yield writer, reader
    finally:
        await writer.close()
        await reader.close()


@pytest.fixture
async def streams() -> AsyncIterator[Streams]:
    opened = Streams()
    yield opened
    for response in opened.opened:
        response.close()


async def event_unit(tx: Tx) -> None:
    await insert_event(tx, prepare_event(event_type="test.ping", now=SystemClock().now(), data={}))


class Wakes:
    def __init__(self) -> None:
        self.count = 0
        self.event = asyncio.Event()

    def __call__(self) -> None:
        self.count += 1
        self.event.set()

    async def wait(self, seconds: float) -> bool:
        try:
            async with asyncio.timeout(seconds):
                await self.event.wait()
        except TimeoutError:
            return False
        return True

    def reset(self) -> None:
        self.count = 0
        self.event.clear()


async def listening(store: PostgresStore, **settings: Any) -> CommitNotifications:
    notifications = CommitNotifications(store, check_seconds=0.1, reconnect_initial_seconds=0.1, **settings)
    notifications.start()
    assert await notifications.wait_listening(5)
    await asyncio.sleep(0.1)  # the wake-up that follows every (re)connection
    return notifications


async def test_an_outbox_commit_through_one_store_wakes_the_listeners_of_another(
    two_stores: tuple[PostgresStore, PostgresStore],
) -> None:
    writer, reader = two_stores
    wakes = Wakes()
    reader.on_commit(wakes)
    notifications = await listening(reader)
    try:
        wakes.reset()
        await writer.transaction(event_unit)
        assert await wakes.wait(5)
        assert notifications.received == 1

        # A unit that writes no outbox row, and one rolled back, notify nobody.
        wakes.reset()
        await writer.transaction(lambda tx: tx.execute("DELETE FROM consumer_cursors WHERE consumer = 'x'"))

        async def fails(tx: Tx) -> None:
            await event_unit(tx)
            raise StoreError("changed my mind")

        with pytest.raises(StoreError):
            await writer.transaction(fails)
        await asyncio.sleep(0.5)
        assert wakes.count == 0 and notifications.received == 1

        # The reader's own commit wakes its listeners once, locally; its notification is not counted again.
        await reader.transaction(event_unit)
        await asyncio.sleep(0.5)
        assert wakes.count == 1 and notifications.received == 1
    finally:
        await notifications.stop()


async def test_the_listener_reconnects_after_its_session_is_killed(
    two_stores: tuple[PostgresStore, PostgresStore],
) -> None:
    writer, reader = two_stores
    wakes = Wakes()
    reader.on_commit(wakes)
    notifications = await listening(reader)
    try:
        pid = notifications.backend_pid
        assert pid is not None
        admin = await asyncpg.connect(pg_dsn())
        try:
            assert await admin.fetchval("SELECT pg_terminate_backend($1)", pid)
        finally:
            await admin.close()
        deadline = asyncio.get_running_loop().time() + 10
        while notifications.reconnects < 1 or not notifications.connected:
            assert asyncio.get_running_loop().time() < deadline, "the listener did not reconnect"
            await asyncio.sleep(0.05)
        assert notifications.backend_pid != pid
        await asyncio.sleep(0.1)
        wakes.reset()
        await writer.transaction(event_unit)
        assert await wakes.wait(5)
    finally:
        await notifications.stop()


async def test_a_checkout_stream_on_one_gateway_hears_a_change_another_gateway_committed(
    make_gateway: GatewayFactory, streams: Streams
) -> None:
    writer = await make_gateway()
    reader = await make_gateway()
    reader.app[HUB].poll_seconds = 60  # far beyond the test's wait: only the notification can wake it
    invoice = await writer.create_invoice(MEDIUM, assets=["BTC"])
    stream: SseReader = await streams.open(reader, invoice["id"])
    assert (await stream.status())["phase"] != "underpaid"
    await asyncio.sleep(0.2)
    started = asyncio.get_running_loop().time()
    await writer.service.record_payment(btc_fact(invoice, 1000, "de" * 32 + ":0"))
    assert (await stream.status(timeout=5))["phase"] == "underpaid"
    assert asyncio.get_running_loop().time() - started < 5
