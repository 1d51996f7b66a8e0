"""The merchant SDK over real HTTP.

Part 1 runs it against the REAL gateway app (tests/conftest.py's fixtures on a loopback server):
invoices, rates, balance and ledger, error mapping, idempotency and the 503 retry.

Part 2 covers the webhook-endpoint and event methods against ``ContractFake``, a small in-memory
server of the contract the gateway is implementing in parallel (issue 7). Its events are the real
gateway's outbox bodies. When the gateway serves these routes, point the ``contract`` fixture at the
real app (``sdk_for(gateway)``) and delete the fake: the tests are written against the contract only.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from datetime import datetime
from decimal import Decimal
from typing import Any

import pytest
from aiohttp import web

from gateway.api.state import CONFIG
from gateway.invoices.service import PaymentFact
from gateway.money import Asset, Chain
from gateway.outbox import read_events_after
from gateway.rates import AssetRate, FixedRates, RatesUnavailable
from merchants.sdk import (
    APIConnectionError,
    AuthenticationError,
    Conflict,
    CryptoCityClient,
    Event,
    InvalidRequest,
    NotFound,
    RateLimited,
    ServiceUnavailable,
    sign_webhook,
    verify_webhook,
)
from sandbox.ledger.api import ledger_extensions
from tests.conftest import Gateway, GatewayFactory

RATES = {Asset.BTC: Decimal("48450000.00"), Asset.ETH: Decimal("1683000.00"), Asset.USDT: Decimal("510.00")}


def base_url(server_url: Any) -> str:
    return str(server_url).rstrip("/")


class Sleeps:
    """An injected ``sleep`` that records the waits instead of waiting; ``then`` runs at each wait."""

    def __init__(self, then: Callable[[], None] | None = None) -> None:
        self.waits: list[float] = []
        self._then = then

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        if self._then is not None:
            self._then()


@pytest.fixture
async def sdk_for() -> AsyncIterator[Callable[..., CryptoCityClient]]:
    clients: list[CryptoCityClient] = []

    def make(gateway: Gateway, key: str | None = None, **options: Any) -> CryptoCityClient:
        options.setdefault("sleep", Sleeps())
        client = CryptoCityClient(base_url(gateway.client.make_url("")), key or gateway.api_key, **options)
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


async def settle(gateway: Gateway, invoice_id: str, key: str, confirmations: int = 1) -> None:
    record = await gateway.service.get(None, invoice_id)
    btc = next(m for m in record.methods if m.asset is Asset.BTC)
    await gateway.service.record_payment(
        PaymentFact(Chain.BITCOIN, btc.address, key, Asset.BTC, btc.amount_due_minor, confirmations)
    )


# --- Part 1: the real gateway ---------------------------------------------------------------------------


async def test_invoices_create_get_list_pages_cancel_and_payments(
    gateway: Gateway, sdk_for: Callable[..., CryptoCityClient]
) -> None:
    sdk = sdk_for(gateway)
    created = [
        await sdk.create_invoice(f"{1000 + i}.50", order_id=f"o-{i}", metadata={"n": i}) for i in range(5)
    ]
    first = created[0]
    assert first.amount == Decimal("1000.50") and first.amount_tiyn == 100_050
    assert first.status == "new" and first.order_id == "o-0" and first.metadata == {"n": 0}
    assert first.checkout_url.endswith(f"/i/{first.id}")
    assert {m.asset for m in first.payment_methods} == {"BTC", "ETH", "USDT"}
    assert first.quote.rates["BTC"].kzt_per_unit == RATES[Asset.BTC]
    assert isinstance(first.expires_at, datetime) and first.expires_at.tzinfo is not None
    assert await sdk.get_invoice(first.id) == first

    page = await sdk.list_invoices(limit=2)
    assert [i.id for i in page.data] == [created[4].id, created[3].id]  # newest first
    assert page.has_more and page.next_starting_after == created[3].id
    rest = await sdk.list_invoices(limit=10, starting_after=page.next_starting_after)
    assert [i.id for i in rest.data] == [c.id for c in reversed(created[:3])] and not rest.has_more
    assert [i.id async for i in sdk.iter_invoices(page_size=2)] == [c.id for c in reversed(created)]
    assert [i.id for i in (await sdk.list_invoices(order_id="o-2")).data] == [created[2].id]
    window = await sdk.list_invoices(created_gte=first.created_at, status="new")
    assert len(window.data) == 5  # a datetime with a +00:00 zone survives the query string

    cancelled = await sdk.cancel_invoice(created[1].id)
    assert cancelled.status == "cancelled" and cancelled.version == created[1].version + 1
    with pytest.raises(Conflict) as conflict:
        await sdk.cancel_invoice(created[1].id)
    assert conflict.value.status == 409 and conflict.value.type.endswith("/invalid-transition")
    with pytest.raises(Conflict):
        await sdk.accept_late_payment(created[2].id)  # nothing late to accept

    assert (await sdk.list_payments(first.id)).data == []
    await settle(gateway, first.id, "ab" * 32 + ":0")
    payments = (await sdk.list_payments(first.id)).data
    assert [(p.payment_key, p.asset, p.status, p.confirmations) for p in payments] == [
        ("ab" * 32 + ":0", "BTC", "accepted", 1)
    ]
    settled = await sdk.get_invoice(first.id)
    assert settled.status == "settled" and settled.amount_paid_tiyn >= first.amount_tiyn  # due rounds up
    assert settled.version > first.version


async def test_rates(gateway: Gateway, sdk_for: Callable[..., CryptoCityClient]) -> None:
    view = await sdk_for(gateway).get_rates()
    assert view.mode == "fixed"
    assert {asset: rate.kzt_per_unit for asset, rate in view.rates.items()} == {
        a.value: r for a, r in RATES.items()
    }
    assert view.rates["BTC"].sources == ["fixed"] and view.providers == {}


async def test_balance_and_ledger_follow_a_settlement(
    make_gateway: GatewayFactory, sdk_for: Callable[..., CryptoCityClient]
) -> None:
    gateway = await make_gateway(ledger_extensions())
    sdk = sdk_for(gateway)
    assert (await sdk.get_balance()).accounts["settlement"].tiyn == 0
    paid = [await sdk.create_invoice(amount, assets=["BTC"]) for amount in ("10000.00", "2500.00")]
    for n, invoice in enumerate(paid):
        await settle(gateway, invoice.id, f"{'cd' * 32}:{n}")
    for _ in range(200):  # the ledger books from the outbox, a moment after the commit
        balance = await sdk.get_balance()
        if balance.accounts["settlement"].tiyn == 1_250_000:
            break
        await asyncio.sleep(0.05)
    assert balance.merchant_id == gateway.merchant_id and balance.currency == "KZT"
    assert balance.accounts["settlement"].kzt == Decimal("12500.00")

    page = await sdk.list_ledger_entries(limit=1)
    assert len(page.data) == 1 and page.has_more and page.next_starting_after
    assert sum(line.amount.tiyn for line in page.data[0].lines) == 0  # every entry balances
    entries = [e async for e in sdk.iter_ledger_entries(page_size=1)]
    assert {e.invoice_id for e in entries} == {i.id for i in paid}
    assert all(e.event_type == "invoice.settled" for e in entries)
    with pytest.raises(InvalidRequest) as bad:
        await sdk.list_ledger_entries(starting_after="nonsense")
    assert bad.value.status == 400 and bad.value.errors[0].pointer == "?starting_after"


async def test_422_becomes_invalid_request_with_field_errors(
    gateway: Gateway, sdk_for: Callable[..., CryptoCityClient]
) -> None:
    waits = Sleeps()
    sdk = sdk_for(gateway, sleep=waits)
    with pytest.raises(InvalidRequest) as caught:
        await sdk.create_invoice("12500.001")
    error = caught.value
    assert error.status == 422 and error.title == "Invalid request"
    assert error.type.endswith("/validation-error") and error.instance == "/v1/invoices"
    assert [(e.pointer, "2 decimal" in e.detail) for e in error.errors] == [("/amount", True)]
    assert error.request_id and error.request_id.startswith("req_")
    assert waits.waits == []  # a 4xx is never retried
    with pytest.raises(InvalidRequest) as caught:
        await sdk.create_invoice("100.00", redirect_url="ftp://shop.example/done")
    assert caught.value.errors[0].pointer == "/redirect_url"
    with pytest.raises(ValueError, match="float"):
        await sdk.create_invoice(12.5)  # type: ignore[arg-type]  # refused before anything is sent


async def test_401_with_a_bad_key_and_404_for_unknown_or_foreign_ids(
    gateway: Gateway, sdk_for: Callable[..., CryptoCityClient]
) -> None:
    with pytest.raises(AuthenticationError) as caught:
        await sdk_for(gateway, key="cc_test_not_a_real_key").get_rates()
    assert caught.value.status == 401 and "API key" in caught.value.detail
    theirs = await sdk_for(gateway, key=gateway.other_api_key).create_invoice("500.00")
    sdk = sdk_for(gateway)
    for invoice_id in ("inv_doesnotexist", theirs.id, "../rates"):
        with pytest.raises(NotFound):
            await sdk.get_invoice(invoice_id)


async def test_a_key_guessed_too_often_becomes_rate_limited_and_is_not_retried(
    gateway: Gateway, sdk_for: Callable[..., CryptoCityClient]
) -> None:
    sleeps = Sleeps()
    guesser = sdk_for(gateway, key="cc_test_not_a_real_key", sleep=sleeps)
    burst = gateway.app[CONFIG].server.auth_failure_burst
    for _ in range(burst):
        with pytest.raises(AuthenticationError):
            await guesser.get_rates()
    with pytest.raises(RateLimited) as caught:
        await guesser.get_rates()
    assert (
        caught.value.status == 429 and caught.value.retry_after is not None and caught.value.retry_after > 0
    )
    assert sleeps.waits == []  # a 429 is raised at once: sending the wrong key again only extends the wait


async def test_the_same_explicit_idempotency_key_gives_the_same_invoice(
    gateway: Gateway, sdk_for: Callable[..., CryptoCityClient]
) -> None:
    sdk = sdk_for(gateway)
    first = await sdk.create_invoice("990.00", order_id="77", idempotency_key="order-77")
    again = await sdk.create_invoice("990.00", order_id="77", idempotency_key="order-77")
    assert again == first
    other = await sdk.create_invoice("990.00", order_id="77")  # automatic key: a new invoice
    assert other.id != first.id
    with pytest.raises(Conflict) as caught:
        await sdk.create_invoice("991.00", order_id="77", idempotency_key="order-77")
    assert "Idempotency-Key" in caught.value.detail


class RatesComingBack:
    """Unavailable (503 with Retry-After: 7) until ``up`` is set; then the fixed table."""

    def __init__(self) -> None:
        self.up = False
        self._fixed = FixedRates(RATES)

    def current(self, asset: Asset, now: datetime) -> AssetRate:
        if not self.up:
            raise RatesUnavailable(asset, retry_after_seconds=7)
        return self._fixed.current(asset, now)


async def test_503_is_retried_after_its_retry_after_and_saved_nothing(
    make_gateway: GatewayFactory, sdk_for: Callable[..., CryptoCityClient]
) -> None:
    rates = RatesComingBack()
    gateway = await make_gateway(rates=rates)
    waits = Sleeps()
    sdk = sdk_for(gateway, sleep=waits, max_retries=2)
    with pytest.raises(ServiceUnavailable) as caught:
        await sdk.create_invoice("100.00")
    assert caught.value.retry_after == 7 and waits.waits == [7, 7]  # two retries, then it gives up

    def provider_back() -> None:
        rates.up = True

    comes_back = Sleeps(then=provider_back)
    invoice = await sdk_for(gateway, sleep=comes_back, max_retry_delay=5).create_invoice("100.00")
    assert invoice.status == "new" and comes_back.waits == [5]  # Retry-After capped at max_retry_delay
    listed = await sdk.list_invoices()
    assert [i.id for i in listed.data] == [invoice.id]  # the 503s saved nothing


# --- Part 2: webhook endpoints and events, against the contract -----------------------------------------


def _problem(status: int, title: str, detail: str, slug: str) -> web.Response:
    body = {
        "type": f"https://cryptocity.invalid/problems/{slug}",
        "title": title,
        "status": status,
        "detail": detail,
        "instance": "",
    }
    return web.Response(status=status, text=json.dumps(body), content_type="application/problem+json")


class ContractFake:
    """The webhook endpoints and events API of issue 7, in memory, strict about request shapes.

    ``drop`` makes the next N requests to a path lose their connection (the server hangs up before
    answering) to exercise the client's retries; ``seen`` records each request's method, path and
    Idempotency-Key.
    """

    def __init__(self, api_key: str, events: list[dict[str, Any]], now: str) -> None:
        self.api_key = api_key
        self.events = events  # oldest first
        self.now = now
        self.endpoints: dict[str, dict[str, Any]] = {}
        self.secrets: dict[str, list[str]] = {}  # newest first
        self.deliveries: dict[str, list[dict[str, Any]]] = {}
        self.drop: dict[str, int] = {}
        self.seen: list[tuple[str, str, str | None]] = []
        self.invoice: dict[str, Any] | None = None
        self._n = 0

    def _id(self, prefix: str) -> str:
        self._n += 1
        return f"{prefix}_{self._n:04d}"

    def delivery_headers(self, event: dict[str, Any], endpoint_id: str, t: int) -> dict[str, str]:
        """What the dispatcher sends with a delivery: one v1 per live secret during a rotation."""
        body = json.dumps(event).encode()
        return {
            "Content-Type": "application/json",
            "CryptoCity-Signature": sign_webhook(self.secrets[endpoint_id], body, t),
            "CryptoCity-Event-Id": event["id"],
            "CryptoCity-Event-Type": event["type"],
            "User-Agent": "CryptoCity-Webhooks/1",
        }

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware])
        app.router.add_post("/v1/webhook-endpoints", self.create_endpoint)
        app.router.add_get("/v1/webhook-endpoints", self.list_endpoints)
        app.router.add_get("/v1/webhook-endpoints/{id}", self.get_endpoint)
        app.router.add_patch("/v1/webhook-endpoints/{id}", self.update_endpoint)
        app.router.add_delete("/v1/webhook-endpoints/{id}", self.delete_endpoint)
        app.router.add_post("/v1/webhook-endpoints/{id}/rotate-secret", self.rotate_secret)
        app.router.add_get("/v1/events", self.list_events)
        app.router.add_get("/v1/events/{id}", self.get_event)
        app.router.add_get("/v1/events/{id}/deliveries", self.list_deliveries)
        app.router.add_post("/v1/events/{id}/redeliver", self.redeliver)
        app.router.add_get("/v1/invoices/{id}", self.get_invoice)  # for the retry tests
        app.router.add_post("/v1/invoices", self.create_invoice)
        app.router.add_post("/v1/invoices/{id}/cancel", self.create_invoice)
        return app

    @web.middleware
    async def _middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        self.seen.append((request.method, request.path, request.headers.get("Idempotency-Key")))
        if self.drop.get(request.path, 0) > 0:
            self.drop[request.path] -= 1
            assert request.transport is not None
            request.transport.close()  # hang up without an answer
            return web.Response(status=500)
        if request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return _problem(401, "Unauthorized", "the API key is unknown", "unauthorized")
        if request.can_read_body and request.content_type != "application/json":
            return _problem(415, "Unsupported media type", "send JSON", "unsupported-media-type")
        try:
            return await handler(request)
        except KeyError as exc:
            return _problem(404, "Not found", f"no such object {exc}", "not-found")

    @staticmethod
    async def _body(request: web.Request, allowed: set[str], required: Collection[str] = ()) -> Any:
        body = await request.json()
        assert isinstance(body, dict), body
        assert set(body) <= allowed, f"fields outside the contract: {set(body) - allowed}"
        missing = set(required) - set(body)
        assert not missing, f"missing fields: {missing}"
        return body

    def _public(self, endpoint: dict[str, Any], with_secret: bool = False) -> dict[str, Any]:
        view = dict(endpoint)
        if with_secret:
            view["secret"] = self.secrets[endpoint["id"]][0]
        return view

    async def create_endpoint(self, request: web.Request) -> web.Response:
        body = await self._body(request, {"url", "event_types", "description"}, {"url", "event_types"})
        if not str(body["url"]).startswith(("http://", "https://")):
            return web.Response(
                status=422,
                content_type="application/problem+json",
                text=json.dumps(
                    {
                        "type": "https://cryptocity.invalid/problems/validation-error",
                        "title": "Invalid request",
                        "status": 422,
                        "detail": "/url: must be an http:// or https:// URL",
                        "instance": request.path,
                        "errors": [{"pointer": "/url", "detail": "must be an http:// or https:// URL"}],
                    }
                ),
            )
        endpoint_id = self._id("whe")
        self.endpoints[endpoint_id] = {
            "id": endpoint_id,
            "object": "webhook_endpoint",
            "url": body["url"],
            "event_types": body["event_types"],
            "description": body.get("description"),
            "status": "enabled",
            "disabled_reason": None,
            "disabled_at": None,
            "failing_since": None,
            "created_at": self.now,
            "updated_at": self.now,
            "api_version_hint": "a field this SDK does not know yet",
        }
        self.secrets[endpoint_id] = [f"whsec_{endpoint_id}_1"]
        return web.json_response(self._public(self.endpoints[endpoint_id], True), status=201)

    async def list_endpoints(self, request: web.Request) -> web.Response:
        data = [self._public(e) for e in self.endpoints.values()]
        return web.json_response({"object": "list", "data": data, "has_more": False})

    async def get_endpoint(self, request: web.Request) -> web.Response:
        return web.json_response(self._public(self.endpoints[request.match_info["id"]]))

    async def update_endpoint(self, request: web.Request) -> web.Response:
        endpoint = self.endpoints[request.match_info["id"]]
        body = await self._body(request, {"url", "event_types", "description", "status"})
        if body.get("status", "enabled") not in ("enabled", "disabled"):
            return _problem(422, "Invalid request", "/status: enabled or disabled", "validation-error")
        endpoint.update(body, updated_at=self.now)
        if body.get("status") == "disabled":
            endpoint.update(disabled_reason="disabled by the merchant", disabled_at=self.now)
        return web.json_response(self._public(endpoint))

    async def delete_endpoint(self, request: web.Request) -> web.Response:
        del self.endpoints[request.match_info["id"]]
        return web.Response(status=204)

    async def rotate_secret(self, request: web.Request) -> web.Response:
        endpoint = self.endpoints[request.match_info["id"]]
        body = await self._body(request, {"expire_previous_in_seconds"})
        assert isinstance(body.get("expire_previous_in_seconds", 86400), int)
        secrets = self.secrets[endpoint["id"]]
        secrets.insert(0, f"whsec_{endpoint['id']}_{len(secrets) + 1}")
        del secrets[2:]  # the new one and the previous one overlap
        return web.json_response(self._public(endpoint, True))

    async def list_events(self, request: web.Request) -> web.Response:
        events = list(reversed(self.events))  # newest first, like every list
        if "type" in request.query:
            events = [e for e in events if e["type"] == request.query["type"]]
        if "invoice_id" in request.query:
            events = [
                e for e in events if e["data"].get("invoice", {}).get("id") == request.query["invoice_id"]
            ]
        if "starting_after" in request.query:
            ids = [e["id"] for e in events]
            events = events[ids.index(request.query["starting_after"]) + 1 :]
        limit = int(request.query.get("limit", "20"))
        page, has_more = events[:limit], len(events) > limit
        return web.json_response(
            {
                "object": "list",
                "data": page,
                "has_more": has_more,
                "next_starting_after": page[-1]["id"] if has_more else None,
            }
        )

    def _event(self, event_id: str) -> dict[str, Any]:
        for event in self.events:
            if event["id"] == event_id:
                return event
        raise KeyError(event_id)  # the middleware answers 404

    async def get_event(self, request: web.Request) -> web.Response:
        return web.json_response(self._event(request.match_info["id"]))

    async def list_deliveries(self, request: web.Request) -> web.Response:
        event = self._event(request.match_info["id"])
        return web.json_response({"object": "list", "data": self.deliveries.get(event["id"], [])})

    async def redeliver(self, request: web.Request) -> web.Response:
        event = self._event(request.match_info["id"])
        body = await self._body(request, {"endpoint_id"}, {"endpoint_id"})
        targets = [body["endpoint_id"]] if body["endpoint_id"] else list(self.endpoints)
        queued = []
        for endpoint_id in targets:
            self.endpoints[endpoint_id]  # 404 for an unknown endpoint
            attempts = self.deliveries.setdefault(event["id"], [])
            queued.append(
                {
                    "id": self._id("whd"),
                    "object": "webhook_delivery",
                    "event_id": event["id"],
                    "endpoint_id": endpoint_id,
                    "attempt": len(attempts) + 1,
                    "status": "pending",
                    "response_status": None,
                    "latency_ms": None,
                    "error": None,
                    "attempted_at": None,
                    "next_attempt_at": self.now,
                }
            )
            attempts.append(queued[-1])
        return web.json_response({"object": "list", "data": queued}, status=202)

    async def get_invoice(self, request: web.Request) -> web.Response:
        assert self.invoice is not None
        return web.json_response(self.invoice)

    async def create_invoice(self, request: web.Request) -> web.Response:
        assert self.invoice is not None
        return web.json_response(self.invoice, status=201)


@pytest.fixture
async def contract(
    gateway: Gateway, aiohttp_server: Any
) -> AsyncIterator[tuple[ContractFake, CryptoCityClient]]:
    """The fake contract server seeded with the real gateway's events for two invoices, and a client."""
    sdk = CryptoCityClient(base_url(gateway.client.make_url("")), gateway.api_key)
    first = await sdk.create_invoice("1000.00", assets=["BTC"])
    second = await sdk.create_invoice("2000.00", assets=["BTC"])
    await settle(gateway, first.id, "ef" * 32 + ":0")
    await sdk.close()
    outbox = await gateway.store.read(lambda tx: read_events_after(tx, 0, 1000))
    events = [e.payload for e in outbox if e.type.startswith(("invoice.", "payment."))]
    fake = ContractFake(gateway.api_key, events, now="2026-11-23T12:00:00.000Z")
    fake.invoice = await (
        await gateway.client.get(f"/v1/invoices/{second.id}", headers=gateway.auth())
    ).json()
    server = await aiohttp_server(fake.app())
    client = CryptoCityClient(base_url(server.make_url("")), gateway.api_key, sleep=Sleeps())
    try:
        yield fake, client
    finally:
        await client.close()


