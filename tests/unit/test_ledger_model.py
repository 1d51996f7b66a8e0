"""Each posting rule of sandbox.ledger.model with concrete numbers, driven through the real lifecycle.

Numbers used throughout: the price is 12 500.00 KZT = 1 250 000 tiyn; BTC is locked at 30 000 000 KZT, so
1 sat = 30 tiyn and the amount due is ceil(1 250 000 / 30) = 41 667 sat, worth 1 250 010 tiyn (10 tiyn of
rounding slack); USDT at 500 KZT, so 1 base unit = 0.05 tiyn and 1 USDT = 50 000 tiyn.
"""

from __future__ import annotations

import dataclasses
from decimal import Decimal
from typing import Any

import pytest

from gateway.invoices.lifecycle import (
    AcceptLate,
    DropReason,
    PaymentConfirmations,
    PaymentDropped,
    PaymentSeen,
    RefundHold,
    ReleaseHold,
    Status,
    Tick,
)
from gateway.money import Asset
from sandbox.ledger.model import (
    AccountKind,
    InvoiceBook,
    JournalEntry,
    LedgerEvent,
    LedgerInputError,
    LedgerMismatch,
    Line,
    UnbalancedEntry,
    balances_of,
    book,
    book_all,
    clearing_account,
    entry_id,
    fx_account,
    held_account,
    merchant_accounts,
    overpaid_account,
    parse_account,
    postings_for,
    refunds_account,
    settlement_account,
)
from tests.unit.test_ledger_harness import Sim, SimInvoice, expected_balances, nonzero

PRICE = 1_250_000
DUE_SAT = 41_667
DUE_VALUE = 1_250_010
M = "mer_1"
SETTLEMENT, FX, OVERPAID = settlement_account(M), fx_account(M), overpaid_account(M)
HELD, REFUNDS, BTC, USDT = (
    held_account(M),
    refunds_account(M),
    clearing_account("BTC"),
    clearing_account("USDT"),
)
TXID = "aa" * 32


def seen(
    n: int, amount: int, confirmations: int = 1, *, asset: Asset = Asset.BTC, held: bool = False
) -> PaymentSeen:
    return PaymentSeen(
        f"{TXID}:{n}", asset, amount, confirmations, False, held=held, hold_reason="limit" if held else None
    )


def status(invoice: SimInvoice) -> Status:
    return invoice.state.status


def journal(sim: Sim) -> list[tuple[str, str, dict[str, int]]]:
    entries, _ = book_all(sim.ledger_events())
    return [(e.event_type, e.leg, e.amounts()) for e in entries]


def check_totals(sim: Sim) -> None:
    entries, _ = book_all(sim.ledger_events())
    assert nonzero(balances_of(entries)) == expected_balances(sim.invoices)
    assert sum(balances_of(entries).values()) == 0


SETTLE_LINES = {BTC: -DUE_VALUE, SETTLEMENT: PRICE, FX: 10}


def test_settle_exact_books_the_price_and_the_rounding_slack_to_fx() -> None:
    sim = Sim()
    invoice = sim.create(M, PRICE, {Asset.BTC: 1})
    sim.apply(invoice, seen(0, DUE_SAT))
    assert status(invoice) is Status.SETTLED
    assert [e.type for e in sim.events] == [
        "invoice.created",
        "payment.detected",
        "payment.confirmed",
        "invoice.processing",
        "invoice.settled",
    ]
    # Only invoice.settled books, although every event of the change carries the settled resource.
    assert journal(sim) == [("invoice.settled", "settle", SETTLE_LINES)]
    check_totals(sim)


def test_settle_in_two_steps_books_once_at_settled() -> None:
    sim = Sim()
    invoice = sim.create(M, PRICE, {Asset.BTC: 2})
    sim.apply(invoice, seen(0, DUE_SAT, confirmations=0))
    sim.apply(invoice, PaymentConfirmations(f"{TXID}:0", 1))
    assert journal(sim) == []  # processing: unconfirmed money is not booked
    sim.apply(invoice, PaymentConfirmations(f"{TXID}:0", 2))
    assert journal(sim) == [("invoice.settled", "settle", SETTLE_LINES)]


