"""The digital-tenge ledger's rules: accounts, balanced journal entries, and what each outbox event books.

Pure: no I/O, no clock. ``book(event, previous)`` is a deterministic function of one outbox event (its type,
``data.invoice``, ``payment_key`` and the immutable facts of that payment) and of what the ledger already
booked for the invoice; it returns the journal entries and the invoice's new booked state. The store
(``store.py``) and the consumer (``consumer.py``) only persist what this module decides.

Amounts are integer tiyn. A line's amount is what flows INTO its account (positive) or OUT of it (negative);
every entry sums to zero (enforced when it is built), so all balances together sum to zero.

Accounts (``<m>`` is a merchant id)

| account | what its balance is |
|---|---|
| ``merchant:<m>:settlement`` | digital tenge credited to the merchant: exactly the prices of its invoices that are settled now (it only ever moves by a price) |
| ``clearing:<ASSET>`` | minus the tenge value booked against crypto received in that asset at each invoice's locked rate (settled, held, refunds payable) |
| ``fx:<m>`` | value received at the locked rate minus the price, on settled invoices not flagged overpaid: the slack of the amount due rounding up (>= 0), or a shortfall the payment tolerance forgives (< 0) |
| ``overpaid:<m>`` | overpayments payable: the whole surplus over the price on settled invoices flagged ``overpaid`` |
| ``held:<m>`` | payments the sandbox holds now (they do not count until released) |
| ``refunds:<m>`` | refunds payable: held payments the regulator ordered refunded (the merchant's wallet pays them) |

Values: ``V_A`` = the counted payments in asset A (accepted, and not late unless the merchant accepted late
payments) at the locked rate, summed exactly and rounded half-even to a tiyn once per asset; ``v`` = one
payment's value, rounded half-even; ``P`` = the price; ``S = sum(V_A) - P``, to ``overpaid:<m>`` if the
invoice carries the ``overpaid`` flag, else to ``fx:<m>``. Lines of zero are left out.

Posting rules (leg = the entry's name; the entry id is derived from the outbox event id and the leg)

| event (and condition) | leg | lines |
|---|---|---|
| ``invoice.settled``, first settlement | ``settle`` | ``clearing:<A> -V_A`` per asset paid; ``merchant:<m>:settlement +P``; ``fx:<m>`` or ``overpaid:<m>`` ``+S`` |
| the same, with accepted late payments among those counted | ``settle_late`` | the same lines |
| ``invoice.settled`` after a reversal | ``resettle`` | the same lines, from the payments that count now |
| any event while booked settled and still settled, when what counts changed (extra payment, hold released on a settled invoice, surplus payment dropped) | ``overpay`` if it books more into ``overpaid:<m>``, else ``adjust`` | the settle lines for what counts now minus what is booked |
| first ``invoice.*`` event of the change that takes a booked-settled invoice to reversed / to processing (reorg) | ``reversal`` / ``reorg_reversal`` | the exact negation of everything booked for the current settlement (settle + adjustments since) |
| ``payment.held``, or ``payment.detected`` of a payment the same change held | ``hold`` | ``clearing:<A> -v``; ``held:<m> +v`` |
| ``payment.released`` | ``release`` | ``held:<m> -v``; ``clearing:<A> +v`` (back into the normal flow: the settle books it if the release pays the invoice) |
| ``payment.refunded`` | ``refund`` | ``held:<m> -v``; ``refunds:<m> +v`` |
| ``payment.dropped`` of a held payment | ``hold_dropped`` | ``held:<m> -v``; ``clearing:<A> +v`` (if it comes back, still held, ``hold`` books it again) |
| ``payment.dropped`` of a refunded payment | ``refund_dropped`` | ``refunds:<m> -v``; ``clearing:<A> +v`` |
| anything else | none | nothing: unconfirmed money, money that does not count and late money not accepted are not booked |

Example (tests/unit/test_ledger_model.py): a 12 500.00 KZT invoice paid with the 41 667 sat due at
30 000 000 KZT/BTC (30 tiyn per sat) settles as ``clearing:BTC -1 250 010``, ``merchant:<m>:settlement
+1 250 000``, ``fx:<m> +10``.

So, for a merchant ``m`` at any moment: ``merchant:<m>:settlement`` = the sum of the prices of its settled
invoices; ``fx:<m> + overpaid:<m>`` = the sum over those invoices of ``S``; ``held:<m>`` and ``refunds:<m>`` =
the sums of ``v`` over its held and refunded payments; and ``clearing:<A>`` is minus everything booked in A.

How the ledger knows which payments count. ``data.invoice`` carries totals, not payments, so the ledger keeps
a mirror of each invoice's payments (status accepted/held/dropped/refunded, late, amount) from the
``payment.*`` events and the facts the consumer attaches to them (asset, amount, late: immutable per payment).
Whenever it books a settlement it checks the mirror against the gateway: the counted value, rounded, must
equal ``data.invoice.amount_paid_tiyn``, else ``LedgerMismatch`` is raised and nothing is booked. Every event
of one lifecycle change carries the final resource of that change and the ``payment.*`` events come before
the ``invoice.*`` ones, which is why a settle is booked on ``invoice.settled`` and a reversal on the first
``invoice.*`` event, not on the ``payment.detected`` that precedes them.

Idempotency: an event whose outbox ``seq`` is not after the last one booked for its invoice books nothing
and changes nothing; and entry ids are ``le_`` + a hash of (event id, leg), so the journal's unique key makes
a re-post a no-op too.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from fractions import Fraction
from typing import Any, Protocol

from gateway.invoices.lifecycle import Flag, PaymentStatus, Status
from gateway.money import Asset, round_half_even_tiyn, value_in_tiyn_exact

# -- accounts ----------------------------------------------------------------------------------------


class AccountKind(StrEnum):
    SETTLEMENT = "settlement"
    CLEARING = "clearing"
    FX = "fx"
    OVERPAID = "overpaid"
    HELD = "held"
    REFUNDS = "refunds"


def _owner(merchant_id: str) -> str:
    if not merchant_id or ":" in merchant_id or any(c.isspace() for c in merchant_id):
        raise ValueError(f"not a merchant id usable in an account name: {merchant_id!r}")
    return merchant_id


def settlement_account(merchant_id: str) -> str:
    """The merchant's digital-tenge settlement account."""
    return f"merchant:{_owner(merchant_id)}:settlement"


