"""Shared harness for the ledger tests: the REAL lifecycle turned into outbox events, as the service does.

``Sim`` holds invoices (``gateway.invoices.lifecycle`` states), applies lifecycle events to them and, for every
notification of a change, appends an ``OutboxEvent`` whose payload is ``event_body(...)`` with
``data = {"invoice": invoice_resource(...), "payment_key"?, "reason"?}`` exactly like
``InvoiceService._apply``. It can also mirror the rows the ledger consumer reads (outbox, payments) into a
SQLite connection. The test at the bottom checks the harness against the real service.
"""

from __future__ import annotations

import dataclasses
import sqlite3
from collections.abc import Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from typing import Any, Protocol, TypeVar

from gateway import jsonutil
from gateway.clock import isoformat
from gateway.invoices.lifecycle import (
    AssetTerms,
    Event,
    Flag,
    IllegalTransition,
    InvoiceState,
    Outcome,
    Payment,
    PaymentStatus,
    Status,
    apply,
)
from gateway.invoices.records import InvoiceRecord, PaymentMethod, ResourceContext, invoice_resource
from gateway.money import Asset, crypto_due, round_half_even_tiyn, value_in_tiyn_exact
from gateway.outbox import OutboxEvent, event_body
from gateway.store import Row
from gateway.store.migrations import apply_sqlite_migrations
from sandbox.ledger.model import (
    LedgerEvent,
    PaymentFacts,
    clearing_account,
    fx_account,
    held_account,
    overpaid_account,
    refunds_account,
    settlement_account,
)

T = TypeVar("T")

T0 = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
# BTC at 30 000 000 KZT: 1 sat = 30 tiyn. ETH at 1 500 000 KZT: 1 wei = 0.00000000015 tiyn.
# USDT at 500 KZT: 1 base unit = 0.05 tiyn.
RATES = {
    Asset.BTC: (Decimal("30000000"), 8),
    Asset.ETH: (Decimal("1500000"), 18),
    Asset.USDT: (Decimal("500"), 6),
}
CTX = ResourceContext(
    public_url="http://gateway.test",
    btc_network="regtest",
    eth_chain_id=31337,
    token_address="0x" + "11" * 20,
    token_symbol="USDT",
)


@dataclass
class SimInvoice:
    record: InvoiceRecord

    @property
    def state(self) -> InvoiceState:
        return self.record.state

    @property
    def id(self) -> str:
        return self.record.id

    @property
    def merchant_id(self) -> str:
        return self.record.merchant_id


