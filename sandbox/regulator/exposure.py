"""The pilot's open crypto position: what sits on invoice addresses, valued now and at the locked rates.

This is the figure a state reserve of digital assets would start from. For each asset:

- ``on_addresses_minor``: every payment received on invoice addresses that the chain still shows (not
  dropped by a reorg or double spend): accepted, held and refund-ordered alike, because the coins are there
  until the merchant's wallet moves them;
- ``locked_value_tiyn``: the same coins at each invoice's locked rate (what the sandbox judged them worth);
- ``booked_tiyn``: the tenge the digital-tenge ledger booked against them (minus ``clearing:<ASSET>``:
  settled invoices, holds and refunds payable); payments of invoices not settled yet are not booked;
- ``current_value_tiyn`` at the current rate, and ``unrealised_fx_tiyn`` = current − locked value.

Spends from invoice addresses (the merchant sweeping its coins) are not followed by the watchers yet, so
the position is what was received, not what is still held there: the guide says so.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from gateway.clock import isoformat
from gateway.money import ASSETS, Asset, round_half_even_tiyn, value_in_tiyn_exact
from gateway.rates import RateSource, RatesUnavailable
from gateway.store import Tx
from sandbox.ledger import store as ledger
from sandbox.ledger.model import clearing_account


async def exposure(tx: Tx, rates: RateSource, now: datetime) -> dict[str, Any]:
    rows = await tx.fetchall(
        "SELECT p.asset, p.amount_minor, s.value_tiyn FROM payments p"
        " LEFT JOIN sandbox_payments s ON s.chain = p.chain AND s.payment_key = p.payment_key"
        " WHERE p.status != 'dropped'"
    )
    received: dict[Asset, int] = dict.fromkeys(Asset, 0)
    locked: dict[Asset, int] = dict.fromkeys(Asset, 0)
    for row in rows:
        asset = Asset(row["asset"])
        received[asset] += int(row["amount_minor"])
        locked[asset] += int(row["value_tiyn"] or 0)
    assets: dict[str, Any] = {}
    totals = {"locked_value_tiyn": 0, "booked_tiyn": 0, "current_value_tiyn": 0}
    for asset in Asset:
        booked = -await ledger.balance(tx, clearing_account(asset))
        decimals = ASSETS[asset].decimals
        try:
            rate = rates.current(asset, now)
        except RatesUnavailable:
            rate = None
        current = (
            round_half_even_tiyn(value_in_tiyn_exact(received[asset], rate.kzt_per_unit, decimals))
            if rate is not None
            else None
        )
        assets[asset.value] = {
            "on_addresses_minor": str(received[asset]),
            "decimals": decimals,
            "locked_value_tiyn": locked[asset],
            "booked_tiyn": booked,
            "current_rate_kzt": str(rate.kzt_per_unit) if rate is not None else None,
            "current_value_tiyn": current,
            "unrealised_fx_tiyn": current - locked[asset] if current is not None else None,
        }
        totals["locked_value_tiyn"] += locked[asset]
        totals["booked_tiyn"] += booked
        totals["current_value_tiyn"] += current or 0
    return {
        "as_of": isoformat(now),
        "assets": assets,
        "totals": {
            **totals,
            "unrealised_fx_tiyn": totals["current_value_tiyn"] - totals["locked_value_tiyn"],
        },
        "spends_tracked": False,
    }
