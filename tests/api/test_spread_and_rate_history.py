"""A merchant's spread in the locked quote, and the rate history kept in the store.

The spread lowers the locked KZT-per-coin rate, so the customer is asked for more coin; the quote shows the
market (mid) rate, the locked rate and the spread, and never changes once the invoice exists. History: every
distinct derived rate is written to ``rate_history`` and read back through ``GET /v1/rates/history``.
"""

from __future__ import annotations

from datetime import timedelta
from decimal import ROUND_DOWN, Decimal
from typing import Any

import pytest

from gateway.accounts.merchants import MerchantError
from gateway.api.state import RATES
from gateway.money import Asset, crypto_due
from gateway.rates.base import AssetRate
from gateway.rates.history import RateHistory
from tests.api.test_live_rates import live_env, until
from tests.conftest import Gateway, GatewayFactory
from tests.fixtures.rates.fake_providers import FakeProviders

FIXED_BTC = Decimal("48450000.00")  # config.toml's [rates.fixed]


async def test_the_spread_lowers_the_locked_rate_and_is_shown_in_the_quote(gateway: Gateway) -> None:
    before = await gateway.create_invoice("10000.00", assets=["BTC"])
    assert before["quote"]["spread_bps"] == 0
    assert Decimal(before["quote"]["rates"]["BTC"]["kzt_per_unit"]) == FIXED_BTC

    merchant = await gateway.registry.set_spread(gateway.merchant_id, 150)
    assert merchant.spread_bps == 150 and merchant.public_view()["spread_bps"] == 150
    gateway.registry.auth_cache.invalidate_all()
    after = await gateway.create_invoice("10000.00", assets=["BTC"])

    rate = after["quote"]["rates"]["BTC"]
    locked = (FIXED_BTC * Decimal(9850) / Decimal(10000)).quantize(Decimal("0.00000001"), rounding=ROUND_DOWN)
    assert after["quote"]["spread_bps"] == 150
    assert Decimal(rate["mid_kzt_per_unit"]) == FIXED_BTC
    assert Decimal(rate["kzt_per_unit"]) == locked
    due = after["payment_methods"][0]["amount_due_minor"]
    assert due == crypto_due(1_000_000, locked, 8)
    assert due > before["payment_methods"][0]["amount_due_minor"]  # the customer pays ~1.5 % more coin

    # The first invoice's quote is locked: the new spread does not touch it.
    response = await gateway.client.get(f"/v1/invoices/{before['id']}", headers=gateway.auth())
    again = await response.json()
    assert again["quote"] == before["quote"]
    assert again["payment_methods"][0]["amount_due_minor"] == before["payment_methods"][0]["amount_due_minor"]


@pytest.mark.parametrize("bad", [-1, 10_000, 12.5, True])
async def test_a_spread_out_of_range_is_refused_with_the_field_named(gateway: Gateway, bad: Any) -> None:
    with pytest.raises(MerchantError) as caught:
        await gateway.registry.set_spread(gateway.merchant_id, bad)
    assert caught.value.field == "spread_bps"
    with pytest.raises(MerchantError):
        await gateway.registry.create(
            "Bad Spread", btc_account_key=None, eth_account_key=None, accepted_assets=[], spread_bps=bad
        )


async def test_the_spread_change_is_an_outbox_event(gateway: Gateway) -> None:
    await gateway.registry.set_spread(gateway.merchant_id, 25)
    row = await gateway.store.read(
        lambda tx: tx.fetchone("SELECT payload FROM outbox WHERE type = 'merchant.updated' ORDER BY seq DESC")
    )
    assert row is not None and '"spread_bps":[0,25]' in row["payload"].replace(" ", "")


async def history(gateway: Gateway, query: str = "") -> tuple[int, dict[str, Any]]:
    response = await gateway.client.get(f"/v1/rates/history{query}", headers=gateway.auth())
    return response.status, await response.json(content_type=None)


async def test_fixed_rates_are_recorded_once_at_start(gateway: Gateway) -> None:
    status, body = await history(gateway)
    assert status == 200
    assert {row["asset"]: row["kzt_per_unit"] for row in body["data"]} == {
        "BTC": "48450000.00",
        "ETH": "1683000.00",
        "USDT": "510.00",
    }
    assert all(row["sources"] == ["fixed"] for row in body["data"])


