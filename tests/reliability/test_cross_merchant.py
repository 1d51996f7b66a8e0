"""One merchant can never reach another's objects, through any endpoint that takes an id.

Merchant A makes one of everything the API addresses by id (an invoice with a payment, a webhook endpoint,
events with deliveries). Then every operation of the merchant API whose path takes an id is called with
merchant B's key and A's ids. The list comes from the app itself: the OpenAPI document's /v1 paths and the
router's /v1 routes (which must agree), so a new endpoint is covered the day it is added, and an id kind
this test does not know fails it instead of being skipped. Each answer must be a 404 problem+json that is
exactly what B gets for a well-formed id that does not exist (so ids cannot be probed), carries none of
A's data, and changes nothing of A's. Query and body parameters that name A's objects get the same check.
The regulator API refuses merchant keys, A's and B's alike, with 403.

The hosted checkout page (/i/{invoice_id}) is public by design (the invoice id is the buyer's link) and
takes no credentials, so it is not part of this sweep.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import web

from gateway.config import SandboxConfig
from gateway.ids import new_id
from gateway.invoices.service import PaymentFact
from gateway.money import Asset, Chain
from sandbox.extension import sandbox_extensions
from tests.conftest import Gateway, GatewayFactory

PARAM = re.compile(r"\{(\w+)\}")
METHODS = ("get", "head", "post", "put", "patch", "delete")
PAYMENT_KEY = f"{0xA11CE:064x}:0"
# How an id parameter is filled: the kind of A's object it names, and the id prefix of that kind.
ID_PARAMETERS = {"invoice_id": "inv", "endpoint_id": "whe", "event_id": "evt"}
# Parameters that are not ids but need a valid value for the route to be reached.
OTHER_PARAMETERS = {"filename": "BTC.png"}


@dataclass
class MerchantA:
    invoice: dict[str, Any]
    endpoint: dict[str, Any]
    event_id: str
    deliveries: int

    @property
    def ids(self) -> dict[str, str]:
        return {
            "invoice_id": self.invoice["id"],
            "endpoint_id": self.endpoint["id"],
            "event_id": self.event_id,
        }


async def call(gateway: Gateway, method: str, path: str, key: str, body: Any = None) -> tuple[int, str, str]:
    data = None if body is None else json.dumps(body).encode()
    headers = {"Authorization": f"Bearer {key}"}
    if data is not None:
        headers["Content-Type"] = "application/json"
    async with gateway.client.request(method, path, data=data, headers=headers) as response:
        return response.status, response.content_type, await response.text()


async def until(check: Any, seconds: float = 10.0) -> Any:
    deadline = asyncio.get_running_loop().time() + seconds
    while not (found := await check()):
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)
    return found


@pytest.fixture
async def receiver(aiohttp_server: Any) -> str:
    """A webhook receiver on loopback that accepts everything, so A's deliveries exist."""

    async def accept(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hook", accept)
    return str((await aiohttp_server(app)).make_url("/hook"))


@pytest.fixture
async def gateway(make_gateway: GatewayFactory) -> Gateway:
    return await make_gateway(sandbox_extensions(SandboxConfig()))


async def merchant_a_objects(gateway: Gateway, receiver: str) -> MerchantA:
    """A's endpoint first (so its events are delivered), then an invoice with a partial payment."""
    key = gateway.api_key
    status, _, text = await call(
        gateway,
        "POST",
        "/v1/webhook-endpoints",
        key,
        {"url": receiver, "description": "A's secret endpoint"},
    )
    assert status == 201, text
    endpoint = json.loads(text)
    invoice = await gateway.create_invoice(
        "12500.00", order_id="order-of-merchant-a", description="A's secret order"
    )
    btc = next(m for m in invoice["payment_methods"] if m["asset"] == "BTC")
    await gateway.service.record_payment(
        PaymentFact(Chain.BITCOIN, btc["address"], PAYMENT_KEY, Asset.BTC, btc["amount_due_minor"] // 2, 0)
    )

    async def delivered() -> tuple[str, int] | None:
        _, _, events = await call(gateway, "GET", f"/v1/events?invoice_id={invoice['id']}", key)
        for event in json.loads(events)["data"]:
            _, _, attempts = await call(gateway, "GET", f"/v1/events/{event['id']}/deliveries", key)
            data = json.loads(attempts)["data"]
            if any(d["status"] == "succeeded" for d in data):
                return event["id"], len(data)
        return None

    event_id, deliveries = await until(delivered)
    status, _, payments = await call(gateway, "GET", f"/v1/invoices/{invoice['id']}/payments", key)
    assert status == 200 and json.loads(payments)["data"], payments
    return MerchantA(invoice, endpoint, event_id, deliveries)


def leaks(a: MerchantA) -> list[str]:
    """Strings only A's objects hold: none may appear in an answer to B."""
    values = [a.endpoint["url"], a.endpoint["secret"], a.invoice["order_id"], a.invoice["description"]]
    values += [m["address"] for m in a.invoice["payment_methods"]]
    values += [PAYMENT_KEY.split(":")[0]]
    return values


def openapi_operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in document["paths"].items():
        for method in METHODS:
            if method in item:
                yield path, method, item[method]


def router_routes(app: web.Application) -> Iterator[tuple[str, str]]:
    """Every (path template, method) the app routes, sub-apps included."""
    for resource in app.router.resources():
        info = resource.get_info()
        if "app" in info:
            yield from router_routes(info["app"])
            continue
        for route in resource:
            yield resource.canonical, route.method.lower()


def merchant_id_operations(gateway: Gateway, document: dict[str, Any]) -> set[tuple[str, str]]:
    """(path, method) of every merchant-API operation whose path takes a parameter, from both sources."""
    documented = {
        (path, method)
        for path, method, op in openapi_operations(document)
        if path.startswith("/v1/") and PARAM.search(path) and op.get("security")
    }
    routed = {(p, m) for p, m in router_routes(gateway.app) if p.startswith("/v1/") and PARAM.search(p)}
    # Every routed id path is documented (HEAD is aiohttp's automatic twin of GET)
    assert {p for p, _ in routed} == {p for p, _ in documented}, "router and /openapi.json disagree"
    return documented | routed


def fill(path: str, ids: dict[str, str]) -> str:
    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        if name in ids:
            return ids[name]
        if name in OTHER_PARAMETERS:
            return OTHER_PARAMETERS[name]
        pytest.fail(
            f"{path}: parameter {{{name}}} is new to this test; add it to ID_PARAMETERS and A's objects"
        )

    return PARAM.sub(value, path)


def request_body(document: dict[str, Any], path: str, method: str) -> Any:
    """The smallest body the operation accepts ({}), so validation cannot answer before the lookup."""
    operation = document["paths"].get(path, {}).get(method, {})
    return {} if "requestBody" in operation else None


def assert_same_as_missing(
    a_answer: tuple[int, str, str], missing_answer: tuple[int, str, str], fakes: dict[str, str]
) -> None:
    """A's ids get exactly the answer ids that exist nowhere get (``fakes``: A's id -> the missing one),
    once the ids themselves are swapped: nothing in it tells B that A's object exists."""
    status, content_type, text = a_answer
    assert (status, content_type) == missing_answer[:2]
    for a_id, fake_id in fakes.items():
        text = text.replace(a_id, fake_id)
    if text or missing_answer[2]:
        assert json.loads(text) == json.loads(missing_answer[2])


async def test_merchant_b_gets_404_for_every_id_of_merchant_a(gateway: Gateway, receiver: str) -> None:
    a = await merchant_a_objects(gateway, receiver)
    _, _, text = await call(gateway, "GET", "/openapi.json", gateway.other_api_key)
    document = json.loads(text)
    operations = merchant_id_operations(gateway, document)
    assert ("/v1/invoices/{invoice_id}", "get") in operations  # the sweep cannot pass by covering nothing
    assert len({path for path, _ in operations}) >= 10

    b_key, secrets = gateway.other_api_key, leaks(a)
    fakes = {name: new_id(ID_PARAMETERS[name]) for name in ID_PARAMETERS}
    gateway.clock.advance(60)  # so that any write B managed would show in A's updated_at
    checked = []
    for path, method in sorted(operations):
        body = request_body(document, path, method)
        a_path, missing_path = fill(path, a.ids), fill(path, fakes)
        answer = await call(gateway, method.upper(), a_path, b_key, body)
        status, content_type, text = answer
        assert status == 404, (method, a_path, status, text)
        if method != "head":
            assert content_type == "application/problem+json", (method, a_path)
            assert json.loads(text)["status"] == 404
        for secret in secrets:
            assert secret not in text, (method, a_path, secret)
        missing = await call(gateway, method.upper(), missing_path, b_key, body)
        assert_same_as_missing(answer, missing, {a.ids[name]: fakes[name] for name in ID_PARAMETERS})
        checked.append((method, path))
    assert len(checked) == len(operations)

    # Nothing of A's changed: not cancelled, not deleted, not edited or rotated, no redelivery queued.
    key = gateway.api_key
    status, _, invoice = await call(gateway, "GET", f"/v1/invoices/{a.invoice['id']}", key)
    assert status == 200 and json.loads(invoice)["status"] == "new"
    status, _, endpoint = await call(gateway, "GET", f"/v1/webhook-endpoints/{a.endpoint['id']}", key)
    assert status == 200
    assert json.loads(endpoint)["description"] == a.endpoint["description"]
    assert json.loads(endpoint)["updated_at"] == a.endpoint["updated_at"]
    _, _, deliveries = await call(gateway, "GET", f"/v1/events/{a.event_id}/deliveries", key)
    assert len(json.loads(deliveries)["data"]) == a.deliveries


async def test_ids_of_merchant_a_in_queries_and_bodies_are_unknown_to_b(
    gateway: Gateway, receiver: str
) -> None:
    a = await merchant_a_objects(gateway, receiver)
    b_key, secrets = gateway.other_api_key, leaks(a)
    fake_invoice, fake_event, fake_endpoint = new_id("inv"), new_id("evt"), new_id("whe")
    for a_path, missing_path in (
        (f"/v1/invoices?starting_after={a.invoice['id']}", f"/v1/invoices?starting_after={fake_invoice}"),
        (f"/v1/events?starting_after={a.event_id}", f"/v1/events?starting_after={fake_event}"),
        (f"/v1/events?invoice_id={a.invoice['id']}", f"/v1/events?invoice_id={fake_invoice}"),
    ):
        answer = await call(gateway, "GET", a_path, b_key)
        assert answer[0] in (200, 400, 404), (a_path, answer)
        for secret in secrets:
            assert secret not in answer[2], (a_path, secret)
        missing = await call(gateway, "GET", missing_path, b_key)
        assert_same_as_missing(answer, missing, {a_path.split("=")[1]: missing_path.split("=")[1]})
    status, _, listed = await call(gateway, "GET", f"/v1/events?invoice_id={a.invoice['id']}", b_key)
    assert status == 200 and json.loads(listed)["data"] == []
    # B redelivers its own event to A's endpoint: A's endpoint is unknown to B.
    b_invoice = await gateway.create_invoice("5000.00", key=b_key)
    _, _, events = await until(lambda: _nonempty_events(gateway, b_key, b_invoice["id"]))
    b_event = events[0]["id"]
    answer = await call(
        gateway, "POST", f"/v1/events/{b_event}/redeliver", b_key, {"endpoint_id": a.endpoint["id"]}
    )
    missing = await call(
        gateway, "POST", f"/v1/events/{b_event}/redeliver", b_key, {"endpoint_id": fake_endpoint}
    )
    assert answer[0] == 404, answer
    assert_same_as_missing(answer, missing, {a.endpoint["id"]: fake_endpoint})


async def _nonempty_events(gateway: Gateway, key: str, invoice_id: str) -> tuple[int, str, list[Any]] | None:
    status, content_type, text = await call(gateway, "GET", f"/v1/events?invoice_id={invoice_id}", key)
    data = json.loads(text)["data"]
    return (status, content_type, data) if data else None


async def test_the_regulator_api_refuses_merchant_keys_with_403(gateway: Gateway, receiver: str) -> None:
    a = await merchant_a_objects(gateway, receiver)
    _, _, text = await call(gateway, "GET", "/openapi.json", gateway.api_key)
    document = json.loads(text)
    values = {
        "merchant_id": gateway.merchant_id,
        "chain": "bitcoin",
        "payment_key": PAYMENT_KEY,
        "resident_id": "res_x",
    }
    regulator = [(p, m, op) for p, m, op in openapi_operations(document) if p.startswith("/sandbox/v1/")]
    assert any(p == "/sandbox/v1/merchants/{merchant_id}/suspend" for p, _, _ in regulator)
    for key in (gateway.api_key, gateway.other_api_key):
        for path, method, _ in regulator:
            filled = PARAM.sub(lambda m: values[m.group(1)], path)
            body = request_body(document, path, method)
            status, content_type, answer = await call(gateway, method.upper(), filled, key, body)
            assert status == 403, (method, filled, status, answer)
            assert content_type == "application/problem+json"
            for secret in leaks(a):
                assert secret in filled or secret not in answer, (method, filled, secret)
    # and nothing happened: A is not suspended, its payment is not released or refunded
    assert (await gateway.create_invoice("1000.00"))["status"] == "new"
