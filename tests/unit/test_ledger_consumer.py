"""The LedgerConsumer behind the real gateway: InvoiceService changes, the real outbox, the OutboxRunner.

Also checks that the test harness (tests/unit/test_ledger_harness.py) writes the events the service writes,
so the property tests that use it speak about the real thing.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from gateway import jsonutil
from gateway.extensions import DetectedPayment, Extensions, PolicyDecision
from gateway.invoices.lifecycle import (
    DropReason,
    PaymentDropped,
    PaymentSeen,
    ReleaseHold,
    amount_remaining_minor,
)
from gateway.invoices.records import InvoiceRecord
from gateway.invoices.service import PaymentFact
from gateway.money import Asset, Chain
from gateway.outbox import OutboxRunner
from gateway.store import Tx
from sandbox.ledger import store as ledger
from sandbox.ledger.consumer import LedgerConsumer
from sandbox.ledger.model import settlement_account
from tests.conftest import Gateway, GatewayFactory
from tests.unit.test_ledger_harness import Sim, expected_balances, nonzero


class HoldForPayer:
    """Holds the payments of payer "suspect"; accepts everything else."""

    async def decide(self, tx: Tx, payment: DetectedPayment) -> PolicyDecision:
        return (
            PolicyDecision.hold("unregistered") if payment.payer == "suspect" else PolicyDecision.accepted()
        )


def fact(
    invoice: dict[str, Any], key: str, asset: str = "BTC", *, amount: int | None = None, **kw: Any
) -> PaymentFact:
    method = next(m for m in invoice["payment_methods"] if m["asset"] == asset)
    return PaymentFact(
        Chain.BITCOIN if asset == "BTC" else Chain.ETHEREUM,
        method["address"],
        key,
        Asset(asset),
        method["amount_due_minor"] if amount is None else amount,
        kw.pop("confirmations", 6),
        **kw,
    )


async def drain(gateway: Gateway, consumer: LedgerConsumer, batch_size: int = 3) -> int:
    runner = OutboxRunner(gateway.store, gateway.clock, [consumer], batch_size=batch_size)
    handled, total = 1, 0
    while handled:
        handled = await runner.drain_once(consumer)
        total += handled
    return total


async def test_the_consumer_books_the_services_events(make_gateway: GatewayFactory) -> None:
    gateway = await make_gateway(Extensions(payment_policy=HoldForPayer()))
    service = gateway.service
    settled = await gateway.create_invoice("1000.00", assets=["BTC"])
    released = await gateway.create_invoice("2000.00", assets=["BTC"])
    refunded = await gateway.create_invoice("3000.00", assets=["BTC"])
    reversed_ = await gateway.create_invoice("1500.00", assets=["BTC"])
    split = await gateway.create_invoice("5000.00", assets=["BTC", "USDT"])

    await service.record_payment(fact(settled, "01" * 32 + ":0"))
    await service.record_payment(fact(released, "02" * 32 + ":0", payer="suspect"))
    await service.release_hold(released["id"], "02" * 32 + ":0")
    await service.record_payment(fact(refunded, "03" * 32 + ":0", payer="suspect"))
    await service.refund_hold(refunded["id"], "03" * 32 + ":0")
    double = 2 * reversed_["payment_methods"][0]["amount_due_minor"]
    await service.record_payment(fact(reversed_, "04" * 32 + ":0", amount=double))
    await service.payment_dropped(Chain.BITCOIN, "04" * 32 + ":0", DropReason.DOUBLE_SPENT)
    half_btc = split["payment_methods"][0]["amount_due_minor"] // 2
    await service.record_payment(fact(split, "05" * 32 + ":0", amount=half_btc, confirmations=0))
    usdt_due = amount_remaining_minor((await service.get(None, split["id"])).state, Asset.USDT)
    assert usdt_due > 0
    await service.record_payment(fact(split, "0x" + "06" * 32 + ":1", "USDT", amount=usdt_due))
    await service.record_payment(fact(split, "05" * 32 + ":0", amount=half_btc, confirmations=6))

    consumer = LedgerConsumer()
    handled = await drain(gateway, consumer)
    assert handled > 20

    ids = [i["id"] for i in (settled, released, refunded, reversed_, split)]
    records: list[InvoiceRecord] = [await service.get(None, i) for i in ids]
    assert [r.state.status.value for r in records] == ["settled", "settled", "new", "reversed", "settled"]

    async def legs(tx: Tx, invoice_id: str) -> list[str]:
        return [p.entry.leg for p in await ledger.invoice_entries(tx, invoice_id)]

    def legs_of(invoice_id: str) -> Callable[[Tx], Coroutine[Any, Any, list[str]]]:
        return lambda tx: legs(tx, invoice_id)

    assert [await gateway.store.read(legs_of(i)) for i in ids] == [
        ["settle"],
        ["hold", "release", "settle"],
        ["hold", "refund"],
        ["settle", "reversal"],
        ["settle"],
    ]
    (split_settle,) = await gateway.store.read(lambda tx: ledger.invoice_entries(tx, split["id"]))
    assert {a for a in split_settle.entry.amounts() if a.startswith("clearing:")} == {
        "clearing:BTC",
        "clearing:USDT",
    }

    balances = await gateway.store.read(ledger.balances)
    assert nonzero(balances) == expected_balances(records)
    assert balances[settlement_account(gateway.merchant_id)] == 100_000 + 200_000 + 500_000
    assert await gateway.store.read(ledger.trial_balance) == 0
    assert await gateway.store.read(ledger.verify_balances) == []

    # At-least-once: the cursor goes back to the start (a crash before it committed); nothing is booked twice.
    journal = await gateway.store.read(lambda tx: tx.fetchall("SELECT id FROM ledger_entries ORDER BY seq"))
    await gateway.store.transaction(
        lambda tx: tx.execute("UPDATE consumer_cursors SET position = 0 WHERE consumer = 'ledger'")
    )
    assert await drain(gateway, consumer, batch_size=7) == handled
    assert (
        await gateway.store.read(lambda tx: tx.fetchall("SELECT id FROM ledger_entries ORDER BY seq"))
        == journal
    )
    assert await gateway.store.read(ledger.balances) == balances
    page = await gateway.store.read(lambda tx: ledger.ledger_page(tx, gateway.merchant_id, limit=100))
    assert len(page.entries) == len(journal) and page.next_cursor is None


async def test_the_harness_writes_what_the_service_writes(make_gateway: GatewayFactory) -> None:
    gateway = await make_gateway(Extensions(payment_policy=HoldForPayer()))
    service = gateway.service
    created = await gateway.create_invoice("2000.00", assets=["BTC", "USDT"])
    due = created["payment_methods"][0]["amount_due_minor"]
    await service.record_payment(
        fact(created, "0a" * 32 + ":0", amount=due // 2, payer="suspect", confirmations=0)
    )
    await service.record_payment(fact(created, "0b" * 32 + ":0", amount=due, confirmations=2))
    await service.release_hold(created["id"], "0a" * 32 + ":0")
    await service.payment_dropped(Chain.BITCOIN, "0b" * 32 + ":0", DropReason.REPLACED)
    rows = await gateway.store.read(
        lambda tx: tx.fetchall(
            "SELECT type, payload FROM outbox WHERE invoice_id = ? ORDER BY seq", (created["id"],)
        )
    )

    record = await service.get(None, created["id"])
    sim = Sim(now=gateway.clock.now())
    twin = sim.create(record.merchant_id, record.state.price_tiyn, {}, terms=record.state.terms)
    sim.apply(twin, PaymentSeen("0a" * 32 + ":0", Asset.BTC, due // 2, 0, False, held=True, hold_reason="x"))
    sim.apply(twin, PaymentSeen("0b" * 32 + ":0", Asset.BTC, due, 2, False))
    sim.apply(twin, ReleaseHold("0a" * 32 + ":0"))
    sim.apply(twin, PaymentDropped("0b" * 32 + ":0", DropReason.REPLACED))

    def shape(kind: str, payload: dict[str, Any]) -> tuple[Any, ...]:
        data = payload["data"]
        invoice = data["invoice"]
        fields = ("status", "flags", "version", "amount_tiyn", "amount_paid_tiyn")
        return (kind, sorted(data), *(invoice[f] for f in fields), payload["invoice_version"])

    assert [shape(e.type, e.payload) for e in sim.events] == [
        shape(r["type"], jsonutil.loads(r["payload"])) for r in rows
    ]
