"""Webhook deliveries claimed by dispatchers of several processes: disjoint claims (FOR UPDATE SKIP LOCKED)."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from gateway.accounts.merchants import MerchantRegistry
from gateway.clock import ManualClock, isoformat
from gateway.ids import new_id
from gateway.money import Asset
from gateway.outbox import insert_event, prepare_event
from gateway.store import PostgresStore, Tx
from gateway.webhooks.dispatcher import DispatchSettings, WebhookDispatcher
from gateway.webhooks.endpoints import EndpointRegistry
from gateway.webhooks.targets import TargetPolicy
from sandbox.demo import demo_account_keys
from tests.conftest import pg_dsn

N = 150


async def due_deliveries(store: PostgresStore, clock: ManualClock, n: int) -> set[str]:
    """A merchant, an endpoint, and ``n`` events with one due delivery each; the delivery ids."""
    btc, eth = demo_account_keys()
    merchant, _ = await MerchantRegistry(store, clock, key_environment="test", auth_cache_seconds=0).create(
        "Claims Shop", btc_account_key=btc, eth_account_key=eth, accepted_assets=[Asset.BTC]
    )
    policy = TargetPolicy(allow_loopback=True, allow_private=False, require_https=False)
    endpoint = await EndpointRegistry(store, clock, policy, max_per_merchant=16).create(
        merchant.id, "http://127.0.0.1:9/hook", ["*"], None
    )
    now = clock.now()
    due, stamp = isoformat(now - timedelta(seconds=1)), isoformat(now)
    ids = [new_id("whd") for _ in range(n)]

    async def unit(tx: Tx) -> None:
        for delivery_id in ids:
            event_id = await insert_event(
                tx, prepare_event(event_type="test.ping", now=now, merchant_id=merchant.id, data={})
            )
            await tx.execute(
                "INSERT INTO webhook_deliveries (id, event_id, endpoint_id, merchant_id, status, attempts,"
                " next_attempt_at, lease_until, reason, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, 'pending', 0, ?, NULL, 'event', ?, ?)",
                (delivery_id, event_id, endpoint.id, merchant.id, due, stamp, stamp),
            )

    await store.transaction(unit)
    return set(ids)


async def test_two_dispatchers_on_two_stores_claim_disjoint_deliveries(pg_schema: str) -> None:
    clock = ManualClock()
    stores = [await PostgresStore.open(pg_dsn(), schema=pg_schema, pool_size=3) for _ in range(2)]
    try:
        wanted = await due_deliveries(stores[0], clock, N)
        policy = TargetPolicy(allow_loopback=True, allow_private=False, require_https=False)
        settings = DispatchSettings(max_in_flight=20, max_in_flight_per_endpoint=1000)
        dispatchers = [WebhookDispatcher(store, clock, settings, policy) for store in stores]
        assert all(d._claim_sql.endswith("FOR UPDATE OF d SKIP LOCKED") for d in dispatchers)
        claimed: list[list[str]] = [[], []]
        for _ in range(N):  # claim rounds, both dispatchers at once, until nothing is left
            rounds = await asyncio.gather(*(d._claim() for d in dispatchers))
            for mine, jobs in zip(claimed, rounds, strict=True):
                mine.extend(job.delivery_id for job in jobs)
            if not any(rounds):
                break
        first, second = (set(ids) for ids in claimed)
        assert len(first) == len(claimed[0]) and len(second) == len(claimed[1])  # none twice by one
        assert not first & second  # none by both
        assert first | second == wanted  # every due delivery claimed, and leased
        leased = await stores[1].read(
            lambda tx: tx.fetchone(
                "SELECT count(*) AS n FROM webhook_deliveries WHERE lease_until IS NOT NULL"
            )
        )
        assert leased is not None and leased["n"] == N
    finally:
        for store in stores:
            await store.close()
