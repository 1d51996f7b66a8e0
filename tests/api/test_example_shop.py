"""The example shop against the real gateway: pay, then webhooks signed as the gateway will sign them.

The webhook bodies are the real gateway's outbox events for the shop's invoice (the exact bodies the
dispatcher will POST); the test plays the dispatcher, so duplicates and reordering can be staged.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from gateway.invoices.lifecycle import DropReason
from gateway.invoices.service import PaymentFact
from gateway.money import Asset, Chain
from gateway.outbox import read_events_after
from gateway.rates import AssetRate, RatesUnavailable
from merchants.sdk import CryptoCityClient, Invoice, sign_webhook
from merchants.shop import OrderStore, ShopConfig, create_shop_app
from merchants.shop.app import ORDERS
from tests.conftest import Gateway, GatewayFactory

SECRET = "whsec_shop_test_secret"
NOW = 1_795_000_000.0  # the shop's clock (unix seconds): deliveries are signed at this time

Shop = TestClient[Any, Any]


@pytest.fixture
async def open_shop(aiohttp_client: Any, tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[Shop]]]:
    sdks: list[CryptoCityClient] = []

    async def start(gateway: Gateway, client: CryptoCityClient | None = None) -> Shop:
        config = ShopConfig(
            gateway_url=str(gateway.client.make_url("")).rstrip("/"),
            api_key=gateway.api_key,
            webhook_secrets=(SECRET,),
            db_path=str(tmp_path / "shop.sqlite3"),
        )
        if client is not None:
            sdks.append(client)
        shop: Shop = await aiohttp_client(create_shop_app(config, client=client, clock=lambda: NOW))
        return shop

    yield start
    for sdk in sdks:
        await sdk.close()


def orders(shop: Shop) -> OrderStore:
    store: OrderStore = shop.app[ORDERS]
    return store


async def place_order(shop: Shop, gateway: Gateway, product: str = "coffee") -> Invoice:
    """Click "pay": the shop answers 303 to the invoice's checkout page; returns that invoice."""
    response = await shop.post("/orders", data={"product": product}, allow_redirects=False)
    assert response.status == 303, await response.text()
    async with CryptoCityClient(str(gateway.client.make_url("")), gateway.api_key) as sdk:
        invoice = (await sdk.list_invoices(limit=1)).data[0]
    assert response.headers["Location"] == invoice.checkout_url
    return invoice


def order_id(invoice: Invoice) -> str:
    assert invoice.order_id is not None
    return invoice.order_id


async def pay(gateway: Gateway, invoice: Invoice, confirmations: int, key: str = "ab" * 32 + ":0") -> None:
    btc = next(m for m in invoice.payment_methods if m.asset == "BTC")
    await gateway.service.record_payment(
        PaymentFact(Chain.BITCOIN, btc.address, key, Asset.BTC, btc.amount_due_minor, confirmations)
    )


async def events_of(gateway: Gateway, invoice_id: str) -> list[dict[str, Any]]:
    """The gateway's outbox events for one invoice, oldest first: what the dispatcher will deliver."""
    outbox = await gateway.store.read(lambda tx: read_events_after(tx, 0, 10_000))
    return [e.payload for e in outbox if e.invoice_id == invoice_id]


def of_type(events: list[dict[str, Any]], event_type: str) -> dict[str, Any]:
    return next(e for e in events if e["type"] == event_type)


async def deliver(
    shop: Shop, event: dict[str, Any], *, secret: str = SECRET, t: float = NOW
) -> tuple[int, dict[str, Any]]:
    body = json.dumps(event).encode()
    headers = {
        "Content-Type": "application/json",
        "CryptoCity-Signature": sign_webhook(secret, body, int(t)),
        "CryptoCity-Event-Id": event["id"],
        "CryptoCity-Event-Type": event["type"],
        "User-Agent": "CryptoCity-Webhooks/1",
    }
    response = await shop.post("/webhooks/cryptocity", data=body, headers=headers)
    return response.status, await response.json()


async def stats(shop: Shop) -> dict[str, int]:
    response = await shop.get("/webhooks/stats")
    assert response.status == 200
    body: dict[str, int] = await response.json()
    return body


