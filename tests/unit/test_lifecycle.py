"""The invoice lifecycle driven directly (sans-I/O): every table row, the illegal cases, the money rules."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

import pytest

from gateway.invoices.lifecycle import (
    TABLE,
    AcceptLate,
    AssetTerms,
    Cancel,
    DropReason,
    Event,
    Flag,
    FrozenMap,
    IllegalTransition,
    InvoiceState,
    Outcome,
    Payment,
    PaymentConfirmations,
    PaymentDropped,
    PaymentSeen,
    PaymentStatus,
    RefundHold,
    ReleaseHold,
    Row,
    Status,
    Tick,
    Trigger,
    accepted_value_tiyn,
    amount_remaining_minor,
    apply,
    confirmed_value_tiyn,
    is_paid,
    mermaid_diagram,
    required_confirmations,
)
from gateway.money import Asset, crypto_due, rate_per_minor_unit

T0 = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
EXPIRES = T0 + timedelta(minutes=15)
LATER = EXPIRES + timedelta(minutes=5)
PRICE = 1_000_000  # 10 000.00 KZT

# BTC at 30 000 000 KZT: 30 tiyn per sat, needs 2 confirmations. ETH needs none (small mempool payments are
# fine by policy), USDT needs 1.
TERMS = {
    Asset.BTC: AssetTerms(Asset.BTC, Decimal("30000000"), 8, 2),
    Asset.ETH: AssetTerms(Asset.ETH, Decimal("1500000"), 18, 0),
    Asset.USDT: AssetTerms(Asset.USDT, Decimal("500"), 6, 1),
}


def due(asset: Asset, price: int = PRICE) -> int:
    return crypto_due(price, TERMS[asset].rate_kzt, TERMS[asset].decimals)


BTC_DUE = due(Asset.BTC)
HALF_BTC = BTC_DUE // 2


def fresh(tolerance: Decimal = Decimal(0)) -> InvoiceState:
    return InvoiceState.new(price_tiyn=PRICE, tolerance=tolerance, expires_at=EXPIRES, terms=TERMS)


def run(state: InvoiceState, *events: Event, now: datetime = T0) -> InvoiceState:
    for event in events:
        state = apply(state, event, now).state
    return state


def btc(payment_id: str, amount: int = BTC_DUE, conf: int = 0, *, held: bool = False) -> PaymentSeen:
    reason = "limit" if held else None
    return PaymentSeen(payment_id, Asset.BTC, amount, conf, False, held=held, hold_reason=reason)


def eth_due(payment_id: str = "eth") -> PaymentSeen:
    """A full payment that is final at once (ETH terms need 0 confirmations, no RBF)."""
    return PaymentSeen(payment_id, Asset.ETH, due(Asset.ETH), 0, False)


# -- ready-made states ---------------------------------------------------------------------------------


def partial() -> InvoiceState:
    return run(fresh(), btc("a", HALF_BTC))


def with_hold(state: InvoiceState, amount: int = HALF_BTC, payment_id: str = "h") -> InvoiceState:
    return run(state, btc(payment_id, amount, held=True))


def processing() -> InvoiceState:
    return run(fresh(), btc("a"))


def settled() -> InvoiceState:
    return run(fresh(), btc("a", conf=2))


def reversed_() -> InvoiceState:
    return run(settled(), PaymentDropped("a", DropReason.DOUBLE_SPENT))


def expired() -> InvoiceState:
    return run(fresh(), Tick(), now=LATER)


def cancelled() -> InvoiceState:
    return run(fresh(), Cancel())


def closed(status: Status) -> InvoiceState:
    return expired() if status is Status.EXPIRED else cancelled()


# -- one case per table row ----------------------------------------------------------------------------

Case = tuple[InvoiceState, Event, datetime]


def _closed_cases(status: Status) -> dict[tuple[Status, Trigger, str], Callable[[], Case]]:
    def late_held() -> InvoiceState:
        return with_hold(closed(status), BTC_DUE)

    return {
        (status, Trigger.PAYMENT, "otherwise"): lambda: (closed(status), btc("late"), LATER),
        (status, Trigger.HOLD, "otherwise"): lambda: (closed(status), btc("late", held=True), LATER),
        (status, Trigger.ACCEPT_LATE, "confirmed"): lambda: (
            run(closed(status), btc("late", conf=2)),
            AcceptLate(),
            LATER,
        ),
        (status, Trigger.ACCEPT_LATE, "paid"): lambda: (
            run(closed(status), btc("late")),
            AcceptLate(),
            LATER,
        ),
        (status, Trigger.CONFIRMATIONS, "otherwise"): lambda: (
            run(closed(status), btc("late")),
            PaymentConfirmations("late", 1),
            LATER,
        ),
        (status, Trigger.DROP, "otherwise"): lambda: (
            run(closed(status), btc("late")),
            PaymentDropped("late", DropReason.EVICTED),
            LATER,
        ),
        (status, Trigger.TICK, "otherwise"): lambda: (closed(status), Tick(), LATER),
        (status, Trigger.RELEASE, "otherwise"): lambda: (late_held(), ReleaseHold("h"), LATER),
        (status, Trigger.REFUND, "otherwise"): lambda: (late_held(), RefundHold("h"), LATER),
    }


N, P, ST, R = Status.NEW, Status.PROCESSING, Status.SETTLED, Status.REVERSED
TR = Trigger

ROW_CASES: dict[tuple[Status, Trigger, str], Callable[[], Case]] = {
    # new
    (N, TR.PAYMENT, "paid"): lambda: (fresh(), btc("a"), T0),
    (N, TR.PAYMENT, "otherwise"): lambda: (fresh(), btc("a", HALF_BTC), T0),
    (N, TR.RELEASE, "paid"): lambda: (with_hold(fresh(), BTC_DUE), ReleaseHold("h"), T0),
    (N, TR.RELEASE, "expiry due"): lambda: (with_hold(fresh()), ReleaseHold("h"), LATER),
    (N, TR.TICK, "expiry due"): lambda: (fresh(), Tick(), EXPIRES),
    (N, TR.DROP, "expiry due"): lambda: (with_hold(fresh()), PaymentDropped("h", DropReason.EVICTED), LATER),
    (N, TR.REFUND, "expiry due"): lambda: (with_hold(fresh()), RefundHold("h"), LATER),
    (N, TR.CANCEL, "nothing confirmed"): lambda: (partial(), Cancel(), T0),
    (N, TR.RELEASE, "otherwise"): lambda: (with_hold(fresh()), ReleaseHold("h"), T0),
    (N, TR.TICK, "otherwise"): lambda: (fresh(), Tick(), T0),
    (N, TR.DROP, "otherwise"): lambda: (partial(), PaymentDropped("a", DropReason.REPLACED), T0),
    (N, TR.REFUND, "otherwise"): lambda: (with_hold(fresh()), RefundHold("h"), T0),
    (N, TR.CONFIRMATIONS, "otherwise"): lambda: (partial(), PaymentConfirmations("a", 1), T0),
    (N, TR.HOLD, "otherwise"): lambda: (fresh(), btc("h", held=True), T0),
    # processing
    (P, TR.PAYMENT, "confirmed"): lambda: (processing(), eth_due(), T0),
    (P, TR.CONFIRMATIONS, "confirmed"): lambda: (processing(), PaymentConfirmations("a", 2), T0),
    (P, TR.RELEASE, "confirmed"): lambda: (
        run(processing(), PaymentSeen("h", Asset.ETH, due(Asset.ETH), 0, False, True, "limit")),
        ReleaseHold("h"),
        T0,
    ),
    (P, TR.DROP, "not paid, expiry due"): lambda: (
        processing(),
        PaymentDropped("a", DropReason.EVICTED),
        LATER,
    ),
    (P, TR.DROP, "not paid"): lambda: (processing(), PaymentDropped("a", DropReason.EVICTED), T0),
    (P, TR.CANCEL, "nothing confirmed"): lambda: (processing(), Cancel(), T0),
    (P, TR.PAYMENT, "otherwise"): lambda: (processing(), btc("b", 10), T0),
    (P, TR.CONFIRMATIONS, "otherwise"): lambda: (processing(), PaymentConfirmations("a", 1), T0),
    (P, TR.RELEASE, "otherwise"): lambda: (with_hold(processing()), ReleaseHold("h"), T0),
    (P, TR.DROP, "otherwise"): lambda: (
        run(processing(), btc("b", 10)),
        PaymentDropped("b", DropReason.EVICTED),
        T0,
    ),
    (P, TR.TICK, "otherwise"): lambda: (processing(), Tick(), LATER),
    (P, TR.HOLD, "otherwise"): lambda: (processing(), btc("h", held=True), T0),
    (P, TR.REFUND, "otherwise"): lambda: (with_hold(processing()), RefundHold("h"), T0),
    # settled
    (ST, TR.CONFIRMATIONS, "paid, unconfirmed"): lambda: (settled(), PaymentConfirmations("a", 1), T0),
    (ST, TR.DROP, "paid, unconfirmed"): lambda: (
        run(settled(), btc("b")),
        PaymentDropped("a", DropReason.REORGED_OUT),
        T0,
    ),
    (ST, TR.DROP, "not paid"): lambda: (settled(), PaymentDropped("a", DropReason.DOUBLE_SPENT), T0),
    (ST, TR.PAYMENT, "otherwise"): lambda: (settled(), btc("b", 10), T0),
    (ST, TR.CONFIRMATIONS, "otherwise"): lambda: (settled(), PaymentConfirmations("a", 3), T0),
    (ST, TR.DROP, "otherwise"): lambda: (
        run(settled(), btc("b", 10)),
        PaymentDropped("b", DropReason.EVICTED),
        T0,
    ),
    (ST, TR.TICK, "otherwise"): lambda: (settled(), Tick(), LATER),
    (ST, TR.HOLD, "otherwise"): lambda: (settled(), btc("h", held=True), T0),
    (ST, TR.RELEASE, "otherwise"): lambda: (with_hold(settled()), ReleaseHold("h"), T0),
    (ST, TR.REFUND, "otherwise"): lambda: (with_hold(settled()), RefundHold("h"), T0),
    # reversed
    (R, TR.PAYMENT, "dropped payment back, paid"): lambda: (reversed_(), btc("a", conf=0), T0),
    (R, TR.PAYMENT, "paid"): lambda: (reversed_(), btc("b"), T0),
    (R, TR.RELEASE, "paid"): lambda: (with_hold(reversed_(), BTC_DUE), ReleaseHold("h"), T0),
    (R, TR.PAYMENT, "otherwise"): lambda: (reversed_(), btc("b", 10), T0),
    (R, TR.CONFIRMATIONS, "otherwise"): lambda: (with_hold(reversed_()), PaymentConfirmations("h", 1), T0),
    (R, TR.DROP, "otherwise"): lambda: (with_hold(reversed_()), PaymentDropped("h", DropReason.EVICTED), T0),
    (R, TR.TICK, "otherwise"): lambda: (reversed_(), Tick(), LATER),
    (R, TR.HOLD, "otherwise"): lambda: (reversed_(), btc("h", held=True), T0),
    (R, TR.RELEASE, "otherwise"): lambda: (with_hold(reversed_()), ReleaseHold("h"), T0),
    (R, TR.REFUND, "otherwise"): lambda: (with_hold(reversed_()), RefundHold("h"), T0),
    # expired and cancelled
    **_closed_cases(Status.EXPIRED),
    **_closed_cases(Status.CANCELLED),
}


def _key(row: Row) -> tuple[Status, Trigger, str]:
    return (row.from_status, row.trigger, row.guard.label)


def test_every_row_has_a_case_and_every_case_a_row() -> None:
    assert sorted(map(_key, TABLE)) == sorted(ROW_CASES)
    assert len({_key(row) for row in TABLE}) == len(TABLE), "a (status, trigger, guard) appears twice"


@pytest.mark.parametrize("row", TABLE, ids=lambda r: f"{r.from_status}-{r.trigger}-{r.guard.label}")
def test_row(row: Row) -> None:
    state, event, now = ROW_CASES[_key(row)]()
    assert state.status is row.from_status, "the case does not start where the row does"
    outcome = apply(state, event, now)
    assert outcome.rows[0] == row
    assert row.flags_added <= outcome.state.flags
    if row.to_status is row.from_status:
        assert outcome.transitions == ()
        assert outcome.state.status is row.from_status
    else:
        assert outcome.transitions[0] == (row.from_status, row.to_status)
        assert f"invoice.{row.to_status}" in outcome.notifications or row.to_status is Status.NEW
    _assert_replay_is_inert(outcome, event, now)


def _assert_replay_is_inert(outcome: Outcome, event: Event, now: datetime) -> None:
    try:
        again = apply(outcome.state, event, now)
    except IllegalTransition:
        return
    assert not again.changed
    assert again.state == outcome.state
    assert again.notifications == ()


# -- new -----------------------------------------------------------------------------------------------


def test_a_confirmed_payment_settles_through_processing_in_one_step() -> None:
    outcome = apply(fresh(), btc("a", conf=2), T0)
    assert outcome.state.status is Status.SETTLED
    assert outcome.transitions == ((Status.NEW, Status.PROCESSING), (Status.PROCESSING, Status.SETTLED))
    assert outcome.notifications == (
        "payment.detected",
        "payment.confirmed",
        "invoice.processing",
        "invoice.settled",
    )
    assert outcome.state.version == 1


def test_a_paid_but_unconfirmed_payment_waits_in_processing() -> None:
    outcome = apply(fresh(), btc("a", conf=1), T0)
    assert outcome.state.status is Status.PROCESSING
    assert outcome.notifications == ("payment.detected", "invoice.processing")
    settled_now = apply(outcome.state, PaymentConfirmations("a", 2), T0)
    assert settled_now.state.status is Status.SETTLED
    assert settled_now.notifications == ("payment.confirmed", "invoice.settled")


def test_partial_payments_are_underpaid_until_the_rest_arrives() -> None:
    first = apply(fresh(), btc("a", HALF_BTC), T0)
    assert first.state.status is Status.NEW
    assert first.state.flags == {Flag.UNDERPAID}
    assert first.notifications == ("payment.detected", "invoice.underpaid")
    remaining = amount_remaining_minor(first.state, Asset.BTC)
    assert remaining == BTC_DUE - HALF_BTC
    second = apply(first.state, btc("b", remaining // 2), T0)
    assert second.notifications == ("payment.detected",), "underpaid is announced once"
    rest = amount_remaining_minor(second.state, Asset.BTC)
    last = apply(second.state, btc("c", rest), T0)
    assert last.state.status is Status.PROCESSING
    assert Flag.UNDERPAID not in last.state.flags
    assert Flag.OVERPAID not in last.state.flags
    assert amount_remaining_minor(last.state, Asset.BTC) == 0


def test_paying_in_two_assets_adds_up() -> None:
    state = run(fresh(), btc("a", HALF_BTC))
    usdt_rest = amount_remaining_minor(state, Asset.USDT)
    state = run(state, PaymentSeen("u", Asset.USDT, usdt_rest, 1, False))
    assert state.status is Status.PROCESSING  # BTC still needs its confirmations
    state = run(state, PaymentConfirmations("a", 2))
    assert state.status is Status.SETTLED
    assert state.flags == frozenset()


def test_expiry_happens_at_the_deadline_not_before() -> None:
    before = apply(fresh(), Tick(), EXPIRES - timedelta(microseconds=1))
    assert not before.changed
    at = apply(fresh(), Tick(), EXPIRES)
    assert at.state.status is Status.EXPIRED
    assert at.notifications == ("invoice.expired",)
    assert at.state.flags == frozenset()


def test_expiry_after_a_partial_payment_keeps_underpaid() -> None:
    outcome = apply(partial(), Tick(), LATER)
    assert outcome.state.status is Status.EXPIRED
    assert outcome.state.flags == {Flag.UNDERPAID}
    assert outcome.notifications == ("invoice.expired",)


def test_a_hold_suspends_expiry_until_it_is_resolved() -> None:
    held = with_hold(fresh())
    assert held.flags == {Flag.ON_HOLD}
    assert not apply(held, Tick(), LATER).changed
    outcome = apply(held, RefundHold("h"), LATER)
    assert outcome.state.status is Status.EXPIRED
    assert Flag.ON_HOLD not in outcome.state.flags
    assert outcome.notifications == ("payment.refunded", "invoice.expired")


def test_a_payment_detected_after_the_deadline_is_late_even_before_the_sweep() -> None:
    outcome = apply(fresh(), btc("a"), LATER)
    assert outcome.transitions == ((Status.NEW, Status.EXPIRED),)
    assert outcome.state.flags == {Flag.PAID_LATE}
    assert outcome.state.payments["a"].late
    assert outcome.notifications == ("invoice.expired", "payment.detected", "invoice.paid_late")
    assert outcome.state.version == 1, "expiry and the late payment are one change"
    assert accepted_value_tiyn(outcome.state) == 0, "late money does not count until accepted"


# -- holds ---------------------------------------------------------------------------------------------


def test_a_held_payment_does_not_count_until_released() -> None:
    outcome = apply(fresh(), btc("h", conf=2, held=True), T0)
    assert outcome.state.status is Status.NEW
    assert outcome.state.flags == {Flag.ON_HOLD}
    assert outcome.notifications == ("payment.detected", "payment.held")
    assert outcome.state.payments["h"].status is PaymentStatus.HELD
    released = apply(outcome.state, ReleaseHold("h"), T0)
    assert released.state.status is Status.SETTLED, "its confirmations already count"
    assert released.state.flags == frozenset()
    assert released.notifications == (
        "payment.released",
        "payment.confirmed",
        "invoice.processing",
        "invoice.settled",
    )
    assert released.state.payments["h"].hold_reason is None


def test_on_hold_stays_while_any_payment_is_held() -> None:
    state = with_hold(with_hold(fresh(), 10, "h1"), 10, "h2")
    state = run(state, ReleaseHold("h1"))
    assert Flag.ON_HOLD in state.flags
    state = run(state, RefundHold("h2"))
    assert Flag.ON_HOLD not in state.flags
    assert state.payments["h2"].status is PaymentStatus.REFUNDED
    assert state.payments["h2"].hold_reason == "limit", "the refund record keeps why it was held"


def test_a_held_payment_that_drops_and_comes_back_is_held_again() -> None:
    state = run(with_hold(fresh(), BTC_DUE), PaymentDropped("h", DropReason.EVICTED))
    assert Flag.ON_HOLD not in state.flags
    outcome = apply(state, PaymentSeen("h", Asset.BTC, BTC_DUE, 0, False), T0)
    assert outcome.state.payments["h"].status is PaymentStatus.HELD
    assert outcome.state.status is Status.NEW
    assert Flag.ON_HOLD in outcome.state.flags


def test_a_hold_without_a_reason_gets_one() -> None:
    state = run(fresh(), PaymentSeen("h", Asset.BTC, 10, 0, False, held=True))
    assert state.payments["h"].hold_reason == "held"


@pytest.mark.parametrize(
    "event", [ReleaseHold("a"), RefundHold("a"), ReleaseHold("nope"), RefundHold("nope")]
)
def test_releasing_or_refunding_a_payment_that_is_not_held_is_illegal(event: Event) -> None:
    state = partial()
    with pytest.raises(IllegalTransition, match="not held") as info:
        apply(state, event, T0)
    assert info.value.status is Status.NEW
    assert info.value.event == event


def test_a_hold_on_a_paid_invoice_changes_no_status() -> None:
    outcome = apply(settled(), btc("h", held=True), T0)
    assert outcome.state.status is Status.SETTLED
    assert outcome.transitions == ()
    assert outcome.notifications == ("payment.detected", "payment.held")


# -- cancel and other illegal events -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "event"),
    [
        pytest.param(settled, Cancel(), id="cancel-settled"),
        pytest.param(expired, Cancel(), id="cancel-expired"),
        pytest.param(cancelled, Cancel(), id="cancel-cancelled"),
        pytest.param(reversed_, Cancel(), id="cancel-reversed"),
        pytest.param(lambda: run(fresh(), btc("a", HALF_BTC, conf=1)), Cancel(), id="cancel-new-confirmed"),
        pytest.param(lambda: run(fresh(), btc("a", conf=1)), Cancel(), id="cancel-processing-confirmed"),
        pytest.param(fresh, AcceptLate(), id="accept_late-new"),
        pytest.param(processing, AcceptLate(), id="accept_late-processing"),
        pytest.param(settled, AcceptLate(), id="accept_late-settled"),
        pytest.param(reversed_, AcceptLate(), id="accept_late-reversed"),
        pytest.param(expired, AcceptLate(), id="accept_late-expired-nothing-paid"),
        pytest.param(
            lambda: run(expired(), btc("late", HALF_BTC), now=LATER),
            AcceptLate(),
            id="accept_late-expired-partial",
        ),
        pytest.param(cancelled, AcceptLate(), id="accept_late-cancelled-nothing-paid"),
    ],
)
def test_illegal_events_raise_and_change_nothing(make: Callable[[], InvoiceState], event: Event) -> None:
    state = make()
    snapshot = dataclasses.replace(state)
    with pytest.raises(IllegalTransition) as info:
        apply(state, event, T0)
    assert info.value.status is state.status
    assert info.value.event == event
    assert type(event).__name__ in str(info.value)
    assert state.status.value in str(info.value)
    assert state == snapshot


def test_cancel_is_refused_after_the_deadline_because_the_invoice_has_expired() -> None:
    with pytest.raises(IllegalTransition, match="expired") as info:
        apply(fresh(), Cancel(), LATER)
    assert info.value.status is Status.EXPIRED


def test_cancel_ignores_confirmations_of_money_that_does_not_count() -> None:
    state = with_hold(fresh(), 10)
    state = run(state, PaymentConfirmations("h", 3))
    assert apply(state, Cancel(), T0).state.status is Status.CANCELLED


# -- late payments -------------------------------------------------------------------------------------


@pytest.mark.parametrize("make", [expired, cancelled])
def test_late_money_is_recorded_then_accepted_on_request(make: Callable[[], InvoiceState]) -> None:
    state = make()
    seen = apply(state, btc("late"), LATER)
    assert seen.state.status is state.status
    assert Flag.PAID_LATE in seen.state.flags
    assert seen.state.payments["late"].late
    assert seen.notifications == ("payment.detected", "invoice.paid_late")
    waiting = apply(seen.state, AcceptLate(), LATER)
    assert waiting.state.status is Status.PROCESSING
    assert waiting.state.late_accepted
    assert waiting.notifications == ("invoice.processing",)
    done = apply(waiting.state, PaymentConfirmations("late", 2), LATER)
    assert done.state.status is Status.SETTLED
    assert done.state.flags == {Flag.PAID_LATE}


def test_accepting_confirmed_late_money_settles_directly() -> None:
    state = run(expired(), btc("late", conf=5), now=LATER)
    outcome = apply(state, AcceptLate(), LATER)
    assert outcome.transitions == ((Status.EXPIRED, Status.SETTLED),)
    assert outcome.notifications == ("invoice.settled",)


def test_a_refused_accept_late_leaves_late_accepted_unset() -> None:
    state = run(expired(), btc("late", HALF_BTC), now=LATER)
    with pytest.raises(IllegalTransition, match="paid"):
        apply(state, AcceptLate(), LATER)
    assert not state.late_accepted


# -- overpaid and tolerance ----------------------------------------------------------------------------


@pytest.mark.parametrize("asset", list(Asset))
def test_paying_exactly_the_rounded_up_due_is_not_an_overpayment(asset: Asset) -> None:
    amount = due(asset)
    value = amount * rate_per_minor_unit(TERMS[asset].rate_kzt, TERMS[asset].decimals)
    assert value >= PRICE
    conf = TERMS[asset].confirmations_required
    state = run(fresh(), PaymentSeen("p", asset, amount, conf, False))
    assert state.status is Status.SETTLED
    assert Flag.OVERPAID not in state.flags


def test_overpaid_means_more_than_one_smallest_unit_per_asset_over_the_price() -> None:
    sat = rate_per_minor_unit(TERMS[Asset.BTC].rate_kzt, 8)  # 30 tiyn
    # 33 334 sat = 1 000 020 tiyn, within price + 30; one sat more is 1 000 050: beyond it.
    assert BTC_DUE * sat - PRICE < sat
    assert Flag.OVERPAID not in run(fresh(), btc("a", BTC_DUE, 2)).flags
    outcome = apply(fresh(), btc("a", BTC_DUE + 1000, 2), T0)
    assert Flag.OVERPAID in outcome.state.flags
    assert outcome.notifications[-1] == "invoice.overpaid"


def test_the_slack_grows_with_each_asset_paid_in() -> None:
    # Half in BTC, the rest in USDT rounded up, plus one more USDT unit: within one unit per asset.
    state = run(fresh(), btc("a", HALF_BTC, 2))
    rest = amount_remaining_minor(state, Asset.USDT)
    state = run(state, PaymentSeen("u", Asset.USDT, rest + 1, 1, False))
    assert state.status is Status.SETTLED
    assert Flag.OVERPAID not in state.flags
    state = run(state, PaymentSeen("u2", Asset.USDT, 10_000, 1, False))  # 500 tiyn more
    assert Flag.OVERPAID in state.flags


def test_an_extra_payment_on_a_settled_invoice_is_an_overpayment() -> None:
    outcome = apply(settled(), eth_due("extra"), T0)
    assert outcome.state.status is Status.SETTLED
    assert outcome.notifications == ("payment.detected", "payment.confirmed", "invoice.overpaid")


def test_overpaid_is_cleared_when_the_surplus_disappears() -> None:
    state = run(processing(), btc("b"))
    assert Flag.OVERPAID in state.flags
    state = run(state, PaymentDropped("b", DropReason.REPLACED))
    assert Flag.OVERPAID not in state.flags
    assert state.status is Status.PROCESSING


def test_tolerance_forgives_a_small_shortfall() -> None:
    tolerant = fresh(Decimal("0.005"))
    just_enough = 33_167  # 995 010 tiyn at 30 tiyn/sat: the fewest sats worth 99.5 % of the price
    assert just_enough * 30 >= PRICE * 995 // 1000 > (just_enough - 1) * 30
    paid = run(tolerant, btc("a", just_enough, 2))
    assert paid.status is Status.SETTLED
    assert paid.flags == frozenset()
    assert amount_remaining_minor(paid, Asset.BTC) == 0
    short = run(tolerant, btc("a", just_enough - 1, 2))
    assert short.status is Status.NEW
    assert short.flags == {Flag.UNDERPAID}
    assert Flag.UNDERPAID in run(fresh(), btc("a", just_enough, 2)).flags, "no tolerance, no forgiveness"


def test_is_paid_compares_exact_fractions() -> None:
    state = fresh(Decimal("0.005"))
    assert is_paid(Fraction(995_000), state)
    assert not is_paid(Fraction(995_000) - Fraction(1, 10**9), state)


def test_amount_remaining_starts_at_the_quoted_due_and_rounds_up() -> None:
    state = fresh()
    for asset in Asset:
        assert amount_remaining_minor(state, asset) == due(asset)
    state = run(state, btc("a", 1))  # 30 tiyn paid
    assert amount_remaining_minor(state, Asset.USDT) == 19_999_400  # (1 000 000 − 30) / 0.05
    state = run(state, PaymentSeen("u", Asset.USDT, 1, 1, False))  # 0.05 tiyn more
    assert amount_remaining_minor(state, Asset.USDT) == 19_999_399
    assert amount_remaining_minor(state, Asset.BTC) == BTC_DUE - 1
    with pytest.raises(ValueError, match="does not accept"):
        amount_remaining_minor(dataclasses.replace(state, terms={Asset.BTC: TERMS[Asset.BTC]}), Asset.ETH)


def test_values_count_only_accepted_payments() -> None:
    state = run(fresh(), btc("a", 100, 2), btc("b", 100, 0), btc("h", 100, 5, held=True))
    assert accepted_value_tiyn(state) == 200 * 30
    assert confirmed_value_tiyn(state) == 100 * 30


# -- confirmations and RBF -----------------------------------------------------------------------------


def test_rbf_signalling_needs_one_confirmation_even_when_the_policy_needs_none() -> None:
    rbf = PaymentSeen("e", Asset.ETH, due(Asset.ETH), 0, True)
    state = run(fresh(), rbf)
    assert required_confirmations(state, state.payments["e"]) == 1
    assert state.status is Status.PROCESSING
    assert run(state, PaymentConfirmations("e", 1)).status is Status.SETTLED
    assert run(fresh(), eth_due()).status is Status.SETTLED
    rbf_btc = run(fresh(), PaymentSeen("b", Asset.BTC, 1, 0, True))
    assert required_confirmations(rbf_btc, rbf_btc.payments["b"]) == 2, "more than 1 stays more"


def test_payment_confirmed_is_announced_when_the_count_is_reached() -> None:
    state = processing()
    assert apply(state, PaymentConfirmations("a", 1), T0).notifications == ()
    state = run(state, PaymentConfirmations("a", 1))
    outcome = apply(state, PaymentConfirmations("a", 2), T0)
    assert outcome.notifications == ("payment.confirmed", "invoice.settled")
    assert "payment.confirmed" not in apply(outcome.state, PaymentConfirmations("a", 3), T0).notifications


def test_seeing_a_known_payment_again_is_a_confirmation_update() -> None:
    state = processing()
    assert not apply(state, btc("a"), T0).changed
    outcome = apply(state, btc("a", conf=2), T0)
    assert outcome.state.status is Status.SETTLED
    assert outcome.rows[0].trigger is Trigger.CONFIRMATIONS


# -- reorgs --------------------------------------------------------------------------------------------


def test_a_reorg_that_unconfirms_a_settled_payment_goes_back_to_processing() -> None:
    outcome = apply(settled(), PaymentConfirmations("a", 0), T0)
    assert outcome.transitions == ((Status.SETTLED, Status.PROCESSING),)
    assert outcome.state.flags == {Flag.REORGED}
    assert outcome.notifications == ("invoice.processing", "invoice.reorged")
    again = apply(outcome.state, PaymentConfirmations("a", 2), T0)
    assert again.state.status is Status.SETTLED
    assert again.state.flags == {Flag.REORGED}, "reorged is history: it stays"
    assert again.notifications == ("payment.confirmed", "invoice.settled")


def test_a_settled_payment_gone_for_good_reverses_the_invoice() -> None:
    outcome = apply(settled(), PaymentDropped("a", DropReason.DOUBLE_SPENT), T0)
    assert outcome.state.status is Status.REVERSED
    assert outcome.notifications == ("payment.dropped", "invoice.reversed")
    assert outcome.state.payments["a"].status is PaymentStatus.DROPPED


def test_a_settled_invoice_keeps_its_status_when_a_surplus_payment_drops() -> None:
    state = run(settled(), btc("b", conf=2))
    outcome = apply(state, PaymentDropped("a", DropReason.REORGED_OUT), T0)
    assert outcome.state.status is Status.SETTLED


def test_a_reversed_payment_seen_again_comes_back_through_processing() -> None:
    outcome = apply(reversed_(), PaymentSeen("a", Asset.BTC, BTC_DUE, 1, False), T0)
    assert outcome.state.status is Status.PROCESSING
    assert outcome.state.flags == {Flag.REORGED}
    assert outcome.state.payments["a"].status is PaymentStatus.ACCEPTED
    assert outcome.notifications == ("payment.detected", "invoice.processing", "invoice.reorged")


def test_a_reversed_payment_mined_again_with_enough_confirmations_settles_in_the_same_step() -> None:
    outcome = apply(reversed_(), PaymentConfirmations("a", 2), T0)
    assert outcome.transitions == ((Status.REVERSED, Status.PROCESSING), (Status.PROCESSING, Status.SETTLED))
    assert outcome.state.flags == {Flag.REORGED}
    assert outcome.notifications == (
        "payment.detected",
        "payment.confirmed",
        "invoice.processing",
        "invoice.settled",
        "invoice.reorged",
    )


def test_processing_falls_back_to_new_when_a_payment_is_replaced() -> None:
    outcome = apply(processing(), PaymentDropped("a", DropReason.REPLACED), T0)
    assert outcome.transitions == ((Status.PROCESSING, Status.NEW),)
    assert outcome.notifications == ("payment.dropped",)
    replacement = apply(outcome.state, btc("a2"), T0)
    assert replacement.state.status is Status.PROCESSING


def test_a_drop_is_idempotent() -> None:
    state = run(processing(), PaymentDropped("a", DropReason.EVICTED))
    outcome = apply(state, PaymentDropped("a", DropReason.DOUBLE_SPENT), T0)
    assert not outcome.changed


# -- input validation ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("event", "message"),
    [
        (PaymentSeen("x", Asset.BTC, 0, 0, False), "positive"),
        (PaymentSeen("x", Asset.BTC, -5, 0, False), "positive"),
        (PaymentSeen("x", Asset.BTC, 5, -1, False), "negative"),
        (PaymentConfirmations("a", -1), "negative"),
        (PaymentConfirmations("nope", 1), "unknown"),
        (PaymentDropped("nope", DropReason.EVICTED), "unknown"),
        (PaymentSeen("a", Asset.BTC, HALF_BTC + 1, 0, False), "was seen as"),
    ],
)
def test_bad_input_is_a_value_error_not_a_transition(event: Event, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        apply(partial(), event, T0)


def test_an_asset_outside_the_terms_is_refused() -> None:
    state = InvoiceState.new(PRICE, Decimal(0), EXPIRES, {Asset.BTC: TERMS[Asset.BTC]})
    with pytest.raises(ValueError, match="does not accept ETH"):
        apply(state, eth_due(), T0)


@pytest.mark.parametrize(
    ("price", "tolerance", "terms"),
    [
        (0, Decimal(0), TERMS),
        (PRICE, Decimal("-0.1"), TERMS),
        (PRICE, Decimal(1), TERMS),
        (PRICE, Decimal(0), {}),
        (PRICE, Decimal(0), {Asset.ETH: TERMS[Asset.BTC]}),
        (PRICE, Decimal(0), {Asset.BTC: AssetTerms(Asset.BTC, Decimal(0), 8, 1)}),
        (PRICE, Decimal(0), {Asset.BTC: AssetTerms(Asset.BTC, Decimal(1), 8, -1)}),
    ],
)
def test_new_refuses_terms_it_cannot_compute_with(
    price: int, tolerance: Decimal, terms: dict[Asset, AssetTerms]
) -> None:
    with pytest.raises(ValueError):
        InvoiceState.new(price, tolerance, EXPIRES, terms)


# -- state as a value ----------------------------------------------------------------------------------


def test_versions_count_changes_only() -> None:
    state = fresh()
    first = apply(state, btc("a", HALF_BTC), T0)
    assert first.state.version == 1
    noop = apply(first.state, Tick(), T0)
    assert not noop.changed
    assert noop.state.version == 1
    assert apply(noop.state, btc("b", HALF_BTC), T0).state.version == 2


def test_states_built_from_plain_dicts_equal_frozen_ones() -> None:
    state = processing()
    rebuilt = dataclasses.replace(
        state,
        terms=dict(state.terms),
        payments=dict(state.payments),
        flags=set(state.flags),  # type: ignore[arg-type]
    )
    assert rebuilt == state
    assert hash(rebuilt) == hash(state)
    assert isinstance(rebuilt.payments, FrozenMap)
    with pytest.raises(TypeError):
        rebuilt.payments["x"] = state.payments["a"]  # type: ignore[index]


def test_payments_are_records_not_mutable_rows() -> None:
    payment = processing().payments["a"]
    assert isinstance(payment, Payment)
    with pytest.raises(dataclasses.FrozenInstanceError):
        payment.confirmations = 5  # type: ignore[misc]


# -- the documented diagram ----------------------------------------------------------------------------

DOCS = Path(__file__).resolve().parents[2] / "docs" / "lifecycle.md"


def test_the_docs_diagram_is_generated_from_the_table() -> None:
    text = DOCS.read_text(encoding="utf-8")
    match = re.search(r"<!-- diagram:start -->\n```mermaid\n(.*?)```\n<!-- diagram:end -->", text, re.DOTALL)
    assert match, "docs/lifecycle.md lost its diagram markers"
    assert match.group(1) == mermaid_diagram(), (
        "the diagram in docs/lifecycle.md is out of date; regenerate it with "
        "`python -m gateway.invoices.lifecycle` and paste it between the diagram markers"
    )


def test_the_diagram_draws_every_status_change_of_the_table() -> None:
    diagram = mermaid_diagram()
    assert diagram.startswith("stateDiagram-v2\n")
    for row in TABLE:
        if row.from_status is not row.to_status:
            assert f"{row.from_status} --> {row.to_status} :" in diagram
            assert row.trigger.value in diagram
