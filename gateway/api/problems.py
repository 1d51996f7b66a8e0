"""Errors as RFC 9457 problem details (``application/problem+json``), for every 4xx and 5xx.

Handlers raise :class:`Problem`; the middleware turns it, aiohttp's own HTTP errors (unknown route, wrong
method, body too large) and unexpected exceptions into one JSON shape:
``{type, title, status, detail, instance, errors: [{pointer, detail}]}``. ``errors`` lists per-field
problems with a JSON Pointer into the request body, so a client can show each message next to its field.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog
from aiohttp import web
from pydantic import ValidationError

from gateway.store import StoreUnavailable

PROBLEM_CONTENT_TYPE = "application/problem+json"
PROBLEM_BASE = "https://cryptocity.invalid/problems/"  # .invalid: a stable identifier, never fetched
log = structlog.get_logger("gateway.api")


@dataclass(frozen=True, slots=True)
class FieldError:
    pointer: str
    detail: str


@dataclass(slots=True)
class Problem(Exception):
    status: int
    title: str
    detail: str
    slug: str = "error"
    errors: Sequence[FieldError] = ()
    headers: Mapping[str, str] = field(default_factory=dict)
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.status} {self.title}: {self.detail}"

    def body(self, instance: str) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": PROBLEM_BASE + self.slug,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            "instance": instance,
        }
        if self.errors:
            body["errors"] = [{"pointer": e.pointer, "detail": e.detail} for e in self.errors]
        body.update(self.extra)
        return body


def problem_response(problem: Problem, instance: str) -> web.Response:
    return web.Response(
        status=problem.status,
        body=json.dumps(problem.body(instance)).encode(),
        content_type=PROBLEM_CONTENT_TYPE,
        headers=dict(problem.headers),
    )


def json_pointer(loc: Sequence[int | str]) -> str:
    parts = [str(p).replace("~", "~0").replace("/", "~1") for p in loc]
    return "/" + "/".join(parts) if parts else ""


def _field_message(error: Mapping[str, Any]) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        return "unknown field; remove it (see the API reference for accepted fields)"
    if kind == "missing":
        return "this field is required"
    return str(error["msg"]).removeprefix("Value error, ")


def validation_problem(exc: ValidationError) -> Problem:
    errors = [FieldError(json_pointer(e["loc"]), _field_message(e)) for e in exc.errors()]
    summary = "; ".join(f"{e.pointer or '/'}: {e.detail}" for e in errors[:3])
    return Problem(422, "Invalid request", summary, "validation-error", errors)


def body_too_large(limit_bytes: int) -> Problem:
    """413 for a body over ``server.max_body_bytes``, whether its Content-Length said so or its bytes did.

    After an answer that left a body unread, aiohttp drains the rest for at most its lingering time (10 s)
    and then closes the connection, so the client reads the answer rather than a reset."""
    return Problem(
        413,
        "Request body too large",
        f"the request body exceeds the limit of {limit_bytes} bytes",
        "body-too-large",
    )


def body_timeout(seconds: float) -> Problem:
    """408 for a body that did not arrive whole in time: a slow client must not hold the connection."""
    return Problem(
        408,
        "Request timeout",
        f"the request body did not arrive within {seconds:g} seconds; send it at once",
        "request-timeout",
    )


def too_many_auth_failures(retry_after_seconds: int) -> Problem:
    """429 for a client address that failed authentication too often (gateway/api/auth_limits.py)."""
    return Problem(
        429,
        "Too many requests",
        "too many failed authentications from your address; every request carrying credentials is refused"
        f" for now, retry after {retry_after_seconds} seconds",
        "too-many-auth-failures",
        headers={"Retry-After": str(retry_after_seconds)},
    )


_STATUS_TITLES = {
    400: ("Bad request", "bad-request"),
    401: ("Unauthorized", "unauthorized"),
    403: ("Forbidden", "forbidden"),
    404: ("Not found", "not-found"),
    405: ("Method not allowed", "method-not-allowed"),
    409: ("Conflict", "conflict"),
    413: ("Request body too large", "body-too-large"),
    415: ("Unsupported media type", "unsupported-media-type"),
    422: ("Invalid request", "validation-error"),
    503: ("Service unavailable", "unavailable"),
}


def _from_http_exception(exc: web.HTTPException, request: web.Request) -> Problem:
    title, slug = _STATUS_TITLES.get(exc.status, (exc.reason, "http-error"))
    headers: dict[str, str] = {}
    if exc.status == 404:
        detail = f"no resource at {request.path}"
    elif exc.status == 405:
        allowed = sorted(getattr(exc, "allowed_methods", ()) or ())
        detail = f"{request.method} is not allowed on {request.path}; allowed: {', '.join(allowed)}"
        headers["Allow"] = ",".join(allowed)
    elif exc.status == 413:
        return body_too_large(request.config_dict.get(MAX_BODY_KEY, 0))
    else:
        detail = exc.text or exc.reason
    return Problem(exc.status, title, detail, slug, headers=headers)


MAX_BODY_KEY = web.AppKey("max_body_bytes", int)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def problem_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except Problem as raised:
        return problem_response(raised, request.path)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return problem_response(_from_http_exception(exc, request), request.path)
    except StoreUnavailable as exc:
        log.error("api.store_unavailable", error=str(exc))
        unavailable = Problem(
            503,
            "Service unavailable",
            "storage is temporarily unavailable; nothing was saved, retry later",
            "store-unavailable",
            headers={"Retry-After": "5"},
        )
        return problem_response(unavailable, request.path)
    except Exception:
        log.exception("api.unhandled_error")
        internal = Problem(
            500, "Internal server error", "an unexpected error occurred; it has been logged", "internal"
        )
        return problem_response(internal, request.path)
