"""The invoice lifecycle: a sans-I/O state machine whose transitions are one table of data.

Everything that affects the machine lives in this file (the rule h11 keeps for its ``_state.py``): the
statuses, the flags, the events, the table, the guards the table refers to, and ``apply``. The machine never
reads a clock or touches a store; the caller passes ``now`` and writes the returned state together with the
returned notifications in one transaction. States are immutable, so a refused event (``IllegalTransition``)
or an invalid one (``ValueError``) cannot leave anything half changed.

How ``apply`` works, in four steps:

1. The event's effect on the *payments* is computed first (a payment is added, re-confirmed, dropped,
   released...). That effect does not depend on the invoice status, except that a payment first seen while
   the invoice is expired or cancelled is marked late.
2. The event maps to a *trigger* (``payment``, ``confirmations``, ``drop``, ``tick``, ``cancel``,
   ``accept_late``, ``hold``, ``release``, ``refund``). The table rows for (status, trigger) are tried in
   order and the first whose guard holds on the new facts (is it paid, confirmed, past expiry, held...) is
   taken. No matching row means the event is illegal in this status.
3. Derived transitions: the rows for (new status, same trigger) are tried again until a row keeps the status
   (or none matches). That is how one payment takes an invoice new → processing → settled in one step.
4. Flags: ``paid_late`` and ``reorged`` are history and only ever added, by the rows that were taken;
   ``underpaid``, ``overpaid`` and ``on_hold`` describe the payments as they are now, so they are recomputed
   from them after every event (a surplus payment that is dropped is no longer an overpayment).

One more rule: an invoice still ``new`` whose deadline has passed is expired *before* any other event is
applied (as if the caller's ``Tick`` had run first), because lateness is judged by the gateway clock at
detection, not by when the periodic expiry sweep happens to run.

Run ``python -m gateway.invoices.lifecycle`` to print the table as a Mermaid state diagram (docs/lifecycle.md
embeds it, and a test keeps the two equal).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from fractions import Fraction
from typing import TypeVar

from gateway.money import Asset, rate_per_minor_unit, value_in_tiyn_exact

# -- vocabulary --------------------------------------------------------------------------------------


class Status(StrEnum):
    """Where the invoice is in its life; exactly one at a time."""

    NEW = "new"
    PROCESSING = "processing"  # paid, waiting for confirmations
    SETTLED = "settled"
    EXPIRED = "expired"
    CANCELLED = "cancelled"
    REVERSED = "reversed"  # was settled, then a counted payment disappeared for good


class Flag(StrEnum):
    """Exceptions that sit beside the status (BTCPay's second axis); any number at a time."""

    UNDERPAID = "underpaid"
    OVERPAID = "overpaid"
    PAID_LATE = "paid_late"
    ON_HOLD = "on_hold"
    REORGED = "reorged"


class PaymentStatus(StrEnum):
    ACCEPTED = "accepted"
    HELD = "held"  # the sandbox policy holds it; it does not count until released
    DROPPED = "dropped"  # left the mempool or the chain; it may come back
    REFUNDED = "refunded"  # a hold ended in a refund order; never counts again


class DropReason(StrEnum):
    """Why a watcher says a payment is gone. Informational: every reason is handled the same way."""

    REPLACED = "replaced"
    EVICTED = "evicted"
    REORGED_OUT = "reorged_out"
    DOUBLE_SPENT = "double_spent"


class Trigger(StrEnum):
    """What kind of event a table row reacts to (several event types can map to one trigger)."""

    PAYMENT = "payment"
    CONFIRMATIONS = "confirmations"
    DROP = "drop"
    TICK = "tick"
    CANCEL = "cancel"
    ACCEPT_LATE = "accept_late"
    HOLD = "hold"
    RELEASE = "release"
    REFUND = "refund"


# Flags that describe the payments as they are now, recomputed after every event; the others are history.
_DERIVED_FLAGS = frozenset({Flag.UNDERPAID, Flag.OVERPAID, Flag.ON_HOLD})

# A payment first seen in these statuses is late and counts only once the merchant accepts late payments.
_LATE_STATUSES = frozenset({Status.EXPIRED, Status.CANCELLED})

# -- an immutable mapping, so states compare by value and can be hashed ------------------------------

K = TypeVar("K")
V = TypeVar("V")


class FrozenMap(Mapping[K, V]):
    """A read-only dict: keeps insertion order for display, compares like a dict, and hashes.

    The state is a frozen dataclass; a plain dict inside it could still be mutated behind the machine's
    back, and would make the state unhashable.
    """

    __slots__ = ("_data", "_hash")

    def __init__(self, items: Mapping[K, V] | Iterable[tuple[K, V]] = ()) -> None:
        self._data: dict[K, V] = dict(items)
        self._hash: int | None = None

    def __getitem__(self, key: K) -> V:
        return self._data[key]

    def __iter__(self) -> Iterator[K]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __hash__(self) -> int:
        if self._hash is None:
            self._hash = hash(frozenset(self._data.items()))
        return self._hash

    def __repr__(self) -> str:
        return f"FrozenMap({self._data!r})"

    def set(self, key: K, value: V) -> FrozenMap[K, V]:
        """A copy with one entry added or replaced (the original is untouched)."""
        return FrozenMap({**self._data, key: value})


# -- state -------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AssetTerms:
    """What was locked for one asset when the invoice was created: the quote and the confirmation policy."""

    asset: Asset
    rate_kzt: Decimal  # KZT per whole coin
    decimals: int
    confirmations_required: int


@dataclass(frozen=True, slots=True)
class Payment:
    payment_id: str  # the chain's natural key (txid:vout, txid:log index), so re-detection is idempotent
    asset: Asset
    amount_minor: int
    confirmations: int
    rbf_signalling: bool
    status: PaymentStatus
    late: bool  # first seen while the invoice was expired or cancelled
    # Why the policy held it. Kept while the hold stands (held, or dropped while held, so that the payment is
    # held again if it comes back) and after a refund; cleared when the regulator releases it.
    hold_reason: str | None


@dataclass(frozen=True, slots=True)
class InvoiceState:
    status: Status
    flags: frozenset[Flag]
    price_tiyn: int
    tolerance: Decimal  # fraction of the price a payer may fall short by and still have paid
    expires_at: datetime
    terms: Mapping[Asset, AssetTerms]
    payments: Mapping[str, Payment]
    late_accepted: bool  # the merchant accepted late payments; from then on they count
    version: int

    def __post_init__(self) -> None:
        # Callers (the store's JSON loader, tests) may hand in plain dicts and sets; freeze them so that the
        # state stays immutable and two equal states compare equal whatever container built them.
        if not isinstance(self.terms, FrozenMap):
            object.__setattr__(self, "terms", FrozenMap(self.terms))
        if not isinstance(self.payments, FrozenMap):
            object.__setattr__(self, "payments", FrozenMap(self.payments))
        if not isinstance(self.flags, frozenset):
            object.__setattr__(self, "flags", frozenset(self.flags))

    @classmethod
    def new(
        cls, price_tiyn: int, tolerance: Decimal, expires_at: datetime, terms: Mapping[Asset, AssetTerms]
    ) -> InvoiceState:
        """A fresh invoice; refuses terms the machine could not compute with (no rate, negative counts)."""
        if price_tiyn <= 0:
            raise ValueError("an invoice price must be positive")
        if not Decimal(0) <= tolerance < Decimal(1):
            raise ValueError("the payment tolerance must be a fraction in [0, 1)")
        if not terms:
            raise ValueError("an invoice needs terms for at least one asset")
        for asset, term in terms.items():
            if term.asset is not asset:
                raise ValueError(f"terms for {asset} describe {term.asset}")
            if term.rate_kzt <= 0 or term.decimals < 0 or term.confirmations_required < 0:
                raise ValueError(f"terms for {asset} need a positive rate and non-negative counts")
        return cls(
            status=Status.NEW,
            flags=frozenset(),
            price_tiyn=price_tiyn,
            tolerance=tolerance,
            expires_at=expires_at,
            terms=FrozenMap(terms),
            payments=FrozenMap(),
            late_accepted=False,
            version=0,
        )


# -- events ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PaymentSeen:
    """A watcher detected a payment (or detected a known one again). The policy's decision comes with it."""

    payment_id: str
    asset: Asset
    amount_minor: int
    confirmations: int
    rbf_signalling: bool
    held: bool = False
    hold_reason: str | None = None


@dataclass(frozen=True, slots=True)
class PaymentConfirmations:
    """The absolute confirmation count of a known payment; it goes down when a reorg disconnects its block."""

    payment_id: str
    confirmations: int


@dataclass(frozen=True, slots=True)
class PaymentDropped:
    payment_id: str
    reason: DropReason


@dataclass(frozen=True, slots=True)
class Tick:
    """Time passed (the caller's expiry sweep); only ``new`` invoices care."""


@dataclass(frozen=True, slots=True)
class Cancel:
    """The merchant cancels the invoice."""


@dataclass(frozen=True, slots=True)
class AcceptLate:
    """The merchant accepts the payments that arrived after expiry or cancellation."""


@dataclass(frozen=True, slots=True)
class ReleaseHold:
    """The regulator releases a held payment: it counts from now on."""

    payment_id: str


@dataclass(frozen=True, slots=True)
class RefundHold:
    """The regulator orders a held payment refunded: it never counts."""

    payment_id: str


Event = (
    PaymentSeen
    | PaymentConfirmations
    | PaymentDropped
    | Tick
    | Cancel
    | AcceptLate
    | ReleaseHold
    | RefundHold
)


class IllegalTransition(Exception):
    """The table does not allow this event in this status; nothing changed."""

    def __init__(self, status: Status, event: Event, detail: str | None = None) -> None:
        self.status = status
        self.event = event
        message = f"{type(event).__name__} is not allowed while the invoice is {status.value}"
        super().__init__(f"{message}: {detail}" if detail else message)


# -- derived values ----------------------------------------------------------------------------------


def _counts(state: InvoiceState, payment: Payment) -> bool:
    """Held, dropped and refunded money never counts; late money counts once the merchant accepted it."""
    return payment.status is PaymentStatus.ACCEPTED and (not payment.late or state.late_accepted)


def _value(state: InvoiceState, payment: Payment) -> Fraction:
    terms = state.terms[payment.asset]
    return value_in_tiyn_exact(payment.amount_minor, terms.rate_kzt, terms.decimals)


def required_confirmations(state: InvoiceState, payment: Payment) -> int:
    """The policy's count for the asset, but at least 1 when the transaction signals RBF.

    A replaceable transaction can be swapped for one paying someone else at no cost, so it is never final in
    the mempool, whatever the amount.
    """
    required = state.terms[payment.asset].confirmations_required
    return max(required, 1) if payment.rbf_signalling else required


def _is_confirmed(state: InvoiceState, payment: Payment) -> bool:
    return payment.confirmations >= required_confirmations(state, payment)


def accepted_value_tiyn(state: InvoiceState) -> Fraction:
    """Exact tenge value (tiyn) of the counted payments at the locked rates, confirmed or not."""
    return sum((_value(state, p) for p in state.payments.values() if _counts(state, p)), Fraction(0))


def confirmed_value_tiyn(state: InvoiceState) -> Fraction:
    """Exact tenge value (tiyn) of the counted payments that have the confirmations they need."""
    return sum(
        (_value(state, p) for p in state.payments.values() if _counts(state, p) and _is_confirmed(state, p)),
        Fraction(0),
    )


def is_paid(value: Fraction, state: InvoiceState) -> bool:
    """Whether a tenge value pays the invoice: at least the price less the configured tolerance."""
    return value >= state.price_tiyn * (1 - Fraction(state.tolerance))


def amount_remaining_minor(state: InvoiceState, asset: Asset) -> int:
    """What is still due in ``asset`` (minor units), rounded UP like ``crypto_due``; 0 once paid.

    The remainder is measured against the full price, not the tolerance: the tolerance forgives a small
    shortfall, it is not a discount to advertise.
    """
    if asset not in state.terms:
        raise ValueError(f"the invoice does not accept {asset}")
    accepted = accepted_value_tiyn(state)
    if is_paid(accepted, state):
        return 0
    terms = state.terms[asset]
    return math.ceil((state.price_tiyn - accepted) / rate_per_minor_unit(terms.rate_kzt, terms.decimals))


def _is_overpaid(state: InvoiceState) -> bool:
    """More than the price plus one smallest unit of each asset paid in.

    Due amounts are rounded up to a whole smallest unit, so a payer who pays exactly what was asked pays a
    fraction of a unit more than the price; that must not count as an overpayment.
    """
    counted = [p for p in state.payments.values() if _counts(state, p)]
    assets = {p.asset for p in counted}
    slack = sum(
        (rate_per_minor_unit(state.terms[a].rate_kzt, state.terms[a].decimals) for a in assets), Fraction(0)
    )
    return sum((_value(state, p) for p in counted), Fraction(0)) > state.price_tiyn + slack


def _derived_flags(state: InvoiceState) -> frozenset[Flag]:
    accepted = accepted_value_tiyn(state)
    flags: set[Flag] = set()
    if accepted > 0 and not is_paid(accepted, state):
        flags.add(Flag.UNDERPAID)
    if _is_overpaid(state):
        flags.add(Flag.OVERPAID)
    if any(p.status is PaymentStatus.HELD for p in state.payments.values()):
        flags.add(Flag.ON_HOLD)
    return frozenset(flags)


# -- guards and the table ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Facts:
    """Everything a guard may look at, computed once per event from the state after the payment effect."""

    paid: bool  # counted value >= price × (1 − tolerance)
    confirmed: bool  # the same for counted payments that have their confirmations
    anything_held: bool
    past_expiry: bool  # now >= expires_at
    counted_with_confirmation: bool  # some counted payment has at least one confirmation
    revived: bool  # this event brought a dropped payment back

    @classmethod
    def of(cls, state: InvoiceState, now: datetime, *, revived: bool) -> Facts:
        return cls(
            paid=is_paid(accepted_value_tiyn(state), state),
            confirmed=is_paid(confirmed_value_tiyn(state), state),
            anything_held=any(p.status is PaymentStatus.HELD for p in state.payments.values()),
            past_expiry=now >= state.expires_at,
            counted_with_confirmation=any(
                _counts(state, p) and p.confirmations >= 1 for p in state.payments.values()
            ),
            revived=revived,
        )


@dataclass(frozen=True, slots=True)
class Guard:
    """A named condition on the facts; ``label`` is the short form drawn in the diagram."""

    label: str
    description: str
    test: Callable[[Facts], bool] = field(compare=False)


OTHERWISE = Guard("otherwise", "no earlier row for this status and trigger applies", lambda f: True)
PAID = Guard("paid", "the counted value is paid", lambda f: f.paid)
CONFIRMED = Guard("confirmed", "the counted value is paid with enough confirmations", lambda f: f.confirmed)
NOT_PAID = Guard("not paid", "the counted value is below paid", lambda f: not f.paid)
PAID_UNCONFIRMED = Guard(
    "paid, unconfirmed",
    "the counted value is still paid but no longer confirmed enough (a reorg)",
    lambda f: f.paid and not f.confirmed,
)
EXPIRY_DUE = Guard(
    "expiry due",
    "now >= expires_at and no payment is held (a hold suspends expiry)",
    lambda f: f.past_expiry and not f.anything_held,
)
NOT_PAID_EXPIRY_DUE = Guard(
    "not paid, expiry due",
    "the counted value is below paid, now >= expires_at and no payment is held",
    lambda f: not f.paid and f.past_expiry and not f.anything_held,
)
NOTHING_CONFIRMED = Guard(
    "nothing confirmed",
    "no counted payment has a confirmation yet",
    lambda f: not f.counted_with_confirmation,
)
PAID_AGAIN = Guard(
    "dropped payment back, paid",
    "a dropped payment was seen again and the counted value is paid again",
    lambda f: f.revived and f.paid,
)


@dataclass(frozen=True, slots=True)
class Row:
    """One line of the table: in ``from_status``, on ``trigger``, if ``guard`` holds, go to ``to_status``."""

    from_status: Status
    trigger: Trigger
    guard: Guard
    to_status: Status
    flags_added: frozenset[Flag] = frozenset()


def _rows(
    status: Status, triggers: Iterable[Trigger], guard: Guard, to: Status, flags: Iterable[Flag] = ()
) -> tuple[Row, ...]:
    return tuple(Row(status, t, guard, to, frozenset(flags)) for t in triggers)


S, T = Status, Trigger

# The whole lifecycle. Rows for one (status, trigger) are tried in order; the first whose guard holds wins.
# A (status, trigger) with no row at all, or whose rows all fail, is illegal. "otherwise" rows that keep the
# status make an event legal but inert (a tick on a settled invoice, a confirmation on an expired one).
TABLE: tuple[Row, ...] = (
    # new: waiting for money
    Row(S.NEW, T.PAYMENT, PAID, S.PROCESSING),
    Row(S.NEW, T.PAYMENT, OTHERWISE, S.NEW),  # partial: underpaid (a derived flag)
    Row(S.NEW, T.RELEASE, PAID, S.PROCESSING),
    Row(S.NEW, T.RELEASE, EXPIRY_DUE, S.EXPIRED),
    Row(S.NEW, T.TICK, EXPIRY_DUE, S.EXPIRED),
    Row(S.NEW, T.DROP, EXPIRY_DUE, S.EXPIRED),  # the last held payment vanished after the deadline
    Row(S.NEW, T.REFUND, EXPIRY_DUE, S.EXPIRED),
    Row(S.NEW, T.CANCEL, NOTHING_CONFIRMED, S.CANCELLED),
    *_rows(S.NEW, (T.RELEASE, T.TICK, T.DROP, T.REFUND, T.CONFIRMATIONS, T.HOLD), OTHERWISE, S.NEW),
    # processing: paid, waiting for confirmations
    *_rows(S.PROCESSING, (T.PAYMENT, T.CONFIRMATIONS, T.RELEASE), CONFIRMED, S.SETTLED),
    Row(S.PROCESSING, T.DROP, NOT_PAID_EXPIRY_DUE, S.EXPIRED),
    Row(S.PROCESSING, T.DROP, NOT_PAID, S.NEW),
    Row(S.PROCESSING, T.CANCEL, NOTHING_CONFIRMED, S.CANCELLED),
    *_rows(
        S.PROCESSING,
        (T.PAYMENT, T.CONFIRMATIONS, T.RELEASE, T.DROP, T.TICK, T.HOLD, T.REFUND),
        OTHERWISE,
        S.PROCESSING,
    ),
    # settled: a reorg can still take it back
    *_rows(S.SETTLED, (T.CONFIRMATIONS, T.DROP), PAID_UNCONFIRMED, S.PROCESSING, {Flag.REORGED}),
    Row(S.SETTLED, T.DROP, NOT_PAID, S.REVERSED),
    *_rows(
        S.SETTLED,
        (T.PAYMENT, T.CONFIRMATIONS, T.DROP, T.TICK, T.HOLD, T.RELEASE, T.REFUND),
        OTHERWISE,
        S.SETTLED,
    ),
    # reversed: settled money disappeared; it may come back
    Row(S.REVERSED, T.PAYMENT, PAID_AGAIN, S.PROCESSING, frozenset({Flag.REORGED})),
    *_rows(S.REVERSED, (T.PAYMENT, T.RELEASE), PAID, S.PROCESSING),  # the payer paid again
    *_rows(
        S.REVERSED,
        (T.PAYMENT, T.CONFIRMATIONS, T.DROP, T.TICK, T.HOLD, T.RELEASE, T.REFUND),
        OTHERWISE,
        S.REVERSED,
    ),
    # expired and cancelled: money may still arrive; the merchant decides whether to take it
    *(
        row
        for closed in (S.EXPIRED, S.CANCELLED)
        for row in (
            *_rows(closed, (T.PAYMENT, T.HOLD), OTHERWISE, closed, {Flag.PAID_LATE}),
            Row(closed, T.ACCEPT_LATE, CONFIRMED, S.SETTLED, frozenset({Flag.PAID_LATE})),
            Row(closed, T.ACCEPT_LATE, PAID, S.PROCESSING, frozenset({Flag.PAID_LATE})),
            *_rows(closed, (T.CONFIRMATIONS, T.DROP, T.TICK, T.RELEASE, T.REFUND), OTHERWISE, closed),
        )
    ),
)

del S, T


def rows_for(status: Status, trigger: Trigger) -> tuple[Row, ...]:
    """The table's rows for one status and trigger, in the order they are tried."""
    return _INDEX.get((status, trigger), ())


def _index(table: Iterable[Row]) -> dict[tuple[Status, Trigger], tuple[Row, ...]]:
    index: dict[tuple[Status, Trigger], tuple[Row, ...]] = {}
    for row in table:
        index[row.from_status, row.trigger] = (*index.get((row.from_status, row.trigger), ()), row)
    return index


_INDEX = _index(TABLE)


def _first_row(status: Status, trigger: Trigger, facts: Facts) -> Row | None:
    return next((row for row in rows_for(status, trigger) if row.guard.test(facts)), None)


# -- the payment side of an event --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Effect:
    """What an event did to the payments, before the table decides about the status."""

    trigger: Trigger
    state: InvoiceState  # payments / late_accepted updated; status, flags and version untouched
    notifications: tuple[str, ...] = ()
    revived: bool = False


def _payment_notes(state: InvoiceState, before: Payment | None, after: Payment) -> list[str]:
    """payment.* notifications for one payment's change (detection and hold are added by the caller)."""
    notes: list[str] = []
    was_confirmed = (
        before is not None and before.status is PaymentStatus.ACCEPTED and _is_confirmed(state, before)
    )
    if after.status is PaymentStatus.ACCEPTED and _is_confirmed(state, after) and not was_confirmed:
        notes.append("payment.confirmed")
    return notes


def _known(state: InvoiceState, payment_id: str) -> Payment:
    payment = state.payments.get(payment_id)
    if payment is None:
        raise ValueError(f"unknown payment {payment_id!r}")
    return payment


def _check_confirmations(confirmations: int) -> None:
    if confirmations < 0:
        raise ValueError("a confirmation count is never negative")


def _with_payment(state: InvoiceState, payment: Payment) -> InvoiceState:
    payments = state.payments
    frozen = payments if isinstance(payments, FrozenMap) else FrozenMap(payments)
    return dataclasses.replace(state, payments=frozen.set(payment.payment_id, payment))


def _revive(state: InvoiceState, payment: Payment, confirmations: int) -> _Effect:
    """A dropped payment is back (mempool again, or mined on the new branch).

    It comes back with the policy decision it had: a payment dropped while held is held again, because a
    drop and re-broadcast must not be a way around a hold.
    """
    status = PaymentStatus.HELD if payment.hold_reason is not None else PaymentStatus.ACCEPTED
    back = dataclasses.replace(payment, status=status, confirmations=confirmations)
    notes = ["payment.detected", *(["payment.held"] if status is PaymentStatus.HELD else [])]
    notes += _payment_notes(state, None, back)
    trigger = Trigger.HOLD if status is PaymentStatus.HELD else Trigger.PAYMENT
    return _Effect(trigger, _with_payment(state, back), tuple(notes), revived=True)


def _reconfirm(state: InvoiceState, payment: Payment, confirmations: int) -> _Effect:
    if payment.status is PaymentStatus.DROPPED:
        return _revive(state, payment, confirmations)
    updated = dataclasses.replace(payment, confirmations=confirmations)
    notes = _payment_notes(state, payment, updated)
    return _Effect(Trigger.CONFIRMATIONS, _with_payment(state, updated), tuple(notes))


def _seen(state: InvoiceState, event: PaymentSeen) -> _Effect:
    if event.amount_minor <= 0:
        raise ValueError("a payment amount must be positive")
    if event.asset not in state.terms:
        raise ValueError(f"the invoice does not accept {event.asset}")
    _check_confirmations(event.confirmations)
    known = state.payments.get(event.payment_id)
    if known is not None:
        if (known.asset, known.amount_minor) != (event.asset, event.amount_minor):
            raise ValueError(
                f"payment {event.payment_id!r} was seen as {known.amount_minor} {known.asset}, "
                f"now as {event.amount_minor} {event.asset}"
            )
        return _reconfirm(state, known, event.confirmations)
    held = event.held
    payment = Payment(
        payment_id=event.payment_id,
        asset=event.asset,
        amount_minor=event.amount_minor,
        confirmations=event.confirmations,
        rbf_signalling=event.rbf_signalling,
        status=PaymentStatus.HELD if held else PaymentStatus.ACCEPTED,
        late=state.status in _LATE_STATUSES,
        hold_reason=(event.hold_reason or "held") if held else None,
    )
    notes = ["payment.detected", *(["payment.held"] if held else []), *_payment_notes(state, None, payment)]
    return _Effect(Trigger.HOLD if held else Trigger.PAYMENT, _with_payment(state, payment), tuple(notes))


def _dropped(state: InvoiceState, event: PaymentDropped) -> _Effect:
    payment = _known(state, event.payment_id)
    if payment.status is PaymentStatus.DROPPED:
        return _Effect(Trigger.DROP, state)
    gone = dataclasses.replace(payment, status=PaymentStatus.DROPPED)
    return _Effect(Trigger.DROP, _with_payment(state, gone), ("payment.dropped",))


def _held(state: InvoiceState, event: ReleaseHold | RefundHold) -> Payment:
    payment = state.payments.get(event.payment_id)
    if payment is None or payment.status is not PaymentStatus.HELD:
        status = "unknown" if payment is None else payment.status.value
        raise IllegalTransition(state.status, event, f"payment {event.payment_id!r} is {status}, not held")
    return payment


def _effect(state: InvoiceState, event: Event) -> _Effect:
    """The event's effect on the payments, and the trigger the table sees."""
    match event:
        case PaymentSeen():
            return _seen(state, event)
        case PaymentConfirmations(payment_id, confirmations):
            _check_confirmations(confirmations)
            return _reconfirm(state, _known(state, payment_id), confirmations)
        case PaymentDropped():
            return _dropped(state, event)
        case Tick():
            return _Effect(Trigger.TICK, state)
        case Cancel():
            return _Effect(Trigger.CANCEL, state)
        case AcceptLate():
            return _Effect(Trigger.ACCEPT_LATE, dataclasses.replace(state, late_accepted=True))
        case ReleaseHold():
            held = _held(state, event)
            released = dataclasses.replace(held, status=PaymentStatus.ACCEPTED, hold_reason=None)
            notes = ("payment.released", *_payment_notes(state, held, released))
            return _Effect(Trigger.RELEASE, _with_payment(state, released), notes)
        case RefundHold():
            refunded = dataclasses.replace(_held(state, event), status=PaymentStatus.REFUNDED)
            return _Effect(Trigger.REFUND, _with_payment(state, refunded), ("payment.refunded",))
    raise TypeError(f"not a lifecycle event: {event!r}")  # pragma: no cover - exhaustive above


# -- apply -------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Outcome:
    """The new state and what the caller must record with it (in the same transaction)."""

    state: InvoiceState
    changed: bool
    transitions: tuple[tuple[Status, Status], ...]  # every status step, in order
    notifications: tuple[str, ...]  # outbox event types, in order
    rows: tuple[Row, ...] = ()  # the table rows taken (the first one even if it kept the status)


def _run(state: InvoiceState, event: Event, now: datetime) -> tuple[InvoiceState, list[Row], list[str]]:
    """One event through the table: payment effect, first row, derived rows, flags. Version untouched."""
    effect = _effect(state, event)
    facts = Facts.of(effect.state, now, revived=effect.revived)
    row = _first_row(state.status, effect.trigger, facts)
    if row is None:
        raise IllegalTransition(state.status, event, _why_not(state.status, effect.trigger))
    taken = [row]
    # Derived transitions (h11 style): the same trigger may carry the invoice further, e.g. a payment that
    # is already confirmed takes it new → processing → settled. Stop when the next row would keep the status
    # (or there is none): the invoice has reached a status that is stable for these facts.
    while True:
        following = _first_row(row.to_status, effect.trigger, facts)
        if following is None or following.to_status is following.from_status:
            break
        row = following
        taken.append(row)
        if len(taken) > len(Status):
            raise RuntimeError(f"the lifecycle table loops on {effect.trigger}")  # pragma: no cover
    status = taken[-1].to_status
    sticky = {f for f in state.flags if f not in _DERIVED_FLAGS}
    for step in taken:
        sticky |= step.flags_added
    new_state = dataclasses.replace(effect.state, status=status)
    new_state = dataclasses.replace(new_state, flags=frozenset(sticky) | _derived_flags(new_state))
    notes = list(effect.notifications)
    # Every status entered is announced, except a return to new (there is no invoice.new event type: the
    # payment.dropped or payment.refunded that caused it tells the merchant).
    notes += [
        f"invoice.{step.to_status.value}"
        for step in taken
        if step.to_status is not step.from_status and step.to_status is not Status.NEW
    ]
    added = new_state.flags - state.flags - {Flag.ON_HOLD}  # a hold is announced as payment.held
    notes += [f"invoice.{f.value}" for f in Flag if f in added]
    return new_state, taken, notes


def _why_not(status: Status, trigger: Trigger) -> str:
    rows = rows_for(status, trigger)
    if not rows:
        return f"no {trigger.value} transition from {status.value}"
    return "allowed only when " + " or when ".join(row.guard.description for row in rows)


def _clock_would_move(state: InvoiceState, now: datetime) -> bool:
    """Whether a Tick now would change the status (in practice: a ``new`` invoice past its deadline)."""
    row = _first_row(state.status, Trigger.TICK, Facts.of(state, now, revived=False))
    return row is not None and row.to_status is not row.from_status


def apply(state: InvoiceState, event: Event, now: datetime) -> Outcome:
    """Apply one event at time ``now``; raises ``IllegalTransition`` (or ``ValueError`` for bad input).

    If a Tick at ``now`` would move the invoice (a ``new`` invoice past its deadline), that is applied first,
    so that a payment detected after the deadline is late even if the caller's expiry sweep has not run
    yet; both steps are one change (one version), and an event the expired invoice refuses (a Cancel)
    raises with status ``expired``.
    """
    rows: list[Row] = []
    notes: list[str] = []
    current = state
    if not isinstance(event, Tick) and _clock_would_move(state, now):
        current, rows, notes = _run(state, Tick(), now)
    current, more_rows, more_notes = _run(current, event, now)
    rows += more_rows
    notes += more_notes
    changed = current != state
    if changed:
        current = dataclasses.replace(current, version=state.version + 1)
    transitions = tuple((r.from_status, r.to_status) for r in rows if r.from_status is not r.to_status)
    return Outcome(
        state=current,
        changed=changed,
        transitions=transitions,
        notifications=tuple(notes) if changed else (),
        rows=tuple(rows),
    )


# -- the diagram -------------------------------------------------------------------------------------


def mermaid_diagram() -> str:
    """The table as a Mermaid ``stateDiagram-v2`` (docs/lifecycle.md embeds it; a test keeps them equal).

    Rows that differ only in their trigger are drawn as one arrow ("tick, drop [expiry due]"). Rows that keep
    the status and add no flag (legal but inert events) are left out: they would only add a loop to every
    state. ``+flag`` is a flag the row adds; underpaid, overpaid and on_hold follow the payments and are not
    drawn.
    """
    arrows: dict[tuple[Status, Guard, Status, frozenset[Flag]], list[Trigger]] = {}
    for row in TABLE:
        if row.from_status is row.to_status and not row.flags_added:
            continue
        arrow = (row.from_status, row.guard, row.to_status, row.flags_added)
        arrows.setdefault(arrow, []).append(row.trigger)
    lines = ["stateDiagram-v2", f"    [*] --> {Status.NEW.value}"]
    for (source, guard, target, flags), triggers in arrows.items():
        label = ", ".join(t.value for t in triggers)
        if guard is not OTHERWISE:
            label += f" [{guard.label}]"
        label += "".join(f" +{f.value}" for f in Flag if f in flags)
        lines.append(f"    {source.value} --> {target.value} : {label}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(mermaid_diagram(), end="")
