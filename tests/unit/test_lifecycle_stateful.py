"""Random event streams against the lifecycle, checking the invariants the rest of the gateway relies on.

The machine is driven the way the chain watchers, the clock and the APIs would drive it, including the
awkward orders (confirmations going down, drops of held payments, accept-late on unpaid invoices), and
every event is applied a second time to check that replays are inert.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from gateway.invoices.lifecycle import (
    TABLE,
    AcceptLate,
    AssetTerms,
    Cancel,
    DropReason,
    Event,
    Flag,
    IllegalTransition,
    InvoiceState,
    PaymentConfirmations,
    PaymentDropped,
    PaymentSeen,
    PaymentStatus,
    RefundHold,
    ReleaseHold,
    Status,
    Tick,
    accepted_value_tiyn,
    amount_remaining_minor,
    apply,
    confirmed_value_tiyn,
    is_paid,
)
from gateway.money import Asset, crypto_due

T0 = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
RATES = {
    Asset.BTC: (Decimal("30000000"), 8),
    Asset.ETH: (Decimal("1500000"), 18),
    Asset.USDT: (Decimal("500"), 6),
}
STEPS = {(row.from_status, row.to_status) for row in TABLE if row.from_status is not row.to_status}
NOTIFICATIONS = {
    *(f"invoice.{s}" for s in ("processing", "settled", "expired", "cancelled", "reversed")),
    *(f"invoice.{f}" for f in ("paid_late", "overpaid", "underpaid", "reorged")),
    *(f"payment.{p}" for p in ("detected", "confirmed", "dropped", "held", "released", "refunded")),
}


class Lifecycle(RuleBasedStateMachine):
    state: InvoiceState
    now: datetime

    def __init__(self) -> None:
        super().__init__()
        self.counter = 0

    @initialize(
        price=st.integers(min_value=1, max_value=10**9),
        tolerance=st.sampled_from([Decimal(0), Decimal("0.005"), Decimal("0.02")]),
        confirmations=st.lists(st.integers(min_value=0, max_value=3), min_size=3, max_size=3),
        assets=st.sets(st.sampled_from(list(Asset)), min_size=1),
        expires_in=st.integers(min_value=60, max_value=1200),
    )
    def start(
        self, price: int, tolerance: Decimal, confirmations: list[int], assets: set[Asset], expires_in: int
    ) -> None:
        terms = {
            asset: AssetTerms(asset, RATES[asset][0], RATES[asset][1], conf)
            for asset, conf in zip(Asset, confirmations, strict=True)
            if asset in assets
        }
        self.now = T0
        self.state = InvoiceState.new(price, tolerance, T0 + timedelta(seconds=expires_in), terms)

    # -- driving ----------------------------------------------------------------------------------------

    def send(self, event: Event) -> None:
        before = self.state
        try:
            outcome = apply(before, event, self.now)
        except IllegalTransition:
            return  # refused; the state is immutable, so nothing to check beyond keeping `before`
        after = outcome.state
        for step in outcome.transitions:
            assert step in STEPS, f"{step} is not a row of the table"
        assert all(row in TABLE for row in outcome.rows)
        assert set(outcome.notifications) <= NOTIFICATIONS
        if outcome.changed:
            assert after.version == before.version + 1
            assert after != before
        else:
            assert after == before
            assert outcome.notifications == ()
        self.state = after
        # Replaying the same event at once (a retried webhook from a watcher, a double click) is inert.
        try:
            again = apply(after, event, self.now)
        except IllegalTransition:
            return
        assert not again.changed, f"replaying {event} changed the state"
        assert again.state == after
        assert again.notifications == ()

    def payment_ids(self, *statuses: PaymentStatus) -> list[str]:
        return [p.payment_id for p in self.state.payments.values() if not statuses or p.status in statuses]

    def amount(self, asset: Asset, kind: str, fraction: int) -> int:
        terms = self.state.terms[asset]
        full = crypto_due(self.state.price_tiyn, terms.rate_kzt, terms.decimals)
        if kind == "exact":
            return full
        if kind == "remaining":
            return max(amount_remaining_minor(self.state, asset), 1)
        return max(full * fraction // 100, 1)  # a share of the due: under, over or way over

    # -- rules --------------------------------------------------------------------------------------------

    @rule(
        data=st.data(),
        kind=st.sampled_from(["exact", "remaining", "share"]),
        fraction=st.integers(min_value=1, max_value=250),
        conf=st.integers(min_value=0, max_value=4),
        rbf=st.booleans(),
    )
    def pay(self, data: st.DataObject, kind: str, fraction: int, conf: int, rbf: bool) -> None:
        self.send(self.payment(data, kind, fraction, conf, rbf, held=False))

    @rule(
        data=st.data(),
        kind=st.sampled_from(["exact", "remaining", "share"]),
        fraction=st.integers(min_value=1, max_value=250),
        conf=st.integers(min_value=0, max_value=4),
    )
    def pay_held(self, data: st.DataObject, kind: str, fraction: int, conf: int) -> None:
        self.send(self.payment(data, kind, fraction, conf, False, held=True))

    def payment(
        self, data: st.DataObject, kind: str, fraction: int, conf: int, rbf: bool, *, held: bool
    ) -> Event:
        asset = data.draw(st.sampled_from(sorted(self.state.terms)))
        self.counter += 1
        amount = self.amount(asset, kind, fraction)
        return PaymentSeen(f"p{self.counter}", asset, amount, conf, rbf, held=held)

    @precondition(lambda self: bool(self.state.payments))
    @rule(data=st.data(), delta=st.integers(min_value=-3, max_value=3))
    def confirm(self, data: st.DataObject, delta: int) -> None:
        payment = self.state.payments[data.draw(st.sampled_from(self.payment_ids()))]
        self.send(PaymentConfirmations(payment.payment_id, max(payment.confirmations + delta, 0)))

    @precondition(lambda self: bool(self.state.payments))
    @rule(data=st.data(), delta=st.integers(min_value=-1, max_value=1))
    def see_again(self, data: st.DataObject, delta: int) -> None:
        payment = self.state.payments[data.draw(st.sampled_from(self.payment_ids()))]
        confirmations = max(payment.confirmations + delta, 0)
        p = payment
        self.send(PaymentSeen(p.payment_id, p.asset, p.amount_minor, confirmations, p.rbf_signalling))

    @precondition(lambda self: bool(self.state.payments))
    @rule(data=st.data(), reason=st.sampled_from(list(DropReason)))
    def drop(self, data: st.DataObject, reason: DropReason) -> None:
        live = self.payment_ids(PaymentStatus.ACCEPTED, PaymentStatus.HELD)  # usually something that counts
        self.send(PaymentDropped(data.draw(st.sampled_from(live or self.payment_ids())), reason))

    @rule(seconds=st.integers(min_value=0, max_value=600))
    def tick(self, seconds: int) -> None:
        self.now += timedelta(seconds=seconds)
        self.send(Tick())

    @rule(event=st.sampled_from([Cancel(), AcceptLate()]))
    def merchant(self, event: Event) -> None:
        self.send(event)

    @precondition(lambda self: bool(self.state.payments))
    @rule(data=st.data(), refund=st.booleans())
    def regulator(self, data: st.DataObject, refund: bool) -> None:
        """Mostly a held payment; sometimes another one, which must be refused."""
        payment_id = data.draw(st.sampled_from(self.payment_ids(PaymentStatus.HELD) or self.payment_ids()))
        self.send(RefundHold(payment_id) if refund else ReleaseHold(payment_id))

    # -- invariants ------------------------------------------------------------------------------------------

    @invariant()
    def status_matches_the_money(self) -> None:
        state = self.state
        paid = is_paid(accepted_value_tiyn(state), state)
        confirmed = is_paid(confirmed_value_tiyn(state), state)
        if state.status is Status.SETTLED:
            assert confirmed
        if state.status is Status.PROCESSING:
            assert paid
            assert not confirmed
        if state.status is Status.NEW:
            assert not paid

    @invariant()
    def nothing_is_negative(self) -> None:
        state = self.state
        assert state.price_tiyn > 0
        assert state.version >= 0
        for payment in state.payments.values():
            assert payment.amount_minor > 0
            assert payment.confirmations >= 0
        for asset in state.terms:
            assert amount_remaining_minor(state, asset) >= 0
        assert accepted_value_tiyn(state) >= confirmed_value_tiyn(state) >= 0

    @invariant()
    def flags_follow_the_payments(self) -> None:
        state = self.state
        held = any(p.status is PaymentStatus.HELD for p in state.payments.values())
        assert (Flag.ON_HOLD in state.flags) == held
        accepted = accepted_value_tiyn(state)
        assert (Flag.UNDERPAID in state.flags) == (accepted > 0 and not is_paid(accepted, state))
        assert not {Flag.UNDERPAID, Flag.OVERPAID} <= state.flags
        if any(p.late for p in state.payments.values()):
            assert Flag.PAID_LATE in state.flags


TestLifecycle = Lifecycle.TestCase
TestLifecycle.settings = settings(
    max_examples=200,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
