"""The whole rates stack on loopback: real adapters, the refresher's loops and the composite, against a local
server replaying the three providers' recorded answers, each switchable at runtime to down, hanging, 429,
garbage or an HTML page. Time is a ManualClock; refresh intervals are a second of it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import aiohttp
import pytest

from gateway.clock import ManualClock
from gateway.money import Asset
from gateway.rates import (
    BinanceTicker,
    CompositeRates,
    KrakenTicker,
    NationalBankRates,
    RateProvider,
    RateRefresher,
    RatesUnavailable,
)
from tests.fixtures.rates.fake_providers import FakeProviders, Mode

pytestmark = pytest.mark.integration

MONDAY = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
ALL_BTC_SOURCES = (
    "binance:BTCUSDT*USDTKZT",
    "binance:BTCUSDT*kraken:USDTUSD*nbk:USD",
    "kraken:XBTUSD*nbk:USD",
)


@dataclass
class Stack:
    fake: FakeProviders
    clock: ManualClock
    composite: CompositeRates
    refresher: RateRefresher

    def start(self) -> None:
        self.refresher.start()

    def healthy(self, *names: str) -> bool:
        health = self.refresher.health()
        return all(health[name].healthy for name in names)

    def failed(self, name: str, error_type: str) -> bool:
        health = self.refresher.health()[name]
        return not health.healthy and health.last_error_type == error_type

    def sources(self, asset: Asset) -> tuple[str, ...] | None:
        try:
            return self.composite.current(asset, self.clock.now()).sources
        except RatesUnavailable:
            return None

    async def eventually(
        self, condition: Callable[[], bool], *, tick: float = 0.0, timeout: float = 10.0
    ) -> None:
        """Wait (real time) until ``condition`` holds, moving the clock ``tick`` seconds per poll."""
        async with asyncio.timeout(timeout):
            while not condition():
                if tick:
                    self.clock.advance(tick)
                await asyncio.sleep(0.02)

    async def advance(self, seconds: int, step: float = 1.0) -> None:
        """Move the clock in steps, letting the loops run after each."""
        for _ in range(int(seconds / step)):
            self.clock.advance(step)
            await asyncio.sleep(0.02)


@asynccontextmanager
async def _stack(aiohttp_server: Any, clock: ManualClock) -> AsyncIterator[Stack]:
    fake = FakeProviders(clock)
    server = await aiohttp_server(fake.app())
    base = str(server.make_url("")).rstrip("/")
    # 1.5 s: short enough for the timeout test, long enough that a busy CI machine's stall is not taken
    # for a provider timing out (the retry waits on the manual clock, which these tests do not always move).
    timeout = 1.5
    async with aiohttp.ClientSession() as session:
        providers: list[RateProvider] = [
            NationalBankRates(session, base + "/nbk", clock, timeout_seconds=timeout),
            BinanceTicker(session, base + "/binance", clock, timeout_seconds=timeout),
            KrakenTicker(session, base + "/kraken", clock, timeout_seconds=timeout),
        ]
        composite = CompositeRates()
        refresher = RateRefresher(
            providers,
            composite,
            clock,
            interval_seconds=1,
            backoff_initial_seconds=0.5,
            backoff_max_seconds=2,
            poll_seconds=0.01,
        )
        try:
            yield Stack(fake, clock, composite, refresher)
        finally:
            fake.release()
            await refresher.stop()


@pytest.fixture
async def stack(aiohttp_server: Any) -> AsyncIterator[Stack]:
    async with _stack(aiohttp_server, ManualClock(MONDAY)) as s:
        yield s


async def test_with_all_three_up_a_quote_lists_its_sources(stack: Stack) -> None:
    stack.start()
    await stack.eventually(lambda: stack.healthy("nbk", "binance", "kraken"))
    await stack.eventually(lambda: stack.sources(Asset.BTC) == ALL_BTC_SOURCES)
    quoted = stack.composite.quote(Asset.BTC, stack.clock.now(), spread_bps=50)
    assert quoted.sources == ALL_BTC_SOURCES
    assert quoted.spread_bps == 50
    assert quoted.kzt_per_unit < quoted.mid_kzt_per_unit
    assert stack.sources(Asset.USDT) == ("binance:USDTKZT", "kraken:USDTUSD*nbk:USD")
    snapshot = stack.refresher.snapshot().as_dict()
    assert set(snapshot["rates"]) == {"BTC", "ETH", "USDT"}
    health = {name: h.as_dict() for name, h in stack.refresher.health().items()}
    assert all(h["healthy"] and h["last_success_at"] for h in health.values())
    assert stack.refresher.history(Asset.ETH)


async def test_binance_alone_prices_every_asset(stack: Stack) -> None:
    stack.fake.nbk.mode = stack.fake.kraken.mode = Mode.DOWN
    stack.start()
    await stack.eventually(lambda: stack.healthy("binance") and stack.failed("nbk", "ProviderHttpError"))
    await stack.eventually(lambda: stack.failed("kraken", "ProviderHttpError"))
    assert stack.sources(Asset.BTC) == ("binance:BTCUSDT*USDTKZT",)
    assert stack.sources(Asset.ETH) == ("binance:ETHUSDT*USDTKZT",)
    assert stack.sources(Asset.USDT) == ("binance:USDTKZT",)
    assert "HTML page" in (stack.refresher.health()["kraken"].last_error or "")


async def test_kraken_and_national_bank_alone_price_every_asset(stack: Stack) -> None:
    stack.fake.binance.mode = Mode.DOWN
    stack.start()
    await stack.eventually(
        lambda: stack.healthy("nbk", "kraken") and stack.failed("binance", "ProviderHttpError")
    )
    assert stack.sources(Asset.BTC) == ("kraken:XBTUSD*nbk:USD",)
    assert stack.sources(Asset.ETH) == ("kraken:ETHUSD*nbk:USD",)
    assert stack.sources(Asset.USDT) == ("kraken:USDTUSD*nbk:USD",)
    rate = stack.composite.current(Asset.USDT, stack.clock.now())
    assert rate.kzt_per_unit == (Decimal("1.00012") * Decimal("512.34")).quantize(Decimal("0.000001"))


async def test_national_bank_alone_cannot_price_crypto(stack: Stack) -> None:
    stack.fake.binance.mode = stack.fake.kraken.mode = Mode.DOWN
    stack.start()
    await stack.eventually(lambda: stack.healthy("nbk") and stack.failed("binance", "ProviderHttpError"))
    await stack.eventually(lambda: stack.failed("kraken", "ProviderHttpError"))
    for asset in Asset:
        with pytest.raises(RatesUnavailable) as caught:
            stack.composite.current(asset, stack.clock.now())
        assert 1 <= caught.value.retry_after_seconds <= 2


async def test_all_down_then_recovery_without_a_restart(stack: Stack) -> None:
    stack.start()
    await stack.eventually(lambda: stack.sources(Asset.BTC) == ALL_BTC_SOURCES)

    for script in (stack.fake.nbk, stack.fake.binance, stack.fake.kraken):
        script.mode = Mode.DOWN
    await stack.advance(61)  # the last market quotes go stale
    await stack.eventually(lambda: not any(h.healthy for h in stack.refresher.health().values()))
    for asset in Asset:
        with pytest.raises(RatesUnavailable):
            stack.composite.current(asset, stack.clock.now())

    stack.fake.binance.mode = Mode.UP  # enough on its own
    await stack.eventually(lambda: stack.sources(Asset.BTC) == ("binance:BTCUSDT*USDTKZT",), tick=0.5)
    assert stack.sources(Asset.USDT) == ("binance:USDTKZT",)

    stack.fake.nbk.mode = stack.fake.kraken.mode = Mode.UP
    await stack.eventually(lambda: stack.sources(Asset.BTC) == ALL_BTC_SOURCES, tick=0.5)
    assert stack.healthy("nbk", "binance", "kraken")


async def test_retry_after_is_honoured(stack: Stack) -> None:
    stack.fake.binance.mode = Mode.RATE_LIMITED
    stack.fake.binance.retry_after = "30"
    stack.start()
    await stack.eventually(lambda: stack.failed("binance", "RateLimited"))
    limited_at = stack.fake.binance.seen[0].at
    assert stack.refresher.health()["binance"].rate_limited_until == limited_at + timedelta(seconds=30)
    stack.fake.binance.mode = Mode.UP  # would answer now, but we were told to wait

    await stack.advance(29)
    assert stack.fake.binance.calls == 1
    assert stack.sources(Asset.BTC) == ("kraken:XBTUSD*nbk:USD",)  # checkout kept going meanwhile

    await stack.eventually(lambda: stack.healthy("binance"), tick=0.5)
    assert stack.fake.binance.seen[1].at >= limited_at + timedelta(seconds=30)
    await stack.eventually(lambda: stack.sources(Asset.BTC) == ALL_BTC_SOURCES)


async def test_a_timeout_marks_unhealthy_and_recovers(stack: Stack) -> None:
    stack.fake.kraken.mode = Mode.TIMEOUT
    stack.start()
    await stack.eventually(lambda: stack.failed("kraken", "ProviderTimeout"))
    assert stack.healthy("nbk", "binance")
    assert stack.sources(Asset.BTC) == ("binance:BTCUSDT*USDTKZT",)

    stack.fake.kraken.mode = Mode.UP
    await stack.eventually(lambda: stack.healthy("kraken"), tick=0.5)
    await stack.eventually(lambda: stack.sources(Asset.BTC) == ALL_BTC_SOURCES)


async def test_garbage_and_html_pages_mark_unhealthy_until_fixed(stack: Stack) -> None:
    stack.fake.binance.mode = Mode.GARBAGE
    stack.fake.kraken.mode = Mode.HTML
    stack.start()
    await stack.eventually(
        lambda: stack.failed("binance", "MalformedResponse") and stack.failed("kraken", "ErrorPage")
    )
    with pytest.raises(RatesUnavailable):
        stack.composite.current(Asset.ETH, stack.clock.now())

    stack.fake.binance.mode = stack.fake.kraken.mode = Mode.UP
    await stack.eventually(
        lambda: stack.sources(Asset.ETH) is not None and len(stack.sources(Asset.ETH) or ()) == 3, tick=0.5
    )


async def test_a_delisted_usdtkzt_still_lets_binance_price_btc_through_kraken(stack: Stack) -> None:
    stack.fake.binance_unknown = {"USDTKZT"}
    stack.start()
    await stack.eventually(
        lambda: stack.failed("binance", "MissingSymbol") and stack.healthy("nbk", "kraken")
    )
    assert stack.sources(Asset.BTC) == ("binance:BTCUSDT*kraken:USDTUSD*nbk:USD", "kraken:XBTUSD*nbk:USD")
    assert stack.sources(Asset.USDT) == ("kraken:USDTUSD*nbk:USD",)


async def test_on_sunday_the_friday_publication_is_used(aiohttp_server: Any) -> None:
    sunday = datetime(2026, 11, 22, 9, 0, tzinfo=UTC)
    async with _stack(aiohttp_server, ManualClock(sunday)) as stack:
        stack.fake.binance.mode = Mode.DOWN
        stack.start()
        await stack.eventually(lambda: stack.healthy("nbk", "kraken"))
        fdates = [seen.query["fdate"] for seen in stack.fake.nbk.seen[:3]]
        assert fdates == ["22.11.2026", "21.11.2026", "20.11.2026"]
        rate = stack.composite.current(Asset.BTC, stack.clock.now())
        assert rate.sources == ("kraken:XBTUSD*nbk:USD",)
        assert rate.kzt_per_unit == (Decimal("96985.3") * Decimal("511.87")).quantize(Decimal("0.000001"))
