"""One GET for every adapter: its own timeout, a bounded body, rate limits and error pages recognised.

The three providers fail in the same handful of ways (unreachable, slow, 5xx, a CDN's HTML page, 429 with
Retry-After), so those are turned into :mod:`gateway.rates.errors` here once; each adapter then only parses
its own documented body.
"""

from __future__ import annotations

import email.utils
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

import aiohttp

from gateway.rates.errors import (
    MalformedResponse,
    ProviderHttpError,
    ProviderTimeout,
    ProviderUnreachable,
    RateLimited,
)

RATE_LIMIT_STATUSES = frozenset({429, 418})  # 418: Binance's "you ignored the 429s, now you are banned"
DEFAULT_MAX_BYTES = 1 << 20  # the largest real answer here (all NBK currencies) is about 10 KiB


@dataclass(frozen=True, slots=True)
class HttpAnswer:
    status: int
    body: bytes
    content_type: str


def looks_like_html(body: bytes) -> bool:
    """True for an HTML page (CDN error, maintenance notice, login wall), XHTML included.

    Sniffed from the body rather than trusted from Content-Type, which error pages often get wrong.
    """
    head = body[:1024].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    return head.startswith((b"<!doctype html", b"<html")) or b"<html" in head


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Retry-After as seconds from ``now``: either delta-seconds or an HTTP date (RFC 9110 §10.2.3)."""
    if value is None:
        return None
    text = value.strip()
    if text.isdigit():
        return float(int(text))
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


def describe_body(body: bytes) -> str:
    """A short, log-safe description of a body we could not use."""
    if looks_like_html(body):
        return f"an HTML page ({len(body)} bytes)"
    return f"{len(body)} bytes: {body[:80]!r}"


async def http_get(
    session: aiohttp.ClientSession,
    provider: str,
    url: str,
    *,
    params: Mapping[str, str],
    timeout_seconds: float,
    now: datetime,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> HttpAnswer:
    """GET once and read the body, whatever the status except the rate-limit ones.

    ``now`` dates an HTTP-date Retry-After. Raises :class:`ProviderTimeout`, :class:`ProviderUnreachable`,
    :class:`RateLimited` or :class:`MalformedResponse` (a body larger than ``max_bytes``); callers decide
    what other statuses mean, because some providers explain a 400 in its body.
    """
    timeout = aiohttp.ClientTimeout(total=timeout_seconds)
    try:
        async with session.get(url, params=params, timeout=timeout, max_redirects=3) as response:
            if response.status in RATE_LIMIT_STATUSES:
                retry_after = parse_retry_after(response.headers.get("Retry-After"), now)
                raise RateLimited(
                    provider,
                    response.status,
                    retry_after,
                    f"HTTP {response.status}, Retry-After {response.headers.get('Retry-After')!r}",
                )
            if response.content_length is not None and response.content_length > max_bytes:
                raise MalformedResponse(provider, f"answer of {response.content_length} bytes is too large")
            chunks: list[bytes] = []
            size = 0
            async for chunk in response.content.iter_chunked(64 * 1024):
                size += len(chunk)
                if size > max_bytes:
                    raise MalformedResponse(provider, f"answer larger than {max_bytes} bytes")
                chunks.append(chunk)
            return HttpAnswer(response.status, b"".join(chunks), response.content_type)
    except TimeoutError:
        raise ProviderTimeout(provider, f"no answer within {timeout_seconds:g} s from {url}") from None
    except aiohttp.ClientPayloadError as exc:
        raise MalformedResponse(provider, f"truncated answer: {exc}") from None
    except aiohttp.ClientError as exc:
        raise ProviderUnreachable(provider, f"{type(exc).__name__}: {exc}") from None


def require_ok(provider: str, answer: HttpAnswer) -> None:
    """Refuse any status but 200, saying whether the body was an HTML error page."""
    if answer.status != 200:
        raise ProviderHttpError(
            provider, answer.status, f"HTTP {answer.status}, {describe_body(answer.body)}"
        )
