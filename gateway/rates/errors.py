"""Why a rate provider gave us nothing usable, one class per cause.

The refresher treats every :class:`ProviderError` the same way (the provider is unhealthy, back off, try
again), except :class:`RateLimited`, whose wait is the provider's to choose. The subclasses exist so that
logs, the health view and tests say *what* went wrong (an HTML error page from a CDN reads very differently
from a price of zero), and so that a parser bug can never be mistaken for an outage: anything that is not a
``ProviderError`` escaping an adapter is a programming error, which the refresher still survives but logs
with its traceback.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.rates.quotes import QuoteBatch


class ProviderError(Exception):
    """A provider could not be asked or answered something we refuse to price with.

    ``partial`` holds the quotes of the same answer that *were* usable, when the fault concerned only some
    symbols (one missing or zero price), so one delisted pair does not throw away the others: the
    refresher still uses them while reporting the provider as unhealthy.
    """

    partial: QuoteBatch | None = None

    def __init__(self, provider: str, message: str) -> None:
        super().__init__(f"{provider}: {message}")
        self.provider = provider
        self.message = message


class ProviderUnreachable(ProviderError):
    """No answer at all: connection refused or reset, DNS failure, TLS failure."""


class ProviderTimeout(ProviderUnreachable):
    """The provider did not answer within the adapter's own timeout."""


class ProviderHttpError(ProviderError):
    """An HTTP status other than 200 (and other than the rate-limit statuses)."""

    def __init__(self, provider: str, status: int, message: str) -> None:
        super().__init__(provider, message)
        self.status = status


class RateLimited(ProviderHttpError):
    """HTTP 429/418 (or a provider's own "too many requests" error): do not ask before ``retry_after``.

    ``retry_after_seconds`` is None when the provider did not say how long to wait; the refresher then
    falls back to its own backoff.
    """

    def __init__(self, provider: str, status: int, retry_after_seconds: float | None, message: str) -> None:
        super().__init__(provider, status, message)
        self.retry_after_seconds = retry_after_seconds


class ErrorPage(ProviderError):
    """An HTML page (a CDN, a proxy or a maintenance notice) where JSON or XML was expected."""


class MalformedResponse(ProviderError):
    """The body is not the documented shape: bad or truncated JSON/XML, wrong types, missing fields."""


class UpstreamError(ProviderError):
    """The provider answered with its own error report (Kraken's ``error`` array, a Binance error code)."""


class InvalidPrice(ProviderError):
    """A price that is zero, negative, not a plain decimal number, or not finite."""

    def __init__(self, provider: str, symbol: str, raw: object) -> None:
        super().__init__(provider, f"{symbol}: {raw!r} is not a positive decimal price")
        self.symbol = symbol
        self.raw = raw


class MissingSymbol(ProviderError):
    """A symbol we asked for is not in the answer (``partial``: the ones that were)."""

    def __init__(self, provider: str, symbols: tuple[str, ...], partial: QuoteBatch | None = None) -> None:
        super().__init__(provider, f"missing from the answer: {', '.join(symbols)}")
        self.symbols = symbols
        self.partial = partial


class NoPublication(ProviderError):
    """The National Bank published no rates for any day in the look-back window."""
