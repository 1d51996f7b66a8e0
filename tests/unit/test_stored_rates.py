"""Rates read back from the rate history (what followers price with), on both store backends."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest

from gateway.clock import ManualClock
from gateway.money import Asset
from gateway.rates.base import AssetRate, RatesUnavailable
from gateway.rates.fixed import FixedRates
from gateway.rates.history import RateHistory
from gateway.rates.stored import SharedRates, StoredRates
from gateway.store import Store


async def test_the_latest_recorded_rate_is_used_until_it_is_older_than_the_max_age(any_store: Store) -> None:
    clock = ManualClock()
    history = RateHistory(any_store, clock, retention_days=30)
    now = clock.now()
    await history.record_rates(
        [
            AssetRate(
                Asset.BTC, Decimal("47000000.5"), ("binance:BTCUSDT*USDTKZT",), now - timedelta(seconds=40)
            ),
            AssetRate(
                Asset.BTC, Decimal("47100000.25"), ("kraken:XBTUSD*nbk:USD",), now - timedelta(seconds=5)
            ),
            AssetRate(
                Asset.ETH, Decimal("1700000"), ("binance:ETHUSDT*USDTKZT",), now - timedelta(seconds=70)
            ),
        ]
    )
    stored = StoredRates(any_store, max_age=timedelta(seconds=60), retry_after_seconds=7)
    with pytest.raises(RatesUnavailable):
        stored.current(Asset.BTC, now)  # nothing loaded yet
    await stored.load()
    btc = stored.current(Asset.BTC, now)
    assert btc.kzt_per_unit == Decimal("47100000.25") and btc.sources == ("kraken:XBTUSD*nbk:USD",)
    with pytest.raises(RatesUnavailable) as stale:
        stored.current(Asset.ETH, now)  # 70 s old
    assert stale.value.retry_after_seconds == 7
    with pytest.raises(RatesUnavailable):
        stored.current(Asset.USDT, now)  # never recorded
    assert stored.current(Asset.BTC, now + timedelta(seconds=55)) == btc
    with pytest.raises(RatesUnavailable):
        stored.current(Asset.BTC, now + timedelta(seconds=56))


async def test_shared_rates_follow_the_local_source_only_while_it_is_in_charge(any_store: Store) -> None:
    clock = ManualClock()
    await RateHistory(any_store, clock, retention_days=30).record_rates(
        [AssetRate(Asset.BTC, Decimal("1"), ("stored",), clock.now())]
    )
    stored = StoredRates(any_store, max_age=timedelta(seconds=60))
    await stored.load()
    in_charge = [True]
    shared = SharedRates(FixedRates({Asset.ETH: Decimal("2")}), stored, lambda: in_charge[0])
    with pytest.raises(RatesUnavailable):
        shared.current(Asset.BTC, clock.now())  # the leader's own verdict is final, even with a stored rate
    assert shared.current(Asset.ETH, clock.now()).sources == ("fixed",)
    in_charge[0] = False
    assert shared.current(Asset.BTC, clock.now()).sources == ("stored",)
