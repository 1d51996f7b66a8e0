"""Tenge values for the wallet's screens, from the gateway's own rates (``GET /v1/rates``).

The wallet never invents a rate: it shows a tenge value only when a gateway answered one, and then the
gateway's current rate (the same table quotes are locked from), rounded the gateway's way (half-even to a
tiyn, :func:`gateway.money.round_half_even_tiyn`). The merchant API puts ``/v1/rates`` behind an API key,
so the caller passes one if the gateway asks for it; without it the wallet shows crypto amounts only.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any, Final

import aiohttp

from gateway.money import format_tiyn, round_half_even_tiyn, value_in_tiyn_exact

__all__ = ["GATEWAY_KEY_ENV", "RatesUnavailable", "gateway_rates", "kzt_text"]

GATEWAY_KEY_ENV: Final = "CRYPTOCITY_GATEWAY_API_KEY"
_TIMEOUT_SECONDS: Final = 10.0


class RatesUnavailable(Exception):
    """The gateway gave no usable rates (unreachable, refused, or an answer without them)."""


async def gateway_rates(base_url: str, api_key: str | None = None) -> dict[str, Decimal]:
    """KZT per whole unit of each asset the gateway prices now (``{"BTC": Decimal(...), ...}``)."""
    url = base_url.rstrip("/") + "/v1/rates"
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=_TIMEOUT_SECONDS)) as session,
            session.get(url, headers=headers, allow_redirects=False) as response,
        ):
            if response.status == 401:
                raise RatesUnavailable(
                    f"{url} needs an API key (pass --gateway-key or set {GATEWAY_KEY_ENV})"
                    if not api_key
                    else f"{url} refused the API key"
                )
            if response.status != 200:
                raise RatesUnavailable(f"{url} answered HTTP {response.status}")
            body: Any = await response.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        raise RatesUnavailable(f"cannot read {url}: {type(exc).__name__}: {exc}") from None
    table = body.get("rates") if isinstance(body, dict) else None
    if not isinstance(table, dict):
        raise RatesUnavailable(f"{url} answered no rates table")
    rates: dict[str, Decimal] = {}
    for asset, entry in table.items():
        try:
            rate = Decimal(str(entry["kzt_per_unit"]))
        except (TypeError, KeyError, InvalidOperation):
            continue
        if rate.is_finite() and rate > 0:
            rates[str(asset)] = rate
    return rates


def kzt_text(amount_minor: int, rate_kzt_per_unit: Decimal, decimals: int) -> str:
    """``"12500.00 KZT"``: the tenge value of ``amount_minor`` at the rate, half-even to a tiyn."""
    tiyn = round_half_even_tiyn(value_in_tiyn_exact(amount_minor, rate_kzt_per_unit, decimals))
    return f"{format_tiyn(tiyn)} KZT"