@dataclass
class Sim:
    """Invoices driven through the real lifecycle; ``events`` is the outbox they wrote, in seq order."""

    now: datetime = T0
    invoices: list[SimInvoice] = field(default_factory=list)
    events: list[OutboxEvent] = field(default_factory=list)
    db: sqlite3.Connection | None = None  # if set, outbox and payments rows are written here too
    facts: dict[str, PaymentFacts] = field(default_factory=dict)  # event id -> facts of its payment

    def create(
        self,
        merchant_id: str,
        price_tiyn: int,
        assets: dict[Asset, int],
        *,
        tolerance: Decimal = Decimal(0),
        expires_in: int = 900,
        terms: Mapping[Asset, AssetTerms] | None = None,
    ) -> SimInvoice:
        """An invoice priced ``price_tiyn`` accepting ``assets`` (asset -> confirmations required).

        ``terms`` replaces the harness's rates (to mirror an invoice the real service created).
        """
        invoice_id = f"inv_{len(self.invoices) + 1:04d}"
        expires_at = self.now + timedelta(seconds=expires_in)
        if terms is None:
            terms = {a: AssetTerms(a, RATES[a][0], RATES[a][1], conf) for a, conf in assets.items()}
        state = InvoiceState.new(price_tiyn, tolerance, expires_at, terms)
        methods = tuple(
            PaymentMethod(
                asset=a,
                chain="bitcoin" if a is Asset.BTC else "ethereum",
                address=f"addr-{invoice_id}-{'btc' if a is Asset.BTC else 'eth'}",
                derivation_index=len(self.invoices),
                amount_due_minor=crypto_due(price_tiyn, t.rate_kzt, t.decimals),
                rate_kzt=t.rate_kzt,
                confirmations_required=t.confirmations_required,
                uri=f"pay:{invoice_id}:{a.value}",
            )
            for a, t in terms.items()
        )
        quote = {
            "locked_at": isoformat(self.now),
            "locked_until": isoformat(expires_at),
            "spread_bps": 0,
            "rates": {
                a.value: {
                    "kzt_per_unit": str(t.rate_kzt),
                    "sources": ["fixed"],
                    "observed_at": isoformat(self.now),
                }
                for a, t in terms.items()
            },
        }
        stamp = isoformat(self.now)
        record = InvoiceRecord(
            invoice_id, merchant_id, None, None, None, None, quote, state, methods, stamp, stamp
        )
        invoice = SimInvoice(record)
        self.invoices.append(invoice)
        self._emit(invoice, "invoice.created", {"invoice": invoice_resource(record, CTX)})
        return invoice

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)

    def apply(self, invoice: SimInvoice, event: Event) -> Outcome | None:
        """Apply one lifecycle event; None if the lifecycle refused it (nothing is written then)."""
        try:
            outcome = apply(invoice.state, event, self.now)
        except (IllegalTransition, ValueError):
            return None
        if not outcome.changed:
            return outcome
        stamp = isoformat(self.now)
        invoice.record = dataclasses.replace(invoice.record, state=outcome.state, updated_at=stamp)
        resource = invoice_resource(invoice.record, CTX)
        payment_id = getattr(event, "payment_id", None)
        for kind in outcome.notifications:
            data: dict[str, Any] = {"invoice": resource}
            if payment_id is not None and kind.startswith("payment."):
                data["payment_key"] = payment_id
            if kind == "payment.dropped":
                data["reason"] = event.reason.value  # type: ignore[union-attr]
            event_id = self._emit(invoice, kind, data)
            if payment_id is not None and "payment_key" in data:
                payment = outcome.state.payments[payment_id]
                held = kind == "payment.detected" and payment.status is PaymentStatus.HELD
                self.facts[event_id] = PaymentFacts(
                    payment_id, payment.asset, payment.amount_minor, payment.late, held
                )
        if self.db is not None and payment_id is not None and payment_id in outcome.state.payments:
            self._write_payment(invoice, outcome.state.payments[payment_id])
        return outcome

    def _emit(self, invoice: SimInvoice, kind: str, data: dict[str, Any]) -> str:
        seq = len(self.events) + 1
        event_id = f"evt_{seq:06d}"
        version = invoice.state.version
        body = event_body(event_id, kind, self.now, version, data)
        event = OutboxEvent(
            seq, event_id, kind, invoice.merchant_id, invoice.id, version, body["created_at"], body
        )
        self.events.append(event)
        if self.db is not None:
            self.db.execute(
                "INSERT INTO outbox (seq, id, type, merchant_id, invoice_id, invoice_version, created_at, payload)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    seq,
                    event_id,
                    kind,
                    invoice.merchant_id,
                    invoice.id,
                    version,
                    body["created_at"],
                    jsonutil.dumps(body),
                ),
            )
        return event_id

    def _write_payment(self, invoice: SimInvoice, payment: Payment) -> None:
        assert self.db is not None
        stamp = isoformat(self.now)
        self.db.execute(
            "INSERT INTO payments (id, invoice_id, chain, payment_key, asset, address, amount_minor, confirmations,"
            " status, rbf_signalling, late, hold_reason, detected_at, updated_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (chain, payment_key) DO UPDATE SET"
            " confirmations = excluded.confirmations, status = excluded.status, late = excluded.late,"
            " hold_reason = excluded.hold_reason, updated_at = excluded.updated_at",
            (
                f"pay_{invoice.id}_{payment.payment_id}",
                invoice.id,
                "bitcoin" if payment.asset is Asset.BTC else "ethereum",
                payment.payment_id,
                payment.asset.value,
                "addr",
                str(payment.amount_minor),
                payment.confirmations,
                payment.status.value,
                int(payment.rbf_signalling),
                int(payment.late),
                payment.hold_reason,
                stamp,
                stamp,
            ),
        )

    def invoice(self, invoice_id: str) -> SimInvoice:
        return next(i for i in self.invoices if i.id == invoice_id)

    def ledger_event(self, event: OutboxEvent) -> LedgerEvent:
        """An outbox event as the ledger reads it, with the payment facts the consumer would attach.

        The facts come from the lifecycle state the event's change ended in: what the consumer reads from
        the payments row (asset, amount, late) and from the outbox (did the same change hold it).
        """
        ledger = LedgerEvent.from_outbox(event, self.facts.get(event.id))
        assert ledger is not None
        return ledger

    def ledger_events(self, events: Sequence[OutboxEvent] | None = None) -> list[LedgerEvent]:
        return [self.ledger_event(e) for e in (self.events if events is None else events)]


