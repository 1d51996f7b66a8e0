"""Merchant API for webhooks: endpoints (CRUD, secret rotation), events, deliveries and redelivery.

- ``POST/GET /v1/webhook-endpoints``, ``GET/PATCH/DELETE /v1/webhook-endpoints/{id}``,
  ``POST /v1/webhook-endpoints/{id}/rotate-secret``;
- ``GET /v1/events`` (newest first, keyset pages), ``GET /v1/events/{id}``;
- ``GET /v1/events/{id}/deliveries``: every attempt (status code, latency, error) and what is still
  scheduled; ``POST /v1/events/{id}/redeliver``: a fresh delivery to one or every enabled endpoint.

Every id is checked against the caller's merchant: another merchant's id is a 404, never a 403, so ids
cannot be probed.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway import jsonutil
from gateway.api.problems import FieldError, Problem
from gateway.api.requests import bad_query, query_int, read_model
from gateway.api.state import CLOCK, MERCHANT_ID, STORE
from gateway.clock import isoformat
from gateway.ids import looks_like_id, new_id
from gateway.store import Row, Tx
from gateway.webhooks.endpoints import EndpointError, EndpointNotFound, EndpointRegistry, is_deliverable
from gateway.webhooks.models import (
    CreateEndpointRequest,
    RedeliverRequest,
    RotateSecretRequest,
    UpdateEndpointRequest,
    update_changes,
)

routes = web.RouteTableDef()
ENDPOINTS = web.AppKey("webhook_endpoints", EndpointRegistry)


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=jsonutil.dumps_bytes(body), content_type="application/json")


def _invalid(exc: EndpointError) -> Problem:
    return Problem(
        422,
        "Invalid webhook endpoint",
        str(exc),
        "invalid-webhook-endpoint",
        (FieldError(exc.field, exc.message),),
    )


def _endpoint_not_found(endpoint_id: str) -> Problem:
    return Problem(
        404, "Not found", f"no webhook endpoint {endpoint_id!r} in your account", "endpoint-not-found"
    )


def _event_not_found(event_id: str) -> Problem:
    return Problem(404, "Not found", f"no event {event_id!r} in your account", "event-not-found")


def _endpoint_id(request: web.Request) -> str:
    endpoint_id = request.match_info["endpoint_id"]
    if not looks_like_id(endpoint_id, "whe"):
        raise _endpoint_not_found(endpoint_id)
    return endpoint_id


# -- endpoints -----------------------------------------------------------------------------------------


@routes.post("/v1/webhook-endpoints")
async def create_endpoint(request: web.Request) -> web.Response:
    body, _ = await read_model(request, CreateEndpointRequest)
    try:
        endpoint = await request.app[ENDPOINTS].create(
            request[MERCHANT_ID], body.url, body.event_types, body.description
        )
    except EndpointError as exc:
        raise _invalid(exc) from None
    return _json(endpoint.resource(with_secret=True), 201)


@routes.get("/v1/webhook-endpoints")
async def list_endpoints(request: web.Request) -> web.Response:
    endpoints = await request.app[ENDPOINTS].list(request[MERCHANT_ID])
    return _json({"object": "list", "data": [e.resource() for e in endpoints], "has_more": False})


@routes.get("/v1/webhook-endpoints/{endpoint_id}")
async def get_endpoint(request: web.Request) -> web.Response:
    endpoint_id = _endpoint_id(request)
    try:
        endpoint = await request.app[ENDPOINTS].get(request[MERCHANT_ID], endpoint_id)
    except EndpointNotFound:
        raise _endpoint_not_found(endpoint_id) from None
    return _json(endpoint.resource())


@routes.patch("/v1/webhook-endpoints/{endpoint_id}")
async def update_endpoint(request: web.Request) -> web.Response:
    endpoint_id = _endpoint_id(request)
    body, _ = await read_model(request, UpdateEndpointRequest)
    changes = update_changes(body)
    try:
        endpoint = await request.app[ENDPOINTS].update(request[MERCHANT_ID], endpoint_id, changes)
    except EndpointNotFound:
        raise _endpoint_not_found(endpoint_id) from None
    except EndpointError as exc:
        raise _invalid(exc) from None
    return _json(endpoint.resource())


@routes.delete("/v1/webhook-endpoints/{endpoint_id}")
async def delete_endpoint(request: web.Request) -> web.Response:
    endpoint_id = _endpoint_id(request)
    try:
        await request.app[ENDPOINTS].delete(request[MERCHANT_ID], endpoint_id)
    except EndpointNotFound:
        raise _endpoint_not_found(endpoint_id) from None
    return web.Response(status=204)


@routes.post("/v1/webhook-endpoints/{endpoint_id}/rotate-secret")
async def rotate_secret(request: web.Request) -> web.Response:
    endpoint_id = _endpoint_id(request)
    if request.can_read_body:
        body, _ = await read_model(request, RotateSecretRequest)
    else:
        body = RotateSecretRequest()
    try:
        endpoint = await request.app[ENDPOINTS].rotate_secret(
            request[MERCHANT_ID], endpoint_id, body.expire_previous_in_seconds
        )
    except EndpointNotFound:
        raise _endpoint_not_found(endpoint_id) from None
    return _json(endpoint.resource(with_secret=True))


# -- events --------------------------------------------------------------------------------------------

_EVENT_FILTER = "(type LIKE 'invoice.%' OR type LIKE 'payment.%')"


def _event_id(request: web.Request) -> str:
    event_id = request.match_info["event_id"]
    if not looks_like_id(event_id, "evt"):
        raise _event_not_found(event_id)
    return event_id


async def _event_row(tx: Tx, merchant_id: str, event_id: str) -> Row | None:
    row = await tx.fetchone(
        "SELECT seq, id, type, payload FROM outbox WHERE id = ? AND merchant_id = ?", (event_id, merchant_id)
    )
    if row is None or not is_deliverable(row["type"]):
        return None
    return row


@routes.get("/v1/events")
async def list_events(request: web.Request) -> web.Response:
    merchant_id = request[MERCHANT_ID]
    limit = query_int(request, "limit", default=50, low=1, high=200)
    event_type = request.query.get("type")
    invoice_id = request.query.get("invoice_id")
    after = request.query.get("starting_after")
    if event_type is not None and not is_deliverable(event_type):
        raise bad_query(
            "type", "type must be an invoice.* or payment.* event type", f"unknown type {event_type!r}"
        )

    async def query(tx: Tx) -> tuple[list[Row], bool]:
        clauses, params = [f"merchant_id = ? AND {_EVENT_FILTER}"], [merchant_id]
        if after is not None:
            cursor = await _event_row(tx, merchant_id, after)
            if cursor is None:
                raise bad_query(
                    "starting_after",
                    f"starting_after: no event {after!r} in your account",
                    "no event of yours has this id",
                )
            clauses.append("seq < ?")
            params.append(cursor["seq"])
        if event_type is not None:
            clauses.append("type = ?")
            params.append(event_type)
        if invoice_id is not None:
            clauses.append("invoice_id = ?")
            params.append(invoice_id)
        rows = await tx.fetchall(
            f"SELECT seq, id, payload FROM outbox WHERE {' AND '.join(clauses)} ORDER BY seq DESC LIMIT ?",  # noqa: S608
            (*params, limit + 1),
        )
        return rows[:limit], len(rows) > limit

    rows, has_more = await request.app[STORE].read(query)
    data = [jsonutil.loads(row["payload"]) for row in rows]
    return _json(
        {
            "object": "list",
            "data": data,
            "has_more": has_more,
            "next_starting_after": data[-1]["id"] if has_more and data else None,
        }
    )


@routes.get("/v1/events/{event_id}")
async def get_event(request: web.Request) -> web.Response:
    event_id = _event_id(request)
    row = await request.app[STORE].read(lambda tx: _event_row(tx, request[MERCHANT_ID], event_id))
    if row is None:
        raise _event_not_found(event_id)
    return web.Response(body=row["payload"].encode(), content_type="application/json")


def _attempt_view(row: Row) -> dict[str, Any]:
    return {
        "id": row["id"],
        "object": "webhook_delivery",
        "delivery_id": row["delivery_id"],
        "event_id": row["event_id"],
        "endpoint_id": row["endpoint_id"],
        "attempt": int(row["attempt"]),
        "status": "succeeded" if row["succeeded"] else "failed",
        "response_status": row["response_status"],
        "latency_ms": row["latency_ms"],
        "error": row["error"],
        "attempted_at": row["attempted_at"],
        "next_attempt_at": None,
    }


def _scheduled_view(row: Row) -> dict[str, Any]:
    """A delivery still to be attempted: shown as its next attempt, not yet made."""
    return {
        "id": row["id"],
        "object": "webhook_delivery",
        "delivery_id": row["id"],
        "event_id": row["event_id"],
        "endpoint_id": row["endpoint_id"],
        "attempt": int(row["attempts"]) + 1,
        "status": "pending",
        "response_status": None,
        "latency_ms": None,
        "error": None,
        "attempted_at": None,
        "next_attempt_at": row["next_attempt_at"],
    }


@routes.get("/v1/events/{event_id}/deliveries")
async def list_deliveries(request: web.Request) -> web.Response:
    event_id = _event_id(request)
    merchant_id = request[MERCHANT_ID]

    async def query(tx: Tx) -> list[dict[str, Any]] | None:
        if await _event_row(tx, merchant_id, event_id) is None:
            return None
        attempts = await tx.fetchall(
            "SELECT a.* FROM webhook_attempts a JOIN webhook_deliveries d ON d.id = a.delivery_id"
            " WHERE a.event_id = ? AND d.merchant_id = ? ORDER BY a.attempted_at, a.attempt, a.id",
            (event_id, merchant_id),
        )
        pending = await tx.fetchall(
            "SELECT * FROM webhook_deliveries WHERE event_id = ? AND merchant_id = ? AND status = 'pending'"
            " ORDER BY created_at, id",
            (event_id, merchant_id),
        )
        return [*map(_attempt_view, attempts), *map(_scheduled_view, pending)]

    data = await request.app[STORE].read(query)
    if data is None:
        raise _event_not_found(event_id)
    return _json({"object": "list", "data": data, "has_more": False})


@routes.post("/v1/events/{event_id}/redeliver")
async def redeliver(request: web.Request) -> web.Response:
    event_id = _event_id(request)
    merchant_id = request[MERCHANT_ID]
    body = (await read_model(request, RedeliverRequest))[0] if request.can_read_body else RedeliverRequest()
    if body.endpoint_id is not None and not looks_like_id(body.endpoint_id, "whe"):
        raise _endpoint_not_found(body.endpoint_id)
    stamp = isoformat(request.app[CLOCK].now())

    async def unit(tx: Tx) -> list[dict[str, Any]]:
        event = await _event_row(tx, merchant_id, event_id)
        if event is None:
            raise _event_not_found(event_id)
        sql = "SELECT * FROM webhook_endpoints WHERE merchant_id = ? AND deleted_at IS NULL"
        params: list[Any] = [merchant_id]
        if body.endpoint_id is not None:
            sql += " AND id = ?"
            params.append(body.endpoint_id)
        endpoints = await tx.fetchall(sql, tuple(params))
        if body.endpoint_id is not None and not endpoints:
            raise _endpoint_not_found(body.endpoint_id)
        enabled = [e for e in endpoints if e["status"] == "enabled"]
        if not enabled:
            which = "this endpoint is disabled" if body.endpoint_id else "no enabled webhook endpoint"
            raise Problem(409, "Nothing to deliver to", f"{which}: enable one first", "no-enabled-endpoint")
        created = []
        for endpoint in enabled:
            delivery_id = new_id("whd")
            await tx.execute(
                "INSERT INTO webhook_deliveries (id, event_id, endpoint_id, merchant_id, status, attempts,"
                " next_attempt_at, reason, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, 'pending', 0, ?, 'redeliver', ?, ?)",
                (delivery_id, event_id, endpoint["id"], merchant_id, stamp, stamp, stamp),
            )
            row = await tx.fetchone("SELECT * FROM webhook_deliveries WHERE id = ?", (delivery_id,))
            assert row is not None
            created.append(_scheduled_view(row))
        return created

    data = await request.app[STORE].transaction(unit)
    return _json({"object": "list", "data": data}, 202)
