"""The adapters over HTTP against the recorded samples on loopback: requests, walk-back, failures."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gateway.clock import ManualClock
from gateway.rates.binance import BinanceTicker
from gateway.rates.errors import (
    ErrorPage,
    MalformedResponse,
    MissingSymbol,
    NoPublication,
    ProviderHttpError,
    ProviderTimeout,
    ProviderUnreachable,
    RateLimited,
    UpstreamError,
)
from gateway.rates.http import http_get
from gateway.rates.kraken import KrakenTicker
from gateway.rates.nationalbank import NationalBankRates
from gateway.rates.quotes import Pair
from tests.fixtures.rates.fake_providers import FakeProviders, Mode

MONDAY = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
SUNDAY = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


@dataclass
class Env:
    fake: FakeProviders
    clock: ManualClock
    session: aiohttp.ClientSession
    url: str

    def at(self, moment: datetime) -> None:
        """Move to any moment, earlier ones included (a fresh clock for the adapters made after)."""
        self.clock = self.fake.clock = ManualClock(moment)

    def nbk(self, **kwargs: Any) -> NationalBankRates:
        return NationalBankRates(self.session, self.url + "/nbk", self.clock, **kwargs)

    def binance(self, **kwargs: Any) -> BinanceTicker:
        return BinanceTicker(self.session, self.url + "/binance/", self.clock, **kwargs)

    def kraken(self, **kwargs: Any) -> KrakenTicker:
        return KrakenTicker(self.session, self.url + "/kraken", self.clock, **kwargs)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(MONDAY)


@pytest.fixture
async def env(aiohttp_server: Any, clock: ManualClock) -> AsyncIterator[Env]:
    fake = FakeProviders(clock)
    server = await aiohttp_server(fake.app())
    async with aiohttp.ClientSession() as session:
        yield Env(fake, clock, session, str(server.make_url("")).rstrip("/"))
        fake.release()


# -- National Bank -----------------------------------------------------------------------------------------


async def test_nbk_asks_for_todays_local_date(env: Env) -> None:
    batch = await env.nbk().fetch()
    assert [s.query for s in env.fake.nbk.seen] == [{"fdate": "23.11.2026"}]
    quote = batch.quotes[Pair("USD", "KZT")]
    assert quote.price == Decimal("512.34")
    assert quote.official
    assert quote.label == "nbk:USD"
    assert quote.observed_at == datetime(2026, 11, 22, 19, 0, tzinfo=UTC)  # 23.11 00:00 in Kazakhstan


async def test_nbk_local_date_is_utc_plus_five(env: Env) -> None:
    env.at(datetime(2026, 11, 22, 19, 30, tzinfo=UTC))  # already Monday 00:30 in Almaty
    await env.nbk().fetch()
    assert env.fake.nbk.seen[0].query == {"fdate": "23.11.2026"}


async def test_nbk_walks_back_over_the_weekend_to_friday(env: Env) -> None:
    env.at(SUNDAY)
    nbk = env.nbk()
    batch = await nbk.fetch()
    assert [s.query["fdate"] for s in env.fake.nbk.seen] == ["22.11.2026", "21.11.2026", "20.11.2026"]
    assert batch.quotes[Pair("USD", "KZT")].price == Decimal("511.87")
    assert batch.observed_at == datetime(2026, 11, 19, 19, 0, tzinfo=UTC)

    # Past days are remembered: the next refresh asks only about today.
    await nbk.fetch()
    assert [s.query["fdate"] for s in env.fake.nbk.seen][3:] == ["22.11.2026"]


async def test_nbk_gives_up_after_the_look_back_window(env: Env) -> None:
    env.fake.nbk_publications.clear()
    with pytest.raises(NoPublication):
        await env.nbk(max_days_back=7).fetch()
    assert len(env.fake.nbk.seen) == 8  # today and seven days back


async def test_nbk_answer_dated_after_the_day_asked_is_refused(env: Env) -> None:
    env.fake.nbk_publications = {"23.11.2026": "nbk/rates_20.11.2026.xml"}
    batch = await env.nbk().fetch()  # a holiday answered with the last publication: its own date counts
    assert batch.observed_at == datetime(2026, 11, 19, 19, 0, tzinfo=UTC)
    env.fake.nbk_publications = {
        "23.11.2026": "nbk/no_publication.xml",
        "22.11.2026": "nbk/rates_23.11.2026.xml",
    }
    with pytest.raises(MalformedResponse, match=r"asked for 22\.11\.2026"):
        await env.nbk().fetch()


@pytest.mark.parametrize(
    ("mode", "error"),
    [
        (Mode.DOWN, ProviderHttpError),
        (Mode.HTML, ErrorPage),
        (Mode.GARBAGE, MalformedResponse),
        (Mode.RATE_LIMITED, RateLimited),
    ],
)
async def test_nbk_failures(env: Env, mode: Mode, error: type[Exception]) -> None:
    env.fake.nbk.mode = mode
    with pytest.raises(error):
        await env.nbk().fetch()


async def test_an_html_502_says_so(env: Env) -> None:
    env.fake.nbk.mode = Mode.DOWN
    with pytest.raises(ProviderHttpError) as caught:
        await env.nbk().fetch()
    assert caught.value.status == 502
    assert "HTML page" in str(caught.value)


# -- Binance -----------------------------------------------------------------------------------------------


async def test_binance_asks_for_all_symbols_at_once(env: Env) -> None:
    batch = await env.binance().fetch()
    assert env.fake.binance.seen[0].query == {"symbols": '["BTCUSDT","ETHUSDT","USDTKZT"]'}
    assert batch.price(("USDT", "KZT")) == Decimal("513.10")
    assert batch.observed_at == MONDAY


async def test_binance_unknown_symbol_falls_back_to_one_call_per_symbol(env: Env) -> None:
    env.fake.binance_unknown = {"USDTKZT"}
    with pytest.raises(MissingSymbol) as caught:
        await env.binance().fetch()
    assert caught.value.symbols == ("USDTKZT",)
    assert caught.value.partial is not None
    assert caught.value.partial.price(("BTC", "USDT")) == Decimal("97000.01")
    assert [s.query for s in env.fake.binance.seen[1:]] == [
        {"symbol": "BTCUSDT"},
        {"symbol": "ETHUSDT"},
        {"symbol": "USDTKZT"},
    ]


@pytest.mark.parametrize("status", [429, 418])
async def test_binance_rate_limit_carries_retry_after(env: Env, status: int) -> None:
    env.fake.binance.mode = Mode.RATE_LIMITED
    env.fake.binance.status_for_rate_limit = status
    env.fake.binance.retry_after = "42"
    with pytest.raises(RateLimited) as caught:
        await env.binance().fetch()
    assert caught.value.status == status
    assert caught.value.retry_after_seconds == 42.0


async def test_binance_rate_limit_with_an_http_date(env: Env) -> None:
    env.fake.binance.mode = Mode.RATE_LIMITED
    env.fake.binance.retry_after = "Mon, 23 Nov 2026 12:02:00 GMT"
    with pytest.raises(RateLimited) as caught:
        await env.binance().fetch()
    assert caught.value.retry_after_seconds == 120.0


async def test_binance_timeout(env: Env) -> None:
    env.fake.binance.mode = Mode.TIMEOUT
    with pytest.raises(ProviderTimeout):
        await env.binance(timeout_seconds=0.1).fetch()


@pytest.mark.parametrize(
    ("mode", "error"),
    [(Mode.DOWN, ProviderHttpError), (Mode.HTML, ErrorPage), (Mode.GARBAGE, MalformedResponse)],
)
async def test_binance_failures(env: Env, mode: Mode, error: type[Exception]) -> None:
    env.fake.binance.mode = mode
    with pytest.raises(error):
        await env.binance().fetch()


# -- Kraken ------------------------------------------------------------------------------------------------


async def test_kraken_asks_for_the_three_pairs(env: Env) -> None:
    batch = await env.kraken().fetch()
    assert env.fake.kraken.seen[0].query == {"pair": "XBTUSD,ETHUSD,USDTUSD"}
    assert batch.price(("BTC", "USD")) == Decimal("96985.3")


async def test_kraken_error_array(env: Env) -> None:
    env.fake.kraken_sample = "kraken/error_unknown_pair.json"
    with pytest.raises(UpstreamError):
        await env.kraken().fetch()


async def test_kraken_timeout(env: Env) -> None:
    env.fake.kraken.mode = Mode.TIMEOUT
    with pytest.raises(ProviderTimeout):
        await env.kraken(timeout_seconds=0.1).fetch()


# -- transport ---------------------------------------------------------------------------------------------


async def test_unreachable_provider(clock: ManualClock) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    async with aiohttp.ClientSession() as session:
        with pytest.raises(ProviderUnreachable):
            await KrakenTicker(session, f"http://127.0.0.1:{port}", clock).fetch()


async def test_oversized_answers_are_refused(aiohttp_server: Any) -> None:
    async def big(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()  # chunked: no Content-Length to refuse up front
        await response.prepare(request)
        for _ in range(40):
            await response.write(b"x" * 1024)
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/", big)
    server = await aiohttp_server(app)
    async with aiohttp.ClientSession() as session:
        with pytest.raises(MalformedResponse, match="larger than"):
            await http_get(
                session,
                "p",
                str(server.make_url("/")),
                params={},
                timeout_seconds=5,
                now=MONDAY,
                max_bytes=16 * 1024,
            )
