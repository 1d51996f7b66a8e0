"""Rates as configured: the fixed table, or the live providers behind a composite and its refresher.

The app builds one of these at start-up. Invoice creation reads ``source`` (a RateSource, synchronous and
never waiting for the network); ``GET /v1/rates`` and ``cryptocity rates`` show ``view()``: the current
KZT price of every asset with the sources behind it, and each provider's health.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import aiohttp

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


class ConfiguredRates:
    def __init__(
        self,
        config: RatesConfig,
        clock: Clock,
        *,
        source: RateSource | None = None,
        history: RateHistory | None = None,
    ) -> None:
        self._config = config
        self._clock = clock
        self.history = history
        self._session: aiohttp.ClientSession | None = None
        self.refresher: RateRefresher | None = None
        self.source: RateSource
        if source is not None:  # given by the caller (tests, embedding): shown as it is, nothing polled
            self.source = source
        elif config.fixed.enabled:
            self.source = FixedRates(config.fixed.kzt_per_unit)
        else:
            self.source = CompositeRates(
                max_crypto_age=timedelta(seconds=config.max_crypto_age_seconds),
                max_official_age=timedelta(days=config.max_official_age_days),
                retry_after_seconds=max(1, round(config.refresh_seconds)),
            )

    async def start(self) -> None:
        """Start polling the enabled providers (live rates), or record the fixed table once in the history."""
        if isinstance(self.source, FixedRates) and self.history is not None:
            now = self._clock.now()
            await self.history.record_rates(self.source.current(asset, now) for asset in self.source.assets)
        if not isinstance(self.source, CompositeRates) or self.refresher is not None:
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
            self.source,
            clock,
            interval_seconds=cfg.refresh_seconds,
            on_snapshot=self.history.record if self.history is not None else None,
        )
        self.refresher.start()

    async def stop(self) -> None:
        if self.refresher is not None:
            await self.refresher.stop()
        if self._session is not None:
            await self._session.close()

    def view(self) -> dict[str, Any]:
        now = self._clock.now()
        if self.refresher is not None:
            return {
                "mode": "live",
                **self.refresher.snapshot().as_dict(),
                "providers": {name: health.as_dict() for name, health in self.refresher.health().items()},
            }
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
        mode = "fixed" if isinstance(self.source, FixedRates) else "custom"
        return {
            "mode": mode,
            "taken_at": isoformat(now),
            "rates": rates,
            "unavailable": unavailable,
            "providers": {},
        }
