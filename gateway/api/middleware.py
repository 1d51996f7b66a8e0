"""Cross-cutting request handling: request ids and log context, and merchant authentication."""

from __future__ import annotations

import time

import structlog
from aiohttp import web

from gateway.api.problems import Handler, Problem
from gateway.api.state import CONFIG, MERCHANT_ID, REGISTRY, REQUEST_ID
from gateway.ids import new_id

log = structlog.get_logger("gateway.http")

MERCHANT_API_PREFIX = "/v1/"


@web.middleware
async def request_context_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Give every request an id (echoed as X-Request-Id) and bind it for every log line it causes."""
    structlog.contextvars.clear_contextvars()
    request_id = new_id("req")
    request[REQUEST_ID] = request_id
    structlog.contextvars.bind_contextvars(request_id=request_id)
    started = time.perf_counter()
    response = await handler(request)
    response.headers["X-Request-Id"] = request_id
    if request.app[CONFIG].logging.access_log:
        log.info(
            "http.request",
            method=request.method,
            path=request.path,
            status=response.status,
            ms=round((time.perf_counter() - started) * 1000, 2),
        )
    return response


def _unauthorized(detail: str, error: str | None) -> Problem:
    challenge = 'Bearer realm="cryptocity"'
    if error:
        challenge += f', error="{error}"'
    return Problem(401, "Unauthorized", detail, "unauthorized", headers={"WWW-Authenticate": challenge})


@web.middleware
async def merchant_auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every /v1 route needs ``Authorization: Bearer <api key>``; the merchant id goes on the request."""
    if not request.path.startswith(MERCHANT_API_PREFIX):
        return await handler(request)
    header = request.headers.get("Authorization")
    if header is None:
        raise _unauthorized("send your API key as 'Authorization: Bearer cc_test_…'", None)
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise _unauthorized("the Authorization header must be 'Bearer <api key>'", "invalid_request")
    merchant_id = await request.app[REGISTRY].authenticate(token.strip())
    if merchant_id is None:
        raise _unauthorized(
            "the API key is unknown, revoked, or belongs to a disabled merchant", "invalid_token"
        )
    request[MERCHANT_ID] = merchant_id
    structlog.contextvars.bind_contextvars(merchant_id=merchant_id)
    return await handler(request)
