"""What the checkout page shows for an invoice, computed from its record: pure, so it is tested directly.

The lifecycle has six statuses and five flags; a payer needs fewer, plainer answers ("waiting", "payment
detected", "confirming 1 of 3", "paid", "partly paid: send the rest"...). That reduction is a *phase*,
decided here once, so that the HTML page, the no-JavaScript refresh and the Server-Sent Events stream can
never disagree about what to tell the payer.

After a partial payment the page offers each asset's *remaining* amount with a fresh payment URI (and so a
fresh QR code): a wallet that scans the original code would ask for the full amount again. The new URI is
the stored one re-built with the payment_uri builders and only the amount changed, so its label, message,
chain id and token stay exactly what invoice creation wrote.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from gateway.invoices.lifecycle import (
    Flag,
    InvoiceState,
    Payment,
    PaymentStatus,
    Status,
    amount_remaining_minor,
    required_confirmations,
)
from gateway.invoices.records import InvoiceRecord
from gateway.money import Asset, format_minor_units
from gateway.payment_uri import (
    Bip21Request,
    Eip681Native,
    Eip681TokenTransfer,
    build_bip21,
    build_eip681,
    parse_payment_uri,
)

__all__ = [
    "CheckoutView",
    "Confirmations",
    "MethodView",
    "Phase",
    "build_view",
    "confirmations_of",
    "phase_of",
    "remaining_uri",
]


class Phase(StrEnum):
    """What the payer is told; each has a title and a detail text in the catalogues (``status.<phase>``)."""

    WAITING = "waiting"  # nothing has arrived yet
    UNDERPAID = "underpaid"  # part has arrived: pay the rest (fresh amounts and URIs)
    HELD = "held"  # the sandbox holds a payment for review
    DETECTED = "detected"  # paid, in the mempool, no confirmation yet
    CONFIRMING = "confirming"  # paid, some confirmations, not enough yet
    PAID = "paid"  # settled: redirect to the shop if it gave a redirect_url
    EXPIRED = "expired"
    CANCELLED = "cancelled"
    REVERSED = "reversed"


# Only while one of these stands is there anything to pay: the page then shows QR codes and a countdown.
PAYABLE_PHASES = frozenset({Phase.WAITING, Phase.UNDERPAID})


@dataclass(frozen=True, slots=True)
class Confirmations:
    have: int
    need: int


@dataclass(frozen=True, slots=True)
class MethodView:
    """One tab of the page: where to send how much of one asset."""

    asset: Asset
    network: str
    address: str
    amount: str  # whole units as an exact decimal string (what the payer types into a wallet)
    amount_minor: int
    uri: str
    token_address: str | None
    remaining: bool  # the amount is what is still due after a partial payment


@dataclass(frozen=True, slots=True)
class CheckoutView:
    invoice_id: str
    merchant_name: str
    description: str | None
    order_id: str | None
    version: int
    status: str
    flags: tuple[str, ...]
    phase: Phase
    price_tiyn: int
    paid_tiyn: int
    seconds_left: int  # by the gateway's clock, never the payer's
    confirmations: Confirmations | None
    methods: tuple[MethodView, ...]  # empty unless the phase is payable
    notes: tuple[str, ...]  # catalogue keys of extra lines (reorg, late or partial payment after expiry)
    redirect_url: str | None  # set only once paid: where the page sends the payer back

    @property
    def payable(self) -> bool:
        return self.phase in PAYABLE_PHASES


def _counted(state: InvoiceState) -> list[Payment]:
    return [
        p
        for p in state.payments.values()
        if p.status is PaymentStatus.ACCEPTED and (not p.late or state.late_accepted)
    ]


def confirmations_of(state: InvoiceState) -> Confirmations:
    """The least-confirmed counted payment that still needs confirmations (the one the payer waits for)."""
    counted = _counted(state)
    pending = [p for p in counted if p.confirmations < required_confirmations(state, p)]
    if not pending:
        need = max((required_confirmations(state, p) for p in counted), default=0)
        return Confirmations(need, need)
    slowest = min(pending, key=lambda p: (p.confirmations, -required_confirmations(state, p)))
    return Confirmations(slowest.confirmations, required_confirmations(state, slowest))


def phase_of(state: InvoiceState) -> Phase:
    if state.status is Status.SETTLED:
        return Phase.PAID
    if state.status is Status.PROCESSING:
        return Phase.DETECTED if confirmations_of(state).have == 0 else Phase.CONFIRMING
    if state.status is Status.NEW:
        if Flag.ON_HOLD in state.flags:
            return Phase.HELD
        if Flag.UNDERPAID in state.flags:
            return Phase.UNDERPAID
        return Phase.WAITING
    return {
        Status.EXPIRED: Phase.EXPIRED,
        Status.CANCELLED: Phase.CANCELLED,
        Status.REVERSED: Phase.REVERSED,
    }[state.status]


def remaining_uri(uri: str, amount_minor: int) -> str:
    """``uri`` asking for ``amount_minor`` instead (same address, label, message, chain and token)."""
    request = parse_payment_uri(uri)
    if isinstance(request, Bip21Request):
        return build_bip21(dataclasses.replace(request, amount_sat=amount_minor))
    if isinstance(request, Eip681Native):
        return build_eip681(dataclasses.replace(request, value_wei=amount_minor))
    if isinstance(request, Eip681TokenTransfer):
        return build_eip681(dataclasses.replace(request, amount_units=amount_minor))
    raise TypeError(f"not a payment request: {type(request).__name__}")


def _notes(state: InvoiceState, phase: Phase) -> tuple[str, ...]:
    notes: list[str] = []
    if phase in (Phase.DETECTED, Phase.CONFIRMING) and Flag.REORGED in state.flags:
        notes.append("status.reorged")
    if phase is Phase.EXPIRED:
        if Flag.UNDERPAID in state.flags:
            notes.append("status.expired.partial")
        if Flag.PAID_LATE in state.flags:
            notes.append("status.expired.late")
    return tuple(notes)


def _methods(record: InvoiceRecord, resource: dict[str, Any], phase: Phase) -> tuple[MethodView, ...]:
    if phase not in PAYABLE_PHASES:
        return ()
    state = record.state
    described = {m["asset"]: m for m in resource["payment_methods"]}
    views: list[MethodView] = []
    for method in record.methods:
        terms = state.terms[method.asset]
        amount, uri = method.amount_due_minor, method.uri
        partly_paid = phase is Phase.UNDERPAID
        if partly_paid:
            amount = amount_remaining_minor(state, method.asset)
            if amount <= 0:
                continue
            uri = remaining_uri(method.uri, amount)
        info = described[method.asset.value]
        views.append(
            MethodView(
                asset=method.asset,
                network=str(info["network"]),
                address=method.address,
                amount=format_minor_units(amount, terms.decimals),
                amount_minor=amount,
                uri=uri,
                token_address=info.get("token_address"),
                remaining=partly_paid,
            )
        )
    return tuple(views)


def _safe_redirect(url: str | None) -> str | None:
    """The merchant's return link, if it is http(s): the API checks that, the page checks it again,
    because a ``javascript:`` link here would run in the gateway's origin."""
    if url is None or not url.lower().startswith(("https://", "http://")):
        return None
    return url


def build_view(
    record: InvoiceRecord, resource: dict[str, Any], merchant_name: str, now: datetime
) -> CheckoutView:
    """The page's content for ``record`` at ``now`` (the gateway's injected clock)."""
    state = record.state
    phase = phase_of(state)
    left = math.ceil((state.expires_at - now).total_seconds())
    return CheckoutView(
        invoice_id=record.id,
        merchant_name=merchant_name,
        description=record.description,
        order_id=record.order_id,
        version=state.version,
        status=state.status.value,
        flags=tuple(sorted(f.value for f in state.flags)),
        phase=phase,
        price_tiyn=state.price_tiyn,
        paid_tiyn=int(resource["amount_paid_tiyn"]),
        seconds_left=max(0, left),
        confirmations=confirmations_of(state) if phase in (Phase.DETECTED, Phase.CONFIRMING) else None,
        methods=_methods(record, resource, phase),
        notes=_notes(state, phase),
        redirect_url=_safe_redirect(record.redirect_url) if phase is Phase.PAID else None,
    )
