"""The refresher with scripted providers: schedules, backoff, Retry-After, health, history, the hook."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from structlog.testing import capture_logs

from gateway.clock import ManualClock
from gateway.money import Asset
from gateway.rates.base import RatesUnavailable
from gateway.rates.composite import CompositeRates, RatesSnapshot
from gateway.rates.errors import MissingSymbol, ProviderHttpError, ProviderTimeout, RateLimited
from gateway.rates.quotes import Pair, Quote, QuoteBatch
from gateway.rates.refresher import RateRefresher

START = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)

Outcome = Callable[[datetime], QuoteBatch] | Exception


def usdt_kzt(price: str = "513.10") -> Callable[[datetime], QuoteBatch]:
    def make(now: datetime) -> QuoteBatch:
        pair = Pair("USDT", "KZT")
        return QuoteBatch("binance", now, {pair: Quote(pair, Decimal(price), "binance", "USDTKZT", now)})

    return make


class Scripted:
    """A provider answering from a list of outcomes (the last one repeats); records the clock at each call."""

    def __init__(self, clock: ManualClock, *outcomes: Outcome, name: str = "binance") -> None:
        self.clock = clock
        self.outcomes = list(outcomes)
        self.calls: list[datetime] = []
        self._name = name

    @property
    def name(self) -> str:
        return self._name

    async def fetch(self) -> QuoteBatch:
        now = self.clock.now()
        self.calls.append(now)
        outcome = self.outcomes.pop(0) if len(self.outcomes) > 1 else self.outcomes[0]
        if isinstance(outcome, Exception):
            raise outcome
        return outcome(now)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


def refresher(clock: ManualClock, *providers: Scripted, **options: object) -> RateRefresher:
    return RateRefresher(list(providers), CompositeRates(), clock, **options)  # type: ignore[arg-type]


async def test_success_feeds_the_composite_and_schedules_one_interval_later(clock: ManualClock) -> None:
    provider = Scripted(clock, usdt_kzt())
    r = refresher(clock, provider, interval_seconds=30)
    await r.refresh_due()
    health = r.health()["binance"]
    assert health.healthy
    assert health.last_success_at == START
    assert health.next_attempt_at == START + timedelta(seconds=30)
    assert r.composite.current(Asset.USDT, START).kzt_per_unit == Decimal("513.100000")
    assert r.snapshot().rates[Asset.USDT].sources == ("binance:USDTKZT",)

    clock.advance(29)
    await r.refresh_due()
    assert len(provider.calls) == 1
    clock.advance(1)
    await r.refresh_due()
    assert len(provider.calls) == 2


async def test_per_provider_interval(clock: ManualClock) -> None:
    fast, slow = Scripted(clock, usdt_kzt()), Scripted(clock, usdt_kzt(), name="nbk")
    r = refresher(clock, fast, slow, interval_seconds=30, intervals={"nbk": 3600})
    await r.refresh_due()
    assert r.health()["nbk"].next_attempt_at == START + timedelta(hours=1)


async def test_failures_back_off_exponentially_up_to_a_cap_and_reset_on_success(clock: ManualClock) -> None:
    down = ProviderHttpError("binance", 502, "HTTP 502")
    provider = Scripted(clock, down, down, down, down, down, usdt_kzt())
    r = refresher(clock, provider, backoff_initial_seconds=5, backoff_max_seconds=30)
    waits = []
    for _ in range(5):
        await r.refresh_due()
        health = r.health()["binance"]
        assert not health.healthy
        wait = (health.next_attempt_at - clock.now()).total_seconds()
        waits.append(wait)
        clock.advance(wait)
    assert waits == [5, 10, 20, 30, 30]
    health = r.health()["binance"]
    assert health.last_error == "binance: HTTP 502"
    assert health.last_error_type == "ProviderHttpError"
    assert health.consecutive_failures == 5

    await r.refresh_due()  # back: healthy at once, normal interval again
    health = r.health()["binance"]
    assert health.healthy
    assert health.consecutive_failures == 0
    assert health.next_attempt_at == clock.now() + timedelta(seconds=30)
    assert health.last_error_type == "ProviderHttpError"  # the last error stays visible


async def test_retry_after_is_honoured_even_when_the_backoff_is_shorter(clock: ManualClock) -> None:
    provider = Scripted(clock, RateLimited("binance", 429, 120.0, "HTTP 429"), usdt_kzt())
    r = refresher(clock, provider, backoff_initial_seconds=1)
    await r.refresh_due()
    health = r.health()["binance"]
    assert health.rate_limited_until == START + timedelta(seconds=120)
    assert health.next_attempt_at == START + timedelta(seconds=120)
    for _ in range(119):
        clock.advance(1)
        await r.refresh_due()
    assert provider.calls == [START]
    clock.advance(1)
    await r.refresh_due()
    assert provider.calls[-1] == START + timedelta(seconds=120)
    assert r.health()["binance"].healthy
    assert r.health()["binance"].rate_limited_until is None


async def test_retry_after_is_capped(clock: ManualClock) -> None:
    provider = Scripted(clock, RateLimited("binance", 418, 10.0**9, "banned"))
    r = refresher(clock, provider, max_retry_after_seconds=3600)
    await r.refresh_due()
    assert r.health()["binance"].next_attempt_at == START + timedelta(hours=1)


async def test_rate_limit_without_retry_after_uses_the_backoff(clock: ManualClock) -> None:
    provider = Scripted(clock, RateLimited("kraken", 200, None, "EGeneral:Too many requests"), name="kraken")
    r = refresher(clock, provider, backoff_initial_seconds=7)
    await r.refresh_due()
    assert r.health()["kraken"].next_attempt_at == START + timedelta(seconds=7)
    assert r.health()["kraken"].rate_limited_until is None


async def test_a_partial_answer_is_used_but_reported(clock: ManualClock) -> None:
    error = MissingSymbol("binance", ("BTCUSDT",), partial=usdt_kzt()(START))
    provider = Scripted(clock, error)
    r = refresher(clock, provider, interval_seconds=30, backoff_initial_seconds=300)
    await r.refresh_due()
    health = r.health()["binance"]
    assert not health.healthy
    assert health.last_error_type == "MissingSymbol"
    assert health.next_attempt_at == START + timedelta(seconds=30)  # not backed off
    assert r.composite.current(Asset.USDT, START).sources == ("binance:USDTKZT",)


async def test_a_bug_in_an_adapter_does_not_stop_the_refresher(clock: ManualClock) -> None:
    provider = Scripted(clock, ZeroDivisionError("oops"), usdt_kzt())
    r = refresher(clock, provider, backoff_initial_seconds=1)
    with capture_logs() as logs:
        await r.refresh_due()
    assert r.health()["binance"].last_error_type == "ZeroDivisionError"
    assert any(e["event"] == "rates.provider_bug" for e in logs)
    clock.advance(1)
    await r.refresh_due()
    assert r.health()["binance"].healthy


async def test_unavailable_rates_carry_the_wait_for_the_next_attempt(clock: ManualClock) -> None:
    provider = Scripted(clock, ProviderTimeout("binance", "slow"))
    r = refresher(clock, provider, backoff_initial_seconds=8)
    await r.refresh_due()
    with pytest.raises(RatesUnavailable) as caught:
        r.composite.current(Asset.USDT, clock.now())
    assert caught.value.retry_after_seconds == 8


async def test_history_keeps_distinct_rates_and_the_hook_sees_every_snapshot(clock: ManualClock) -> None:
    seen: list[RatesSnapshot] = []
    provider = Scripted(clock, usdt_kzt("513.10"), usdt_kzt("513.10"), usdt_kzt("514.00"))
    r = refresher(clock, provider, interval_seconds=1, history_size=2, on_snapshot=seen.append)
    for _ in range(3):
        await r.refresh_due()
        clock.advance(1)
    assert len(seen) == 3
    assert [rate.kzt_per_unit for rate in r.history(Asset.USDT)] == [
        Decimal("513.100000"),
        Decimal("514.000000"),
    ]
    assert r.history(Asset.BTC) == ()
    # three observations, the first two the same price: each is its own entry, so the ring of two keeps the last
    assert [rate.observed_at for rate in r.history(Asset.USDT)] == [
        START + timedelta(seconds=1),
        START + timedelta(seconds=2),
    ]


async def test_async_hook_and_hook_errors(clock: ManualClock) -> None:
    seen: list[RatesSnapshot] = []

    async def persist(snapshot: RatesSnapshot) -> None:
        seen.append(snapshot)

    r = refresher(clock, Scripted(clock, usdt_kzt()), on_snapshot=persist)
    await r.refresh_due()
    assert len(seen) == 1

    def broken(snapshot: RatesSnapshot) -> None:
        raise RuntimeError("store down")

    r = refresher(clock, Scripted(clock, usdt_kzt()), on_snapshot=broken)
    with capture_logs() as logs:
        await r.refresh_due()
    assert any(e["event"] == "rates.snapshot_hook_failed" for e in logs)
    assert r.health()["binance"].healthy


async def test_background_loops_follow_the_clock_and_stop_cleanly(clock: ManualClock) -> None:
    ok = Scripted(clock, usdt_kzt())
    failing = Scripted(clock, ProviderTimeout("kraken", "slow"), name="kraken")
    r = refresher(clock, ok, failing, interval_seconds=10, backoff_initial_seconds=10, poll_seconds=0.005)
    r.start()
    r.start()  # idempotent
    try:
        await _eventually(lambda: len(ok.calls) == 1 and len(failing.calls) == 1)
        await asyncio.sleep(0.05)
        assert len(ok.calls) == 1  # the clock has not moved
        clock.advance(10)
        await _eventually(lambda: len(ok.calls) == 2 and len(failing.calls) == 2)
        assert r.running
    finally:
        await r.stop()
    assert not r.running
    clock.advance(100)
    await asyncio.sleep(0.05)
    assert len(ok.calls) == 2


def test_provider_names_must_be_unique(clock: ManualClock) -> None:
    with pytest.raises(ValueError, match="unique"):
        refresher(clock, Scripted(clock, usdt_kzt()), Scripted(clock, usdt_kzt()))


def test_health_as_dict(clock: ManualClock) -> None:
    r = refresher(clock, Scripted(clock, usdt_kzt()))
    assert r.health()["binance"].as_dict() == {
        "name": "binance",
        "healthy": False,
        "last_success_at": None,
        "last_error": None,
        "last_error_type": None,
        "last_error_at": None,
        "consecutive_failures": 0,
        "next_attempt_at": "2026-11-23T12:00:00.000Z",
        "rate_limited_until": None,
    }


async def _eventually(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.005)