def test_overpaid_settle_books_the_surplus_as_payable_and_a_later_extra_payment_as_overpay() -> None:
    sim = Sim()
    invoice = sim.create(M, PRICE, {Asset.BTC: 1})
    sim.apply(invoice, seen(0, 50_000))  # 1 500 000 tiyn
    assert "overpaid" in {f.value for f in invoice.state.flags}
    settle = ("invoice.settled", "settle", {BTC: -1_500_000, SETTLEMENT: PRICE, OVERPAID: 250_000})
    assert journal(sim) == [settle]
    sim.apply(invoice, seen(1, 10_000))  # another 300 000 tiyn on the settled invoice
    assert journal(sim) == [settle, ("payment.detected", "overpay", {BTC: -300_000, OVERPAID: 300_000})]
    check_totals(sim)


def test_an_extra_payment_that_makes_a_settled_invoice_overpaid_moves_the_slack_too() -> None:
    sim = Sim()
    invoice = sim.create(M, PRICE, {Asset.BTC: 1})
    sim.apply(invoice, seen(0, DUE_SAT))
    sim.apply(invoice, seen(1, 1_000))  # +30 000 tiyn: overpaid now, the whole surplus is payable
    assert journal(sim)[1:] == [
        ("payment.detected", "overpay", {BTC: -30_000, OVERPAID: 30_010, FX: -10}),
    ]
    # The extra payment is dropped again: back to a plain settle with slack.
    sim.apply(invoice, PaymentDropped(f"{TXID}:1", DropReason.EVICTED))
    assert journal(sim)[2:] == [("payment.dropped", "adjust", {BTC: 30_000, OVERPAID: -30_010, FX: 10})]
    assert nonzero(balances_of(book_all(sim.ledger_events())[0])) == SETTLE_LINES
    check_totals(sim)


def test_underpaid_then_settled_with_two_assets_splits_clearing_by_asset() -> None:
    sim = Sim()
    invoice = sim.create(M, PRICE, {Asset.BTC: 1, Asset.USDT: 1})
    sim.apply(invoice, seen(0, 20_000))  # 600 000 tiyn
    assert status(invoice) is Status.NEW and "underpaid" in {f.value for f in invoice.state.flags}
    assert journal(sim) == []
    sim.apply(invoice, seen(1, 13_000_000, asset=Asset.USDT))  # 13 USDT = 650 000 tiyn
    assert journal(sim) == [
        ("invoice.settled", "settle", {BTC: -600_000, USDT: -650_000, SETTLEMENT: PRICE}),
    ]
    check_totals(sim)


def test_a_shortfall_forgiven_by_the_tolerance_is_booked_to_fx() -> None:
    sim = Sim()
    invoice = sim.create(M, PRICE, {Asset.BTC: 1}, tolerance=Decimal("0.02"))
    sim.apply(invoice, seen(0, 41_000))  # 1 230 000 tiyn >= 1 225 000
    assert journal(sim) == [("invoice.settled", "settle", {BTC: -1_230_000, SETTLEMENT: PRICE, FX: -20_000})]


def test_a_late_payment_is_booked_only_when_the_merchant_accepts_it() -> None:
    sim = Sim()
    invoice = sim.create(M, PRICE, {Asset.BTC: 1}, expires_in=900)
    sim.advance(901)
    sim.apply(invoice, Tick())
    sim.apply(invoice, seen(0, DUE_SAT))
    assert status(invoice) is Status.EXPIRED and "paid_late" in {f.value for f in invoice.state.flags}
    assert journal(sim) == []
    sim.apply(invoice, AcceptLate())
    assert status(invoice) is Status.SETTLED
    assert journal(sim) == [("invoice.settled", "settle_late", SETTLE_LINES)]
    _, books = book_all(sim.ledger_events())
    assert books[invoice.id].late_accepted
    check_totals(sim)