async def test_pay_creates_an_invoice_for_the_order_and_redirects_to_checkout(
    gateway: Gateway, open_shop: Callable[..., Awaitable[Shop]]
) -> None:
    shop = await open_shop(gateway)
    catalog = await shop.get("/")
    assert catalog.status == 200 and "Pay with crypto" in await catalog.text()
    invoice = await place_order(shop, gateway, "tour")
    assert invoice.amount_tiyn == 1_250_000 and invoice.description == "Alatau city tour"
    assert invoice.order_id and invoice.order_id.startswith("ord_")
    assert invoice.redirect_url == f"{str(shop.make_url('')).rstrip('/')}/orders/{invoice.order_id}"
    order = await orders(shop).get(invoice.order_id)
    assert order and order.status == "pending" and order.invoice_id == invoice.id
    page = await shop.get(f"/orders/{invoice.order_id}")
    assert page.status == 200 and "pending" in await page.text()

    again = await shop.post(f"/orders/{invoice.order_id}/pay", allow_redirects=False)
    assert again.status == 303 and again.headers["Location"] == invoice.checkout_url  # no second invoice
    assert (await shop.post("/orders", data={"product": "nothing"})).status == 404
    assert (await shop.get("/orders/ord_unknown")).status == 404


async def test_a_signed_settlement_marks_the_order_paid_once_and_duplicates_are_counted(
    gateway: Gateway, open_shop: Callable[..., Awaitable[Shop]]
) -> None:
    shop = await open_shop(gateway)
    invoice = await place_order(shop, gateway)
    await pay(gateway, invoice, confirmations=1)
    events = await events_of(gateway, invoice.id)
    assert [e["type"] for e in events] == [
        "invoice.created",
        "payment.detected",
        "payment.confirmed",
        "invoice.processing",
        "invoice.settled",
    ]
    outcomes = [(await deliver(shop, event))[1]["outcome"] for event in events]
    # created: the shop already knew version 0 from the API answer; the settling step is one version
    # announced by four events, so the first of them applies and the rest are not newer.
    assert outcomes == ["outdated", "applied", "outdated", "outdated", "outdated"]
    order = await orders(shop).get(order_id(invoice))
    assert order and order.status == "paid" and order.paid_at and order.invoice_status == "settled"

    settled = of_type(events, "invoice.settled")
    status, answer = await deliver(shop, settled)  # the gateway retried: same event, same id
    assert status == 200 and answer["outcome"] == "duplicate"
    status, answer = await deliver(shop, settled, t=NOW - 60)  # a later retry, signed at its own time
    assert status == 200 and answer["outcome"] == "duplicate"
    counts = await stats(shop)
    assert counts["received"] == 7 and counts["duplicates"] == 2 and counts["applied"] == 1
    assert await orders(shop).history(order.id) == [
        ("pending", "paid", settled["invoice_version"], events[1]["id"])
    ]
    page = await (await shop.get(f"/orders/{order.id}")).text()
    assert "paid" in page and "on its way" in page


async def test_an_older_version_after_a_newer_one_is_ignored(
    gateway: Gateway, open_shop: Callable[..., Awaitable[Shop]]
) -> None:
    shop = await open_shop(gateway)
    invoice = await place_order(shop, gateway, "felt")  # 75,000 KZT: needs confirmations
    assert next(m for m in invoice.payment_methods if m.asset == "BTC").confirmations_required >= 1
    await pay(gateway, invoice, confirmations=0)  # seen: processing (version 1)
    required = next(m for m in invoice.payment_methods if m.asset == "BTC").confirmations_required
    await pay(gateway, invoice, confirmations=required)  # confirmed: settled (version 2)
    events = await events_of(gateway, invoice.id)
    processing, settled = of_type(events, "invoice.processing"), of_type(events, "invoice.settled")
    assert processing["invoice_version"] < settled["invoice_version"]

    assert (await deliver(shop, settled))[1]["outcome"] == "applied"
    assert (await deliver(shop, processing))[1]["outcome"] == "outdated"  # late and older: ignored
    assert (await deliver(shop, of_type(events, "invoice.created")))[1]["outcome"] == "outdated"
    order = await orders(shop).get(order_id(invoice))
    assert order and order.status == "paid" and order.invoice_version == settled["invoice_version"]
    assert (await stats(shop))["outdated"] == 2


