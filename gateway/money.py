"""Money as integers, rates as Decimal, and the one place where rounding rules live.

Every amount in the gateway is an integer count of the smallest unit of its currency: tiyn for tenge
(1 KZT = 100 tiyn), satoshi for BTC, wei for ETH and token base units for ERC-20 tokens. Decimal strings
exist only at the edges (API bodies, payment URIs) and are produced and parsed here, so no float and no
exponent notation ever touches an amount.

Rounding rules (written down once):
- the crypto amount due for a tenge price rounds UP to the asset's smallest unit, so the merchant is never
  short;
- tenge equivalents of crypto amounts round HALF-EVEN to a tiyn.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal, localcontext
from enum import StrEnum
from fractions import Fraction

TIYN_PER_KZT = 100
KZT_DECIMALS = 2

_DECIMAL_STRING = re.compile(r"^(0|[1-9][0-9]*)(\.[0-9]+)?$")


class Asset(StrEnum):
    """Assets an invoice can be paid in. The value is the API's spelling."""

    BTC = "BTC"
    ETH = "ETH"
    USDT = "USDT"


class Chain(StrEnum):
    BITCOIN = "bitcoin"
    ETHEREUM = "ethereum"


@dataclass(frozen=True, slots=True)
class AssetInfo:
    asset: Asset
    chain: Chain
    decimals: int
    unit_name: str  # name of the smallest unit, for docs and API field descriptions


ASSETS: dict[Asset, AssetInfo] = {
    Asset.BTC: AssetInfo(Asset.BTC, Chain.BITCOIN, 8, "sat"),
    Asset.ETH: AssetInfo(Asset.ETH, Chain.ETHEREUM, 18, "wei"),
    Asset.USDT: AssetInfo(Asset.USDT, Chain.ETHEREUM, 6, "token base unit"),
}


class AmountError(ValueError):
    """A decimal amount string that is not a valid amount (the message says why)."""


def parse_decimal_amount(text: str, decimals: int) -> int:
    """Parse a plain non-negative decimal string (``"12500.5"``) into integer minor units.

    Refuses exponent notation, signs, spaces and more fractional digits than the unit allows, because an
    amount that would need rounding is an input error, not something to guess about.
    """
    if not isinstance(text, str):
        raise AmountError('must be a decimal string such as "12500.00"')
    if not _DECIMAL_STRING.match(text):
        raise AmountError(f'{text!r} is not a plain decimal number such as "12500.00"')
    whole, _, frac = text.partition(".")
    if len(frac) > decimals:
        raise AmountError(f"{text!r} has more than {decimals} decimal places")
    scale: int = 10**decimals
    return int(whole) * scale + int(frac.ljust(decimals, "0") or "0")


def format_minor_units(amount_minor: int, decimals: int, *, min_decimals: int | None = None) -> str:
    """Format integer minor units as a plain decimal string, never in exponent notation.

    Trailing zeros are trimmed down to ``min_decimals`` (default: all of them), so 150000 sat with 8
    decimals is ``"0.0015"`` while tenge keeps two places (``"12500.00"``).
    """
    if amount_minor < 0:
        raise AmountError("amounts are never negative")
    if decimals == 0:
        return str(amount_minor)
    whole, frac = divmod(amount_minor, 10**decimals)
    frac_text = str(frac).rjust(decimals, "0")
    trimmed = frac_text.rstrip("0")
    if min_decimals is not None and len(trimmed) < min_decimals:
        trimmed = frac_text[:min_decimals]
    return f"{whole}.{trimmed}" if trimmed else str(whole)


def format_tiyn(amount_tiyn: int) -> str:
    """Tenge with exactly two decimals, as the API shows prices."""
    return format_minor_units(amount_tiyn, KZT_DECIMALS, min_decimals=KZT_DECIMALS)


@functools.lru_cache(maxsize=1024)
def rate_per_minor_unit(rate_kzt_per_unit: Decimal, decimals: int) -> Fraction:
    """Tiyn per smallest unit of an asset, exactly, from a KZT-per-whole-unit rate."""
    scale: int = 10**decimals
    return Fraction(rate_kzt_per_unit) * TIYN_PER_KZT / scale


def crypto_due(price_tiyn: int, rate_kzt_per_unit: Decimal, decimals: int) -> int:
    """Smallest-unit amount that is worth at least ``price_tiyn`` at the rate (rounds UP)."""
    if rate_kzt_per_unit <= 0:
        raise AmountError("a rate must be positive")
    rate = rate_per_minor_unit(rate_kzt_per_unit, decimals)
    # ceil(price / rate) in integers: price * denominator / numerator, rounded up
    return -(-(price_tiyn * rate.denominator) // rate.numerator)


def value_in_tiyn_exact(amount_minor: int, rate_kzt_per_unit: Decimal, decimals: int) -> Fraction:
    """Exact tenge value (in tiyn, as a fraction) of a crypto amount at a rate; compare with this."""
    value: Fraction = rate_per_minor_unit(rate_kzt_per_unit, decimals) * amount_minor
    return value


def round_half_even_tiyn(value_tiyn: Fraction) -> int:
    """Round an exact tiyn value half-even to a whole tiyn (the booking rule for tenge equivalents)."""
    with localcontext() as ctx:
        ctx.prec = 80
        quotient = Decimal(value_tiyn.numerator) / Decimal(value_tiyn.denominator)
        return int(quotient.to_integral_value(rounding=ROUND_HALF_EVEN))
