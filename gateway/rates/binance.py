"""Binance spot prices: BTC and ETH in USDT, and USDT in tenge (USDTKZT, Binance's only KZT pair).

``GET <base>/api/v3/ticker/price?symbols=["BTCUSDT","ETHUSDT","USDTKZT"]`` answers
``[{"symbol":"BTCUSDT","price":"97000.01000000"}, ...]``; prices are strings, parsed straight to Decimal.

One request asks for every symbol. Binance refuses the whole request (HTTP 400, code -1121 "Invalid
symbol") if a single symbol is unknown, e.g. after a delisting; the adapter then asks symbol by symbol, so
the pairs that still exist keep pricing and the missing one is reported (:class:`MissingSymbol` carrying
the partial batch). HTTP 429 and 418 carry Retry-After, which becomes :class:`RateLimited`: Binance bans
clients that keep asking after a 429, so the refresher must wait that long.

Binance's answer has no timestamp; the observation time is when the answer arrived, by the injected clock.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any

import aiohttp

from gateway.clock import Clock
from gateway.rates.errors import (
    ErrorPage,
    InvalidPrice,
    MalformedResponse,
    MissingSymbol,
    ProviderError,
    UpstreamError,
)
from gateway.rates.http import HttpAnswer, describe_body, http_get, looks_like_html, require_ok
from gateway.rates.quotes import Pair, Quote, QuoteBatch, parse_price

NAME = "binance"
TICKER_PATH = "/api/v3/ticker/price"
INVALID_SYMBOL = -1121

DEFAULT_SYMBOLS: Mapping[str, Pair] = {
    "BTCUSDT": Pair("BTC", "USDT"),
    "ETHUSDT": Pair("ETH", "USDT"),
    "USDTKZT": Pair("USDT", "KZT"),
}


def _json(body: bytes, provider: str) -> Any:
    if looks_like_html(body):
        raise ErrorPage(provider, f"expected JSON, got {describe_body(body)}")
    try:
        return json.loads(body)
    except ValueError:
        raise MalformedResponse(provider, f"not JSON (truncated?): {describe_body(body)}") from None


def error_code(body: bytes) -> int | None:
    """Binance's ``{"code": -1121, "msg": "..."}`` error code, if the body is one."""
    try:
        document = json.loads(body)
    except ValueError:
        return None
    code = document.get("code") if isinstance(document, dict) else None
    return code if isinstance(code, int) else None


def parse_binance_prices(body: bytes, provider: str = NAME) -> dict[str, object]:
    """Raw price values by symbol from a ticker/price answer (a list, or one object for ``symbol=``).

    Values are returned unparsed so that the caller can tell a bad price of one symbol from a bad answer.
    Raises :class:`ErrorPage`, :class:`MalformedResponse` or :class:`UpstreamError` (an error object).
    """
    document = _json(body, provider)
    if isinstance(document, dict):
        if "code" in document and "symbol" not in document:
            raise UpstreamError(provider, f"error {document.get('code')}: {document.get('msg')!r}")
        document = [document]
    if not isinstance(document, list):
        raise MalformedResponse(provider, f"expected a list of tickers, got {type(document).__name__}")
    prices: dict[str, object] = {}
    for entry in document:
        if not isinstance(entry, dict) or not isinstance(entry.get("symbol"), str) or "price" not in entry:
            raise MalformedResponse(provider, f"not a {{symbol, price}} ticker: {entry!r:.80}")
        prices[entry["symbol"]] = entry["price"]
    return prices


def build_batch(
    provider: str,
    raw_prices: Mapping[str, object],
    symbols: Mapping[str, Pair],
    observed_at: datetime,
) -> QuoteBatch:
    """The batch for the wanted symbols; raises with ``partial`` set if some are missing or invalid."""
    quotes: dict[Pair, Quote] = {}
    invalid: InvalidPrice | None = None
    missing: list[str] = []
    for symbol, pair in symbols.items():
        if symbol not in raw_prices:
            missing.append(symbol)
            continue
        try:
            price: Decimal = parse_price(provider, symbol, raw_prices[symbol])
        except InvalidPrice as exc:
            invalid = invalid or exc
            continue
        quotes[pair] = Quote(pair, price, provider, symbol, observed_at)
    batch = QuoteBatch(provider, observed_at, quotes)
    error: ProviderError | None = MissingSymbol(provider, tuple(missing)) if missing else invalid
    if error is not None:
        error.partial = batch if quotes else None
        raise error
    return batch


class BinanceTicker:
    """Adapter for Binance's public price ticker."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        clock: Clock,
        *,
        timeout_seconds: float = 5.0,
        symbols: Mapping[str, Pair] = DEFAULT_SYMBOLS,
        name: str = NAME,
    ) -> None:
        self._session = session
        self._url = base_url.rstrip("/") + TICKER_PATH
        self._clock = clock
        self._timeout = timeout_seconds
        self._symbols = dict(symbols)
        self._name = name

    @property
    def name(self) -> str:
        return self._name

    async def _get(self, params: Mapping[str, str]) -> HttpAnswer:
        return await http_get(
            self._session,
            self._name,
            self._url,
            params=params,
            timeout_seconds=self._timeout,
            now=self._clock.now(),
        )

    async def fetch(self) -> QuoteBatch:
        symbols = json.dumps(list(self._symbols), separators=(",", ":"))
        answer = await self._get({"symbols": symbols})
        if answer.status == 400 and error_code(answer.body) == INVALID_SYMBOL:
            return await self._fetch_one_by_one()
        require_ok(self._name, answer)
        raw = parse_binance_prices(answer.body, self._name)
        return build_batch(self._name, raw, self._symbols, self._clock.now())

    async def _fetch_one_by_one(self) -> QuoteBatch:
        raw: dict[str, object] = {}
        for symbol in self._symbols:
            answer = await self._get({"symbol": symbol})
            if answer.status == 400 and error_code(answer.body) == INVALID_SYMBOL:
                continue
            require_ok(self._name, answer)
            raw.update(parse_binance_prices(answer.body, self._name))
        return build_batch(self._name, raw, self._symbols, self._clock.now())
