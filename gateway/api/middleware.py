"""Cross-cutting request handling: request ids and log context, merchant authentication, the limit on
failed authentications per client, and refusing announced bodies over the size limit.

Their order in ``create_app``: request context, auth-failure limit, problem+json, body size, merchant
auth. The limit sits outside the problem middleware so that it sees every 401 as an answer, whoever
raised it (the merchant API here, the regulator API in its sub-app).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import structlog
from aiohttp import web
from aiohttp.typedefs import Middleware

from gateway.api.auth_limits import client_key
from gateway.api.problems import (
    MAX_BODY_KEY,
    Handler,
    Problem,
    body_too_large,
    problem_response,
    too_many_auth_failures,
)
from gateway.api.state import AUTH_LIMITER, CONFIG, MERCHANT_ID, REGISTRY, REQUEST_ID
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


def auth_failure_limit_middleware(guarded_prefixes: Sequence[str]) -> Middleware:
    """Answer 429 to credentials from a client that failed authentication too often; count its 401s.

    Only paths that authenticate are guarded (``guarded_prefixes``: the merchant API and the extensions'
    secured sub-apps): a public page ignores credentials, so it neither counts nor refuses them.
    """
    prefixes = tuple(guarded_prefixes)

    @web.middleware
    async def limit_auth_failures(request: web.Request, handler: Handler) -> web.StreamResponse:
        if "Authorization" not in request.headers or not request.path.startswith(prefixes):
            return await handler(request)
        limiter = request.config_dict[AUTH_LIMITER]
        client = client_key(request.remote)
        wait = limiter.retry_after(client)
        if wait is not None:
            return problem_response(too_many_auth_failures(wait), request.path)
        response = await handler(request)
        if response.status == 401:
            wait = limiter.record_failure(client)
            if wait is not None:
                log.warning("auth.failures_limited", client=client, retry_after_s=wait)
        return response

    return limit_auth_failures


@web.middleware
async def body_size_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A Content-Length over ``server.max_body_bytes`` is refused at once, before a byte of the body is
    read: a client announcing a huge body cannot make a handler wait for it.

    (A body without a Content-Length is cut off at the limit as it is read, and every read has the body
    deadline: :func:`gateway.api.requests.read_model`.)
    """
    length = request.content_length
    if length is not None and length > request.config_dict[MAX_BODY_KEY]:
        raise body_too_large(request.config_dict[MAX_BODY_KEY])
    return await handler(request)