def clearing_account(asset: Asset | str) -> str:
    """Crypto clearing for one asset: the source of the tenge equivalent of what was received in it."""
    return f"clearing:{Asset(asset).value}"


def fx_account(merchant_id: str) -> str:
    return f"fx:{_owner(merchant_id)}"


def overpaid_account(merchant_id: str) -> str:
    return f"overpaid:{_owner(merchant_id)}"


def held_account(merchant_id: str) -> str:
    return f"held:{_owner(merchant_id)}"


def refunds_account(merchant_id: str) -> str:
    return f"refunds:{_owner(merchant_id)}"


def merchant_accounts(merchant_id: str) -> tuple[str, ...]:
    """Every account that belongs to one merchant (clearing accounts are shared)."""
    return (
        settlement_account(merchant_id),
        fx_account(merchant_id),
        overpaid_account(merchant_id),
        held_account(merchant_id),
        refunds_account(merchant_id),
    )


def parse_account(name: str) -> tuple[AccountKind, str]:
    """``(kind, owner)`` of an account name; the owner is a merchant id, or the asset for clearing."""
    parts = name.split(":")
    if len(parts) == 3 and parts[0] == "merchant" and parts[2] == "settlement" and parts[1]:
        return AccountKind.SETTLEMENT, parts[1]
    if len(parts) == 2 and parts[1]:
        kind = {k.value: k for k in AccountKind if k is not AccountKind.SETTLEMENT}.get(parts[0])
        if kind is AccountKind.CLEARING and parts[1] in {a.value for a in Asset}:
            return kind, parts[1]
        if kind is not None and kind is not AccountKind.CLEARING:
            return kind, parts[1]
    raise ValueError(f"not a ledger account: {name!r}")