async def test_webhook_endpoints_create_list_update_rotate_delete(
    contract: tuple[ContractFake, CryptoCityClient],
) -> None:
    fake, sdk = contract
    endpoint = await sdk.create_webhook_endpoint(
        "https://shop.example/webhooks/cryptocity", description="main shop"
    )
    assert endpoint.id.startswith("whe_") and endpoint.status == "enabled"
    assert endpoint.event_types == ["*"] and endpoint.secret and endpoint.secret.startswith("whsec_")
    assert endpoint.model_extra == {"api_version_hint": "a field this SDK does not know yet"}
    create_key = fake.seen[-1][2]
    assert create_key and len(create_key) == 36  # an automatic uuid4 Idempotency-Key
    listed = await sdk.list_webhook_endpoints()
    assert [e.id for e in listed.data] == [endpoint.id] and not listed.has_more
    assert listed.data[0].secret is None  # the secret is shown only on create and rotate
    assert (await sdk.get_webhook_endpoint(endpoint.id)).url == endpoint.url

    narrowed = await sdk.update_webhook_endpoint(endpoint.id, event_types=["invoice.settled"])
    assert narrowed.event_types == ["invoice.settled"] and narrowed.description == "main shop"
    cleared = await sdk.update_webhook_endpoint(endpoint.id, description=None)
    assert cleared.description is None and cleared.event_types == ["invoice.settled"]
    disabled = await sdk.update_webhook_endpoint(endpoint.id, status="disabled")
    assert disabled.status == "disabled" and disabled.disabled_reason and disabled.disabled_at

    old_secret = endpoint.secret
    rotated = await sdk.rotate_webhook_secret(endpoint.id, expire_previous_in_seconds=3600)
    assert rotated.secret and rotated.secret != old_secret
    # During the overlap a delivery carries two v1 values: receivers on either secret accept it.
    event = fake.events[-1]
    sent = fake.delivery_headers(event, endpoint.id, t=1_795_000_000)
    assert sent["CryptoCity-Signature"].count("v1=") == 2
    raw = json.dumps(event).encode()
    for secret in (old_secret, rotated.secret):
        assert verify_webhook(secret, sent, raw, now=1_795_000_000)["id"] == event["id"]

    await sdk.delete_webhook_endpoint(endpoint.id)
    with pytest.raises(NotFound):
        await sdk.get_webhook_endpoint(endpoint.id)
    with pytest.raises(InvalidRequest) as bad:
        await sdk.create_webhook_endpoint("ftp://shop.example/hook")
    assert bad.value.status == 422 and bad.value.errors[0].pointer == "/url"


