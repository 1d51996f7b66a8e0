"""The hosted checkout page at ``/i/{invoice_id}`` and its live status stream (docs/checkout.md).

``setup_checkout(app)`` is all the application factory calls: it adds the public routes, the hub's cleanup
context (the hub needs the store, so call it after the store's context is registered) and a shutdown hook
that ends open event streams at once, instead of letting them hold the graceful shutdown until its timeout.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from gateway.api.state import STORE
from gateway.checkout.routes import checkout_routes
from gateway.checkout.stream import HUB, CheckoutHub

__all__ = ["HUB", "CheckoutHub", "checkout_hub_ctx", "checkout_routes", "setup_checkout"]


async def checkout_hub_ctx(app: web.Application) -> AsyncIterator[None]:
    """The hub that wakes open checkout pages when their invoice changes; stopped and awaited on exit."""
    hub = CheckoutHub(app[STORE])
    app[HUB] = hub
    hub.start()
    yield
    await hub.stop()


async def _end_streams(app: web.Application) -> None:
    hub = app.get(HUB)
    if hub is not None:
        hub.close_streams()


def setup_checkout(app: web.Application) -> None:
    app.add_routes(checkout_routes)
    app.cleanup_ctx.append(checkout_hub_ctx)
    app.on_shutdown.append(_end_streams)
