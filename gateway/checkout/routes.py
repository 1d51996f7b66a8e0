"""HTTP handlers of the hosted checkout: the page, its event stream and its two static files.

These routes are public: no API key, because the payer is not the merchant. The invoice id (80 random
bits) is the only credential, so an unknown id and an id that merely looks wrong get the same friendly
404 page, and the page shows nothing a payer should not see (no merchant id, metadata or derivation data).

The invoice is read through :meth:`InvoiceService.get` without a merchant (the service's own public read),
and time comes from the app's injected clock, so a simulation or a test drives the countdown.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Final

import structlog
from aiohttp import web

from gateway.accounts.merchants import MerchantNotFound
from gateway.api.state import CLOCK, REGISTRY, SERVICE
from gateway.checkout.i18n import LANG_COOKIE, choose_language, translator
from gateway.checkout.render import (
    CONTENT_SECURITY_POLICY,
    render_live,
    render_not_found,
    render_page,
    static_file,
)
from gateway.checkout.stream import HUB, CheckoutHub, HubClosed, Subscription, sse_comment, sse_event
from gateway.checkout.view import CheckoutView, build_view
from gateway.ids import looks_like_id
from gateway.invoices.service import InvoiceNotFound

__all__ = ["checkout_routes", "status_event_data"]

checkout_routes = web.RouteTableDef()
log = structlog.get_logger("gateway.checkout")

_COOKIE_MAX_AGE: Final = 365 * 24 * 3600
_RETRY_MS: Final = 3000  # how soon EventSource reconnects after a dropped stream


def _secure(response: web.StreamResponse, *, cache: str = "no-store") -> web.StreamResponse:
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Cache-Control"] = cache
    return response


def _language(request: web.Request, response: web.StreamResponse | None = None) -> str:
    """The request's language; remembers an explicit ``?lang=`` choice in a cookie on ``response``."""
    asked = request.query.get("lang")
    language = choose_language(
        asked, request.cookies.get(LANG_COOKIE), request.headers.get("Accept-Language")
    )
    if response is not None and asked == language and request.cookies.get(LANG_COOKIE) != language:
        response.set_cookie(
            LANG_COOKIE, language, max_age=_COOKIE_MAX_AGE, path="/i/", samesite="Lax", httponly=True
        )
    return language


def _html(body: str, status: int = 200) -> web.Response:
    response = web.Response(text=body, status=status, content_type="text/html", charset="utf-8")
    response.headers["Vary"] = "Accept-Language, Cookie"
    _secure(response)
    return response


def _not_found(request: web.Request) -> web.Response:
    response = _html("", status=404)
    response.text = render_not_found(_language(request, response))
    return response


async def load_view(app: web.Application, invoice_id: str) -> CheckoutView | None:
    """What the page shows for ``invoice_id`` now, or None if there is no such invoice."""
    service = app[SERVICE]
    try:
        record = await service.get(None, invoice_id)
    except InvoiceNotFound:
        return None
    try:
        merchant_name = (await app[REGISTRY].get_cached(record.merchant_id)).name
    except MerchantNotFound:
        merchant_name = ""
    return build_view(record, service.resource(record), merchant_name, app[CLOCK].now())


def _invoice_id(request: web.Request) -> str | None:
    invoice_id = request.match_info["invoice_id"]
    if not looks_like_id(invoice_id, "inv"):
        return None
    structlog.contextvars.bind_contextvars(invoice_id=invoice_id)
    return invoice_id


@checkout_routes.get("/i/static/{name}")
async def checkout_static(request: web.Request) -> web.StreamResponse:
    found = static_file(request.match_info["name"])
    if found is None:
        return _not_found(request)
    # The page links each file with its content hash (?v=), so a matching request may be cached for good.
    current = request.query.get("v") == found.version
    response = web.Response(body=found.body, content_type=found.content_type, charset="utf-8")
    response.headers["ETag"] = f'"{found.version}"'
    return _secure(response, cache="public, max-age=31536000, immutable" if current else "no-cache")


@checkout_routes.get("/favicon.ico")
async def favicon(request: web.Request) -> web.StreamResponse:
    """Browsers ask every origin for /favicon.ico (a JSON page of the gateway, or a merchant's page on the
    same host, included): answer with the checkout's icon rather than a 404 in their consoles."""
    found = static_file("favicon.svg")
    assert found is not None
    response = web.Response(body=found.body, content_type=found.content_type, charset="utf-8")
    return _secure(response, cache="public, max-age=86400")


