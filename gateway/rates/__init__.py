"""Exchange rates in KZT per whole coin. Providers come later; the fixed source serves tests and offline runs."""

from gateway.rates.base import AssetRate, RateSource, RatesUnavailable
from gateway.rates.fixed import FixedRates

__all__ = ["AssetRate", "FixedRates", "RateSource", "RatesUnavailable"]