def test_reversal_undoes_exactly_what_was_booked_and_the_payment_mined_again_resettles() -> None:
    sim = Sim()
    invoice = sim.create(M, PRICE, {Asset.BTC: 0})  # 0-conf by policy
    sim.apply(invoice, seen(0, DUE_SAT, confirmations=0))
    sim.apply(invoice, seen(1, 1_000, confirmations=0))  # extra: overpaid, adjusted while settled
    booked = {BTC: -(DUE_VALUE + 30_000), SETTLEMENT: PRICE, OVERPAID: 30_010}
    assert nonzero(balances_of(book_all(sim.ledger_events())[0])) == booked
    sim.apply(invoice, PaymentDropped(f"{TXID}:0", DropReason.DOUBLE_SPENT))
    assert status(invoice) is Status.REVERSED
    # The whole current settlement (settle + overpay) is negated, in one entry, on invoice.reversed.
    assert journal(sim)[-1] == ("invoice.reversed", "reversal", {a: -n for a, n in booked.items()})
    assert nonzero(balances_of(book_all(sim.ledger_events())[0])) == {}
    sim.apply(invoice, seen(0, DUE_SAT, confirmations=1))  # the same payment mined after all
    assert status(invoice) is Status.SETTLED and "reorged" in {f.value for f in invoice.state.flags}
    assert journal(sim)[-1] == ("invoice.settled", "resettle", booked)
    _, books = book_all(sim.ledger_events())
    assert books[invoice.id].settlements == 2
    check_totals(sim)


def test_a_reorg_that_takes_a_settled_invoice_back_to_processing_reverses_until_it_settles_again() -> None:
    sim = Sim()
    invoice = sim.create(M, PRICE, {Asset.BTC: 2})
    sim.apply(invoice, seen(0, DUE_SAT, confirmations=2))
    sim.apply(invoice, PaymentConfirmations(f"{TXID}:0", 1))
    assert status(invoice) is Status.PROCESSING
    reversal = {BTC: DUE_VALUE, SETTLEMENT: -PRICE, FX: -10}
    assert journal(sim)[1:] == [("invoice.processing", "reorg_reversal", reversal)]
    sim.apply(invoice, PaymentConfirmations(f"{TXID}:0", 2))
    assert journal(sim)[2:] == [("invoice.settled", "resettle", SETTLE_LINES)]
    check_totals(sim)


def test_held_then_released_goes_through_held_and_back_into_the_settle() -> None:
    sim = Sim()
    invoice = sim.create(M, PRICE, {Asset.BTC: 1})
    sim.apply(invoice, seen(0, DUE_SAT, held=True))
    assert status(invoice) is Status.NEW and "on_hold" in {f.value for f in invoice.state.flags}
    hold = {BTC: -DUE_VALUE, HELD: DUE_VALUE}
    assert journal(sim) == [("payment.detected", "hold", hold)]
    sim.apply(invoice, ReleaseHold(f"{TXID}:0"))
    assert status(invoice) is Status.SETTLED
    assert journal(sim) == [
        ("payment.detected", "hold", hold),
        ("payment.released", "release", {HELD: -DUE_VALUE, BTC: DUE_VALUE}),
        ("invoice.settled", "settle", SETTLE_LINES),
    ]
    check_totals(sim)


def test_held_then_refunded_becomes_a_refund_payable() -> None:
    sim = Sim()
    invoice = sim.create(M, PRICE, {Asset.BTC: 1})
    sim.apply(invoice, seen(0, DUE_SAT, held=True))
    sim.apply(invoice, RefundHold(f"{TXID}:0"))
    assert journal(sim) == [
        ("payment.detected", "hold", {BTC: -DUE_VALUE, HELD: DUE_VALUE}),
        ("payment.refunded", "refund", {HELD: -DUE_VALUE, REFUNDS: DUE_VALUE}),
    ]
    assert nonzero(balances_of(book_all(sim.ledger_events())[0])) == {BTC: -DUE_VALUE, REFUNDS: DUE_VALUE}
    check_totals(sim)


