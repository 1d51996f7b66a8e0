"""Fixtures for the API tests that price from the live rate providers (served from recorded samples)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.fixtures.rates.fake_providers import FakeProviders


@pytest.fixture
async def providers(aiohttp_server: Any, clock: Any) -> AsyncIterator[tuple[FakeProviders, str]]:
    """The fake National Bank, Binance and Kraken on one loopback server, and its base URL."""
    fake = FakeProviders(clock)
    server = await aiohttp_server(fake.app())
    try:
        yield fake, str(server.make_url("")).rstrip("/")
    finally:
        fake.release()
