"""Issue 6's reconciliation check: a batch of settled, overpaid, late, reversed and held payments, booked
by the real gateway (InvoiceService, outbox, the ledger consumer running in the background) for two
merchants, one of them with a spread.

Expected figures are computed here from the payments this test made and each invoice's locked quote, not
by the ledger's code: the trial balance is zero; each merchant's settlement balance is the sum of the
prices of its invoices that are settled now; and the documented adjustments (docs/rates-and-ledger.md,
"Reconciling") account for the rest of the value received: ``fx`` is the rounding slack of settled
invoices not flagged overpaid, ``overpaid`` the surplus of those flagged overpaid, ``held`` and
``refunds`` the value of payments on hold and ordered refunded. The CSV statement sums to the balance.
"""

from __future__ import annotations

import asyncio
import csv
import dataclasses
import io
from collections import defaultdict
from datetime import timedelta
from decimal import Decimal
from fractions import Fraction
from typing import Any

from gateway.extensions import DetectedPayment, PolicyDecision
from gateway.invoices.lifecycle import DropReason
from gateway.invoices.service import PaymentFact
from gateway.money import Asset, Chain
from gateway.store import Tx
from sandbox.ledger import store as ledger
from sandbox.ledger.api import ledger_extensions
from tests.conftest import Gateway, GatewayFactory

DECIMALS = {"BTC": 8, "ETH": 18, "USDT": 6}


class HoldSuspect:
    async def decide(self, tx: Tx, payment: DetectedPayment) -> PolicyDecision:
        return (
            PolicyDecision.hold("unregistered") if payment.payer == "suspect" else PolicyDecision.accepted()
        )


def half_even(value: Fraction) -> int:
    floor = value.numerator // value.denominator
    rest = value - floor
    if rest > Fraction(1, 2) or (rest == Fraction(1, 2) and floor % 2 == 1):
        return floor + 1
    return floor


def value_tiyn(invoice: dict[str, Any], asset: str, amount: int) -> Fraction:
    """The tenge value (exact, in tiyn) of ``amount`` minor units at the invoice's LOCKED rate."""
    rate = Fraction(Decimal(invoice["quote"]["rates"][asset]["kzt_per_unit"]))
    return Fraction(amount) * rate * 100 / 10 ** DECIMALS[asset]


@dataclasses.dataclass
class Scenario:
    """What the test did to one invoice, so the expected books follow from it."""

    invoice: dict[str, Any]
    key: str | None = None
    counted: dict[str, int] = dataclasses.field(default_factory=lambda: defaultdict(int))
    held: list[tuple[str, int]] = dataclasses.field(default_factory=list)
    refunded: list[tuple[str, int]] = dataclasses.field(default_factory=list)


class Batch:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.scenarios: list[Scenario] = []
        self._n = 0

    async def invoice(self, amount: str, key: str | None = None, **fields: Any) -> Scenario:
        scenario = Scenario(await self.gateway.create_invoice(amount, key=key, **fields), key)
        self.scenarios.append(scenario)
        return scenario

    def due(self, scenario: Scenario, asset: str) -> int:
        method = next(m for m in scenario.invoice["payment_methods"] if m["asset"] == asset)
        return int(method["amount_due_minor"])

    async def pay(
        self,
        scenario: Scenario,
        asset: str,
        amount: int,
        *,
        confirmations: int = 6,
        payer: str | None = None,
        key: str | None = None,
    ) -> str:
        if key is None:
            self._n += 1
            key = f"{self._n:064x}:0" if asset == "BTC" else f"0x{self._n:064x}:{1 if asset == 'USDT' else 0}"
        method = next(m for m in scenario.invoice["payment_methods"] if m["asset"] == asset)
        fact = PaymentFact(
            Chain.BITCOIN if asset == "BTC" else Chain.ETHEREUM,
            method["address"],
            key,
            Asset(asset),
            amount,
            confirmations,
            payer=payer,
        )
        await self.gateway.service.record_payment(fact)
        return key

    async def status(self, scenario: Scenario) -> dict[str, Any]:
        response = await self.gateway.client.get(
            f"/v1/invoices/{scenario.invoice['id']}", headers=self.gateway.auth(scenario.key)
        )
        body: dict[str, Any] = await response.json()
        return body


async def ledger_caught_up(gateway: Gateway) -> None:
    """Wait until the background ledger consumer has read every outbox event."""

    async def behind(tx: Tx) -> bool:
        top = await tx.fetchone("SELECT coalesce(max(seq), 0) AS n FROM outbox")
        cursor = await tx.fetchone("SELECT position FROM consumer_cursors WHERE consumer = 'ledger'")
        return cursor is None or int(cursor["position"]) < int(top["n"])

    deadline = asyncio.get_running_loop().time() + 15
    while await gateway.store.read(behind):
        assert asyncio.get_running_loop().time() < deadline, "the ledger consumer did not catch up"
        await asyncio.sleep(0.05)


