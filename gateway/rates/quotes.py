"""What a provider hands back: prices of one currency in another, with who said so and when.

Providers speak in pairs, not in "KZT per asset": Binance knows BTC in USDT, Kraken BTC in USD, the National
Bank USD in KZT. Turning pairs into tenge prices is the composite's job (composite.py), so an adapter only
has to parse its own answer faithfully.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import NamedTuple, Protocol

from gateway.rates.errors import InvalidPrice

# A plain positive decimal as providers print prices: digits, an optional fraction. No sign, no exponent,
# no thousands separator, no decimal comma: anything else is refused rather than guessed at.
_PLAIN_DECIMAL = re.compile(r"^[0-9]+(\.[0-9]+)?$")


class Pair(NamedTuple):
    """``price`` units of ``quote`` buy one unit of ``base``: Pair("BTC", "USDT") is BTC priced in USDT.

    A NamedTuple, so a plain ``("BTC", "USDT")`` compares and hashes equal to it.
    """

    base: str
    quote: str

    def __str__(self) -> str:
        return f"{self.base}/{self.quote}"


@dataclass(frozen=True, slots=True)
class Quote:
    """One observed price.

    ``symbol`` is the provider's own name for the pair (``BTCUSDT``, ``XBTUSD``, ``USD``), which is what
    the recorded sources of a rate show. ``official`` marks a regulator's published rate (the National
    Bank), which is fresh for days rather than seconds.
    """

    pair: Pair
    price: Decimal
    source: str
    symbol: str
    observed_at: datetime
    official: bool = False

    @property
    def label(self) -> str:
        return f"{self.source}:{self.symbol}"


@dataclass(frozen=True, slots=True)
class QuoteBatch:
    """Everything one provider said in one refresh."""

    source: str
    observed_at: datetime
    quotes: Mapping[Pair, Quote] = field(default_factory=dict)

    def price(self, pair: tuple[str, str]) -> Decimal:
        return self.quotes[Pair(*pair)].price


class RateProvider(Protocol):
    """An adapter the refresher can poll. ``fetch`` raises a ``ProviderError`` subclass on any failure."""

    @property
    def name(self) -> str: ...

    async def fetch(self) -> QuoteBatch: ...


def parse_price(provider: str, symbol: str, raw: object) -> Decimal:
    """A provider's price text as a positive Decimal, or :class:`InvalidPrice`.

    Strings only: every documented format here sends prices as strings precisely so that no float ever
    rounds them, and a bare JSON number would mean the format changed under us.
    """
    if not isinstance(raw, str):
        raise InvalidPrice(provider, symbol, raw)
    text = raw.strip()
    if not _PLAIN_DECIMAL.match(text):
        raise InvalidPrice(provider, symbol, raw)
    try:
        value = Decimal(text)
    except InvalidOperation:  # pragma: no cover - the pattern admits only valid decimals
        raise InvalidPrice(provider, symbol, raw) from None
    if value <= 0:
        raise InvalidPrice(provider, symbol, raw)
    return value
