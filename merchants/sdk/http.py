"""Sending one API request with the retries that are safe, and turning error answers into exceptions.

What is retried, and why it is safe:

- **503** (no fresh exchange rate, storage briefly down): the gateway promises nothing was saved, so any
  request may be sent again. The wait is the answer's ``Retry-After`` (seconds or an HTTP date), capped
  at ``max_retry_delay`` so a misconfigured proxy cannot park a checkout for an hour.
- **408** (the gateway gave up waiting for the body): nothing was read or saved, so the same holds.
- **Connection refused** (the request never left): safe for any request.
- **Other connection errors and timeouts** (the request may have been processed): only for idempotent
  requests: GET, PATCH, DELETE, and POSTs carrying an ``Idempotency-Key``, which the client sends with
  the *same* key and the *same* body bytes on every attempt, so the gateway replays its first answer
  instead of creating a second invoice.
- **Any other 4xx** is never retried: the same request would get the same answer. That includes 429
  (too many failed authentications from this address: a wrong key sent again only extends the wait).

Time is injected (``sleep`` and ``clock``), so tests run the retry schedule without waiting.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp

from merchants.sdk.errors import (
    APIConnectionError,
    APIError,
    FieldError,
    InvalidResponse,
    ServiceUnavailable,
    _RetryAfter,
    error_class_for,
)

Sleep = Callable[[float], Awaitable[None]]
Clock = Callable[[], float]  # unix seconds; only used to read Retry-After given as an HTTP date

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "PUT", "PATCH", "DELETE"})


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_retries: int = 3
    backoff_seconds: float = 0.5  # first wait after a connection error; doubles each attempt
    max_retry_delay: float = 30.0  # cap on any single wait, Retry-After included

    def backoff(self, attempt: int) -> float:
        return float(min(self.max_retry_delay, self.backoff_seconds * 2**attempt))


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError:
            raise InvalidResponse(
                f"expected JSON from the gateway, got {self.body[:200]!r}",
                status=self.status,
                body=self.body.decode("utf-8", "replace"),
            ) from None


def retry_after_seconds(value: str | None, now: float) -> float | None:
    """``Retry-After`` as seconds from now: delta-seconds or an HTTP date (RFC 9110 §10.2.3)."""
    if value is None:
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        moment = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, moment.timestamp() - now)


def problem_error(answer: Answer, now: float) -> APIError:
    """The exception for an error answer, filled from its problem+json body when there is one."""
    try:
        body = json.loads(answer.body)
    except ValueError:
        body = None
    problem: dict[str, Any] = body if isinstance(body, dict) else {}
    errors = tuple(
        FieldError(str(e.get("pointer", "")), str(e.get("detail", "")))
        for e in problem.get("errors") or ()
        if isinstance(e, dict)
    )
    fields: dict[str, Any] = {
        "status": answer.status,
        "title": str(problem.get("title") or f"HTTP {answer.status}"),
        "detail": str(problem.get("detail") or answer.body[:200].decode("utf-8", "replace")),
        "type": str(problem.get("type") or "about:blank"),
        "instance": problem.get("instance"),
        "errors": errors,
        "request_id": answer.headers.get("X-Request-Id"),
        "body": problem,
    }
    cls = error_class_for(answer.status)
    if issubclass(cls, _RetryAfter):
        return cls(retry_after=retry_after_seconds(answer.headers.get("Retry-After"), now), **fields)
    return cls(**fields)


class Requester:
    """Owns the session (unless given one) and runs each request through the retry policy."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        session: aiohttp.ClientSession | None,
        policy: RetryPolicy,
        timeout_seconds: float,
        sleep: Sleep,
        clock: Clock,
        user_agent: str,
    ) -> None:
        self._base = base_url.rstrip("/")
        self._headers = {
            "Authorization": f"Bearer {api_key}",
            "Accept": "application/json",
            "User-Agent": user_agent,
        }
        self._session = session
        self._owns_session = session is None
        self._policy = policy
        self._timeout = aiohttp.ClientTimeout(total=timeout_seconds)
        self._sleep = sleep
        self._clock = clock

    async def close(self) -> None:
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    def _client(self) -> aiohttp.ClientSession:
        # Created on first use, inside the running loop, as aiohttp wants.
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: bytes | None = None,
        idempotency_key: str | None = None,
    ) -> Answer:
        """Send until an answer that is not worth retrying; raise for error statuses."""
        url = self._base + path
        headers = dict(self._headers)
        if body is not None:
            headers["Content-Type"] = "application/json"
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key
        repeatable = method in IDEMPOTENT_METHODS or idempotency_key is not None
        attempt = 0
        while True:
            try:
                answer = await self._send(method, url, params, body, headers)
            except aiohttp.ClientConnectorError as exc:  # never reached the server: always safe to resend
                if attempt >= self._policy.max_retries:
                    raise self._gave_up(method, url, attempt, exc) from exc
            except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError) as exc:
                if not repeatable or attempt >= self._policy.max_retries:
                    raise self._gave_up(method, url, attempt, exc) from exc
            else:
                if answer.status < 400:
                    return answer
                error = problem_error(answer, self._clock())
                if not isinstance(error, ServiceUnavailable) or attempt >= self._policy.max_retries:
                    raise error
                delay = self._policy.backoff(attempt) if error.retry_after is None else error.retry_after
                await self._sleep(min(delay, self._policy.max_retry_delay))
                attempt += 1
                continue
            await self._sleep(self._policy.backoff(attempt))
            attempt += 1

    async def _send(
        self,
        method: str,
        url: str,
        params: Mapping[str, str] | None,
        body: bytes | None,
        headers: Mapping[str, str],
    ) -> Answer:
        async with self._client().request(
            method, url, params=params, data=body, headers=headers, timeout=self._timeout
        ) as response:
            return Answer(response.status, response.headers, await response.read())

    @staticmethod
    def _gave_up(method: str, url: str, attempt: int, exc: BaseException) -> APIConnectionError:
        reason = str(exc) or type(exc).__name__
        return APIConnectionError(
            f"{method} {url}: no answer after {attempt + 1} attempt(s): {reason}",
            method=method,
            url=url,
            attempts=attempt + 1,
        )