def test_dropped_held_and_dropped_refunded_payments_go_back_to_clearing_and_return_held() -> None:
    sim = Sim()
    invoice = sim.create(M, PRICE, {Asset.BTC: 1})
    sim.apply(invoice, seen(0, 10_000, held=True))  # 300 000 tiyn
    sim.apply(invoice, PaymentDropped(f"{TXID}:0", DropReason.REPLACED))
    sim.apply(invoice, seen(1, 20_000, held=True))  # 600 000 tiyn
    sim.apply(invoice, RefundHold(f"{TXID}:1"))
    sim.apply(invoice, PaymentDropped(f"{TXID}:1", DropReason.REORGED_OUT))
    sim.apply(invoice, seen(1, 20_000))  # back: held again (the hold stands), whatever the new decision
    assert [(leg, amounts) for _, leg, amounts in journal(sim)] == [
        ("hold", {BTC: -300_000, HELD: 300_000}),
        ("hold_dropped", {HELD: -300_000, BTC: 300_000}),
        ("hold", {BTC: -600_000, HELD: 600_000}),
        ("refund", {HELD: -600_000, REFUNDS: 600_000}),
        ("refund_dropped", {REFUNDS: -600_000, BTC: 600_000}),
        ("hold", {BTC: -600_000, HELD: 600_000}),
    ]
    check_totals(sim)


def test_a_released_hold_on_a_settled_invoice_is_an_overpay_adjustment() -> None:
    sim = Sim()
    invoice = sim.create(M, PRICE, {Asset.BTC: 1})
    sim.apply(invoice, seen(0, 10_000, held=True))
    sim.apply(invoice, seen(1, DUE_SAT))
    sim.apply(invoice, ReleaseHold(f"{TXID}:0"))
    assert journal(sim)[-2:] == [
        ("payment.released", "release", {HELD: -300_000, BTC: 300_000}),
        ("payment.released", "overpay", {BTC: -300_000, OVERPAID: 300_010, FX: -10}),
    ]
    check_totals(sim)


# -- idempotency and determinism -------------------------------------------------------------------


def test_booking_an_event_again_books_nothing_and_changes_nothing() -> None:
    sim = Sim()
    invoice = sim.create(M, PRICE, {Asset.BTC: 1})
    sim.apply(invoice, seen(0, DUE_SAT, held=True))
    sim.apply(invoice, ReleaseHold(f"{TXID}:0"))
    state: InvoiceBook | None = None
    for event in sim.ledger_events():
        state = book(event, state).state
        again = book(event, state)
        assert again.entries == () and again.state == state
    # And the same stream booked from scratch gives the same entries, ids included.
    assert book_all(sim.ledger_events())[0] == book_all(sim.ledger_events())[0]


def test_entry_ids_are_derived_from_the_event_and_the_leg() -> None:
    sim = Sim()
    invoice = sim.create(M, PRICE, {Asset.BTC: 1})
    sim.apply(invoice, seen(0, DUE_SAT))
    (entry,) = book_all(sim.ledger_events())[0]
    settled = next(e for e in sim.events if e.type == "invoice.settled")
    assert entry.id == entry_id(settled.id, "settle")
    assert entry.posted_at == settled.created_at
    assert (entry.invoice_id, entry.merchant_id, entry.invoice_version) == (invoice.id, M, 1)
    assert entry_id(settled.id, "settle") != entry_id(settled.id, "adjust") != entry_id("evt_x", "settle")


def test_postings_for_is_book_without_the_state() -> None:
    sim = Sim()
    invoice = sim.create(M, PRICE, {Asset.BTC: 1})
    sim.apply(invoice, seen(0, DUE_SAT))
    state = None
    for event in sim.ledger_events():
        assert postings_for(event, state) == list(book(event, state).entries)
        state = book(event, state).state


def test_the_booked_state_round_trips_through_its_document() -> None:
    sim = Sim()
    invoice = sim.create(M, PRICE, {Asset.BTC: 1, Asset.ETH: 0})
    sim.apply(invoice, seen(0, 10**21, asset=Asset.ETH, held=True))  # more wei than 64 bits hold
    sim.apply(invoice, seen(1, DUE_SAT))
    _, books = book_all(sim.ledger_events())
    assert InvoiceBook.from_doc(books[invoice.id].to_doc()) == books[invoice.id]


# -- guards ----------------------------------------------------------------------------------------


