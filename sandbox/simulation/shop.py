"""The city's shops as one webhook receiver: the example shop's order book (merchants/shop) for every
simulated merchant, each merchant's deliveries verified with that merchant's own endpoint secret.

Signatures carry the gateway's (virtual) clock, so the receiver checks freshness against the same clock.
The order book lives in memory: the reconciliation reads it at the end of the run, and a city's worth of
per-order fsyncs would measure the disk, not the gateway.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web
from pydantic import ValidationError

from merchants.sdk.models import Event
from merchants.sdk.webhooks import WebhookVerificationError, verify_webhook
from merchants.shop.catalog import Product
from merchants.shop.orders import OrderStore


@dataclass(slots=True)
class ShopCounts:
    received: int = 0
    rejected: int = 0
    duplicates: int = 0
    applied: int = 0


class CityShops:
    """Orders of every simulated merchant and the webhook endpoint they all post to."""

    def __init__(self, orders: OrderStore, now: Callable[[], float]) -> None:
        self.orders = orders
        self.secrets: dict[str, str] = {}  # merchant id → endpoint secret
        self.counts = ShopCounts()
        self.settled_wall: dict[str, float] = {}  # invoice id → wall time its invoice.settled first arrived
        self._now = now
        self._wall: Callable[[], float] = lambda: 0.0

    @classmethod
    async def open(cls, now: Callable[[], float], wall: Callable[[], float]) -> CityShops:
        shops = cls(await OrderStore.open(":memory:"), now)
        shops._wall = wall
        return shops

    async def close(self) -> None:
        await self.orders.close()

    async def new_order(self, purchase_seq: int, price_kzt: str) -> str:
        order = await self.orders.create_order(
            Product(f"p{purchase_seq}", f"purchase {purchase_seq}", price_kzt), self._now()
        )
        return order.id

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/webhooks/{merchant_id}", self._receive)
        return app

    async def _receive(self, request: web.Request) -> web.Response:
        raw = await request.read()
        secret = self.secrets.get(request.match_info["merchant_id"])
        self.counts.received += 1
        if secret is None:
            self.counts.rejected += 1
            return web.json_response({"error": "unknown_merchant"}, status=404)
        try:
            payload = verify_webhook(secret, request.headers, raw, now=self._now())
            event = Event.model_validate(payload)
        except (WebhookVerificationError, ValidationError) as exc:
            self.counts.rejected += 1
            return web.json_response({"error": type(exc).__name__}, status=401)
        outcome = await self.orders.record_event(event, self._now())
        if outcome == "duplicate":
            self.counts.duplicates += 1
        else:
            if event.type == "invoice.settled" and event.data.invoice is not None:
                self.settled_wall.setdefault(event.data.invoice.id, self._wall())
            if outcome == "applied":
                self.counts.applied += 1
        return web.json_response({"received": True, "outcome": outcome})
