"""The limit on failed authentications per client address (gateway/api/auth_limits.py).

The buckets are driven directly on a ManualClock, then through a real in-process gateway: a client that
guesses keys gets 429 with Retry-After once over the limit (its valid key too), is let in again once
enough time has passed, and never affects another address; successful requests cost nothing; the number
of remembered addresses never exceeds the cap.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from gateway.api.auth_limits import AuthFailureLimiter, AuthFailureLimits, client_key
from gateway.api.state import AUTH_LIMITER
from gateway.clock import ManualClock
from gateway.config import SandboxConfig
from sandbox.extension import sandbox_extensions
from sandbox.regulator.tokens import RegulatorTokens
from tests.conftest import Gateway, GatewayFactory

# 6 failures a minute: one token every 10 s; a burst of 3.
LIMIT_ENV = {
    "CRYPTOCITY_SERVER__AUTH_FAILURES_PER_MINUTE": "6",
    "CRYPTOCITY_SERVER__AUTH_FAILURE_BURST": "3",
}
WRONG = {"Authorization": "Bearer cc_test_thisisnotarealkey0000000000000"}


def limiter(
    per_minute: int = 6, burst: int = 3, max_clients: int = 100
) -> tuple[AuthFailureLimiter, ManualClock]:
    clock = ManualClock()
    return AuthFailureLimiter(AuthFailureLimits(per_minute, burst, max_clients), clock), clock


# -- the buckets ---------------------------------------------------------------------------------------


def test_a_burst_of_failures_then_a_wait_of_one_token() -> None:
    limits, clock = limiter()
    assert limits.retry_after("198.51.100.7") is None
    assert [limits.record_failure("198.51.100.7") for _ in range(2)] == [None, None]
    assert limits.retry_after("198.51.100.7") is None
    assert limits.record_failure("198.51.100.7") == 10  # the third empties the bucket
    assert limits.retry_after("198.51.100.7") == 10
    clock.advance(4)
    assert limits.retry_after("198.51.100.7") == 6
    clock.advance(6)
    assert limits.retry_after("198.51.100.7") is None  # one token back: one more try
    assert limits.record_failure("198.51.100.7") == 10


def test_the_long_run_rate_is_the_configured_one() -> None:
    limits, clock = limiter(per_minute=20, burst=20)
    tries = 0
    for _ in range(10 * 60):  # a guesser trying every second for ten minutes
        if limits.retry_after("203.0.113.9") is None:
            limits.record_failure("203.0.113.9")
            tries += 1
        clock.advance(1)
    assert tries == 20 + 20 * 10 - 1  # the burst, then 20 a minute (the last token is still refilling)


def test_concurrent_failures_go_into_debt_and_wait_it_off() -> None:
    limits, clock = limiter()
    for _ in range(8):  # eight requests in flight at once all passed the check; all eight fail
        limits.record_failure("192.0.2.1")
    assert limits.retry_after("192.0.2.1") == 60  # 3 - 8 = -5 tokens: 6 tokens (60 s) to the next try
    clock.advance(59)
    assert limits.retry_after("192.0.2.1") == 1
    clock.advance(1)
    assert limits.retry_after("192.0.2.1") is None


def test_other_clients_are_unaffected_and_refilled_buckets_are_forgotten() -> None:
    limits, clock = limiter()
    for _ in range(3):
        limits.record_failure("192.0.2.1")
    assert limits.retry_after("192.0.2.1") == 10
    assert limits.retry_after("192.0.2.2") is None
    assert len(limits) == 1
    clock.advance(30)  # three tokens: full again, the same as never having failed
    assert limits.retry_after("192.0.2.1") is None
    assert len(limits) == 0


def test_remembered_clients_never_exceed_the_cap() -> None:
    limits, _ = limiter(max_clients=50)
    rng = random.Random(20261123)
    for _ in range(5000):
        limits.record_failure(f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(256)}")
        assert len(limits) <= 50
    assert len(limits) == 50


def test_the_least_recently_failing_client_is_forgotten_first() -> None:
    limits, _ = limiter(max_clients=2)
    for _ in range(3):
        limits.record_failure("192.0.2.1")
    limits.record_failure("192.0.2.2")
    limits.record_failure("192.0.2.1")  # 192.0.2.1 failed most recently now
    limits.record_failure("192.0.2.3")  # evicts 192.0.2.2
    assert limits.retry_after("192.0.2.1") is not None
    assert len(limits) == 2


def test_clients_are_ipv4_addresses_or_ipv6_slash_64s() -> None:
    assert client_key("127.0.0.1") == "127.0.0.1"
    assert client_key("::ffff:192.0.2.1") == "192.0.2.1"
    assert client_key("2001:db8:1:2:aaaa::1") == client_key("2001:db8:1:2:bbbb::2") == "2001:db8:1:2::/64"
    assert client_key("2001:db8:1:3::1") != client_key("2001:db8:1:2::1")
    assert client_key(None) == "unknown"


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        AuthFailureLimits(0, 1, 1)


# -- through the gateway -------------------------------------------------------------------------------


@pytest.fixture
async def other_address() -> AsyncIterator[aiohttp.ClientSession]:
    """A client on another loopback address (127.0.0.2), so the gateway sees a different remote."""
    connector = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
    async with aiohttp.ClientSession(connector=connector) as session:
        yield session


async def status(gateway: Gateway, path: str, headers: dict[str, str]) -> int:
    async with gateway.client.get(path, headers=headers) as response:
        return response.status


async def test_over_the_limit_credentials_get_429_with_retry_after(make_gateway: GatewayFactory) -> None:
    gateway = await make_gateway(**LIMIT_ENV)
    assert [await status(gateway, "/v1/invoices", WRONG) for _ in range(3)] == [401, 401, 401]
    for headers in (WRONG, gateway.auth()):  # the valid key too: a guesser must not learn which was right
        async with gateway.client.get("/v1/invoices", headers=headers) as response:
            assert response.status == 429
            assert response.content_type == "application/problem+json"
            assert response.headers["Retry-After"] == "10"
            body = await response.json()
        assert body["status"] == 429
        assert body["type"].endswith("/too-many-auth-failures")
        assert "too many failed authentications" in body["detail"]
        assert body["instance"] == "/v1/invoices"
    # no credentials, nothing to refuse: public paths answer, the API still asks for a key
    assert await status(gateway, "/healthz", {}) == 200
    assert await status(gateway, "/v1/invoices", {}) == 401
    assert await status(gateway, "/healthz", gateway.auth()) == 200  # a public path ignores credentials


async def test_after_the_wait_the_client_is_let_in_again(make_gateway: GatewayFactory) -> None:
    gateway = await make_gateway(**LIMIT_ENV)
    for _ in range(3):
        await status(gateway, "/v1/invoices", WRONG)
    assert await status(gateway, "/v1/invoices", gateway.auth()) == 429
    gateway.clock.advance(9)
    assert await status(gateway, "/v1/invoices", gateway.auth()) == 429
    gateway.clock.advance(1)
    assert await status(gateway, "/v1/invoices", gateway.auth()) == 200
    assert await status(gateway, "/v1/invoices", WRONG) == 401  # the one token it earned
    assert await status(gateway, "/v1/invoices", WRONG) == 429


async def test_another_address_is_unaffected(
    make_gateway: GatewayFactory, other_address: aiohttp.ClientSession
) -> None:
    gateway = await make_gateway(**LIMIT_ENV)
    for _ in range(4):
        await status(gateway, "/v1/invoices", WRONG)
    assert await status(gateway, "/v1/invoices", gateway.auth()) == 429
    url = gateway.client.make_url("/v1/invoices")
    async with other_address.get(url, headers=gateway.auth(gateway.other_api_key)) as response:
        assert response.status == 200
    async with other_address.get(url, headers=WRONG) as response:
        assert response.status == 401  # its own bucket, still full
    assert len(gateway.app[AUTH_LIMITER]) == 2


async def test_successful_requests_are_not_charged(make_gateway: GatewayFactory) -> None:
    gateway = await make_gateway(**LIMIT_ENV)
    for _ in range(50):
        assert await status(gateway, "/v1/invoices", gateway.auth()) == 200
    assert len(gateway.app[AUTH_LIMITER]) == 0
    assert [await status(gateway, "/v1/invoices", WRONG) for _ in range(3)] == [401, 401, 401]


async def test_the_gateway_remembers_at_most_the_configured_number_of_addresses(
    make_gateway: GatewayFactory,
) -> None:
    gateway = await make_gateway(**LIMIT_ENV, CRYPTOCITY_SERVER__AUTH_FAILURE_MAX_CLIENTS="3")
    url = gateway.client.make_url("/v1/invoices")
    for host in range(2, 10):
        connector = aiohttp.TCPConnector(local_addr=(f"127.0.0.{host}", 0))
        async with (
            aiohttp.ClientSession(connector=connector) as session,
            session.get(url, headers=WRONG) as response,
        ):
            assert response.status == 401
        assert len(gateway.app[AUTH_LIMITER]) <= 3
    assert len(gateway.app[AUTH_LIMITER]) == 3


async def test_regulator_token_guesses_count_too(make_gateway: GatewayFactory) -> None:
    gateway = await make_gateway(sandbox_extensions(SandboxConfig()), **LIMIT_ENV)
    token = (await RegulatorTokens(gateway.store, gateway.clock).issue("test regulator")).plaintext
    guess = {"Authorization": "Bearer crt_notarealtoken000000000000000000"}
    assert [await status(gateway, "/sandbox/v1/summary", guess) for _ in range(3)] == [401, 401, 401]
    assert await status(gateway, "/sandbox/v1/summary", {"Authorization": f"Bearer {token}"}) == 429
    assert await status(gateway, "/sandbox/dashboard/", guess) != 429  # a public page: not guarded


async def test_openapi_documents_429_on_every_operation_that_needs_credentials(
    make_gateway: GatewayFactory,
) -> None:
    gateway = await make_gateway(sandbox_extensions(SandboxConfig()))
    async with gateway.client.get("/openapi.json") as response:
        document: dict[str, Any] = await response.json()
    secured = [
        (path, method, operation)
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if method != "parameters" and operation.get("security")
    ]
    assert any(path == "/v1/invoices" for path, _, _ in secured)
    assert any(path.startswith("/sandbox/v1/") for path, _, _ in secured)
    for path, method, operation in secured:
        answer = operation["responses"].get("429")
        assert answer is not None, (method, path)
        assert "Retry-After" in answer["headers"]
    assert "429" not in document["paths"]["/healthz"]["get"]["responses"]
