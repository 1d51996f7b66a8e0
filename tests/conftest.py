"""Shared fixtures: a real gateway app on a temporary store, a manual clock and merchants.

Store-level fixtures run on both backends: ``store_backend`` is ``sqlite`` or ``postgresql`` (ids of the
parametrised tests), the PostgreSQL variant runs when ``CRYPTOCITY_TEST_PG_DSN`` names a server (CI sets
it) and is skipped otherwise; every PostgreSQL test gets a schema ``t_<random>`` of its own, dropped with
CASCADE at the end.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
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
from gateway.store import PostgresStore, SqliteStore, Store
from sandbox.demo import demo_account_keys

# CI runs property tests derandomised and without per-example deadlines, so a busy machine cannot make
# them flaky; locally they explore new examples on every run.
settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
settings.register_profile("dev", deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else "dev")

# A second, unrelated key pair (BIP84 test vector mnemonic "abandon … about"), for a second merchant.
OTHER_BTC_VPUB = "vpub5Y6cjg78GGuNLsaPhmYsiw4gYX3HoQiRBiSwDaBXKUafCt9bNwWQiitDk5VZ5BVxYnQdwoTyXSs2JHRPAgjAvtbBrf8ZhDYe2jWAqvZVnsc"


PG_DSN_ENV = "CRYPTOCITY_TEST_PG_DSN"
BACKENDS = ["sqlite", "postgresql"]


def pg_dsn() -> str:
    """The test server's DSN, or skip the test (PostgreSQL variants need CRYPTOCITY_TEST_PG_DSN)."""
    dsn = os.environ.get(PG_DSN_ENV, "")
    if not dsn:
        pytest.skip(f"{PG_DSN_ENV} is not set")
    return dsn


async def drop_schema(dsn: str, schema: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


@pytest.fixture
async def pg_schema() -> AsyncIterator[str]:
    """A fresh schema name on the test server (created by the store that opens it), dropped afterwards."""
    dsn = pg_dsn()
    schema = f"t_{secrets.token_hex(6)}"
    try:
        yield schema
    finally:
        await drop_schema(dsn, schema)


@pytest.fixture(params=BACKENDS)
def store_backend(request: pytest.FixtureRequest) -> str:
    backend: str = request.param
    if backend == "postgresql":
        pg_dsn()
    return backend


@dataclass
class StoreFactory:
    """Opens stores of one backend on one database: a SQLite file under tmp_path, or one PG schema."""

    backend: str
    tmp_path: Path
    schema: str | None

    async def open(self, name: str = "db", *, connections: int | None = None) -> Store:
        """The store; ``connections`` is SQLite's reader count or the PostgreSQL pool size."""
        if self.backend == "postgresql":
            assert self.schema is not None
            return await PostgresStore.open(pg_dsn(), schema=self.schema, pool_size=connections or 8)
        return await SqliteStore.open(self.tmp_path / f"{name}.sqlite3", readers=connections or 2)

    def env(self) -> dict[str, str]:
        """Environment settings that make a gateway config use this store."""
        if self.backend == "postgresql":
            assert self.schema is not None
            return {"CRYPTOCITY_STORE__DSN": pg_dsn(), "CRYPTOCITY_STORE__SCHEMA": self.schema}
        return {}


@pytest.fixture
async def store_factory(
    store_backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[StoreFactory]:
    if store_backend != "postgresql":
        yield StoreFactory(store_backend, tmp_path, None)
        return
    dsn = pg_dsn()
    schema = f"t_{secrets.token_hex(6)}"
    try:
        yield StoreFactory(store_backend, tmp_path, schema)
    finally:
        await drop_schema(dsn, schema)


@pytest.fixture
async def any_store(store_factory: StoreFactory) -> AsyncIterator[Store]:
    """An open, migrated store of each backend (ids sqlite / postgresql)."""
    store = await store_factory.open()
    try:
        yield store
    finally:
        await store.close()


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


GATEWAY_BACKEND_ENV = "CRYPTOCITY_TEST_GATEWAY_BACKEND"


# Suites whose gateway tests run on both backends; integration and browser tests (real nodes, a browser)
# keep the embedded store, so CI's slowest suites do not double.
BOTH_BACKEND_SUITES = ("unit", "api")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Every unit and API test on the test gateway (``make_gateway``/``gateway``) runs on both backends,
    ids ``sqlite`` and ``postgresql``, unless marked ``sqlite_only`` or CRYPTOCITY_TEST_GATEWAY_BACKEND
    names one backend for the whole run."""
    if "gateway_store" not in metafunc.fixturenames or os.environ.get(GATEWAY_BACKEND_ENV):
        return
    suite = Path(str(metafunc.definition.path)).relative_to(Path(__file__).parent).parts[0]
    if suite not in BOTH_BACKEND_SUITES:
        return
    if metafunc.definition.get_closest_marker("sqlite_only") is not None:
        return
    metafunc.parametrize("gateway_store", BACKENDS, indirect=True, ids=BACKENDS)


@pytest.fixture
async def gateway_store(request: pytest.FixtureRequest) -> AsyncIterator[dict[str, str]]:
    """Environment settings that put the test gateway's store on a backend: SQLite in tmp_path unless the
    test is parametrised with ``gateway_store`` (indirect) or CRYPTOCITY_TEST_GATEWAY_BACKEND says
    ``postgresql`` (then a schema of its own on the test server, dropped after the app has closed)."""
    backend = getattr(request, "param", None) or os.environ.get(GATEWAY_BACKEND_ENV) or "sqlite"
    if request.node.get_closest_marker("sqlite_only") is not None:
        backend = "sqlite"
    if backend != "postgresql":
        yield {}
        return
    dsn = pg_dsn()
    schema = f"t_{secrets.token_hex(6)}"
    try:
        yield {
            "CRYPTOCITY_STORE__DSN": dsn,
            "CRYPTOCITY_STORE__SCHEMA": schema,
            "CRYPTOCITY_STORE__POOL_SIZE": "6",
        }
    finally:
        await drop_schema(dsn, schema)


@pytest.fixture
async def make_gateway(
    gateway_store: dict[str, str], aiohttp_client: Any, tmp_path: Path, clock: ManualClock
) -> GatewayFactory:
    async def factory(
        extensions: Extensions | None = None, rates: RateSource | None = None, **env: str
    ) -> Gateway:
        config = make_config(tmp_path, **{**gateway_store, **env})
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