def _entry(lines: tuple[Line, ...], **overrides: Any) -> JournalEntry:
    fields: dict[str, Any] = {
        "id": entry_id("evt_1", "settle"),
        "event_id": "evt_1",
        "event_type": "invoice.settled",
        "leg": "settle",
        "posted_at": "2026-11-23T12:00:00.000Z",
        "invoice_id": "inv_1",
        "invoice_version": 1,
        "merchant_id": M,
        "payment_key": None,
        "lines": lines,
        **overrides,
    }
    return JournalEntry(**fields)


def test_an_entry_that_does_not_sum_to_zero_cannot_be_built() -> None:
    assert _entry((Line(BTC, -5), Line(SETTLEMENT, 5))).amount(SETTLEMENT) == 5
    with pytest.raises(UnbalancedEntry, match="sums to 1"):
        _entry((Line(BTC, -5), Line(SETTLEMENT, 6)))
    with pytest.raises(UnbalancedEntry, match="at least two"):
        _entry(())
    with pytest.raises(UnbalancedEntry, match="twice"):
        _entry((Line(BTC, -5), Line(BTC, 5)))
    with pytest.raises(UnbalancedEntry, match="not derived"):
        _entry((Line(BTC, -5), Line(SETTLEMENT, 5)), id="le_made_up")
    with pytest.raises(UnbalancedEntry, match="zero"):
        Line(BTC, 0)
    with pytest.raises(UnbalancedEntry, match="integer"):
        Line(BTC, 1.5)  # type: ignore[arg-type]
    with pytest.raises(UnbalancedEntry, match="integer"):
        Line(BTC, True)
    with pytest.raises(ValueError, match="not a ledger account"):
        Line("wallet:somewhere", 5)


def test_account_names() -> None:
    assert merchant_accounts(M) == (
        "merchant:mer_1:settlement",
        "fx:mer_1",
        "overpaid:mer_1",
        "held:mer_1",
        "refunds:mer_1",
    )
    assert parse_account("merchant:mer_1:settlement") == (AccountKind.SETTLEMENT, M)
    assert parse_account("clearing:USDT") == (AccountKind.CLEARING, "USDT")
    assert parse_account("refunds:mer_1") == (AccountKind.REFUNDS, M)
    for bad in ("clearing:DOGE", "fx:", "merchant:mer_1", "nothing", "held:a:b"):
        with pytest.raises(ValueError, match="not a ledger account"):
            parse_account(bad)
    with pytest.raises(ValueError, match="merchant id"):
        fx_account("a:b")


def test_a_settle_that_disagrees_with_the_gateways_amount_paid_raises_and_books_nothing() -> None:
    sim = Sim()
    invoice = sim.create(M, PRICE, {Asset.BTC: 1})
    sim.apply(invoice, seen(0, DUE_SAT))
    events = sim.ledger_events()
    state = None
    for event in events[:-1]:
        state = book(event, state).state
    settled = events[-1]
    forged = dataclasses.replace(
        settled, invoice=dataclasses.replace(settled.invoice, paid_tiyn=DUE_VALUE + 1)
    )
    with pytest.raises(LedgerMismatch, match="1250010 tiyn paid, the gateway 1250011"):
        book(forged, state)


def test_a_payment_event_without_facts_for_an_unknown_payment_is_refused() -> None:
    sim = Sim()
    invoice = sim.create(M, PRICE, {Asset.BTC: 1})
    sim.apply(invoice, seen(0, DUE_SAT))
    detected = next(e for e in sim.ledger_events() if e.type == "payment.detected")
    with pytest.raises(LedgerInputError, match="no facts"):
        book(dataclasses.replace(detected, payment=None), None)


def test_events_the_ledger_does_not_read() -> None:
    sim = Sim()
    sim.create(M, PRICE, {Asset.BTC: 1})
    created = sim.events[0]
    assert LedgerEvent.from_outbox(dataclasses.replace(created, type="merchant.created")) is None
    assert LedgerEvent.from_outbox(dataclasses.replace(created, payload={"data": {}})) is None
    broken = {"data": {"invoice": {"id": "inv_1"}}}
    with pytest.raises(LedgerInputError, match="invoice resource"):
        LedgerEvent.from_outbox(dataclasses.replace(created, payload=broken))