# -- journal entries ---------------------------------------------------------------------------------


class UnbalancedEntry(ValueError):
    """A journal entry whose lines do not sum to zero (or are otherwise malformed)."""


class LedgerInputError(ValueError):
    """An outbox event the ledger cannot read (missing or malformed invoice resource, unknown payment)."""


class LedgerMismatch(Exception):
    """The ledger's view of an invoice's payments disagrees with the gateway's; nothing was booked."""


def entry_id(event_id: str, leg: str) -> str:
    """The journal entry id for one leg of one outbox event: the same inputs always give the same id."""
    digest = hashlib.sha256(f"{event_id}\x00{leg}".encode()).hexdigest()
    return f"le_{digest[:32]}"


@dataclass(frozen=True, slots=True)
class Line:
    account: str
    amount_tiyn: int  # > 0 into the account, < 0 out of it; never 0

    def __post_init__(self) -> None:
        if type(self.amount_tiyn) is not int:
            raise UnbalancedEntry(f"a line amount is an integer number of tiyn, not {self.amount_tiyn!r}")
        if self.amount_tiyn == 0:
            raise UnbalancedEntry(f"a line of zero on {self.account!r}")
        parse_account(self.account)


@dataclass(frozen=True, slots=True)
class JournalEntry:
    """One balanced entry. Built only through checks: at least two lines, one per account, sum zero."""

    id: str
    event_id: str
    event_type: str
    leg: str
    posted_at: str  # the outbox event's created_at (the domain clock), so a re-post is identical
    invoice_id: str | None
    invoice_version: int | None
    merchant_id: str | None
    payment_key: str | None
    lines: tuple[Line, ...]

    def __post_init__(self) -> None:
        if self.id != entry_id(self.event_id, self.leg):
            raise UnbalancedEntry(f"entry id {self.id!r} is not derived from its event and leg")
        if len(self.lines) < 2:
            raise UnbalancedEntry("an entry needs at least two lines")
        accounts = [line.account for line in self.lines]
        if len(set(accounts)) != len(accounts):
            raise UnbalancedEntry(f"an account appears twice in one entry: {accounts}")
        total = sum(line.amount_tiyn for line in self.lines)
        if total != 0:
            raise UnbalancedEntry(f"entry {self.leg} of {self.event_id} sums to {total} tiyn, not 0")

    def amount(self, account: str) -> int:
        """The entry's amount on one account (0 if it has no line there)."""
        return next((line.amount_tiyn for line in self.lines if line.account == account), 0)

    def amounts(self) -> dict[str, int]:
        return {line.account: line.amount_tiyn for line in self.lines}


# -- inputs: the outbox event as the ledger reads it -------------------------------------------------


@dataclass(frozen=True, slots=True)
class PaymentFacts:
    """What never changes about one payment, attached by the consumer to each ``payment.*`` event.

    ``held`` matters for ``payment.detected`` only: whether the same lifecycle change held the payment (the
    ``payment.held`` that follows), so that a held payment never counts, not even for one event.
    """

    payment_key: str
    asset: Asset
    amount_minor: int
    late: bool
    held: bool = False


