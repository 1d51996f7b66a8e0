"""Rates fixed in config.toml: deterministic quotes for tests, demos and offline runs."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal

from gateway.money import Asset
from gateway.rates.base import AssetRate, RatesUnavailable


class FixedRates:
    source_name = "fixed"

    def __init__(self, kzt_per_unit: Mapping[Asset, Decimal]) -> None:
        self._rates = dict(kzt_per_unit)

    @property
    def assets(self) -> tuple[Asset, ...]:
        return tuple(self._rates)

    def current(self, asset: Asset, now: datetime) -> AssetRate:
        rate = self._rates.get(asset)
        if rate is None:
            raise RatesUnavailable(asset)
        return AssetRate(asset, rate, (self.source_name,), now)
