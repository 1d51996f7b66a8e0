"""Reading requests at the edge: content type, size, JSON syntax, schema; each failure a precise 4xx."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from gateway.api.problems import FieldError, Problem, body_timeout, validation_problem
from gateway.api.state import CONFIG
from gateway.clock import isoformat

M = TypeVar("M", bound=BaseModel)


def _require_json(request: web.Request) -> None:
    if request.content_type != "application/json":
        shown = request.content_type or "none"
        raise Problem(
            415,
            "Unsupported media type",
            f"send the body as application/json (got {shown})",
            "unsupported-media-type",
        )


async def read_model(request: web.Request, model: type[M]) -> tuple[M, bytes]:
    """Validate the body against ``model``; returns the model and the raw bytes (for idempotency)."""
    _require_json(request)
    if request.content.is_eof():  # the usual case: the whole body came with the headers
        raw = await request.read()
    else:
        # A body that trickles in must not hold its handler and connection for as long as the client
        # likes (aiohttp sets no deadline on reading one); past client_max_size aiohttp raises 413.
        seconds = request.config_dict[CONFIG].server.body_timeout_seconds
        try:
            async with asyncio.timeout(seconds):
                raw = await request.read()
        except TimeoutError:
            raise body_timeout(seconds) from None
    try:
        return model.model_validate_json(raw), raw
    except ValidationError as exc:
        first = exc.errors()[0]
        if first["type"] == "json_invalid":
            raise Problem(
                400,
                "Malformed JSON",
                f"the body is not valid JSON: {first['msg']}",
                "malformed-json",
                (FieldError("", str(first.get("ctx", {}).get("error", first["msg"]))),),
            ) from None
        if first["type"] == "model_type" and not first["loc"]:
            raise Problem(400, "Bad request", "the body must be a JSON object", "bad-request") from None
        raise validation_problem(exc) from None


def bad_query(name: str, detail: str, field_detail: str) -> Problem:
    """A 400 for one query parameter, pointing at it as ``?name``."""
    return Problem(400, "Bad request", detail, "bad-query", (FieldError(f"?{name}", field_detail),))


def query_int(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise bad_query(
            name,
            f"query parameter {name} must be an integer from {low} to {high}",
            f"expected an integer from {low} to {high}, got {raw!r}",
        )
    return int(raw)


def query_time(request: web.Request, name: str) -> str | None:
    """An RFC 3339 time with a zone, normalised to the store's UTC text form."""
    raw = request.query.get(name)
    if raw is None:
        return None
    try:
        moment = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        raise bad_query(
            name,
            f"{name} must be an RFC 3339 time with a zone, e.g. 2026-11-23T00:00:00Z",
            f"not a time with a zone: {raw!r}",
        )
    return isoformat(moment)