@dataclass(frozen=True, slots=True)
class InvoiceView:
    """The part of ``data.invoice`` (gateway.invoices.records.invoice_resource) the ledger reads."""

    id: str
    merchant_id: str
    status: Status
    flags: frozenset[Flag]
    version: int
    price_tiyn: int
    paid_tiyn: int  # amount_paid_tiyn: counted value at the locked rates, rounded half-even
    rates: tuple[tuple[Asset, Decimal, int], ...]  # (asset, locked KZT per whole unit, decimals)

    @classmethod
    def from_resource(cls, resource: Mapping[str, Any]) -> InvoiceView:
        try:
            quoted = resource["quote"]["rates"]
            rates = []
            for method in resource["payment_methods"]:
                asset = Asset(method["asset"])
                rates.append((asset, Decimal(quoted[asset.value]["kzt_per_unit"]), int(method["decimals"])))
            return cls(
                id=str(resource["id"]),
                merchant_id=str(resource["merchant_id"]),
                status=Status(resource["status"]),
                flags=frozenset(Flag(f) for f in resource["flags"]),
                version=int(resource["version"]),
                price_tiyn=int(resource["amount_tiyn"]),
                paid_tiyn=int(resource["amount_paid_tiyn"]),
                rates=tuple(rates),
            )
        except (KeyError, TypeError, ValueError, InvalidOperation) as exc:
            raise LedgerInputError(f"not an invoice resource the ledger can read: {exc!r}") from exc

    def value_exact(self, asset: Asset, amount_minor: int) -> Fraction:
        """Exact tiyn value of an amount at this invoice's locked rate."""
        for quoted, rate, decimals in self.rates:
            if quoted is asset:
                return value_in_tiyn_exact(amount_minor, rate, decimals)
        raise LedgerInputError(f"invoice {self.id} has no locked rate for {asset}")

    def value(self, asset: Asset, amount_minor: int) -> int:
        return round_half_even_tiyn(self.value_exact(asset, amount_minor))


class _OutboxLike(Protocol):
    @property
    def seq(self) -> int: ...
    @property
    def id(self) -> str: ...
    @property
    def type(self) -> str: ...
    @property
    def created_at(self) -> str: ...
    @property
    def payload(self) -> dict[str, Any]: ...


def is_ledger_event_type(event_type: str) -> bool:
    """The outbox event types the ledger reads (every invoice.* and payment.* event)."""
    return event_type.startswith(("invoice.", "payment."))


@dataclass(frozen=True, slots=True)
class LedgerEvent:
    id: str
    seq: int  # the outbox seq: events of one invoice are booked in this order
    type: str
    created_at: str
    invoice: InvoiceView
    payment_key: str | None = None
    payment: PaymentFacts | None = None

    @classmethod
    def from_outbox(cls, event: _OutboxLike, payment: PaymentFacts | None = None) -> LedgerEvent | None:
        """The ledger's reading of a gateway.outbox.OutboxEvent; None if the ledger has no use for it."""
        if not is_ledger_event_type(event.type):
            return None
        data = event.payload.get("data")
        if not isinstance(data, Mapping) or not isinstance(data.get("invoice"), Mapping):
            return None
        key = data.get("payment_key")
        return cls(
            id=event.id,
            seq=event.seq,
            type=event.type,
            created_at=event.created_at,
            invoice=InvoiceView.from_resource(data["invoice"]),
            payment_key=None if key is None else str(key),
            payment=payment,
        )


# -- state: what the ledger booked for one invoice -----------------------------------------------------


@dataclass(frozen=True, slots=True)
class BookedPayment:
    """The ledger's mirror of one payment, and where its value is booked (None: nowhere / clearing)."""

    payment_key: str
    asset: Asset
    amount_minor: int
    late: bool
    status: PaymentStatus
    booked_in: str | None = None  # held:<m> or refunds:<m>
    booked_tiyn: int = 0


