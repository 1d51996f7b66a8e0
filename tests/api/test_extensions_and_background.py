"""Extension points and background work: outbox consumers with cursors, routes, expiry, index blocks."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from gateway.address_pool import AddressPool, IndexAllocator
from gateway.addresses import BitcoinAccount
from gateway.api.state import OUTBOX
from gateway.clock import ManualClock
from gateway.extensions import Extensions, RouteExtension
from gateway.money import Chain
from gateway.outbox import OutboxEvent
from gateway.store import SqliteStore, Store, StoreUnavailable, Tx
from gateway.store.sqlite import UnitSuspended
from sandbox.demo import demo_account_keys
from tests.conftest import GatewayFactory, StoreFactory
from tests.unit.test_ledger_consumer import HoldForPayer, fact


class RecordingConsumer:
    """Keeps what it handled in the store, as a real consumer keeps its effects."""

    name = "recorder"

    def __init__(self) -> None:
        self.seen: list[str] = []

    async def handle(self, tx: Tx, events: Sequence[OutboxEvent]) -> None:
        for event in events:
            await tx.execute(
                "INSERT INTO consumer_cursors (consumer, position, updated_at) VALUES (?, ?, 'seen')",
                (f"seen:{event.id}", event.seq),
            )
        tx.after_commit(lambda: self.seen.extend(e.type for e in events))


async def _eventually(condition: Any, seconds: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


async def test_outbox_consumer_sees_every_event_once_in_order(make_gateway: GatewayFactory) -> None:
    consumer = RecordingConsumer()
    gateway = await make_gateway(Extensions(consumers=[consumer]))
    for amount in ("1000.00", "2000.00", "3000.00"):
        await gateway.create_invoice(amount)
    events = await gateway.store.read(lambda tx: tx.fetchall("SELECT type FROM outbox ORDER BY seq"))
    await _eventually(lambda: len(consumer.seen) == len(events))
    assert consumer.seen == [e["type"] for e in events]
    assert consumer.seen.count("invoice.created") == 3
    cursor = await gateway.store.read(
        lambda tx: tx.fetchone("SELECT position FROM consumer_cursors WHERE consumer = 'recorder'")
    )
    last = await gateway.store.read(lambda tx: tx.fetchone("SELECT max(seq) AS seq FROM outbox"))
    assert cursor is not None and last is not None and cursor["position"] == last["seq"]
    # a drain with nothing new changes nothing and commits nothing
    commits = gateway.store.stats.commits  # type: ignore[attr-defined]
    assert await gateway.app[OUTBOX].drain_once(consumer) == 0
    assert gateway.store.stats.commits == commits  # type: ignore[attr-defined]


async def test_a_restarted_consumer_resumes_from_its_cursor(store_factory: StoreFactory) -> None:
    from gateway.clock import SystemClock
    from gateway.outbox import OutboxRunner, insert_event, prepare_event

    store = await store_factory.open("o")
    clock = SystemClock()
    try:
        for i in range(5):
            await store.transaction(
                lambda tx, i=i: insert_event(
                    tx, prepare_event(event_type=f"test.{i}", now=clock.now(), data={"i": i})
                )
            )
        first = RecordingConsumer()
        runner = OutboxRunner(store, clock, [first], batch_size=2)
        assert await runner.drain_once(first) == 2  # then "crash": a new runner and consumer object
        second = RecordingConsumer()
        runner = OutboxRunner(store, clock, [second], batch_size=10)
        assert await runner.drain_once(second) == 3
        assert first.seen + second.seen == [f"test.{i}" for i in range(5)]
    finally:
        await store.close()


async def test_route_extension_is_mounted_and_documented(make_gateway: GatewayFactory) -> None:
    sub = web.Application()

    async def hello(request: web.Request) -> web.Response:
        return web.json_response({"hello": "regulator"})

    sub.router.add_get("/hello", hello)
    route = RouteExtension(
        "/sandbox/v1",
        sub,
        openapi_paths={
            "/sandbox/v1/hello": {
                "get": {"operationId": "hello", "responses": {"200": {"description": "OK"}}}
            }
        },
    )
    gateway = await make_gateway(Extensions(routes=[route]))
    response = await gateway.client.get("/sandbox/v1/hello")
    assert response.status == 200 and await response.json() == {"hello": "regulator"}
    spec = await (await gateway.client.get("/openapi.json")).json()
    assert "/sandbox/v1/hello" in spec["paths"] and "/v1/invoices" in spec["paths"]


async def test_expiry_sweeper_expires_invoices_when_the_clock_passes(
    make_gateway: GatewayFactory, clock: ManualClock
) -> None:
    gateway = await make_gateway(CRYPTOCITY_INVOICES__EXPIRY_SWEEP_SECONDS="0.05")
    invoice = await gateway.create_invoice("1000.00", expires_in=60)
    clock.advance(59)
    await asyncio.sleep(0.2)
    assert (await gateway.service.get(None, invoice["id"])).state.status.value == "new"
    clock.advance(2)

    async def status() -> str:
        return (await gateway.service.get(None, invoice["id"])).state.status.value

    deadline = asyncio.get_running_loop().time() + 10
    while await status() != "expired":
        assert asyncio.get_running_loop().time() < deadline, "the sweeper did not expire the invoice"
        await asyncio.sleep(0.05)
    kinds = await gateway.store.read(
        lambda tx: tx.fetchall("SELECT type FROM outbox WHERE invoice_id = ? ORDER BY seq", (invoice["id"],))
    )
    assert [k["type"] for k in kinds] == ["invoice.created", "invoice.expired"]


async def _store_with_counter(store_factory: StoreFactory) -> Store:
    store = await store_factory.open("idx")
    await store.transaction(
        lambda tx: tx.execute(
            "INSERT INTO address_counters (chain, account_key, next_index) VALUES ('bitcoin', 'k', 0)"
        )
    )
    return store


async def test_index_blocks_are_unique_across_restarts_and_concurrency(store_factory: StoreFactory) -> None:
    store = await _store_with_counter(store_factory)
    try:
        first = IndexAllocator(store, block_size=7)
        taken = await asyncio.gather(*(first.take(Chain.BITCOIN, "k") for _ in range(30)))
        assert sorted(taken) == list(range(30))  # contiguous within a process
        restarted = IndexAllocator(store, block_size=7)  # a restart: memory gone, counter kept
        after = [await restarted.take(Chain.BITCOIN, "k") for _ in range(5)]
        assert min(after) >= 30 and len(set(after)) == 5
        counter = await store.read(lambda tx: tx.fetchone("SELECT next_index FROM address_counters"))
        assert counter is not None and counter["next_index"] > max(after)  # reserved before handed out
    finally:
        await store.close()


async def test_with_blocks_only_the_pool_derives_only_the_blocks_of_its_own_allocator(
    store_factory: StoreFactory,
) -> None:
    """Two processes' allocators on one counter take interleaved blocks; each pool must derive its own
    blocks ahead and none of the other's (else N processes derive N times the addresses)."""
    btc, _ = demo_account_keys()
    store = await store_factory.open("idx")
    await store.transaction(
        lambda tx: tx.execute(
            "INSERT INTO address_counters (chain, account_key, next_index) VALUES ('bitcoin', ?, 0)", (btc,)
        )
    )
    pool = AddressPool(btc_hrp="bcrt", pool_size=64, blocks_only=True)
    blocks: list[tuple[int, int]] = []

    def reserved(chain: Chain, account_key: str, start: int, end: int) -> None:
        blocks.append((start, end))
        pool.reserved(chain, account_key, start, end)

    ours = IndexAllocator(store, block_size=5, on_reserved=reserved)
    theirs = IndexAllocator(store, block_size=5)  # another process on the same counter
    try:
        pool.prime(Chain.BITCOIN, btc, 0)  # nothing yet: the next indexes may be the other process's
        assert pool.ready_indexes(Chain.BITCOIN, btc) == []
        account = BitcoinAccount(btc)
        for _ in range(12):
            index = await ours.take(Chain.BITCOIN, btc)
            assert pool.address(Chain.BITCOIN, btc, index) == account.address(index, "bcrt")
            await theirs.take(Chain.BITCOIN, btc)
            for _ in range(20):  # let the refill run (in-process derivation, a few addresses per step)
                await asyncio.sleep(0)
        ready = pool.ready_indexes(Chain.BITCOIN, btc)
        assert ready, "the pool derived nothing ahead"
        assert all(any(start <= i < end for start, end in blocks) for i in ready), (ready, blocks)
        assert pool.hits > 0
        counter = await store.read(lambda tx: tx.fetchone("SELECT next_index FROM address_counters"))
        assert counter is not None and sum(end - start for start, end in blocks) < counter["next_index"]
    finally:
        await ours.close()
        await theirs.close()
        await pool.close()
        await store.close()