async def test_a_batch_of_payments_reconciles_to_the_prices_plus_documented_adjustments(
    make_gateway: GatewayFactory,
) -> None:
    extensions = dataclasses.replace(ledger_extensions(), payment_policy=HoldSuspect())
    gateway = await make_gateway(extensions)
    await gateway.registry.set_spread(gateway.other_merchant_id, 200)  # the other shop quotes 2 % lower
    gateway.registry.auth_cache.invalidate_all()
    batch = Batch(gateway)
    service = gateway.service
    other = gateway.other_api_key

    # Settled exactly, in each asset; one for the other merchant, whose quote carries the spread.
    for asset, amount in (("BTC", "12500.00"), ("ETH", "8400.00"), ("USDT", "5300.00")):
        s = await batch.invoice(amount, assets=[asset])
        s.counted[asset] += batch.due(s, asset)
        await batch.pay(s, asset, batch.due(s, asset))
    spread = await batch.invoice("20000.00", key=other)
    assert spread.invoice["quote"]["spread_bps"] == 200
    spread.counted["BTC"] += batch.due(spread, "BTC")
    await batch.pay(spread, "BTC", batch.due(spread, "BTC"))

    # Overpaid: 1.5 times the amount due, and a settled invoice that gets an extra payment afterwards.
    over = await batch.invoice("7000.00", assets=["BTC"])
    over.counted["BTC"] += batch.due(over, "BTC") * 3 // 2
    await batch.pay(over, "BTC", batch.due(over, "BTC") * 3 // 2)
    extra = await batch.invoice("3000.00", assets=["USDT"])
    extra.counted["USDT"] += batch.due(extra, "USDT") + 2_000_000
    await batch.pay(extra, "USDT", batch.due(extra, "USDT"))
    await batch.pay(extra, "USDT", 2_000_000)

    # Underpaid in BTC, completed in ETH: clearing is split by asset.
    split = await batch.invoice("9000.00", assets=["BTC", "ETH"])
    half = batch.due(split, "BTC") // 2
    split.counted["BTC"] += half
    await batch.pay(split, "BTC", half)
    remaining = next(
        m["amount_remaining_minor"]
        for m in (await batch.status(split))["payment_methods"]
        if m["asset"] == "ETH"
    )
    split.counted["ETH"] += remaining
    await batch.pay(split, "ETH", remaining)

    # Late: paid after expiry. One the merchant accepts (it settles), one it does not (nothing is booked).
    late_ok = await batch.invoice("4000.00", assets=["BTC"], expires_in=60)
    late_no = await batch.invoice("4500.00", assets=["BTC"], expires_in=60)
    gateway.clock.advance(timedelta(seconds=61))
    assert await service.expire_due() >= 2
    late_key = await batch.pay(late_ok, "BTC", batch.due(late_ok, "BTC"))
    await batch.pay(late_no, "BTC", batch.due(late_no, "BTC"))
    response = await gateway.client.post(
        f"/v1/invoices/{late_ok.invoice['id']}/accept-late", headers=gateway.auth()
    )
    assert response.status == 200, await response.text()
    await batch.pay(late_ok, "BTC", batch.due(late_ok, "BTC"), key=late_key)  # the next block's confirmations
    late_ok.counted["BTC"] += batch.due(late_ok, "BTC")

    # Reversed: settled, then the payment was double-spent away.
    gone = await batch.invoice("6000.00", assets=["BTC"])
    gone_key = await batch.pay(gone, "BTC", batch.due(gone, "BTC"))
    await service.payment_dropped(Chain.BITCOIN, gone_key, DropReason.DOUBLE_SPENT)
    # A reorg: settled, back to processing (confirmations lost), then settled again.
    reorg = await batch.invoice("60000.00", assets=["BTC"])  # above 50 000 KZT: 1 confirmation needed
    reorg_key = await batch.pay(reorg, "BTC", batch.due(reorg, "BTC"), confirmations=3)
    await batch.pay(reorg, "BTC", batch.due(reorg, "BTC"), confirmations=0, key=reorg_key)
    assert (await batch.status(reorg))["status"] == "processing"
    await batch.pay(reorg, "BTC", batch.due(reorg, "BTC"), confirmations=3, key=reorg_key)
    reorg.counted["BTC"] += batch.due(reorg, "BTC")

    # Held by the sandbox: one released (then it settles), one refunded, one still held.
    released = await batch.invoice("2500.00", assets=["BTC"])
    held_key = await batch.pay(released, "BTC", batch.due(released, "BTC"), payer="suspect")
    await service.release_hold(released.invoice["id"], held_key)
    released.counted["BTC"] += batch.due(released, "BTC")
    refunded = await batch.invoice("3500.00", assets=["USDT"])
    refund_key = await batch.pay(refunded, "USDT", batch.due(refunded, "USDT"), payer="suspect")
    await service.refund_hold(refunded.invoice["id"], refund_key)
    refunded.refunded.append(("USDT", batch.due(refunded, "USDT")))
    waiting = await batch.invoice("1800.00", assets=["ETH"])
    await batch.pay(waiting, "ETH", batch.due(waiting, "ETH"), payer="suspect")
    waiting.held.append(("ETH", batch.due(waiting, "ETH")))

    await ledger_caught_up(gateway)
    statuses = {s.invoice["id"]: await batch.status(s) for s in batch.scenarios}
    assert [statuses[s.invoice["id"]]["status"] for s in batch.scenarios] == [
        "settled",  # BTC
        "settled",  # ETH
        "settled",  # USDT
        "settled",  # the other merchant, with a spread
        "settled",  # overpaid
        "settled",  # extra payment after settling
        "settled",  # BTC + ETH
        "settled",  # late, accepted
        "expired",  # late, not accepted
        "reversed",
        "settled",  # reorged and settled again
        "settled",  # released hold
        "new",  # refunded hold
        "new",  # still held
    ]

    # The books, from what this test paid and the locked quotes.
    expected: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for s in batch.scenarios:
        merchant = s.invoice["merchant_id"]
        view = statuses[s.invoice["id"]]
        books = expected[merchant]
        for asset, amount in s.held:
            books["held"] += half_even(value_tiyn(s.invoice, asset, amount))
        for asset, amount in s.refunded:
            books["refunds"] += half_even(value_tiyn(s.invoice, asset, amount))
        if view["status"] != "settled":
            continue
        received = sum(half_even(value_tiyn(s.invoice, a, n)) for a, n in s.counted.items())
        price = int(s.invoice["amount_tiyn"])
        books["settlement"] += price
        books["overpaid" if "overpaid" in view["flags"] else "fx"] += received - price
        assert view["amount_paid_tiyn"] >= price

    for merchant, key in ((gateway.merchant_id, gateway.api_key), (gateway.other_merchant_id, other)):
        response = await gateway.client.get("/v1/balance", headers=gateway.auth(key))
        accounts = (await response.json())["accounts"]
        got = {name: accounts[name]["tiyn"] for name in ("settlement", "fx", "overpaid", "held", "refunds")}
        want = {name: expected[merchant][name] for name in got}
        assert got == want, (merchant, got, want)
        assert got["settlement"] == sum(
            int(s.invoice["amount_tiyn"])
            for s in batch.scenarios
            if s.invoice["merchant_id"] == merchant and statuses[s.invoice["id"]]["status"] == "settled"
        )

        # The statement of the settlement account sums to its balance, and its last running balance is it.
        start, end = "2000-01-01T00:00:00Z", "2100-01-01T00:00:00Z"
        response = await gateway.client.get(
            f"/v1/ledger/statement?account=settlement&from={start}&to={end}&format=csv",
            headers=gateway.auth(key),
        )
        rows = list(csv.DictReader(io.StringIO(await response.text())))
        assert sum(int(r["amount_tiyn"]) for r in rows) == got["settlement"]
        assert int(rows[-1]["balance_tiyn"]) == got["settlement"]

    assert expected[gateway.merchant_id]["overpaid"] > 0 and expected[gateway.merchant_id]["fx"] >= 0
    assert await gateway.store.read(ledger.trial_balance) == 0
    assert await gateway.store.read(ledger.verify_balances) == []

    # Chain side: each asset's clearing account is minus the value of the crypto the books hold for it.
    balances = await gateway.store.read(ledger.balances)
    for asset in DECIMALS:
        booked = sum(
            half_even(value_tiyn(s.invoice, a, n))
            for s in batch.scenarios
            for a, n in s.counted.items()
            if a == asset and statuses[s.invoice["id"]]["status"] == "settled"
        ) + sum(
            half_even(value_tiyn(s.invoice, a, n))
            for s in batch.scenarios
            for a, n in s.held + s.refunded
            if a == asset
        )
        assert balances.get(f"clearing:{asset}", 0) == -booked, asset