@dataclass(frozen=True, slots=True)
class InvoiceBook:
    invoice_id: str
    merchant_id: str
    last_seq: int = 0  # outbox seq of the last event booked for this invoice
    version: int = 0  # invoice version of that event
    late_accepted: bool = False  # the merchant accepted late payments (inferred from the resource, sticky)
    settlements: int = 0  # how many times the invoice was settled (2+ means re-settled)
    settlement: tuple[Line, ...] = ()  # net lines booked for the current settlement; () = not settled
    payments: tuple[BookedPayment, ...] = field(default=())

    @property
    def settled(self) -> bool:
        return bool(self.settlement)

    def payment(self, payment_key: str) -> BookedPayment | None:
        return next((p for p in self.payments if p.payment_key == payment_key), None)

    def counts(self, payment: BookedPayment) -> bool:
        """The lifecycle's rule: accepted, and not late unless the merchant accepted late payments."""
        return payment.status is PaymentStatus.ACCEPTED and (not payment.late or self.late_accepted)

    def to_doc(self) -> dict[str, Any]:
        return {
            "invoice_id": self.invoice_id,
            "merchant_id": self.merchant_id,
            "last_seq": self.last_seq,
            "version": self.version,
            "late_accepted": self.late_accepted,
            "settlements": self.settlements,
            "settlement": [[line.account, line.amount_tiyn] for line in self.settlement],
            "payments": [
                {
                    "key": p.payment_key,
                    "asset": p.asset.value,
                    "amount": str(p.amount_minor),  # wei exceed 64 bits
                    "late": p.late,
                    "status": p.status.value,
                    "booked_in": p.booked_in,
                    "booked": p.booked_tiyn,
                }
                for p in self.payments
            ],
        }

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> InvoiceBook:
        return cls(
            invoice_id=doc["invoice_id"],
            merchant_id=doc["merchant_id"],
            last_seq=int(doc["last_seq"]),
            version=int(doc["version"]),
            late_accepted=bool(doc["late_accepted"]),
            settlements=int(doc["settlements"]),
            settlement=tuple(Line(str(a), int(n)) for a, n in doc["settlement"]),
            payments=tuple(
                BookedPayment(
                    payment_key=p["key"],
                    asset=Asset(p["asset"]),
                    amount_minor=int(p["amount"]),
                    late=bool(p["late"]),
                    status=PaymentStatus(p["status"]),
                    booked_in=p["booked_in"],
                    booked_tiyn=int(p["booked"]),
                )
                for p in doc["payments"]
            ),
        )


@dataclass(frozen=True, slots=True)
class Booking:
    entries: tuple[JournalEntry, ...]
    state: InvoiceBook


# -- the rules -----------------------------------------------------------------------------------------

_CLOSED = frozenset({Status.EXPIRED, Status.CANCELLED})

# What each payment event makes of the payment (payment.confirmed changes nothing the ledger reads).
_PAYMENT_STATUS_AFTER = {
    "payment.held": PaymentStatus.HELD,
    "payment.released": PaymentStatus.ACCEPTED,
    "payment.refunded": PaymentStatus.REFUNDED,
    "payment.dropped": PaymentStatus.DROPPED,
}

# Names of the entries that move one payment's value between clearing (None) and held / refunds payable.
_MOVE_LEGS = {
    (None, AccountKind.HELD): "hold",
    (AccountKind.HELD, None): "release",
    (AccountKind.HELD, AccountKind.REFUNDS): "refund",
}
_DROPPED_LEGS = {AccountKind.HELD: "hold_dropped", AccountKind.REFUNDS: "refund_dropped"}


def postings_for(event: LedgerEvent, previous: InvoiceBook | None) -> list[JournalEntry]:
    """The journal entries one outbox event books, given what the ledger booked for its invoice so far."""
    return list(book(event, previous).entries)


def book(event: LedgerEvent, previous: InvoiceBook | None) -> Booking:
    """The entries for one event and the invoice's booked state after them (see the module docstring)."""
    invoice = event.invoice
    if previous is not None:
        if previous.invoice_id != invoice.id:
            raise LedgerInputError(f"event {event.id} is about {invoice.id}, not {previous.invoice_id}")
        if event.seq <= previous.last_seq:  # handed again: already booked
            return Booking((), previous)
    state = previous or InvoiceBook(invoice_id=invoice.id, merchant_id=invoice.merchant_id)
    entries: list[JournalEntry] = []
    if event.type.startswith("payment.") and event.payment_key is not None:
        state, moved = _book_payment(event, state)
        entries += moved
    if Flag.PAID_LATE in invoice.flags and invoice.status not in _CLOSED and not state.late_accepted:
        # A closed invoice is left only by accept-late, and paid_late is only ever added while closed.
        state = replace(state, late_accepted=True)
    state, settled = _book_settlement(event, state)
    entries += settled
    return Booking(tuple(entries), replace(state, last_seq=event.seq, version=invoice.version))


