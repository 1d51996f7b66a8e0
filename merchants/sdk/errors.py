"""What can go wrong when calling the gateway, as exceptions a merchant's code can catch by intent.

::

    CryptoCityError                 anything this SDK raises about a call (catch-all)
    ├── APIConnectionError          no answer: refused, reset, timed out (after the retries it was allowed)
    ├── InvalidResponse             an answer the SDK cannot read (not JSON, not the documented shape)
    └── APIError                    the gateway answered with a problem+json error (RFC 9457)
        ├── InvalidRequest          400, 413, 415, 422: fix the request; ``errors`` points at the fields
        ├── AuthenticationError     401: the API key is missing, unknown or revoked
        ├── PermissionDenied        403: refused by policy (sandbox cap, merchant disabled)
        ├── NotFound                404: no such object in *your* account
        ├── Conflict                409: idempotency key reused with another body, or a forbidden transition
        ├── RateLimited             429: too many failed authentications from this address; ``retry_after``
        └── ServiceUnavailable      503 (and 408, the body came too slowly): nothing was saved; ``retry_after``

Webhook signature failures are not here: they concern a request the merchant *received*, see
``merchants.sdk.webhooks.WebhookVerificationError``.

Each :class:`APIError` keeps the problem's fields (``type``, ``title``, ``status``, ``detail``,
``instance``, ``errors``) and the ``request_id`` the gateway logged, which is what support asks for.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


class CryptoCityError(Exception):
    """Base class of every error the client raises."""


class APIConnectionError(CryptoCityError):
    """The request got no HTTP answer (connection refused or reset, timeout), retries included.

    For a create call this does not tell whether the object was made: call again with the same
    ``idempotency_key`` to find out safely.
    """

    def __init__(self, message: str, *, method: str, url: str, attempts: int) -> None:
        super().__init__(message)
        self.method = method
        self.url = url
        self.attempts = attempts


class InvalidResponse(CryptoCityError):
    """The gateway answered, but not in a form this SDK understands (a proxy's HTML page, a bad body)."""

    def __init__(self, message: str, *, status: int, body: str) -> None:
        super().__init__(message)
        self.status = status
        self.body = body


@dataclass(frozen=True, slots=True)
class FieldError:
    """One field's problem: ``pointer`` is a JSON Pointer into the body (``/amount``) or ``?name``."""

    pointer: str
    detail: str


class APIError(CryptoCityError):
    """An error answer from the gateway, with the fields of its problem+json body."""

    def __init__(
        self,
        *,
        status: int,
        title: str,
        detail: str,
        type: str = "about:blank",
        instance: str | None = None,
        errors: tuple[FieldError, ...] = (),
        request_id: str | None = None,
        body: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(f"{status} {title}: {detail}")
        self.status = status
        self.title = title
        self.detail = detail
        self.type = type
        self.instance = instance
        self.errors = errors
        self.request_id = request_id
        self.body: Mapping[str, Any] = body or {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(status={self.status}, type={self.type!r}, detail={self.detail!r})"


class InvalidRequest(APIError):
    """The request was refused as malformed or invalid; ``errors`` names each bad field."""


class AuthenticationError(APIError):
    """The API key is missing, unknown, revoked, or its merchant is disabled."""


class PermissionDenied(APIError):
    """The gateway (or the sandbox's policy) refused the operation for this merchant."""


class NotFound(APIError):
    """No such object in this merchant's account (another merchant's ids look exactly like this)."""


class Conflict(APIError):
    """The request conflicts with the object's state or with an earlier request under the same key."""


class _RetryAfter(APIError):
    """An error answer that says when to try again: ``retry_after``, the gateway's Retry-After in seconds
    (None if it sent none)."""

    def __init__(self, *, retry_after: float | None = None, **fields: Any) -> None:
        super().__init__(**fields)
        self.retry_after = retry_after


class ServiceUnavailable(_RetryAfter):
    """The gateway could not do it now and saved nothing (no fresh rate, storage down).

    The client has already retried up to ``max_retries`` times before raising this.
    """


class RateLimited(_RetryAfter):
    """Too many failed authentications came from this client's address (a wrong or revoked key in a
    loop, or someone guessing keys behind the same address); requests with credentials are refused until
    ``retry_after`` seconds have passed. Not retried by the client: fix the key first."""


_BY_STATUS: dict[int, type[APIError]] = {
    400: InvalidRequest,
    401: AuthenticationError,
    403: PermissionDenied,
    404: NotFound,
    408: ServiceUnavailable,  # the body did not arrive in time: nothing was read or saved, send it again
    409: Conflict,
    413: InvalidRequest,
    415: InvalidRequest,
    422: InvalidRequest,
    429: RateLimited,
    503: ServiceUnavailable,
}


def error_class_for(status: int) -> type[APIError]:
    """The most specific class for an HTTP status; other statuses (500, 405 …) are plain APIError."""
    return _BY_STATUS.get(status, APIError)
