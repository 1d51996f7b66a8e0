"""What invoice creation needs from rates: the current KZT price of an asset, or a clear refusal."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Protocol

from gateway.money import Asset


@dataclass(frozen=True, slots=True)
class AssetRate:
    asset: Asset
    kzt_per_unit: Decimal
    sources: tuple[str, ...]
    observed_at: datetime


class RatesUnavailable(Exception):
    """No fresh rate for an asset; invoice creation answers 503 with Retry-After."""

    def __init__(self, asset: Asset, retry_after_seconds: int = 30) -> None:
        super().__init__(f"no fresh exchange rate for {asset.value}")
        self.asset = asset
        self.retry_after_seconds = retry_after_seconds


class RateSource(Protocol):
    def current(self, asset: Asset, now: datetime) -> AssetRate:
        """The rate to lock now; raises RatesUnavailable if there is none fresh enough."""
        ...