def _entry(event: LedgerEvent, leg: str, amounts: Mapping[str, int]) -> JournalEntry | None:
    lines = tuple(Line(account, amount) for account, amount in amounts.items() if amount != 0)
    if not lines:
        return None
    return JournalEntry(
        id=entry_id(event.id, leg),
        event_id=event.id,
        event_type=event.type,
        leg=leg,
        posted_at=event.created_at,
        invoice_id=event.invoice.id,
        invoice_version=event.invoice.version,
        merchant_id=event.invoice.merchant_id,
        payment_key=event.payment_key,
        lines=lines,
    )


def _add(amounts: dict[str, int], account: str, amount: int) -> None:
    amounts[account] = amounts.get(account, 0) + amount


def _book_payment(event: LedgerEvent, state: InvoiceBook) -> tuple[InvoiceBook, list[JournalEntry]]:
    key = event.payment_key
    assert key is not None
    facts = event.payment
    known = state.payment(key)
    if (
        facts is not None
        and known is not None
        and (facts.asset, facts.amount_minor)
        != (
            known.asset,
            known.amount_minor,
        )
    ):
        raise LedgerInputError(f"payment {key!r} changed from {known.amount_minor} {known.asset}")
    if known is None:
        if facts is None:
            raise LedgerInputError(f"{event.type} of payment {key!r}, which the ledger has no facts for")
        # Not seen before: until this event it is as good as absent (a dropped payment counts for nothing).
        known = BookedPayment(key, facts.asset, facts.amount_minor, facts.late, PaymentStatus.DROPPED)
        if event.type == "payment.confirmed":  # first seen mid-stream: only accepted payments confirm
            known = replace(known, status=PaymentStatus.ACCEPTED)
    status = known.status
    if event.type == "payment.detected":
        if status is PaymentStatus.DROPPED:  # new, or back after a drop
            status = PaymentStatus.HELD if facts is not None and facts.held else PaymentStatus.ACCEPTED
    else:
        status = _PAYMENT_STATUS_AFTER.get(event.type, status)
    updated = replace(known, status=status)

    # Where its value belongs now: held payments in held:<m>, refunded ones in refunds:<m>, others nowhere.
    merchant = state.merchant_id
    target = {PaymentStatus.HELD: held_account(merchant), PaymentStatus.REFUNDED: refunds_account(merchant)}
    target_account = target.get(status)
    entries: list[JournalEntry] = []
    if target_account != known.booked_in:
        value = event.invoice.value(updated.asset, updated.amount_minor)
        clearing = clearing_account(updated.asset)
        amounts: dict[str, int] = {}
        if known.booked_in is not None:
            _add(amounts, known.booked_in, -known.booked_tiyn)
            _add(amounts, clearing, known.booked_tiyn)
        if target_account is not None:
            _add(amounts, clearing, -value)
            _add(amounts, target_account, value)
        before = None if known.booked_in is None else parse_account(known.booked_in)[0]
        after = None if target_account is None else parse_account(target_account)[0]
        if event.type == "payment.dropped" and before is not None and after is None:
            leg = _DROPPED_LEGS.get(before, f"{before}_dropped")
        else:
            leg = _MOVE_LEGS.get((before, after), f"move_{before or 'clearing'}_{after or 'clearing'}")
        entry = _entry(event, leg, amounts)
        if entry is not None:
            entries.append(entry)
        updated = replace(
            updated, booked_in=target_account, booked_tiyn=0 if target_account is None else value
        )
    payments = tuple(updated if p.payment_key == key else p for p in state.payments)
    if state.payment(key) is None:
        payments += (updated,)
    return replace(state, payments=payments), entries


