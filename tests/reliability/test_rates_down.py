"""Every rate provider down, then back: creation is refused (503) only while no fresh rate exists, nothing
else stops working, and creation comes back by itself.

The gateway prices from the live providers (National Bank, Binance, Kraken) served from recorded samples
on loopback (tests/fixtures/rates/fake_providers.py), with the domain clock a ManualClock, so the
staleness limit (``rates.max_crypto_age_seconds``, 60 s) and the providers' backoff pass in a moment of real
time. The outage lasts ``CRYPTOCITY_FAULT_RATES_DOWN_SECONDS`` of domain time (default 300; the providers'
backoff reaches its 300 s cap only in longer outages: 3600 is the full-size run).

What must hold:
- within the staleness limit, invoices are still priced from the last quotes;
- past it, ``POST /v1/invoices`` answers 503 ``application/problem+json`` with Retry-After, and writes
  nothing (a retry with the same Idempotency-Key later succeeds: a refusal is not remembered as the answer);
- meanwhile reading invoices, the hosted checkout page, the expiry sweeper and ``GET /v1/rates`` work, and
  the outage shows where operators look: ``cryptocity_rate_available`` and ``cryptocity_rate_provider_up``
  0 in /metrics, every provider unhealthy in ``GET /v1/rates``;
- when the providers answer again, creation succeeds without a restart, priced from the new quotes.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

import pytest

from tests.api.test_live_rates import live_env
from tests.conftest import Gateway, GatewayFactory
from tests.fixtures.rates.fake_providers import FakeProviders, Mode
from tests.integration.settlement_helpers import eventually
from tests.reliability.fault_checks import env_number, report

pytestmark = pytest.mark.integration

DOWN_SECONDS = env_number("CRYPTOCITY_FAULT_RATES_DOWN_SECONDS", 300.0)
STALE_AFTER = 60  # rates.max_crypto_age_seconds (the default)
STEP = timedelta(seconds=5)  # domain time that takes the refresher to its first retry
PROVIDERS = ("nbk", "binance", "kraken")


@pytest.fixture
async def fake(aiohttp_server: Any, clock: Any) -> AsyncIterator[tuple[FakeProviders, str]]:
    providers = FakeProviders(clock)
    server = await aiohttp_server(providers.app())
    try:
        yield providers, str(server.make_url("")).rstrip("/")
    finally:
        providers.release()


async def create(gateway: Gateway, key: str | None = None, **fields: Any) -> tuple[int, str, Any]:
    headers = gateway.auth() | ({"Idempotency-Key": key} if key else {})
    response = await gateway.client.post(
        "/v1/invoices", json={"amount": "12500.00", "currency": "KZT", **fields}, headers=headers
    )
    return response.status, response.content_type, await response.json(content_type=None)


async def rates_view(gateway: Gateway) -> dict[str, Any]:
    response = await gateway.client.get("/v1/rates", headers=gateway.auth())
    assert response.status == 200
    body: dict[str, Any] = await response.json()
    return body


async def metric(gateway: Gateway, name: str, label: str, value: str) -> float:
    text = await (await gateway.client.get("/metrics")).text()
    match = re.search(rf'^{name}\{{{label}="{value}"\}} (\S+)$', text, re.MULTILINE)
    assert match is not None, f"{name}{{{label}={value!r}}} missing from /metrics"
    return float(match.group(1))


async def all_failed_since(gateway: Gateway, fake: FakeProviders, calls: dict[str, int]) -> bool:
    """Every provider was asked again since ``calls`` and is reported unhealthy."""
    view = await rates_view(gateway)
    asked = all(getattr(fake, name).calls > calls[name] for name in PROVIDERS)
    return asked and not any(p["healthy"] for p in view["providers"].values())


async def test_rates_down_refuses_creation_with_503_and_recovers_by_itself(
    make_gateway: GatewayFactory, fake: tuple[FakeProviders, str]
) -> None:
    providers, base = fake
    gateway = await make_gateway(**live_env(base, *PROVIDERS))
    clock = gateway.clock
    await eventually(lambda: _priced(gateway))
    status, _, before = await create(gateway)
    assert status == 201, before
    expiring = await create(gateway, expires_in=STALE_AFTER + 30)
    assert expiring[0] == 201, expiring

    calls = {name: getattr(providers, name).calls for name in PROVIDERS}
    for name in PROVIDERS:
        getattr(providers, name).mode = Mode.DOWN
    clock.advance(STEP)
    await eventually(lambda: all_failed_since(gateway, providers, calls))
    status, _, within = await create(gateway)  # the last quotes are still fresh enough to price with
    assert status == 201, within

    clock.advance(timedelta(seconds=STALE_AFTER))  # now past the staleness limit
    refused_at = clock.now()
    status, content_type, problem = await create(gateway, key="retry-me")
    assert (status, content_type) == (503, "application/problem+json"), problem
    assert problem["status"] == 503 and "rate" in problem["detail"].lower()
    response = await gateway.client.post(
        "/v1/invoices", json={"amount": "100.00", "currency": "KZT"}, headers=gateway.auth()
    )
    assert response.status == 503 and int(response.headers["Retry-After"]) >= 1

    # nothing else stops: reads, the checkout page, the sweeper, the rates view; the outage is visible
    read = await gateway.client.get(f"/v1/invoices/{before['id']}", headers=gateway.auth())
    assert read.status == 200 and (await read.json())["quote"] == before["quote"]
    page = await gateway.client.get(f"/i/{before['id']}")
    assert page.status == 200 and "text/html" in page.content_type
    view = await rates_view(gateway)
    assert set(view["unavailable"]) == {"BTC", "ETH", "USDT"} and not view["rates"]
    assert not any(p["healthy"] for p in view["providers"].values())
    for asset in ("BTC", "ETH", "USDT"):
        assert await metric(gateway, "cryptocity_rate_available", "asset", asset) == 0
    for name in PROVIDERS:
        assert await metric(gateway, "cryptocity_rate_provider_up", "provider", name) == 0
    attempts = 0
    while clock.now() - refused_at < timedelta(seconds=DOWN_SECONDS):
        attempts += await attempt_again(gateway)  # each provider backs off further after every failure
    await eventually(lambda: _status_is(gateway, expiring[2]["id"], "expired"))
    status, content_type, problem = await create(gateway)
    assert (status, content_type) == (503, "application/problem+json"), problem

    for name in PROVIDERS:
        getattr(providers, name).mode = Mode.UP
    back_at = clock.now()
    while not await _priced(gateway):  # no restart, no nudge: the providers' next attempts find them up
        await attempt_again(gateway)
    recovered_after = (clock.now() - back_at).total_seconds()
    status, _, invoice = await create(gateway, key="retry-me")  # the same key: the refusal was not kept
    assert status == 201, invoice
    assert invoice["quote"]["rates"]["BTC"]["sources"] == [
        "binance:BTCUSDT*USDTKZT",
        "binance:BTCUSDT*kraken:USDTUSD*nbk:USD",
        "kraken:XBTUSD*nbk:USD",
    ]
    assert await metric(gateway, "cryptocity_rate_available", "asset", "BTC") == 1
    report(
        "rates_down",
        down_domain_seconds=DOWN_SECONDS,
        failed_attempts_per_provider=attempts,
        recovered_after_domain_seconds=recovered_after,
    )


async def attempt_again(gateway: Gateway) -> int:
    """Move the domain clock to the providers' next scheduled attempt and wait (real time) until all of them
    have made it: the outage then ages as a real one would, each failure doubling the provider's backoff.
    1 (an attempt each), for counting."""
    view = await rates_view(gateway)
    failures = {name: p["consecutive_failures"] for name, p in view["providers"].items()}
    due = max(datetime.fromisoformat(p["next_attempt_at"]) for p in view["providers"].values())
    if due > gateway.clock.now():
        gateway.clock.set(due)

    async def attempted() -> bool:
        providers = (await rates_view(gateway))["providers"]
        return all(p["healthy"] or p["consecutive_failures"] > failures[n] for n, p in providers.items())

    await eventually(attempted)
    return 1


async def _priced(gateway: Gateway) -> bool:
    view = await rates_view(gateway)
    return set(view["rates"]) == {"BTC", "ETH", "USDT"} and all(
        p["healthy"] for p in view["providers"].values()
    )


async def _status_is(gateway: Gateway, invoice_id: str, status: str) -> bool:
    response = await gateway.client.get(f"/v1/invoices/{invoice_id}", headers=gateway.auth())
    return bool((await response.json())["status"] == status)
