"""Rates as configured: the fixed table, or the live providers behind a composite and its refresher.

The app builds one of these at start-up. Invoice creation reads ``source`` (a RateSource, synchronous and
never waiting for the network); ``GET /v1/rates`` and ``cryptocity rates`` show ``view()``: the current
KZT price of every asset with the sources behind it, and each provider's health.

On a store shared by several processes (``shared_store``), live rates are fetched by the leader only:
:meth:`start_leading` / :meth:`stop_leading` run the refresher (a leader job, gateway/cluster/), while
:meth:`start_following` keeps the rates the leader recorded at hand on every process (stored.py), and
``source`` prefers the local composite and falls back to those. :meth:`start` does both, as a single
process does.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import aiohttp
import structlog

from gateway.clock import Clock, isoformat
from gateway.config import RatesConfig
from gateway.money import Asset
from gateway.rates.base import RateSource, RatesUnavailable
from gateway.rates.binance import BinanceTicker
from gateway.rates.composite import CompositeRates
from gateway.rates.fixed import FixedRates
from gateway.rates.history import RateHistory
from gateway.rates.kraken import KrakenTicker
from gateway.rates.nationalbank import NationalBankRates
from gateway.rates.quotes import RateProvider
from gateway.rates.refresher import RateRefresher
from gateway.rates.stored import SharedRates, StoredRates
from gateway.store import Store

log = structlog.get_logger("gateway.rates")


class ConfiguredRates:
    def __init__(
        self,
        config: RatesConfig,
        clock: Clock,
        *,
        source: RateSource | None = None,
        history: RateHistory | None = None,
        shared_store: Store | None = None,
        stored_poll_seconds: float = 2.0,
    ) -> None:
        self._config = config
        self._clock = clock
        self.history = history
        self._session: aiohttp.ClientSession | None = None
        self.refresher: RateRefresher | None = None
        self.composite: CompositeRates | None = None  # live rates: this process's own quotes
        self.stored: StoredRates | None = None  # live rates on a shared store: what the leader recorded
        self.source: RateSource
        retry_after = max(1, round(config.refresh_seconds))
        if source is not None:  # given by the caller (tests, embedding): shown as it is, nothing polled
            self.source = source
        elif config.fixed.enabled:
            self.source = FixedRates(config.fixed.kzt_per_unit)
        else:
            self.composite = CompositeRates(
                max_crypto_age=timedelta(seconds=config.max_crypto_age_seconds),
                max_official_age=timedelta(days=config.max_official_age_days),
                retry_after_seconds=retry_after,
            )
            self.source = self.composite
            if shared_store is not None:
                self.stored = StoredRates(
                    shared_store,
                    max_age=timedelta(seconds=config.max_crypto_age_seconds),
                    poll_seconds=stored_poll_seconds,
                    retry_after_seconds=retry_after,
                )
                self.source = SharedRates(self.composite, self.stored, self._polling_providers)

    def _polling_providers(self) -> bool:
        """This process fetches rates itself (it leads) and has quotes: its composite decides alone."""
        return self.refresher is not None and self.composite is not None and bool(self.composite.quotes())

    async def start(self) -> None:
        """Everything a single process runs: the stored rates (if shared) and the leader's part."""
        await self.start_following()
        await self.start_leading()

    async def start_following(self) -> None:
        """Keep the rates the leader recorded at hand (live rates on a shared store); else nothing."""
        if self.stored is None:
            return
        try:
            await self.stored.load()
        except Exception as exc:  # the poller retries; until then this process has no rate
            log.warning("rates.store_read_failed", error=f"{type(exc).__name__}: {exc}")
        self.stored.start()

    async def start_leading(self) -> None:
        """Start polling the enabled providers (live rates), or record the fixed table once in the history."""
        if isinstance(self.source, FixedRates) and self.history is not None:
            now = self._clock.now()
            await self.history.record_rates(self.source.current(asset, now) for asset in self.source.assets)
        if self.composite is None or self.refresher is not None:
            return
        self._session = aiohttp.ClientSession()
        cfg, session, clock = self._config, self._session, self._clock
        providers: list[RateProvider] = []
        if cfg.nbk.enabled:
            providers.append(
                NationalBankRates(session, cfg.nbk.base_url, clock, timeout_seconds=cfg.nbk.timeout_seconds)
            )
        if cfg.binance.enabled:
            providers.append(
                BinanceTicker(
                    session, cfg.binance.base_url, clock, timeout_seconds=cfg.binance.timeout_seconds
                )
            )
        if cfg.kraken.enabled:
            providers.append(
                KrakenTicker(session, cfg.kraken.base_url, clock, timeout_seconds=cfg.kraken.timeout_seconds)
            )
        self.refresher = RateRefresher(
            providers,
            self.composite,
            clock,
            interval_seconds=cfg.refresh_seconds,
            on_snapshot=self.history.record if self.history is not None else None,
        )
        self.refresher.start()

    async def stop_leading(self) -> None:
        """Stop polling the providers (this process no longer leads, or is shutting down)."""
        refresher, self.refresher = self.refresher, None
        if refresher is not None:
            await refresher.stop()
        session, self._session = self._session, None
        if session is not None:
            await session.close()
        if refresher is not None and self.composite is not None:
            self.composite.forget()  # a follower from now on: it prices from what the leader records

    async def stop(self) -> None:
        await self.stop_leading()
        if self.stored is not None:
            await self.stored.stop()

    def view(self) -> dict[str, Any]:
        now = self._clock.now()
        if self.refresher is not None:
            return {
                "mode": "live",
                **self.refresher.snapshot().as_dict(),
                "providers": {name: health.as_dict() for name, health in self.refresher.health().items()},
            }
        if self.stored is not None:  # a follower: the leader's recorded rates; the leader has the providers
            return {"mode": "live", "fed_by": "leader", **self._rates_view(now), "providers": {}}
        mode = "fixed" if isinstance(self.source, FixedRates) else "custom"
        return {"mode": mode, **self._rates_view(now), "providers": {}}

    def _rates_view(self, now: datetime) -> dict[str, Any]:
        rates: dict[str, Any] = {}
        unavailable: dict[str, str] = {}
        for asset in Asset:
            try:
                rate = self.source.current(asset, now)
            except RatesUnavailable as exc:
                unavailable[asset.value] = str(exc)
                continue
            rates[asset.value] = {
                "kzt_per_unit": str(rate.kzt_per_unit),
                "sources": list(rate.sources),
                "observed_at": isoformat(rate.observed_at),
            }
        return {"taken_at": isoformat(now), "rates": rates, "unavailable": unavailable}
