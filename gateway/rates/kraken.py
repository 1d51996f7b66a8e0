"""Kraken spot prices in US dollars: BTC, ETH and USDT itself (how far the stablecoin sits from its peg).

``GET <base>/0/public/Ticker?pair=XBTUSD,ETHUSD,USDTUSD`` answers
``{"error":[],"result":{"XXBTZUSD":{"c":["97000.0","0.01"],...},"XETHZUSD":{...},"USDTZUSD":{...}}}``.
The result keys are Kraken's internal pair names, not the names asked for, so each wanted pair lists the
keys it may come back under. The price used is ``c[0]``, the last trade (``c[1]`` is its volume).

Kraken reports failures in its ``error`` array, often with HTTP 200. Entries are ``<severity><category>:
<message>``; an ``E`` entry is an error (:class:`UpstreamError`, or :class:`RateLimited` for Kraken's rate
limit errors), a ``W`` entry is a warning that does not invalidate the result.

Kraken's answer has no timestamp; the observation time is when the answer arrived, by the injected clock.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import aiohttp
import structlog

from gateway.clock import Clock
from gateway.rates.errors import (
    ErrorPage,
    InvalidPrice,
    MalformedResponse,
    MissingSymbol,
    ProviderError,
    RateLimited,
    UpstreamError,
)
from gateway.rates.http import describe_body, http_get, looks_like_html, require_ok
from gateway.rates.quotes import Pair, Quote, QuoteBatch, parse_price

log = structlog.get_logger("gateway.rates")

NAME = "kraken"
TICKER_PATH = "/0/public/Ticker"
_RATE_LIMIT_ERRORS = ("EAPI:Rate limit exceeded", "EGeneral:Too many requests")


@dataclass(frozen=True, slots=True)
class KrakenPair:
    """A pair to ask for: the name in the request, our pair, the result keys it may come back under."""

    request_name: str
    pair: Pair
    result_keys: tuple[str, ...]


DEFAULT_PAIRS: tuple[KrakenPair, ...] = (
    KrakenPair("XBTUSD", Pair("BTC", "USD"), ("XXBTZUSD", "XBTUSD")),
    KrakenPair("ETHUSD", Pair("ETH", "USD"), ("XETHZUSD", "ETHUSD")),
    KrakenPair("USDTUSD", Pair("USDT", "USD"), ("USDTZUSD", "USDTUSD")),
)


def parse_kraken_ticker(
    body: bytes,
    pairs: tuple[KrakenPair, ...],
    observed_at: datetime,
    provider: str = NAME,
) -> QuoteBatch:
    """Parse one Ticker answer into quotes for ``pairs``.

    Raises :class:`ErrorPage`, :class:`MalformedResponse`, :class:`UpstreamError`, :class:`RateLimited`,
    and :class:`MissingSymbol` or :class:`InvalidPrice` with ``partial`` holding the pairs that were fine.
    """
    if looks_like_html(body):
        raise ErrorPage(provider, f"expected JSON, got {describe_body(body)}")
    try:
        document: Any = json.loads(body)
    except ValueError:
        raise MalformedResponse(provider, f"not JSON (truncated?): {describe_body(body)}") from None
    if not isinstance(document, dict) or not isinstance(document.get("error"), list):
        raise MalformedResponse(provider, "expected an object with an 'error' list")
    errors = [str(entry) for entry in document["error"] if not str(entry).startswith("W")]
    warnings = [str(entry) for entry in document["error"] if str(entry).startswith("W")]
    if warnings:
        log.warning("rates.kraken_warning", warnings=warnings)
    if errors:
        if any(entry.startswith(_RATE_LIMIT_ERRORS) for entry in errors):
            raise RateLimited(provider, 200, None, "; ".join(errors))
        raise UpstreamError(provider, "; ".join(errors))
    result = document.get("result")
    if not isinstance(result, dict):
        raise MalformedResponse(provider, "no 'result' object")

    quotes: dict[Pair, Quote] = {}
    missing: list[str] = []
    invalid: InvalidPrice | None = None
    for wanted in pairs:
        ticker = next((result[key] for key in wanted.result_keys if key in result), None)
        if ticker is None:
            missing.append(wanted.request_name)
            continue
        last_trade = ticker.get("c") if isinstance(ticker, dict) else None
        if not isinstance(last_trade, list) or not last_trade:
            raise MalformedResponse(provider, f"{wanted.request_name}: no last-trade array 'c'")
        try:
            price = parse_price(provider, wanted.request_name, last_trade[0])
        except InvalidPrice as exc:
            invalid = invalid or exc
            continue
        quotes[wanted.pair] = Quote(wanted.pair, price, provider, wanted.request_name, observed_at)
    batch = QuoteBatch(provider, observed_at, quotes)
    error: ProviderError | None = MissingSymbol(provider, tuple(missing)) if missing else invalid
    if error is not None:
        error.partial = batch if quotes else None
        raise error
    return batch


class KrakenTicker:
    """Adapter for Kraken's public Ticker endpoint."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        clock: Clock,
        *,
        timeout_seconds: float = 5.0,
        pairs: tuple[KrakenPair, ...] = DEFAULT_PAIRS,
        name: str = NAME,
    ) -> None:
        self._session = session
        self._url = base_url.rstrip("/") + TICKER_PATH
        self._clock = clock
        self._timeout = timeout_seconds
        self._pairs = pairs
        self._name = name

    @property
    def name(self) -> str:
        return self._name

    async def fetch(self) -> QuoteBatch:
        answer = await http_get(
            self._session,
            self._name,
            self._url,
            params={"pair": ",".join(p.request_name for p in self._pairs)},
            timeout_seconds=self._timeout,
            now=self._clock.now(),
        )
        require_ok(self._name, answer)
        return parse_kraken_ticker(answer.body, self._pairs, self._clock.now(), self._name)