async def test_a_failed_reservation_is_retried_by_the_next_caller(store_factory: StoreFactory) -> None:
    store = await _store_with_counter(store_factory)
    try:
        allocator = IndexAllocator(store, block_size=3)
        with pytest.raises(LookupError):
            await allocator.take(Chain.BITCOIN, "missing-key")
        await store.transaction(
            lambda tx: tx.execute(
                "INSERT INTO address_counters (chain, account_key, next_index) VALUES ('bitcoin', 'missing-key', 0)"
            )
        )
        assert await allocator.take(Chain.BITCOIN, "missing-key") == 0
    finally:
        await store.close()


async def test_a_unit_that_awaits_anything_but_its_tx_is_refused(tmp_path: Path) -> None:
    store = await SqliteStore.open(tmp_path / "s.sqlite3")
    try:

        async def sleepy(tx: Tx) -> None:
            await tx.execute("INSERT INTO consumer_cursors VALUES ('x', 1, 't')")
            await asyncio.sleep(0.01)

        with pytest.raises(UnitSuspended):
            await store.transaction(sleepy)
        row = await store.read(lambda tx: tx.fetchone("SELECT count(*) AS n FROM consumer_cursors"))
        assert row is not None and row["n"] == 0  # rolled back
    finally:
        await store.close()
    with pytest.raises(StoreUnavailable):
        await store.transaction(sleepy)


async def test_expiry_skips_held_invoices_and_pages_past_them(
    make_gateway: GatewayFactory, clock: ManualClock
) -> None:
    """Held invoices stay open past their time; more of them than one page must not stop the sweep from
    reaching a later invoice (the full-city simulation stalled on this with ~600 holds a day)."""
    gateway = await make_gateway(Extensions(payment_policy=HoldForPayer()))
    held = [await gateway.create_invoice("1000.00", assets=["BTC"], expires_in=60) for _ in range(5)]
    for number, invoice in enumerate(held):
        await gateway.service.record_payment(fact(invoice, f"{number + 1:02x}" * 32 + ":0", payer="suspect"))
    clock.advance(30)
    ordinary = [await gateway.create_invoice("1000.00", expires_in=60) for _ in range(3)]
    clock.advance(120)
    assert await gateway.service.expire_due(page=2) == 3
    for invoice in ordinary:
        assert (await gateway.service.get(None, invoice["id"])).state.status.value == "expired"
    for invoice in held:
        state = (await gateway.service.get(None, invoice["id"])).state
        assert state.status.value == "new" and "on_hold" in {f.value for f in state.flags}
    assert await gateway.service.expire_due(page=2) == 0
