"""Invoice creation priced by the live providers, served from recorded samples on a loopback server.

The fixed table is off; the National Bank, Binance and Kraken adapters point at tests/fixtures/rates'
fake providers. Which providers are enabled (or up) decides which derivation paths exist, and so whether
checkout works.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Gateway, GatewayFactory
from tests.fixtures.rates.fake_providers import FakeProviders, Mode

pytestmark = pytest.mark.integration


def live_env(base: str, *enabled: str) -> dict[str, str]:
    env = {"CRYPTOCITY_RATES__FIXED__ENABLED": "false", "CRYPTOCITY_RATES__REFRESH_SECONDS": "5"}
    for name in ("nbk", "binance", "kraken"):
        env[f"CRYPTOCITY_RATES__{name.upper()}__BASE_URL"] = f"{base}/{name}"
        env[f"CRYPTOCITY_RATES__{name.upper()}__ENABLED"] = "true" if name in enabled else "false"
        env[f"CRYPTOCITY_RATES__{name.upper()}__TIMEOUT_SECONDS"] = "0.5"
    return env


async def rates_view(gateway: Gateway) -> dict[str, Any]:
    response = await gateway.client.get("/v1/rates", headers=gateway.auth())
    assert response.status == 200
    body: dict[str, Any] = await response.json()
    return body


async def until(check: Callable[[], Any], seconds: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)


async def create(gateway: Gateway) -> tuple[int, dict[str, Any], Any]:
    response = await gateway.client.post(
        "/v1/invoices", json={"amount": "12500.00", "currency": "KZT"}, headers=gateway.auth()
    )
    return response.status, await response.json(content_type=None), response.headers


async def priced(gateway: Gateway) -> bool:
    return bool((await rates_view(gateway))["rates"])


async def test_all_three_providers_price_invoices_and_the_quote_lists_its_sources(
    make_gateway: GatewayFactory, providers: tuple[FakeProviders, str]
) -> None:
    _, base = providers
    gateway = await make_gateway(**live_env(base, "nbk", "binance", "kraken"))
    await until(lambda: _all_healthy(gateway))
    status, invoice, _ = await create(gateway)
    assert status == 201, invoice
    btc = invoice["quote"]["rates"]["BTC"]
    assert btc["sources"] == [
        "binance:BTCUSDT*USDTKZT",
        "binance:BTCUSDT*kraken:USDTUSD*nbk:USD",
        "kraken:XBTUSD*nbk:USD",
    ]
    view = await rates_view(gateway)
    assert view["mode"] == "live" and set(view["providers"]) == {"nbk", "binance", "kraken"}
    assert view["rates"]["BTC"]["kzt_per_unit"] == btc["kzt_per_unit"]


async def _all_healthy(gateway: Gateway) -> bool:
    view = await rates_view(gateway)
    return (
        bool(view["providers"])
        and all(p["healthy"] for p in view["providers"].values())
        and bool(view["rates"])
    )


@pytest.mark.parametrize(
    ("enabled", "btc_source"),
    [(("binance",), "binance:BTCUSDT*USDTKZT"), (("kraken", "nbk"), "kraken:XBTUSD*nbk:USD")],
)
async def test_checkout_works_with_binance_alone_and_with_kraken_plus_the_national_bank(
    make_gateway: GatewayFactory,
    providers: tuple[FakeProviders, str],
    enabled: tuple[str, ...],
    btc_source: str,
) -> None:
    _, base = providers
    gateway = await make_gateway(**live_env(base, *enabled))
    await until(lambda: priced(gateway))
    status, invoice, _ = await create(gateway)
    assert status == 201, invoice
    assert invoice["quote"]["rates"]["BTC"]["sources"] == [btc_source]
    assert {m["asset"] for m in invoice["payment_methods"]} == {"BTC", "ETH", "USDT"}


async def test_the_national_bank_alone_cannot_price_crypto(
    make_gateway: GatewayFactory, providers: tuple[FakeProviders, str]
) -> None:
    fake, base = providers
    gateway = await make_gateway(**live_env(base, "nbk"))
    await until(lambda: _all_healthy_or_official(gateway, fake))
    status, problem, headers = await create(gateway)
    assert status == 503, problem
    assert problem["status"] == 503 and "rate" in problem["detail"]
    assert int(headers["Retry-After"]) >= 1


async def _all_healthy_or_official(gateway: Gateway, fake: FakeProviders) -> bool:
    view = await rates_view(gateway)
    return fake.nbk.calls >= 1 and all(p["healthy"] for p in view["providers"].values())


async def test_all_down_gives_503_then_creation_resumes_without_a_restart(
    make_gateway: GatewayFactory, providers: tuple[FakeProviders, str]
) -> None:
    fake, base = providers
    for script in (fake.nbk, fake.binance, fake.kraken):
        script.mode = Mode.DOWN
    gateway = await make_gateway(**live_env(base, "nbk", "binance", "kraken"))
    await until(lambda: _all_failed_once(fake))
    status, problem, headers = await create(gateway)
    assert status == 503 and "Retry-After" in headers, problem
    view = await rates_view(gateway)
    assert not any(p["healthy"] for p in view["providers"].values())
    fake.binance.mode = Mode.UP  # a sufficient set comes back: Binance alone prices everything
    for _ in range(40):  # the providers retry on the (manual) domain clock's backoff schedule
        gateway.clock.advance(timedelta(seconds=5))
        if await priced(gateway):
            break
        await asyncio.sleep(0.1)
    status, invoice, _ = await create(gateway)
    assert status == 201, invoice
    assert invoice["quote"]["rates"]["BTC"]["sources"] == ["binance:BTCUSDT*USDTKZT"]


async def _all_failed_once(fake: FakeProviders) -> bool:
    return all(s.calls >= 1 for s in (fake.nbk, fake.binance, fake.kraken))


async def test_rates_command_prints_live_rates_and_provider_health(
    providers: tuple[FakeProviders, str], tmp_path: Path
) -> None:
    fake, base = providers
    fake.kraken.mode = Mode.DOWN
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        **live_env(base, "nbk", "binance", "kraken"),
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sandbox.cli",
        "rates",
        "--json",
        "--wait",
        "10",
        env=env,
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 0, err.decode()
    view = json.loads(out)
    assert view["mode"] == "live"
    assert view["rates"]["BTC"]["sources"] == ["binance:BTCUSDT*USDTKZT"]  # Kraken is down: one path left
    assert view["providers"]["kraken"]["healthy"] is False and view["providers"]["kraken"]["last_error"]
    assert view["providers"]["binance"]["healthy"] is True
