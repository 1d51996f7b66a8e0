"""The simulated rates provider: a seeded random walk of KZT prices, one point per virtual minute, and the
outage windows of the plan, when it answers nothing (the gateway then refuses new quotes with 503).

The gateway reads it through its ``RateSource`` interface, so quotes, spreads and the ledger see exactly
what a live provider would have given. Every price quoted is kept for the report's rate series.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from datetime import datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal

from gateway.money import Asset
from gateway.rates.base import AssetRate, RatesUnavailable
from sandbox.simulation.plan import Window

START_PRICES = {
    Asset.BTC: Decimal("48450000.00"),
    Asset.ETH: Decimal("1683000.00"),
    Asset.USDT: Decimal("510.00"),
}
# Volatility per virtual minute (log-price standard deviation); the stablecoin barely moves.
MINUTE_SIGMA = {Asset.BTC: 0.0009, Asset.ETH: 0.0012, Asset.USDT: 0.00005}


class SimulatedMarket:
    def __init__(self, seed: int, start: datetime, minutes: int, outages: Sequence[Window]) -> None:
        rng = random.Random(seed * 7919 + 17)
        self.start = start
        self.outages = list(outages)
        self.series: dict[Asset, list[Decimal]] = {}
        for asset, price in START_PRICES.items():
            points, level = [], 0.0
            for _ in range(minutes + 1):
                points.append(
                    (price * Decimal(str(math.exp(level)))).quantize(Decimal("0.01"), ROUND_HALF_EVEN)
                )
                level += rng.gauss(0.0, MINUTE_SIGMA[asset])
            self.series[asset] = points
        self.refused = 0

    def _minute(self, now: datetime) -> int:
        return max(0, int((now - self.start) / timedelta(minutes=1)))

    def down(self, now: datetime) -> bool:
        second = int((now - self.start).total_seconds())
        return any(w.contains(second) for w in self.outages)

    def current(self, asset: Asset, now: datetime) -> AssetRate:
        if self.down(now):
            self.refused += 1
            raise RatesUnavailable(asset, retry_after_seconds=60)  # the provider is in an outage window
        points = self.series[asset]
        minute = min(self._minute(now), len(points) - 1)
        observed = self.start + timedelta(minutes=minute)
        return AssetRate(asset, points[minute], ("simulated-market",), observed)

    def hourly(self, asset: Asset) -> list[tuple[int, str]]:
        """(virtual hour, price) at each hour, for the report."""
        points = self.series[asset]
        return [(minute // 60, str(points[minute])) for minute in range(0, len(points), 60)]
