"""Exchange rates in KZT per whole coin.

``FixedRates`` serves tests and offline runs. For live rates, three provider adapters (the National Bank of
Kazakhstan, Binance, Kraken) are polled in the background by ``RateRefresher`` and combined by
``CompositeRates``, the ``RateSource`` invoice creation reads: the median over every fresh derivation
path, so that one source going down never stops checkout.
"""

from gateway.rates.base import AssetRate, RateSource, RatesUnavailable
from gateway.rates.binance import BinanceTicker
from gateway.rates.composite import CompositeRates, Derivation, QuotedRate, RatesSnapshot, apply_spread
from gateway.rates.errors import (
    ErrorPage,
    InvalidPrice,
    MalformedResponse,
    MissingSymbol,
    NoPublication,
    ProviderError,
    ProviderHttpError,
    ProviderTimeout,
    ProviderUnreachable,
    RateLimited,
    UpstreamError,
)
from gateway.rates.fixed import FixedRates
from gateway.rates.kraken import KrakenTicker
from gateway.rates.nationalbank import NationalBankRates
from gateway.rates.quotes import Pair, Quote, QuoteBatch, RateProvider
from gateway.rates.refresher import ProviderHealth, RateRefresher

__all__ = [
    "AssetRate",
    "BinanceTicker",
    "CompositeRates",
    "Derivation",
    "ErrorPage",
    "FixedRates",
    "InvalidPrice",
    "KrakenTicker",
    "MalformedResponse",
    "MissingSymbol",
    "NationalBankRates",
    "NoPublication",
    "Pair",
    "ProviderError",
    "ProviderHealth",
    "ProviderHttpError",
    "ProviderTimeout",
    "ProviderUnreachable",
    "Quote",
    "QuoteBatch",
    "QuotedRate",
    "RateLimited",
    "RateProvider",
    "RateRefresher",
    "RateSource",
    "RatesSnapshot",
    "RatesUnavailable",
    "UpstreamError",
    "apply_spread",
]
