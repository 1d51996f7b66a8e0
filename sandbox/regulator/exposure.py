"""The pilot's open crypto position: what sits on invoice addresses, valued now and at the locked rates.

This is the figure a state reserve of digital assets would start from. For each asset:

- ``received_minor``: every payment received on invoice addresses that the chain still shows (not
  dropped by a reorg or double spend): accepted, held and refund-ordered alike;
- ``spent_minor``: what left those addresses in blocks of the main chain, as the watchers saw it (the
  merchant's wallet sweeping, and on Ethereum the gas it paid); spends in blocks a reorg removed go with them;
- ``on_addresses_minor`` = received − spent: the open position still on invoice addresses;
- ``locked_value_tiyn``: the open position at the locked rates, average cost: the locked value of all that
  was received, scaled by the share still there (what the sandbox judged those coins worth);
- ``booked_tiyn``: the tenge the digital-tenge ledger booked against payments (minus ``clearing:<ASSET>``:
  settled invoices, holds and refunds payable); payments of invoices not settled yet are not booked;
- ``current_value_tiyn``: the open position at the current rate, and ``unrealised_fx_tiyn`` = current −
  locked value: the FX result of holding it.

Spends are followed from the moment a watcher has seen the payment, on the chains a watcher runs for; the
figure is as of the watchers' tips.
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
    locked_received: dict[Asset, int] = dict.fromkeys(Asset, 0)
    for row in rows:
        asset = Asset(row["asset"])
        received[asset] += int(row["amount_minor"])
        locked_received[asset] += int(row["value_tiyn"] or 0)
    spent: dict[Asset, int] = dict.fromkeys(Asset, 0)
    for row in await tx.fetchall("SELECT asset, amount_minor FROM address_spends"):
        spent[Asset(row["asset"])] += int(row["amount_minor"])
    assets: dict[str, Any] = {}
    totals = {"locked_value_tiyn": 0, "booked_tiyn": 0, "current_value_tiyn": 0}
    for asset in Asset:
        booked = -await ledger.balance(tx, clearing_account(asset))
        decimals = ASSETS[asset].decimals
        on_addresses = received[asset] - spent[asset]
        locked = _average_cost(locked_received[asset], max(on_addresses, 0), received[asset])
        try:
            rate = rates.current(asset, now)
        except RatesUnavailable:
            rate = None
        current = (
            round_half_even_tiyn(value_in_tiyn_exact(on_addresses, rate.kzt_per_unit, decimals))
            if rate is not None
            else None
        )
        assets[asset.value] = {
            "received_minor": str(received[asset]),
            "spent_minor": str(spent[asset]),
            "on_addresses_minor": str(on_addresses),
            "decimals": decimals,
            "locked_value_tiyn": locked,
            "booked_tiyn": booked,
            "current_rate_kzt": str(rate.kzt_per_unit) if rate is not None else None,
            "current_value_tiyn": current,
            "unrealised_fx_tiyn": current - locked if current is not None else None,
        }
        totals["locked_value_tiyn"] += locked
        totals["booked_tiyn"] += booked
        totals["current_value_tiyn"] += current or 0
    return {
        "as_of": isoformat(now),
        "assets": assets,
        "totals": {
            **totals,
            "unrealised_fx_tiyn": totals["current_value_tiyn"] - totals["locked_value_tiyn"],
        },
        "spends_tracked": True,
    }


def _average_cost(locked_total: int, remaining: int, received: int) -> int:
    """The locked value of ``remaining`` of ``received`` units, at their average locked value (half even)."""
    if received <= 0:
        return 0
    quotient, remainder = divmod(locked_total * remaining, received)
    if 2 * remainder > received or (2 * remainder == received and quotient % 2 == 1):
        quotient += 1
    return quotient
