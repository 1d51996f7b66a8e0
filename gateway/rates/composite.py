"""The tenge price of each asset from every provider at once, so one source going down does not stop checkout.

Providers quote pairs (BTC/USDT, BTC/USD, USDT/KZT, USD/KZT, ...). A *path* is a chain of quotes from an
asset to KZT whose prices multiply into KZT per unit; with the three providers the paths are::

    BTC  binance:BTCUSDT*USDTKZT              BTC→USDT→KZT, all Binance
         kraken:XBTUSD*nbk:USD                BTC→USD (Kraken) × USD→KZT (official)
         binance:BTCUSDT*kraken:USDTUSD*nbk:USD   BTC→USDT (Binance) × USDT→USD (Kraken) × USD→KZT
    ETH  the same three with ETHUSDT / ETHUSD
    USDT binance:USDTKZT                      USDT→KZT directly
         kraken:USDTUSD*nbk:USD               USDT→USD × USD→KZT

Paths are found, not listed: any chain of at most ``max_legs`` quotes (each read base → quote, never
inverted) from the asset to KZT counts, so another exchange plugged in later adds its paths by itself.

Rules, all evaluated at the ``now`` the caller passes (the moment an invoice locks its rate):

- freshness: a path is usable only if every leg is fresh: market quotes for ``max_crypto_age`` (60 s),
  official rates (the National Bank) for ``max_official_age`` (4 days, enough to cover a weekend plus a
  holiday);
- outliers: with three or more fresh paths, a path more than ``outlier_threshold`` (20%) away from the
  median of the *other* paths is discarded and logged; if that leaves nothing the sources disagree too much
  to price with, which is treated as no rate at all;
- the rate is the median of what is left, rounded half-even to ``RATE_QUANTUM`` KZT; ``sources`` names
  the paths used, ``observed_at`` is the oldest market observation among them (an official rate's date is
  days old by design and would say nothing about how recent the price is);
- no usable path: :class:`RatesUnavailable`, with Retry-After set to the refresher's next attempt.

Paths that share a leg are not independent: if Binance's BTC price alone is off, two of the three BTC paths
are off and the median follows them. The outlier rule guards against a single bad *path* (typically the thin
USDTKZT book), not against a single bad exchange with two paths.

Merchant spread: :meth:`CompositeRates.quote` lowers the KZT-per-unit rate by ``spread_bps``:
``rate × (1 − bps/10000)``, rounded down. The invoice's crypto amount is ``price / rate`` rounded up, so a
lower rate asks the customer for slightly more coin: the spread is the merchant's cushion against the price
moving while the invoice is open and against conversion costs, and it can never make the merchant receive
less than the mid rate's value. (Raising the rate would do the opposite: the customer would pay less coin
than the tenge price is worth.)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import ROUND_DOWN, ROUND_HALF_EVEN, Decimal, localcontext
from typing import Any

import structlog

from gateway.clock import isoformat
from gateway.money import Asset
from gateway.rates.base import AssetRate, RatesUnavailable
from gateway.rates.quotes import Pair, Quote, QuoteBatch

log = structlog.get_logger("gateway.rates")

TARGET = "KZT"
RATE_QUANTUM = Decimal("0.000001")  # KZT per unit: 1e-9 relative even for USDT, far below any price move
BPS = 10_000
DEFAULT_MAX_CRYPTO_AGE = timedelta(seconds=60)
DEFAULT_MAX_OFFICIAL_AGE = timedelta(days=4)
DEFAULT_OUTLIER_THRESHOLD = Decimal("0.20")
_PRECISION = 50  # enough for exact products of three provider prices


def path_label(legs: Sequence[Quote]) -> str:
    """``binance:BTCUSDT*USDTKZT``, ``kraken:XBTUSD*nbk:USD``: legs joined by ``*``, the source named once
    for consecutive legs from the same provider."""
    parts: list[str] = []
    previous: str | None = None
    for leg in legs:
        parts.append(leg.symbol if leg.source == previous else leg.label)
        previous = leg.source
    return "*".join(parts)


def median(values: Sequence[Decimal]) -> Decimal:
    """The middle value, or the mean of the two middle ones; exact in Decimal."""
    if not values:
        raise ValueError("median of nothing")
    ordered = sorted(values)
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[middle]
    with localcontext() as ctx:
        ctx.prec = _PRECISION
        return (ordered[middle - 1] + ordered[middle]) / 2


@dataclass(frozen=True, slots=True)
class PathValue:
    """One derivation of an asset's KZT price: the legs, their product, and how recent it is."""

    asset: Asset
    legs: tuple[Quote, ...]
    kzt_per_unit: Decimal
    observed_at: datetime

    @property
    def label(self) -> str:
        return path_label(self.legs)