async def test_bad_signatures_are_401_and_change_nothing(
    gateway: Gateway, open_shop: Callable[..., Awaitable[Shop]]
) -> None:
    shop = await open_shop(gateway)
    invoice = await place_order(shop, gateway)
    await pay(gateway, invoice, confirmations=1)
    settled = of_type(await events_of(gateway, invoice.id), "invoice.settled")

    status, answer = await deliver(shop, settled, secret="whsec_someone_else")
    assert status == 401 and answer["error"] == "signature_mismatch"
    status, answer = await deliver(shop, settled, t=NOW - 301)  # a captured delivery replayed later
    assert status == 401 and answer["error"] == "timestamp_out_of_tolerance"
    body = json.dumps(settled).encode()
    tampered = body.replace(b'"settled"', b'"sett1ed"', 1)
    response = await shop.post(
        "/webhooks/cryptocity",
        data=tampered,
        headers={
            "CryptoCity-Signature": sign_webhook(SECRET, body, int(NOW)),
            "Content-Type": "application/json",
        },
    )
    assert response.status == 401
    response = await shop.post(
        "/webhooks/cryptocity", data=body, headers={"Content-Type": "application/json"}
    )
    assert response.status == 401 and (await response.json())["error"] == "missing_header"

    order = await orders(shop).get(order_id(invoice))
    assert order and order.status == "pending"
    counts = await stats(shop)
    assert counts["rejected"] == 4 and counts["received"] == 0
    assert (await deliver(shop, settled))[1]["outcome"] == "applied"  # the genuine one still counts


async def test_a_reversal_after_settlement_puts_the_order_on_hold(
    gateway: Gateway, open_shop: Callable[..., Awaitable[Shop]]
) -> None:
    shop = await open_shop(gateway)
    invoice = await place_order(shop, gateway)
    await pay(gateway, invoice, confirmations=1, key="cd" * 32 + ":0")
    await gateway.service.payment_dropped(Chain.BITCOIN, "cd" * 32 + ":0", DropReason.DOUBLE_SPENT)
    events = await events_of(gateway, invoice.id)
    settled, reversed_ = of_type(events, "invoice.settled"), of_type(events, "invoice.reversed")
    assert reversed_["invoice_version"] > settled["invoice_version"]
    for event in events:
        await deliver(shop, event)
    order = await orders(shop).get(order_id(invoice))
    assert order and order.status == "reversed" and order.invoice_status == "reversed"
    assert order.paid_at is not None  # it was paid once: the record of that stays
    assert [(a, b) for a, b, _, _ in await orders(shop).history(order.id)] == [
        ("pending", "paid"),
        ("paid", "reversed"),
    ]
    assert (await deliver(shop, settled))[1]["outcome"] == "duplicate"  # a retried settle cannot undo it
    page = await (await shop.get(f"/orders/{order.id}")).text()
    assert "will not ship" in page


async def test_an_event_about_no_order_of_the_shop_is_acknowledged_and_ignored(
    gateway: Gateway, open_shop: Callable[..., Awaitable[Shop]]
) -> None:
    shop = await open_shop(gateway)
    foreign = await gateway.create_invoice("100.00", order_id="not-from-this-shop")
    created = of_type(await events_of(gateway, foreign["id"]), "invoice.created")
    status, answer = await deliver(shop, created)
    assert status == 200 and answer["outcome"] == "unrelated"


class _NoRates:
    def current(self, asset: Asset, now: datetime) -> AssetRate:
        raise RatesUnavailable(asset, retry_after_seconds=3)


async def test_no_rates_shows_a_retry_page_and_keeps_the_order(
    make_gateway: GatewayFactory, open_shop: Callable[..., Awaitable[Shop]]
) -> None:
    gateway = await make_gateway(rates=_NoRates())
    client = CryptoCityClient(str(gateway.client.make_url("")), gateway.api_key, max_retries=0)
    shop = await open_shop(gateway, client)
    response = await shop.post("/orders", data={"product": "coffee"}, allow_redirects=False)
    assert response.status == 503
    text = await response.text()
    assert "try again" in text and "/pay" in text