@pytest.mark.integration
async def test_live_rates_are_kept_in_the_history_without_repeats(
    make_gateway: GatewayFactory, providers: tuple[FakeProviders, str]
) -> None:
    _, base = providers
    gateway = await make_gateway(**live_env(base, "binance"))

    async def recorded() -> bool:
        _, body = await history(gateway, "?asset=BTC")
        return bool(body["data"])

    await until(recorded)
    status, body = await history(gateway, "?asset=btc")
    assert status == 200
    first = body["data"][0]
    assert first["asset"] == "BTC" and first["sources"] == ["binance:BTCUSDT*USDTKZT"]
    assert Decimal(first["kzt_per_unit"]) > 0

    # The same snapshot recorded again adds nothing (as after a restart that re-records it).
    rows_before = await gateway.store.read(lambda tx: tx.fetchone("SELECT count(*) AS n FROM rate_history"))
    store_history = RateHistory(gateway.store, gateway.clock, retention_days=400)
    refresher = gateway.app[RATES].refresher
    assert refresher is not None
    assert await store_history.record_rates(refresher.snapshot().rates.values()) == 0
    rows_after = await gateway.store.read(lambda tx: tx.fetchone("SELECT count(*) AS n FROM rate_history"))
    assert rows_after["n"] == rows_before["n"]


async def test_history_pages_filter_by_time_and_prune_by_retention(gateway: Gateway) -> None:
    store_history = RateHistory(gateway.store, gateway.clock, retention_days=30)
    await gateway.store.transaction(lambda tx: tx.execute("DELETE FROM rate_history"))

    start = gateway.clock.now()
    for minute in range(5):
        moment = start + timedelta(minutes=minute)
        rate = AssetRate(Asset.BTC, Decimal(48_000_000 + minute), ("test",), moment)
        assert await store_history.record_rates([rate]) == 1
        assert await store_history.record_rates([rate]) == 0  # the same observation again: no new row

    status, body = await history(gateway, "?asset=BTC&limit=2")
    assert status == 200 and [r["kzt_per_unit"] for r in body["data"]] == ["48000000", "48000001"]
    assert body["has_more"] and body["next_starting_after"] == body["data"][-1]["id"]
    _, rest = await history(gateway, f"?asset=BTC&limit=10&starting_after={body['next_starting_after']}")
    assert [r["kzt_per_unit"] for r in rest["data"]] == ["48000002", "48000003", "48000004"]
    assert not rest["has_more"] and rest["next_starting_after"] is None

    since = (start + timedelta(minutes=1)).isoformat()
    until_ = (start + timedelta(minutes=3)).isoformat()
    _, window = await history(
        gateway, f"?from={since.replace('+00:00', 'Z')}&to={until_.replace('+00:00', 'Z')}"
    )
    assert [r["kzt_per_unit"] for r in window["data"]] == ["48000001", "48000002"]

    # 31 days on, the next record prunes everything older than the 30-day retention.
    gateway.clock.advance(timedelta(days=31))
    fresh = AssetRate(Asset.BTC, Decimal(50_000_000), ("test",), gateway.clock.now())
    pruner = RateHistory(gateway.store, gateway.clock, retention_days=30)
    assert await pruner.record_rates([fresh]) == 1
    _, left = await history(gateway, "?asset=BTC")
    assert [r["kzt_per_unit"] for r in left["data"]] == ["50000000"]


@pytest.mark.parametrize(
    ("query", "pointer"),
    [
        ("?asset=DOGE", "?asset"),
        ("?from=yesterday", "?from"),
        ("?from=2026-11-02T00:00:00Z&to=2026-11-01T00:00:00Z", "?to"),
        ("?limit=0", "?limit"),
        ("?starting_after=abc", "?starting_after"),
    ],
)
async def test_bad_history_queries_get_a_400_naming_the_parameter(
    gateway: Gateway, query: str, pointer: str
) -> None:
    status, body = await history(gateway, query)
    assert status == 400
    assert body["errors"][0]["pointer"] == pointer and body["detail"]