@dataclass(frozen=True, slots=True)
class Derivation:
    """How an asset's rate came about (or why there is none): for logs, the health view and tests."""

    asset: Asset
    rate: AssetRate | None
    used: tuple[PathValue, ...]
    outliers: tuple[PathValue, ...]
    stale: tuple[PathValue, ...]
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class QuotedRate:
    """A rate with a merchant's spread applied: what an invoice locks.

    ``kzt_per_unit`` includes the spread (it is the rate to compute the amount due with); ``mid_kzt_per_unit``
    is the composite rate before it.
    """

    asset: Asset
    kzt_per_unit: Decimal
    mid_kzt_per_unit: Decimal
    spread_bps: int
    sources: tuple[str, ...]
    observed_at: datetime

    def as_asset_rate(self) -> AssetRate:
        return AssetRate(self.asset, self.kzt_per_unit, self.sources, self.observed_at)


@dataclass(frozen=True, slots=True)
class RatesSnapshot:
    """Every asset's current rate (or why it has none) at one moment, for ``GET /v1/rates`` and history."""

    taken_at: datetime
    rates: Mapping[Asset, AssetRate]
    unavailable: Mapping[Asset, str]

    def as_dict(self) -> dict[str, Any]:
        return {
            "taken_at": isoformat(self.taken_at),
            "rates": {
                asset.value: {
                    "kzt_per_unit": str(rate.kzt_per_unit),
                    "sources": list(rate.sources),
                    "observed_at": isoformat(rate.observed_at),
                }
                for asset, rate in self.rates.items()
            },
            "unavailable": {asset.value: reason for asset, reason in self.unavailable.items()},
        }


def apply_spread(kzt_per_unit: Decimal, spread_bps: int) -> Decimal:
    """The rate lowered by ``spread_bps`` basis points, rounded down (see the module docstring for why)."""
    if isinstance(spread_bps, bool) or not isinstance(spread_bps, int) or not 0 <= spread_bps < BPS:
        raise ValueError(f"spread_bps must be an integer from 0 to {BPS - 1}, got {spread_bps!r}")
    with localcontext() as ctx:
        ctx.prec = _PRECISION
        spread = kzt_per_unit * (BPS - spread_bps) / BPS
        return spread.quantize(RATE_QUANTUM, rounding=ROUND_DOWN)