def settlement_target(state: InvoiceBook, invoice: InvoiceView) -> tuple[dict[str, int], bool]:
    """The lines a settlement of the invoice books now, and whether late payments are among those counted.

    Raises ``LedgerMismatch`` if the counted value disagrees with the resource's ``amount_paid_tiyn``.
    """
    exact: dict[Asset, Fraction] = {}
    late_counted = False
    for payment in state.payments:
        if state.counts(payment):
            exact[payment.asset] = exact.get(payment.asset, Fraction(0)) + invoice.value_exact(
                payment.asset, payment.amount_minor
            )
            late_counted |= payment.late
    counted = round_half_even_tiyn(sum(exact.values(), Fraction(0)))
    if counted != invoice.paid_tiyn:
        raise LedgerMismatch(
            f"invoice {invoice.id} v{invoice.version}: the ledger counts {counted} tiyn paid, "
            f"the gateway {invoice.paid_tiyn}"
        )
    merchant = invoice.merchant_id
    amounts: dict[str, int] = {}
    received = 0
    for asset in Asset:  # a fixed order, so the same state always gives the same lines
        if asset in exact:
            value = round_half_even_tiyn(exact[asset])
            received += value
            _add(amounts, clearing_account(asset), -value)
    _add(amounts, settlement_account(merchant), invoice.price_tiyn)
    surplus_account = overpaid_account(merchant) if Flag.OVERPAID in invoice.flags else fx_account(merchant)
    _add(amounts, surplus_account, received - invoice.price_tiyn)
    return {a: n for a, n in amounts.items() if n != 0}, late_counted


def _book_settlement(event: LedgerEvent, state: InvoiceBook) -> tuple[InvoiceBook, list[JournalEntry]]:
    invoice = event.invoice
    booked = {line.account: line.amount_tiyn for line in state.settlement}
    if state.settled and invoice.status is Status.SETTLED:
        target, _ = settlement_target(state, invoice)
        delta = {a: target.get(a, 0) - booked.get(a, 0) for a in {**target, **booked}}
        if not any(delta.values()):
            return state, []
        leg = "overpay" if delta.get(overpaid_account(invoice.merchant_id), 0) > 0 else "adjust"
        return _settled_as(state, target), _entries(event, leg, delta)
    if state.settled and event.type.startswith("invoice."):
        # The first invoice.* event of the change that took the invoice out of settled.
        leg = "reversal" if invoice.status is Status.REVERSED else "reorg_reversal"
        return _settled_as(state, {}), _entries(event, leg, {a: -n for a, n in booked.items()})
    if not state.settled and event.type == "invoice.settled" and invoice.status is Status.SETTLED:
        target, late_counted = settlement_target(state, invoice)
        leg = "resettle" if state.settlements else "settle_late" if late_counted else "settle"
        settled = replace(_settled_as(state, target), settlements=state.settlements + 1)
        return settled, _entries(event, leg, target)
    return state, []


def _settled_as(state: InvoiceBook, amounts: Mapping[str, int]) -> InvoiceBook:
    return replace(state, settlement=tuple(Line(a, n) for a, n in amounts.items() if n != 0))


def _entries(event: LedgerEvent, leg: str, amounts: Mapping[str, int]) -> list[JournalEntry]:
    entry = _entry(event, leg, amounts)
    return [] if entry is None else [entry]


# -- helpers for callers and tests ---------------------------------------------------------------------


def balances_of(entries: Iterable[JournalEntry]) -> dict[str, int]:
    """Account balances from a sequence of entries (what the store's SUM over lines gives)."""
    totals: dict[str, int] = {}
    for entry in entries:
        for line in entry.lines:
            _add(totals, line.account, line.amount_tiyn)
    return totals


def book_all(
    events: Sequence[LedgerEvent], states: Mapping[str, InvoiceBook] | None = None
) -> tuple[list[JournalEntry], dict[str, InvoiceBook]]:
    """Book a stream of events (several invoices, in outbox order) in memory."""
    books = dict(states or {})
    journal: list[JournalEntry] = []
    for event in events:
        result = book(event, books.get(event.invoice.id))
        books[event.invoice.id] = result.state
        journal += result.entries
    return journal, books
