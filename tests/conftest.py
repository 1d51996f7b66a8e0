"""Shared fixtures: a real gateway app on a temporary SQLite store, a manual clock and merchants."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from hypothesis import settings

from gateway.accounts.merchants import MerchantRegistry
from gateway.api.state import REGISTRY, SERVICE, STORE
from gateway.app import create_app
from gateway.clock import ManualClock
from gateway.config import Config, load_config
from gateway.extensions import Extensions
from gateway.invoices.service import InvoiceService
from gateway.money import Asset
from gateway.rates import RateSource
from gateway.store import Store
from sandbox.demo import demo_account_keys

# CI runs property tests derandomised and without per-example deadlines, so a busy machine cannot make
# them flaky; locally they explore new examples on every run.
settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
settings.register_profile("dev", deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else "dev")

# A second, unrelated key pair (BIP84 test vector mnemonic "abandon … about"), for a second merchant.
OTHER_BTC_VPUB = "vpub5Y6cjg78GGuNLsaPhmYsiw4gYX3HoQiRBiSwDaBXKUafCt9bNwWQiitDk5VZ5BVxYnQdwoTyXSs2JHRPAgjAvtbBrf8ZhDYe2jWAqvZVnsc"


def make_config(tmp_path: Path, **env: str) -> Config:
    environ = {
        "CRYPTOCITY_STORE__PATH": str(tmp_path / "gateway.sqlite3"),
        "CRYPTOCITY_SERVER__PORT": "0",
        "CRYPTOCITY_LOGGING__LEVEL": "warning",
        "CRYPTOCITY_ADDRESSES__POOL_SIZE": "16",
        "CRYPTOCITY_ADDRESSES__DERIVE_WORKERS": "0",  # in-process; one test runs the worker process
        **env,
    }
    return load_config(None, environ=environ)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@dataclass
class Gateway:
    client: TestClient[Any, Any]
    app: web.Application
    clock: ManualClock
    merchant_id: str
    api_key: str
    other_merchant_id: str
    other_api_key: str

    @property
    def service(self) -> InvoiceService:
        return self.app[SERVICE]

    @property
    def registry(self) -> MerchantRegistry:
        return self.app[REGISTRY]

    @property
    def store(self) -> Store:
        return self.app[STORE]

    def auth(self, key: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {key or self.api_key}"}

    async def create_invoice(
        self, amount: str = "12500.00", key: str | None = None, **fields: Any
    ) -> dict[str, Any]:
        response = await self.client.post(
            "/v1/invoices", json={"amount": amount, "currency": "KZT", **fields}, headers=self.auth(key)
        )
        body = await response.json()
        assert response.status == 201, body
        return body  # type: ignore[no-any-return]


GatewayFactory = Callable[..., Awaitable[Gateway]]


@pytest.fixture
async def make_gateway(aiohttp_client: Any, tmp_path: Path, clock: ManualClock) -> GatewayFactory:
    async def factory(
        extensions: Extensions | None = None, rates: RateSource | None = None, **env: str
    ) -> Gateway:
        config = make_config(tmp_path, **env)
        app = create_app(config, extensions, clock=clock, rates=rates)
        client = await aiohttp_client(app)
        registry = app[REGISTRY]
        btc, eth = demo_account_keys()
        merchant, key = await registry.create(
            "Alatau Coffee",
            btc_account_key=btc,
            eth_account_key=eth,
            accepted_assets=[Asset.BTC, Asset.ETH, Asset.USDT],
        )
        other, other_key = await registry.create(
            "Other Shop", btc_account_key=OTHER_BTC_VPUB, eth_account_key=None, accepted_assets=[Asset.BTC]
        )
        return Gateway(client, app, clock, merchant.id, key.plaintext, other.id, other_key.plaintext)

    return factory


@pytest.fixture
async def gateway(make_gateway: GatewayFactory) -> Gateway:
    return await make_gateway()