class CompositeRates:
    """A :class:`~gateway.rates.base.RateSource` over the latest quotes of every provider.

    The refresher feeds it (:meth:`update`); invoice creation reads it synchronously (:meth:`current`,
    :meth:`quote`), which costs a few Decimal multiplications and never waits for the network.
    """

    def __init__(
        self,
        *,
        max_crypto_age: timedelta = DEFAULT_MAX_CRYPTO_AGE,
        max_official_age: timedelta = DEFAULT_MAX_OFFICIAL_AGE,
        outlier_threshold: Decimal = DEFAULT_OUTLIER_THRESHOLD,
        max_legs: int = 3,
        retry_after_seconds: int = 30,
        assets: Iterable[Asset] = tuple(Asset),
    ) -> None:
        if outlier_threshold <= 0:
            raise ValueError("outlier_threshold must be positive")
        self._max_crypto_age = max_crypto_age
        self._max_official_age = max_official_age
        self._threshold = outlier_threshold
        self._max_legs = max_legs
        self._default_retry_after = retry_after_seconds
        self._assets = tuple(assets)
        self._quotes: dict[tuple[str, Pair], Quote] = {}
        self._next_refresh: datetime | None = None
        self._logged_outliers: set[tuple[Asset, str, Decimal]] = set()

    # -- feeding ---------------------------------------------------------------------------------------

    def update(self, batch: QuoteBatch) -> None:
        """Take a provider's quotes; a quote older than the one held for the same pair is ignored."""
        for quote in batch.quotes.values():
            key = (quote.source, quote.pair)
            held = self._quotes.get(key)
            if held is None or quote.observed_at >= held.observed_at:
                self._quotes[key] = quote
        self._logged_outliers.clear()

    def set_next_refresh(self, at: datetime | None) -> None:
        """When new quotes may next arrive; refusals carry the wait until then as Retry-After."""
        self._next_refresh = at

    def quotes(self) -> tuple[Quote, ...]:
        """Every quote held, fresh or not."""
        return tuple(self._quotes.values())

    def forget(self) -> None:
        """Drop every quote held (a process that stops polling the providers must not price from them)."""
        self._quotes.clear()
        self._next_refresh = None
        self._logged_outliers.clear()

    # -- reading ---------------------------------------------------------------------------------------

    def current(self, asset: Asset, now: datetime) -> AssetRate:
        """The KZT rate to lock now; :class:`RatesUnavailable` if no fresh path agrees."""
        derivation = self.explain(asset, now)
        if derivation.rate is None:
            raise RatesUnavailable(asset, self.retry_after_seconds(now))
        return derivation.rate

    def quote(self, asset: Asset, now: datetime, spread_bps: int = 0) -> QuotedRate:
        """:meth:`current` with a merchant's spread applied (the rate lowered, so the customer pays more coin)."""
        rate = self.current(asset, now)
        return QuotedRate(
            asset,
            apply_spread(rate.kzt_per_unit, spread_bps),
            rate.kzt_per_unit,
            spread_bps,
            rate.sources,
            rate.observed_at,
        )

    def snapshot(self, now: datetime) -> RatesSnapshot:
        rates: dict[Asset, AssetRate] = {}
        unavailable: dict[Asset, str] = {}
        for asset in self._assets:
            derivation = self.explain(asset, now)
            if derivation.rate is None:
                unavailable[asset] = derivation.reason or "no rate"
            else:
                rates[asset] = derivation.rate
        return RatesSnapshot(now, rates, unavailable)

    def retry_after_seconds(self, now: datetime) -> int:
        if self._next_refresh is None:
            return self._default_retry_after
        return max(1, math.ceil((self._next_refresh - now).total_seconds()))

    def explain(self, asset: Asset, now: datetime) -> Derivation:
        """Every path for ``asset``, split into used, outliers and stale, and the resulting rate."""
        fresh: list[PathValue] = []
        stale: list[PathValue] = []
        for legs in self._paths(asset.value):
            value = self._value(asset, legs)
            (fresh if all(self._is_fresh(leg, now) for leg in legs) else stale).append(value)
        fresh.sort(key=lambda p: p.label)
        if not fresh:
            reason = "all paths are stale" if stale else "no path to KZT"
            return Derivation(asset, None, (), (), tuple(stale), reason)

        used, discarded = self._discard_outliers(fresh)
        for path, others in discarded:
            self._log_outlier(asset, path, others)
        outliers = [path for path, _ in discarded]
        if not used:
            reason = "the sources disagree by more than the outlier threshold"
            log.warning("rates.no_consensus", asset=asset.value, paths=[p.label for p in fresh])
            return Derivation(asset, None, (), tuple(outliers), tuple(stale), reason)

        with localcontext() as ctx:
            ctx.prec = _PRECISION
            mid = median([p.kzt_per_unit for p in used]).quantize(RATE_QUANTUM, rounding=ROUND_HALF_EVEN)
        rate = AssetRate(asset, mid, tuple(p.label for p in used), min(p.observed_at for p in used))
        return Derivation(asset, rate, tuple(used), tuple(outliers), tuple(stale))

    # -- internals -------------------------------------------------------------------------------------

    def _is_fresh(self, quote: Quote, now: datetime) -> bool:
        limit = self._max_official_age if quote.official else self._max_crypto_age
        return now - quote.observed_at <= limit

    def _paths(self, start: str) -> list[tuple[Quote, ...]]:
        by_base: dict[str, list[Quote]] = {}
        for quote in self._quotes.values():
            by_base.setdefault(quote.pair.base, []).append(quote)
        found: list[tuple[Quote, ...]] = []

        def walk(currency: str, legs: tuple[Quote, ...], seen: frozenset[str]) -> None:
            if currency == TARGET:
                found.append(legs)
                return
            if len(legs) == self._max_legs:
                return
            for quote in by_base.get(currency, ()):
                if quote.pair.quote not in seen:
                    walk(quote.pair.quote, (*legs, quote), seen | {quote.pair.quote})

        walk(start, (), frozenset({start}))
        return found

    @staticmethod
    def _value(asset: Asset, legs: tuple[Quote, ...]) -> PathValue:
        with localcontext() as ctx:
            ctx.prec = _PRECISION
            product = Decimal(1)
            for leg in legs:
                product *= leg.price
        market = [leg.observed_at for leg in legs if not leg.official]
        observed = min(market) if market else min(leg.observed_at for leg in legs)
        return PathValue(asset, legs, product, observed)

    def _discard_outliers(
        self, fresh: list[PathValue]
    ) -> tuple[list[PathValue], list[tuple[PathValue, Decimal]]]:
        """Leave-one-out: each path against the median of all the others (3+ paths only).

        Returns the paths kept and the outliers, each with the median it was judged against. Every path is
        judged against the full set, so the order of the paths cannot change the outcome.
        """
        if len(fresh) < 3:
            return list(fresh), []
        used: list[PathValue] = []
        outliers: list[tuple[PathValue, Decimal]] = []
        with localcontext() as ctx:
            ctx.prec = _PRECISION
            for i, path in enumerate(fresh):
                others = median([p.kzt_per_unit for j, p in enumerate(fresh) if j != i])
                if abs(path.kzt_per_unit - others) > self._threshold * others:
                    outliers.append((path, others))
                else:
                    used.append(path)
        return used, outliers

    def _log_outlier(self, asset: Asset, path: PathValue, others: Decimal) -> None:
        key = (asset, path.label, path.kzt_per_unit)
        if key in self._logged_outliers:
            return
        self._logged_outliers.add(key)
        log.warning(
            "rates.outlier_discarded",
            asset=asset.value,
            path=path.label,
            kzt_per_unit=str(path.kzt_per_unit),
            median_of_others=str(others),
        )
