"""Webhooks end to end in one process: endpoints API, fan-out, signed delivery, retries, disabling, SSRF
refusal, events and deliveries views, redelivery.

The receiver is a real aiohttp server on loopback whose behaviour each test scripts (answer 200, 500,
time out, close the connection, redirect). Retry waits run on the test's ManualClock: the test advances
it and wakes the dispatcher instead of sleeping.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult

from gateway.api.state import CLOCK, STORE, WEBHOOKS
from gateway.webhooks.dispatcher import DispatchSettings, WebhookDispatcher
from gateway.webhooks.targets import TargetPolicy
from merchants.sdk.webhooks import WebhookVerificationError, verify_webhook
from tests.conftest import Gateway, GatewayFactory

Behaviour = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def ok(request: web.Request) -> web.StreamResponse:
    return web.Response(text="ok")


async def fail_500(request: web.Request) -> web.StreamResponse:
    return web.Response(status=500, text="receiver broke")


@dataclass
class Receiver:
    """Records every request; answers with the scripted behaviours in turn, then with ``default``."""

    script: list[Behaviour] = field(default_factory=list)
    default: Behaviour = ok
    received: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    url: str = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.received.append((dict(request.headers), body))
        behaviour = self.script.pop(0) if self.script else self.default
        return await behaviour(request)

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(body) for _, body in self.received]


@pytest.fixture
async def receiver(aiohttp_server: Any) -> Receiver:
    got = Receiver()
    app = web.Application()
    app.router.add_post("/hook", got.handle)
    app.router.add_post("/elsewhere", got.handle)
    server = await aiohttp_server(app)
    got.url = str(server.make_url("/hook"))
    return got


async def until(check: Callable[[], Any], seconds: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


async def call(gateway: Gateway, method: str, path: str, body: Any = None, key: str | None = None) -> Any:
    response = await gateway.client.request(method, path, json=body, headers=gateway.auth(key))
    text = await response.text()
    return response.status, (json.loads(text) if text else None)


async def endpoint(gateway: Gateway, url: str, **fields: Any) -> dict[str, Any]:
    status, body = await call(gateway, "POST", "/v1/webhook-endpoints", {"url": url, **fields})
    assert status == 201, body
    return body  # type: ignore[no-any-return]


QUICK = {"CRYPTOCITY_WEBHOOKS__RETRY_SCHEDULE_SECONDS": "[10, 20]", "CRYPTOCITY_WEBHOOKS__JITTER": "0"}


async def test_endpoint_crud_and_secret_rotation(make_gateway: GatewayFactory, receiver: Receiver) -> None:
    gateway = await make_gateway()
    created = await endpoint(gateway, receiver.url, event_types=["invoice.settled"], description="shop")
    assert created["id"].startswith("whe_") and created["secret"].startswith("whsec_")
    assert created["status"] == "enabled" and created["event_types"] == ["invoice.settled"]

    status, listed = await call(gateway, "GET", "/v1/webhook-endpoints")
    assert status == 200 and [e["id"] for e in listed["data"]] == [created["id"]]
    assert "secret" not in listed["data"][0]
    status, got = await call(gateway, "GET", f"/v1/webhook-endpoints/{created['id']}")
    assert status == 200 and "secret" not in got and got["description"] == "shop"

    status, patched = await call(
        gateway,
        "PATCH",
        f"/v1/webhook-endpoints/{created['id']}",
        {"event_types": ["*"], "description": None},
    )
    assert status == 200 and patched["event_types"] == ["*"] and patched["description"] is None

    status, rotated = await call(gateway, "POST", f"/v1/webhook-endpoints/{created['id']}/rotate-secret", {})
    assert status == 200 and rotated["secret"] != created["secret"]

    # During the overlap, deliveries carry a v1 for each secret: a receiver with either one verifies.
    await gateway.create_invoice("1000.00")
    await until(lambda: _received(receiver, 1))
    headers, body = receiver.received[0]
    assert headers["CryptoCity-Signature"].count("v1=") == 2
    now = int(gateway.clock.now().timestamp())
    for secret in (created["secret"], rotated["secret"]):
        assert verify_webhook(secret, headers, body, now=now)["type"] == "invoice.created"

    # Another merchant cannot see, change or delete it.
    other = gateway.other_api_key
    for method in ("GET", "PATCH", "DELETE"):
        status, problem = await call(gateway, method, f"/v1/webhook-endpoints/{created['id']}", {}, key=other)
        assert status == 404, (method, problem)

    status, _ = await call(gateway, "DELETE", f"/v1/webhook-endpoints/{created['id']}")
    assert status == 204
    status, _ = await call(gateway, "GET", f"/v1/webhook-endpoints/{created['id']}")
    assert status == 404


async def _received(receiver: Receiver, n: int) -> bool:
    return len(receiver.received) >= n


@pytest.mark.parametrize(
    ("body", "pointer", "words"),
    [
        ({"url": "http://10.0.0.1/hook"}, "/url", "private"),
        ({"url": "http://169.254.169.254/latest/meta-data"}, "/url", "link-local"),
        ({"url": "http://[::ffff:192.168.1.5]/hook"}, "/url", "private"),
        ({"url": "ftp://shop.example/hook"}, "/url", "http"),
        ({"url": "https://user:pw@shop.example/hook"}, "/url", "password"),
        ({"url": "https://shop.example/hook", "event_types": ["invoice.paid"]}, "/event_types/0", "unknown"),
        ({"url": "https://shop.example/hook", "event_types": []}, "/event_types", ""),
    ],
)
async def test_bad_endpoints_are_refused_with_the_field_named(
    gateway: Gateway, body: dict[str, Any], pointer: str, words: str
) -> None:
    status, problem = await call(gateway, "POST", "/v1/webhook-endpoints", body)
    assert status in (400, 422), problem
    assert problem["errors"][0]["pointer"] == pointer
    assert words in problem["detail"]


async def test_loopback_targets_are_refused_unless_allowed(make_gateway: GatewayFactory) -> None:
    gateway = await make_gateway(CRYPTOCITY_WEBHOOKS__ALLOW_LOOPBACK="false")
    for url in ("http://127.0.0.1:9/hook", "http://localhost/hook", "http://[::1]/hook"):
        status, problem = await call(gateway, "POST", "/v1/webhook-endpoints", {"url": url})
        assert status == 422 and "loopback" in problem["detail"], (url, problem)


async def test_events_are_signed_delivered_and_listed(
    make_gateway: GatewayFactory, receiver: Receiver
) -> None:
    gateway = await make_gateway()
    hook = await endpoint(gateway, receiver.url)
    invoice = await gateway.create_invoice("2500.00")
    await gateway.create_invoice("3000.00", key=gateway.other_api_key)  # another merchant's: not sent here
    await until(lambda: _received(receiver, 1))
    await asyncio.sleep(0.1)
    assert len(receiver.received) == 1
    headers, body = receiver.received[0]
    event = verify_webhook(hook["secret"], headers, body, now=int(gateway.clock.now().timestamp()))
    assert event["type"] == "invoice.created" and event["data"]["invoice"]["id"] == invoice["id"]
    assert event["invoice_version"] == invoice["version"]
    assert (
        headers["CryptoCity-Event-Id"] == event["id"]
        and headers["CryptoCity-Event-Type"] == "invoice.created"
    )
    assert headers["User-Agent"] == "CryptoCity-Webhooks/1"
    with pytest.raises(WebhookVerificationError):
        verify_webhook(
            hook["secret"], headers, body.replace(b"2500", b"2501"), now=int(gateway.clock.now().timestamp())
        )

    status, events = await call(gateway, "GET", "/v1/events?type=invoice.created")
    assert status == 200 and [e["id"] for e in events["data"]] == [event["id"]]
    status, single = await call(gateway, "GET", f"/v1/events/{event['id']}")
    assert status == 200 and single == event
    status, _ = await call(gateway, "GET", f"/v1/events/{event['id']}", key=gateway.other_api_key)
    assert status == 404

    async def delivered() -> bool:
        _, attempts = await call(gateway, "GET", f"/v1/events/{event['id']}/deliveries")
        return bool(attempts["data"]) and attempts["data"][0]["status"] == "succeeded"

    await until(delivered)
    _, attempts = await call(gateway, "GET", f"/v1/events/{event['id']}/deliveries")
    (attempt,) = attempts["data"]
    assert attempt["response_status"] == 200 and attempt["attempt"] == 1 and attempt["latency_ms"] >= 0
    assert attempt["endpoint_id"] == hook["id"] and attempt["error"] is None

    status, again = await call(gateway, "POST", f"/v1/events/{event['id']}/redeliver", {})
    assert status == 202 and again["data"][0]["status"] == "pending"
    await until(lambda: _received(receiver, 2))
    assert receiver.received[1][1] == body  # the same bytes: the body is fixed, only the header changes


async def test_failures_are_retried_on_the_schedule_then_succeed(
    make_gateway: GatewayFactory, receiver: Receiver
) -> None:
    gateway = await make_gateway(**QUICK)
    await endpoint(gateway, receiver.url)
    receiver.script = [fail_500, fail_500]
    await gateway.create_invoice("1000.00")
    await until(lambda: _received(receiver, 1))
    await asyncio.sleep(0.2)
    assert len(receiver.received) == 1  # the next attempt waits 10 s on the domain clock
    for seconds in (10, 20):
        gateway.clock.advance(timedelta(seconds=seconds))
        gateway.app[WEBHOOKS].wake()
        await until(lambda n=len(receiver.received) + 1: _received(receiver, n))
    event_id = receiver.events()[0]["id"]

    async def finished() -> bool:
        _, attempts = await call(gateway, "GET", f"/v1/events/{event_id}/deliveries")
        return [a["status"] for a in attempts["data"]] == ["failed", "failed", "succeeded"]

    await until(finished)
    _, attempts = await call(gateway, "GET", f"/v1/events/{event_id}/deliveries")
    assert [a["response_status"] for a in attempts["data"]] == [500, 500, 200]
    assert attempts["data"][0]["error"] == "HTTP 500: receiver broke"
    # Each attempt is signed with its own time: three different headers over the same body.
    assert len({h["CryptoCity-Signature"] for h, _ in receiver.received}) == 3
    assert len({b for _, b in receiver.received}) == 1


async def test_timeouts_disconnects_and_redirects_are_failures(
    make_gateway: GatewayFactory, receiver: Receiver
) -> None:
    gateway = await make_gateway(CRYPTOCITY_WEBHOOKS__TIMEOUT_SECONDS="0.3", **QUICK)

    async def slow(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(2)
        return web.Response(text="too late")

    async def hang_up(request: web.Request) -> web.StreamResponse:
        assert request.transport is not None
        request.transport.close()
        return web.Response(text="never sent")

    async def redirect(request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound(location="/elsewhere")

    errors = []
    for behaviour, expected in ((slow, "timed out"), (hang_up, "Disconnected"), (redirect, "not followed")):
        receiver.received.clear()
        receiver.script = [behaviour]
        hook = await endpoint(gateway, receiver.url)
        invoice = await gateway.create_invoice("1000.00")

        async def attempted(invoice_id: str = invoice["id"], hook_id: str = hook["id"]) -> bool:
            _, events = await call(gateway, "GET", f"/v1/events?invoice_id={invoice_id}")
            _, attempts = await call(gateway, "GET", f"/v1/events/{events['data'][0]['id']}/deliveries")
            done = [a for a in attempts["data"] if a["status"] != "pending" and a["endpoint_id"] == hook_id]
            if done:
                errors.append(done[0]["error"])
            return bool(done)

        await until(attempted)
        assert expected in errors[-1], errors[-1]
        assert all(not h.get("X-Forwarded") for h, _ in receiver.received)
        await call(gateway, "DELETE", f"/v1/webhook-endpoints/{hook['id']}")
    # The redirect target was never called: only /hook requests arrived.
    assert len(receiver.received) == 1


async def test_an_endpoint_failing_for_too_long_is_disabled_with_the_reason(
    make_gateway: GatewayFactory, receiver: Receiver
) -> None:
    gateway = await make_gateway(
        CRYPTOCITY_WEBHOOKS__DISABLE_AFTER_SECONDS="25",
        CRYPTOCITY_WEBHOOKS__RETRY_SCHEDULE_SECONDS="[10, 10, 10, 10]",
        CRYPTOCITY_WEBHOOKS__JITTER="0",
    )
    receiver.default = fail_500
    hook = await endpoint(gateway, receiver.url)
    await gateway.create_invoice("1000.00")
    for n in range(1, 4):
        await until(lambda n=n: _received(receiver, n))
        gateway.clock.advance(timedelta(seconds=15))
        gateway.app[WEBHOOKS].wake()

    async def disabled() -> bool:
        _, got = await call(gateway, "GET", f"/v1/webhook-endpoints/{hook['id']}")
        return got["status"] == "disabled"  # type: ignore[no-any-return]

    await until(disabled)
    _, got = await call(gateway, "GET", f"/v1/webhook-endpoints/{hook['id']}")
    assert "HTTP 500" in got["disabled_reason"] and got["failing_since"] is not None
    row = await gateway.store.read(
        lambda tx: tx.fetchone("SELECT payload FROM outbox WHERE type = 'webhook_endpoint.disabled'")
    )
    assert row is not None and hook["id"] in row["payload"]
    count = len(receiver.received)
    gateway.clock.advance(timedelta(seconds=60))
    gateway.app[WEBHOOKS].wake()
    await asyncio.sleep(0.3)
    assert len(receiver.received) == count  # nothing more goes to a disabled endpoint

    # Re-enabling clears the failure; the pending delivery goes out again.
    receiver.default = ok
    status, enabled = await call(
        gateway, "PATCH", f"/v1/webhook-endpoints/{hook['id']}", {"status": "enabled"}
    )
    assert status == 200 and enabled["disabled_reason"] is None and enabled["failing_since"] is None
    gateway.app[WEBHOOKS].wake()
    await until(lambda: _received(receiver, count + 1))


class StubResolver(AbstractResolver):
    """Answers every name with one fixed address; the test never resolves anything for real."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.asked: list[str] = []

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.asked.append(host)
        return [
            ResolveResult(
                hostname=host,
                host=self.address,
                port=port,
                family=family,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
        ]

    async def close(self) -> None:
        return None


@pytest.mark.parametrize("address", ["10.0.0.1", "169.254.169.254"])
async def test_a_name_resolving_inside_is_refused_before_any_socket_is_opened(
    make_gateway: GatewayFactory, monkeypatch: pytest.MonkeyPatch, address: str
) -> None:
    gateway = await make_gateway()
    await gateway.app[WEBHOOKS].stop()  # replaced by one with a stub resolver
    hook = await endpoint(gateway, "https://rebinding.example/hook")
    await gateway.create_invoice("1000.00")

    loop = asyncio.get_running_loop()
    opened: list[Any] = []
    real_create_connection = loop.create_connection

    async def counting_create_connection(*args: Any, **kwargs: Any) -> Any:
        opened.append(args)
        return await real_create_connection(*args, **kwargs)

    monkeypatch.setattr(loop, "create_connection", counting_create_connection)
    resolver = StubResolver(address)
    dispatcher = WebhookDispatcher(
        gateway.app[STORE],
        gateway.app[CLOCK],
        DispatchSettings(),
        TargetPolicy(allow_loopback=True),
        resolver=resolver,
    )
    dispatcher.start()
    try:

        async def refused() -> bool:
            row = await gateway.store.read(
                lambda tx: tx.fetchone(
                    "SELECT error FROM webhook_attempts WHERE endpoint_id = ?", (hook["id"],)
                )
            )
            return row is not None

        await until(refused)
    finally:
        await dispatcher.stop()
    row = await gateway.store.read(
        lambda tx: tx.fetchone("SELECT error FROM webhook_attempts WHERE endpoint_id = ?", (hook["id"],))
    )
    assert "refused before connecting" in row["error"] and address in row["error"]
    assert resolver.asked == ["rebinding.example"]
    assert opened == []  # no socket was opened towards it


async def test_an_event_type_filter_and_disabled_endpoints_get_nothing(
    make_gateway: GatewayFactory, receiver: Receiver
) -> None:
    gateway = await make_gateway()
    await endpoint(gateway, receiver.url, event_types=["invoice.settled"])
    paused = await endpoint(gateway, receiver.url)
    await call(gateway, "PATCH", f"/v1/webhook-endpoints/{paused['id']}", {"status": "disabled"})
    await gateway.create_invoice("1000.00")
    await asyncio.sleep(0.3)
    assert receiver.received == []
    status, problem = await call(gateway, "POST", "/v1/events/evt_00000000000000000000000000/redeliver", {})
    assert status == 404 and problem["detail"]


async def test_the_sdk_speaks_the_real_webhook_api(make_gateway: GatewayFactory, receiver: Receiver) -> None:
    """The merchant SDK against this server (its own tests use a fake of the contract)."""
    from merchants.sdk import CryptoCityClient, NotFound

    gateway = await make_gateway()
    base = str(gateway.client.make_url("")).rstrip("/")
    async with CryptoCityClient(base, gateway.api_key) as sdk:
        created = await sdk.create_webhook_endpoint(receiver.url, event_types=["invoice.created"])
        assert created.secret and created.status == "enabled"
        assert [e.id for e in (await sdk.list_webhook_endpoints()).data] == [created.id]
        rotated = await sdk.rotate_webhook_secret(created.id, expire_previous_in_seconds=0)
        assert rotated.secret and rotated.secret != created.secret
        await gateway.create_invoice("1000.00")
        await until(lambda: _received(receiver, 1))
        headers, body = receiver.received[0]
        assert (
            headers["CryptoCity-Signature"].count("v1=") == 1
        )  # the overlap was 0: the old secret is retired
        verify_webhook(rotated.secret, headers, body, now=int(gateway.clock.now().timestamp()))
        events = await sdk.list_events(type="invoice.created")
        (event,) = events.data
        assert (await sdk.get_event(event.id)).id == event.id

        async def delivered() -> bool:
            attempts = (await sdk.list_event_deliveries(event.id)).data
            return bool(attempts) and attempts[-1].status == "succeeded"

        await until(delivered)
        again = await sdk.redeliver_event(event.id)
        assert [d.status for d in again.data] == ["pending"]
        updated = await sdk.update_webhook_endpoint(created.id, status="disabled")
        assert updated.status == "disabled" and updated.disabled_reason == "disabled by the merchant"
        await sdk.delete_webhook_endpoint(created.id)
        with pytest.raises(NotFound):
            await sdk.get_webhook_endpoint(created.id)
