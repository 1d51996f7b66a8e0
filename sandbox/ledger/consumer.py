"""The ledger as an outbox consumer: every invoice.* / payment.* event, in order, booked in the consumer's tx.

For each event: load the invoice's booked state (once per batch), attach the payment's immutable facts,
``model.book`` it, ``store.post`` the entries; at the end of the batch the touched states are saved. All of
it commits with the consumer's cursor, so a crash replays events instead of losing them, and a replayed
event books nothing (its seq is not after the invoice's last booked seq, and its entry ids exist already).

Payment facts come from ``data.payment`` when the event carries it, otherwise from the gateway's
``payments`` row (asset, amount_minor and late never change for a payment) and, for ``payment.detected``,
from the outbox itself: whether the same change (same invoice and version) also wrote a ``payment.held`` for
the payment. Both are committed with the event, so the answer does not depend on when the ledger runs.

A ``LedgerMismatch`` (the ledger's count of an invoice's payments disagrees with the gateway's) propagates:
the batch rolls back and the runner retries it, so the ledger stops rather than books wrong figures.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from gateway import jsonutil
from gateway.money import Asset
from gateway.outbox import OutboxEvent
from gateway.store import Tx
from sandbox.ledger.model import InvoiceBook, LedgerEvent, PaymentFacts, book, is_ledger_event_type
from sandbox.ledger.store import load_book, post, save_book


class LedgerConsumer:
    """gateway.outbox.OutboxConsumer that books the digital-tenge ledger."""

    name = "ledger"

    def __init__(self, name: str = "ledger") -> None:
        self.name = name

    async def handle(self, tx: Tx, events: Sequence[OutboxEvent]) -> None:
        books: dict[str, InvoiceBook | None] = {}
        touched: dict[str, str] = {}  # invoice id -> created_at of its last booked event
        for event in events:
            if event.invoice_id is None or not is_ledger_event_type(event.type):
                continue
            invoice_id = event.invoice_id
            if invoice_id not in books:
                books[invoice_id] = await load_book(tx, invoice_id)
            previous = books[invoice_id]
            if previous is not None and event.seq <= previous.last_seq:
                continue  # handed twice: booked already
            facts = await payment_facts(tx, event)
            ledger_event = LedgerEvent.from_outbox(event, facts)
            if ledger_event is None:
                continue
            booking = book(ledger_event, previous)
            await post(tx, booking.entries)
            books[invoice_id] = booking.state
            touched[invoice_id] = event.created_at
        for invoice_id, updated_at in touched.items():
            state = books[invoice_id]
            assert state is not None
            await save_book(tx, state, updated_at)


async def payment_facts(tx: Tx, event: OutboxEvent) -> PaymentFacts | None:
    """The immutable facts of the payment a ``payment.*`` event is about (None for other events)."""
    data = event.payload.get("data")
    if not event.type.startswith("payment.") or not isinstance(data, Mapping):
        return None
    key = data.get("payment_key")
    if key is None or event.invoice_id is None:
        return None
    embedded = data.get("payment")
    if isinstance(embedded, Mapping):  # a payment resource (gateway.invoices.records.payment_resource)
        return PaymentFacts(
            payment_key=str(key),
            asset=Asset(embedded["asset"]),
            amount_minor=int(embedded["amount_minor"]),
            late=bool(embedded["late"]),
            held=event.type == "payment.detected" and embedded.get("status") == "held",
        )
    row = await tx.fetchone(
        "SELECT asset, amount_minor, late FROM payments WHERE invoice_id = ? AND payment_key = ?",
        (event.invoice_id, key),
    )
    if row is None:
        return None
    held = event.type == "payment.detected" and await _held_in_same_change(tx, event, str(key))
    return PaymentFacts(str(key), Asset(row["asset"]), int(row["amount_minor"]), bool(row["late"]), held)


async def _held_in_same_change(tx: Tx, event: OutboxEvent, key: str) -> bool:
    if event.invoice_version is None:
        return False
    rows = await tx.fetchall(
        "SELECT payload FROM outbox WHERE invoice_id = ? AND invoice_version = ? AND type = 'payment.held'",
        (event.invoice_id, event.invoice_version),
    )
    for row in rows:
        payload: Any = jsonutil.loads(row["payload"])
        if payload.get("data", {}).get("payment_key") == key:
            return True
    return False