async def test_events_pages_filters_deliveries_and_redelivery(
    contract: tuple[ContractFake, CryptoCityClient],
) -> None:
    fake, sdk = contract
    newest_first = [e["id"] for e in reversed(fake.events)]
    page = await sdk.list_events(limit=2)
    assert [e.id for e in page.data] == newest_first[:2] and page.has_more
    assert [e.id async for e in sdk.iter_events(page_size=2)] == newest_first
    settled = (await sdk.list_events(type="invoice.settled")).data
    assert len(settled) == 1
    event = settled[0]
    assert isinstance(event, Event) and event.data.invoice is not None
    assert event.data.invoice.status == "settled" and event.invoice_version == event.data.invoice.version
    by_invoice = [e async for e in sdk.iter_events(invoice_id=event.data.invoice.id)]
    assert {e.type for e in by_invoice} >= {"invoice.created", "invoice.settled", "payment.detected"}
    assert all(e.data.invoice and e.data.invoice.id == event.data.invoice.id for e in by_invoice)
    detected = next(e for e in by_invoice if e.type == "payment.detected")
    assert detected.data.model_extra == {"payment_key": "ef" * 32 + ":0"}  # type-specific fields kept
    assert await sdk.get_event(event.id) == event

    endpoint = await sdk.create_webhook_endpoint("https://shop.example/hook")
    assert (await sdk.list_event_deliveries(event.id)).data == []
    queued = await sdk.redeliver_event(event.id)
    assert [(d.endpoint_id, d.status, d.attempt) for d in queued.data] == [(endpoint.id, "pending", 1)]
    again = await sdk.redeliver_event(event.id, endpoint_id=endpoint.id)
    assert again.data[0].attempt == 2
    deliveries = (await sdk.list_event_deliveries(event.id)).data
    assert [d.attempt for d in deliveries] == [1, 2] and deliveries[0].response_status is None
    with pytest.raises(NotFound):
        await sdk.get_event("evt_unknown")
    with pytest.raises(NotFound):
        await sdk.redeliver_event(event.id, endpoint_id="whe_unknown")


