"""The example shop: products, "pay with crypto", order pages, and the CryptoCity webhook receiver.

The whole integration is three calls:

1. ``POST /orders``: create the order, then ``create_invoice`` with ``order_id`` = the order and
   ``redirect_url`` = its page, and send the buyer to ``checkout_url`` (303).
2. ``POST /webhooks/cryptocity``: ``verify_webhook`` on the raw body (401 if it fails), then
   :meth:`OrderStore.record_event`, which de-duplicates by event id and applies only newer invoice
   versions. Always 200 for a verified delivery, duplicates included, so the gateway stops retrying.
3. ``GET /orders/{id}``: show what the webhooks said. The page never asks the gateway: the webhook is
   the source of truth, and the page stays fast when the gateway is slow.

Orders are paid when the invoice is *settled*, and no sooner: ``processing`` means the payment is seen
but not yet confirmed enough.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

import structlog
from aiohttp import web
from pydantic import ValidationError

from merchants.sdk import (
    APIConnectionError,
    CryptoCityClient,
    CryptoCityError,
    Event,
    ServiceUnavailable,
    WebhookVerificationError,
    verify_webhook,
)
from merchants.shop import pages
from merchants.shop.catalog import PRODUCTS, Product
from merchants.shop.orders import Order, OrderStore

log = structlog.get_logger("merchants.shop")

WEBHOOK_PATH = "/webhooks/cryptocity"


@dataclass(frozen=True, slots=True)
class ShopConfig:
    gateway_url: str
    api_key: str
    webhook_secrets: Sequence[str]  # more than one while a secret is being rotated
    db_path: str = "shop.sqlite3"
    public_url: str | None = None  # how buyers reach the shop; default: the URL the request came to
    webhook_tolerance_seconds: int = 300


CONFIG = web.AppKey("config", ShopConfig)
ORDERS = web.AppKey("orders", OrderStore)
GATEWAY = web.AppKey("gateway", CryptoCityClient)
CLOCK: web.AppKey[Callable[[], float]] = web.AppKey("clock")  # unix seconds

routes = web.RouteTableDef()


@routes.get("/")
async def catalog(request: web.Request) -> web.Response:
    return web.Response(text=pages.catalog_page(PRODUCTS.values()), content_type="text/html")


@routes.post("/orders")
async def place_order(request: web.Request) -> web.Response:
    form = await request.post()
    product = PRODUCTS.get(str(form.get("product", "")))
    if product is None:
        raise web.HTTPNotFound(text="no such product")
    order = await request.app[ORDERS].create_order(product, request.app[CLOCK]())
    log.info("order.created", order_id=order.id, product=product.id)
    return await _pay(request, order, product)


@routes.post("/orders/{order_id}/pay")
async def pay_order(request: web.Request) -> web.Response:
    order = await _order(request)
    if order.status != "pending":
        raise web.HTTPSeeOther(f"/orders/{order.id}")
    if order.checkout_url:
        raise web.HTTPSeeOther(order.checkout_url)
    return await _pay(request, order, PRODUCTS[order.product_id])


async def _pay(request: web.Request, order: Order, product: Product) -> web.Response:
    """Create the order's invoice and send the buyer to the hosted checkout."""
    config = request.app[CONFIG]
    public_url = (config.public_url or str(request.url.origin())).rstrip("/")
    try:
        invoice = await request.app[GATEWAY].create_invoice(
            product.price_kzt,
            order_id=order.id,
            description=product.name,
            redirect_url=f"{public_url}/orders/{order.id}",
            # One key per order: a retried click or a restart never makes a second invoice.
            idempotency_key=f"shop-order-{order.id}",
        )
    except (ServiceUnavailable, APIConnectionError) as exc:
        log.warning("invoice.create_failed", order_id=order.id, error=str(exc))
        text = pages.error_page(
            "The payment service is busy. Your order is saved; try again in a moment.",
            f"/orders/{order.id}/pay",
        )
        return web.Response(status=503, text=text, content_type="text/html")
    except CryptoCityError as exc:  # a bug or a configuration problem (bad key): not the buyer's fault
        log.error("invoice.create_refused", order_id=order.id, error=str(exc))
        text = pages.error_page("Payment could not be started. The shop has been told.")
        return web.Response(status=502, text=text, content_type="text/html")
    await request.app[ORDERS].attach_invoice(order.id, invoice, request.app[CLOCK]())
    log.info("invoice.created", order_id=order.id, invoice_id=invoice.id)
    raise web.HTTPSeeOther(invoice.checkout_url)


async def _order(request: web.Request) -> Order:
    order = await request.app[ORDERS].get(request.match_info["order_id"])
    if order is None:
        raise web.HTTPNotFound(text="no such order")
    return order


@routes.get("/orders/{order_id}")
async def show_order(request: web.Request) -> web.Response:
    order = await _order(request)
    text = pages.order_page(order, PRODUCTS.get(order.product_id))
    return web.Response(text=text, content_type="text/html")


@routes.post(WEBHOOK_PATH)
async def receive_webhook(request: web.Request) -> web.Response:
    raw = await request.read()  # the exact bytes: the signature covers them, not a re-serialisation
    store, now = request.app[ORDERS], request.app[CLOCK]()
    config = request.app[CONFIG]
    try:
        payload = verify_webhook(
            config.webhook_secrets,
            request.headers,
            raw,
            tolerance=config.webhook_tolerance_seconds,
            now=now,
        )
    except WebhookVerificationError as exc:
        await store.count_rejected()
        log.warning("webhook.rejected", reason=exc.reason, detail=str(exc))
        return web.json_response({"error": exc.reason, "detail": str(exc)}, status=401)
    try:
        event = Event.model_validate(payload)
    except ValidationError as exc:  # signed by the gateway, but not an event this shop can read
        log.error("webhook.unreadable", error=str(exc))
        return web.json_response({"error": "unreadable_event"}, status=400)
    outcome = await store.record_event(event, now)
    log.info(
        "webhook.received", event_id=event.id, type=event.type, version=event.invoice_version, outcome=outcome
    )
    return web.json_response({"received": True, "outcome": outcome})


@routes.get("/webhooks/stats")
async def webhook_stats(request: web.Request) -> web.Response:
    """Counts for operators and the city simulation: received N, duplicates D, and the rest."""
    return web.json_response((await request.app[ORDERS].stats()).as_dict())


def create_shop_app(
    config: ShopConfig,
    *,
    client: CryptoCityClient | None = None,
    clock: Callable[[], float] = time.time,
) -> web.Application:
    """The shop as an aiohttp app. ``client`` and ``clock`` are for tests (a shared session, fixed time)."""
    app = web.Application()
    app[CONFIG] = config
    app[CLOCK] = clock
    app.add_routes(routes)

    async def orders_ctx(app: web.Application) -> AsyncIterator[None]:
        app[ORDERS] = await OrderStore.open(config.db_path)
        yield
        await app[ORDERS].close()

    async def gateway_ctx(app: web.Application) -> AsyncIterator[None]:
        app[GATEWAY] = client or CryptoCityClient(config.gateway_url, config.api_key)
        yield
        if client is None:
            await app[GATEWAY].close()

    app.cleanup_ctx.extend([orders_ctx, gateway_ctx])
    return app
