"""Followers price invoices with the rates the leader recorded, under the same max-age rule."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

from gateway.api.state import LEADERSHIP, RATES
from gateway.money import Asset
from gateway.rates.base import AssetRate
from gateway.rates.history import RateHistory
from gateway.rates.stored import SharedRates, StoredRates
from tests.conftest import GatewayFactory

LIVE = {"CRYPTOCITY_RATES__FIXED__ENABLED": "false"}  # live rates, no provider enabled: nothing is fetched
BTC_RATE = Decimal("47000000.123456")
SOURCES = ("binance:BTCUSDT*USDTKZT", "kraken:XBTUSD*nbk:USD")


async def test_a_follower_prices_with_the_leaders_recorded_rates_until_they_are_stale(
    make_gateway: GatewayFactory,
) -> None:
    leader = await make_gateway(**LIVE)
    follower = await make_gateway(**LIVE)
    assert leader.app[LEADERSHIP].is_leader and not follower.app[LEADERSHIP].is_leader
    rates = follower.app[RATES]
    assert isinstance(rates.source, SharedRates) and isinstance(rates.stored, StoredRates)
    assert rates.refresher is None  # only the leader polls providers

    payload = {"amount": "5000.00", "currency": "KZT", "assets": ["BTC"]}
    refused = await follower.client.post("/v1/invoices", json=payload, headers=follower.auth())
    assert refused.status == 503 and "Retry-After" in refused.headers  # no rate recorded yet

    # What the leader's refresher hands to the history after a fetch (observed 10 s ago).
    observed = leader.clock.now() - timedelta(seconds=10)
    history = RateHistory(leader.store, leader.clock, retention_days=400)
    await history.record_rates([AssetRate(Asset.BTC, BTC_RATE, SOURCES, observed)])
    await rates.stored.load()  # the follower's next poll (every cluster.rates_poll_seconds)

    created = await follower.client.post("/v1/invoices", json=payload, headers=follower.auth())
    body = await created.json()
    assert created.status == 201, body
    quote = body["quote"]["rates"]["BTC"]
    assert Decimal(quote["mid_kzt_per_unit"]) == BTC_RATE and quote["sources"] == list(SOURCES)

    view = await (await follower.client.get("/v1/rates", headers=follower.auth())).json()
    assert view["mode"] == "live" and view["fed_by"] == "leader"
    assert view["rates"]["BTC"]["kzt_per_unit"] == str(BTC_RATE)

    # 60 s after the observation (rates.max_crypto_age_seconds) it is still good; a moment later it is not.
    follower.clock.advance(50)
    again = await follower.client.post("/v1/invoices", json=payload, headers=follower.auth())
    assert again.status == 201
    follower.clock.advance(1)
    stale = await follower.client.post("/v1/invoices", json=payload, headers=follower.auth())
    assert stale.status == 503, await stale.text()