async def test_lost_connections_are_retried_only_when_safe(
    contract: tuple[ContractFake, CryptoCityClient],
) -> None:
    fake, sdk = contract
    assert fake.invoice is not None
    invoice_id = fake.invoice["id"]
    fake.drop[f"/v1/invoices/{invoice_id}"] = 2
    assert (await sdk.get_invoice(invoice_id)).id == invoice_id  # GET: retried

    fake.seen.clear()
    fake.drop["/v1/invoices"] = 1
    await sdk.create_invoice("2000.00", assets=["BTC"])  # a create with its key: retried, same key
    keys = [key for method, path, key in fake.seen if path == "/v1/invoices"]
    assert len(keys) == 2 and keys[0] == keys[1] and keys[0] is not None

    fake.seen.clear()
    fake.drop[f"/v1/invoices/{invoice_id}/cancel"] = 1
    with pytest.raises(APIConnectionError) as caught:
        await sdk.cancel_invoice(invoice_id)  # a POST without a key may have been applied: not resent
    assert caught.value.attempts == 1 and len(fake.seen) == 1

    fake.drop[f"/v1/invoices/{invoice_id}"] = 10
    with pytest.raises(APIConnectionError) as caught:
        await sdk.get_invoice(invoice_id)
    assert caught.value.attempts == 4  # 1 + max_retries


async def test_a_refused_connection_is_an_api_connection_error(unused_tcp_port: int) -> None:
    waits = Sleeps()
    sdk = CryptoCityClient(f"http://127.0.0.1:{unused_tcp_port}", "cc_test_x", sleep=waits, max_retries=2)
    try:
        with pytest.raises(APIConnectionError) as caught:
            await sdk.cancel_invoice("inv_x")  # never reached a server: safe to resend even a POST
    finally:
        await sdk.close()
    assert caught.value.attempts == 3 and waits.waits == [0.5, 1.0]