# -- what the ledger must show, computed from the lifecycle states alone ------------------------------


def counts(state: InvoiceState, payment: Payment) -> bool:
    return payment.status is PaymentStatus.ACCEPTED and (not payment.late or state.late_accepted)


def value(state: InvoiceState, payment: Payment) -> Fraction:
    terms = state.terms[payment.asset]
    return value_in_tiyn_exact(payment.amount_minor, terms.rate_kzt, terms.decimals)


class HasState(Protocol):
    @property
    def state(self) -> InvoiceState: ...
    @property
    def merchant_id(self) -> str: ...


def expected_balances(invoices: Iterable[HasState]) -> dict[str, int]:
    """Every account's balance as the module docstring of sandbox.ledger.model defines it."""
    totals: dict[str, int] = {}

    def add(account: str, amount: int) -> None:
        totals[account] = totals.get(account, 0) + amount

    for invoice in invoices:
        state, merchant = invoice.state, invoice.merchant_id
        if state.status is Status.SETTLED:
            by_asset: dict[Asset, Fraction] = {}
            for p in state.payments.values():
                if counts(state, p):
                    by_asset[p.asset] = by_asset.get(p.asset, Fraction(0)) + value(state, p)
            received = 0
            for asset, exact in by_asset.items():
                rounded = round_half_even_tiyn(exact)
                received += rounded
                add(clearing_account(asset), -rounded)
            add(settlement_account(merchant), state.price_tiyn)
            surplus = overpaid_account(merchant) if Flag.OVERPAID in state.flags else fx_account(merchant)
            add(surplus, received - state.price_tiyn)
        for p in state.payments.values():
            where = {
                PaymentStatus.HELD: held_account(merchant),
                PaymentStatus.REFUNDED: refunds_account(merchant),
            }
            if p.status in where:
                v = round_half_even_tiyn(value(state, p))
                add(where[p.status], v)
                add(clearing_account(p.asset), -v)
    return {a: n for a, n in totals.items() if n != 0}


def nonzero(balances: dict[str, int]) -> dict[str, int]:
    return {a: n for a, n in balances.items() if n != 0}


# -- a synchronous Tx over sqlite3, for property tests without an event loop ---------------------------


class SyncTx:
    """gateway.store.Tx over a plain sqlite3 connection; its methods never suspend (like the writer's)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        return self.conn.execute(sql, params).rowcount

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self.conn.executemany(sql, rows)

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        row = self.conn.execute(sql, params).fetchone()
        return None if row is None else dict(row)

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return [dict(r) for r in self.conn.execute(sql, params).fetchall()]

    def after_commit(self, callback: Any) -> None:
        callback()


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    """Drive a coroutine that only awaits a SyncTx to completion."""
    try:
        coroutine.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    coroutine.close()
    raise AssertionError("the coroutine awaited something other than its SyncTx")


def memory_db() -> sqlite3.Connection:
    """An in-memory database with the gateway's migrations (0004 holds the ledger's tables)."""
    conn = sqlite3.connect(":memory:", isolation_level=None)
    conn.row_factory = sqlite3.Row
    apply_sqlite_migrations(conn)
    return conn
