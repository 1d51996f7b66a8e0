"""Merchant API v1: invoices, their payments and QR codes."""

from __future__ import annotations

from typing import Any

import structlog
from aiohttp import web

from gateway import jsonutil
from gateway.api.models import CreateInvoiceRequest
from gateway.api.problems import FieldError, Problem
from gateway.api.requests import bad_query, query_int, query_time, read_model
from gateway.api.state import MERCHANT_ID, SERVICE
from gateway.ids import looks_like_id
from gateway.invoices.service import (
    IdempotencyConflict,
    InvalidInvoiceRequest,
    InvoiceNotFound,
    InvoiceRefused,
    MerchantUnavailable,
    TransitionRefused,
    request_fingerprint,
)
from gateway.money import Asset
from gateway.qr import qr_png_cached, qr_svg_cached
from gateway.rates import RatesUnavailable

routes = web.RouteTableDef()
log = structlog.get_logger("gateway.api")

_STATUSES = ("new", "processing", "settled", "expired", "cancelled", "reversed")


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=jsonutil.dumps_bytes(body), content_type="application/json")


def _not_found(invoice_id: str) -> Problem:
    return Problem(404, "Not found", f"no invoice {invoice_id!r} in your account", "invoice-not-found")


def _invoice_id(request: web.Request) -> str:
    invoice_id = request.match_info["invoice_id"]
    if not looks_like_id(invoice_id, "inv"):
        raise _not_found(invoice_id)
    structlog.contextvars.bind_contextvars(invoice_id=invoice_id)
    return invoice_id


def _idempotency_key(request: web.Request) -> str | None:
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    if not 1 <= len(key) <= 255 or not all(" " <= c <= "~" for c in key):
        raise Problem(
            400,
            "Bad request",
            "Idempotency-Key must be 1 to 255 printable ASCII characters",
            "bad-idempotency-key",
        )
    return key


@routes.post("/v1/invoices")
async def create_invoice(request: web.Request) -> web.Response:
    merchant_id = request[MERCHANT_ID]
    body, raw = await read_model(request, CreateInvoiceRequest)
    key = _idempotency_key(request)
    service = request.app[SERVICE]
    try:
        result = await service.create(
            merchant_id, body, idempotency_key=key, fingerprint=request_fingerprint("POST", request.path, raw)
        )
    except InvalidInvoiceRequest as exc:
        raise Problem(
            422,
            "Invalid request",
            f"{exc.pointer}: {exc.detail}",
            "validation-error",
            (FieldError(exc.pointer, exc.detail),),
        ) from None
    except IdempotencyConflict as exc:
        raise Problem(409, "Idempotency key reused", str(exc), "idempotency-conflict") from None
    except InvoiceRefused as exc:
        raise Problem(exc.status, exc.title, exc.detail, exc.slug) from None
    except MerchantUnavailable as exc:
        raise Problem(403, "Forbidden", str(exc), "merchant-unavailable") from None
    except RatesUnavailable as exc:
        raise Problem(
            503,
            "Rates unavailable",
            f"{exc}; invoices cannot be priced right now, retry shortly",
            "rates-unavailable",
            headers={"Retry-After": str(exc.retry_after_seconds)},
        ) from None
    structlog.contextvars.bind_contextvars(invoice_id=result.invoice_id)
    headers = {"Location": f"/v1/invoices/{result.invoice_id}"}
    if result.replayed:
        headers["Idempotent-Replayed"] = "true"
    return web.Response(
        status=result.status, body=result.body, content_type="application/json", headers=headers
    )


@routes.get("/v1/invoices")
async def list_invoices(request: web.Request) -> web.Response:
    merchant_id = request[MERCHANT_ID]
    limit = query_int(request, "limit", 20, 1, 100)
    status = request.query.get("status")
    if status is not None and status not in _STATUSES:
        raise bad_query(
            "status", f"status must be one of {', '.join(_STATUSES)}", f"unknown status {status!r}"
        )
    created = {name: query_time(request, name) for name in ("created_gte", "created_lt")}
    starting_after = request.query.get("starting_after")
    service = request.app[SERVICE]
    try:
        records, has_more = await service.list_invoices(
            merchant_id,
            limit=limit,
            starting_after=starting_after,
            status=status,
            order_id=request.query.get("order_id"),
            **created,
        )
    except InvoiceNotFound:
        raise Problem(
            404,
            "Not found",
            f"starting_after: no invoice {starting_after!r} in your account",
            "invoice-not-found",
            (FieldError("?starting_after", "no invoice of yours has this id"),),
        ) from None
    data = [service.resource(r) for r in records]
    return _json(
        {
            "object": "list",
            "data": data,
            "has_more": has_more,
            "next_starting_after": data[-1]["id"] if has_more and data else None,
        }
    )


@routes.get("/v1/invoices/{invoice_id}")
async def get_invoice(request: web.Request) -> web.Response:
    invoice_id = _invoice_id(request)
    service = request.app[SERVICE]
    try:
        record = await service.get(request[MERCHANT_ID], invoice_id)
    except InvoiceNotFound:
        raise _not_found(invoice_id) from None
    return _json(service.resource(record))


async def _transition(request: web.Request, action: str) -> web.Response:
    invoice_id = _invoice_id(request)
    service = request.app[SERVICE]
    change = service.cancel if action == "cancel" else service.accept_late
    try:
        record = await change(request[MERCHANT_ID], invoice_id)
    except InvoiceNotFound:
        raise _not_found(invoice_id) from None
    except TransitionRefused as exc:
        raise Problem(
            409,
            "Conflict",
            f"cannot {action.replace('_', ' ')} this invoice now: {exc}",
            "invalid-transition",
        ) from None
    return _json(service.resource(record))


@routes.post("/v1/invoices/{invoice_id}/cancel")
async def cancel_invoice(request: web.Request) -> web.Response:
    return await _transition(request, "cancel")


@routes.post("/v1/invoices/{invoice_id}/accept-late")
async def accept_late_payment(request: web.Request) -> web.Response:
    return await _transition(request, "accept_late")


@routes.get("/v1/invoices/{invoice_id}/payments")
async def list_payments(request: web.Request) -> web.Response:
    invoice_id = _invoice_id(request)
    try:
        payments = await request.app[SERVICE].payments(request[MERCHANT_ID], invoice_id)
    except InvoiceNotFound:
        raise _not_found(invoice_id) from None
    return _json({"object": "list", "data": payments})


@routes.get("/v1/invoices/{invoice_id}/qr/{filename}")
async def payment_qr(request: web.Request) -> web.Response:
    invoice_id = _invoice_id(request)
    asset_code, _, fmt = request.match_info["filename"].partition(".")
    if fmt not in ("png", "svg") or asset_code not in Asset.__members__:
        raise Problem(
            404,
            "Not found",
            "QR codes are at /qr/<ASSET>.png or /qr/<ASSET>.svg, e.g. /qr/BTC.png",
            "qr-not-found",
        )
    service = request.app[SERVICE]
    try:
        record = await service.get(request[MERCHANT_ID], invoice_id)
    except InvoiceNotFound:
        raise _not_found(invoice_id) from None
    method = next((m for m in record.methods if m.asset.value == asset_code), None)
    if method is None:
        raise Problem(
            404, "Not found", f"invoice {invoice_id} cannot be paid in {asset_code}", "qr-not-found"
        )
    headers = {"Cache-Control": "private, max-age=3600"}
    if fmt == "png":
        return web.Response(body=qr_png_cached(method.uri), content_type="image/png", headers=headers)
    return web.Response(text=qr_svg_cached(method.uri), content_type="image/svg+xml", headers=headers)