@checkout_routes.get("/i/{invoice_id}")
async def checkout_page(request: web.Request) -> web.StreamResponse:
    invoice_id = _invoice_id(request)
    view = None if invoice_id is None else await load_view(request.app, invoice_id)
    if view is None:
        return _not_found(request)
    response = _html("")
    language = _language(request, response)
    response.text = render_page(view, language, request.query.get("asset"))
    return response


def status_event_data(view: CheckoutView, language: str) -> dict[str, object]:
    """The JSON of one ``status`` event (docs/checkout.md describes each field)."""
    t = translator(language)
    return {
        "invoice_id": view.invoice_id,
        "version": view.version,
        "status": view.status,
        "flags": list(view.flags),
        "phase": view.phase.value,
        "title": t(f"status.{view.phase.value}.title"),
        "confirmations": None
        if view.confirmations is None
        else {"have": view.confirmations.have, "need": view.confirmations.need},
        "seconds_left": view.seconds_left,
        "redirect_url": view.redirect_url,
        "methods": [
            {"asset": m.asset.value, "amount": m.amount, "amount_minor": str(m.amount_minor), "uri": m.uri}
            for m in view.methods
        ],
        "html": render_live(view, language),
    }


@checkout_routes.get("/i/{invoice_id}/events")
async def checkout_events(request: web.Request) -> web.StreamResponse:
    invoice_id = _invoice_id(request)
    if invoice_id is None:
        return _not_found(request)
    language = _language(request)
    hub = request.app[HUB]
    try:
        async with hub.subscribe(invoice_id) as subscription:
            view = await load_view(request.app, invoice_id)
            if view is None:
                return _not_found(request)
            response = web.StreamResponse(
                headers={"Content-Type": "text/event-stream; charset=utf-8", "X-Accel-Buffering": "no"}
            )
            _secure(response)
            await response.prepare(request)
            with contextlib.suppress(ConnectionError):
                await _stream(request, response, hub, subscription, view, language)
            return response
    except HubClosed:
        return _secure(web.Response(status=503, text="shutting down", headers={"Retry-After": "5"}))


async def _stream(
    request: web.Request,
    response: web.StreamResponse,
    hub: CheckoutHub,
    subscription: Subscription,
    view: CheckoutView,
    language: str,
) -> None:
    """Send the status now and after every change, comments in between, until the client or gateway goes."""
    loop = asyncio.get_running_loop()
    await response.write(f"retry: {_RETRY_MS}\n\n".encode())
    sent_version: int | None = None
    heartbeat_at = loop.time() + hub.heartbeat_seconds
    while not hub.closing:
        if view.version != sent_version:
            await response.write(sse_event("status", status_event_data(view, language), str(view.version)))
            sent_version = view.version
        woke = await _wait(request, hub, subscription, heartbeat_at)
        if woke is None:
            return
        if not woke:
            await response.write(sse_comment("keep-alive"))
            heartbeat_at = loop.time() + hub.heartbeat_seconds
            continue
        subscription.changed.clear()  # before the read: a change committed during it wakes us again
        fresh = await load_view(request.app, subscription.invoice_id)
        if fresh is None:
            return
        view = fresh


def _client_gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


async def _wait(
    request: web.Request, hub: CheckoutHub, subscription: Subscription, until: float
) -> bool | None:
    """True when the invoice may have changed, False when a heartbeat is due, None when the client left.

    aiohttp does not cancel a handler when its client disconnects (unless the server asks it to), so the
    stream looks at its connection every ``liveness_seconds`` instead of waiting for a failed write.
    """
    loop = asyncio.get_running_loop()
    while True:
        if _client_gone(request):
            return None
        remaining = until - loop.time()
        if remaining <= 0:
            return False
        try:
            async with asyncio.timeout(min(remaining, hub.liveness_seconds)):
                await subscription.changed.wait()
            return True
        except TimeoutError:
            continue


@checkout_routes.get("/i/{rest:.*}")
async def checkout_elsewhere(request: web.Request) -> web.StreamResponse:
    """Anything else under /i/ is a payer following a broken link: the same friendly page, not JSON."""
    return _not_found(request)
