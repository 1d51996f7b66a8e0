"""Typed views of what the gateway sends and accepts, as pydantic models.

Answers are parsed leniently on purpose: unknown fields are kept (``model_extra``) rather than refused,
and enum-like fields (statuses, event types, flags) are plain strings, so a gateway that adds a field,
a flag or an event type never breaks a merchant running an older SDK. Money keeps its unit in its name:
``*_tiyn`` and ``*_minor`` are integers (wei exceed 2^53, Python ints do not care), decimal strings are
parsed as ``Decimal``; no float ever holds money.

Requests are the opposite: strict (``extra="forbid"``), so a typo in a field name fails on the
merchant's machine instead of as a 422 from the gateway.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

# Known values, for readers and for ``match`` statements; the models accept others too.
INVOICE_STATUSES = ("new", "processing", "settled", "expired", "cancelled", "reversed")
INVOICE_FLAGS = ("underpaid", "overpaid", "paid_late", "on_hold", "reorged")
EVENT_TYPES = (
    "invoice.created",
    "invoice.processing",
    "invoice.settled",
    "invoice.expired",
    "invoice.cancelled",
    "invoice.reversed",
    "invoice.paid_late",
    "invoice.overpaid",
    "invoice.underpaid",
    "payment.detected",
    "payment.confirmed",
    "payment.dropped",
    "payment.held",
    "payment.released",
)


class Resource(BaseModel):
    """Base of every answer: forward compatible (extra fields kept) and immutable."""

    model_config = ConfigDict(extra="allow", frozen=True)


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- invoices -------------------------------------------------------------------------------------------


class QuoteRate(Resource):
    kzt_per_unit: Decimal
    sources: list[str] = Field(default_factory=list)
    observed_at: datetime


class Quote(Resource):
    """The rates locked for the invoice's whole life."""

    locked_at: datetime
    locked_until: datetime
    spread_bps: int
    rates: dict[str, QuoteRate]


class QrLinks(Resource):
    png: str
    svg: str


class PaymentMethod(Resource):
    """How to pay the invoice in one asset: a fresh address and the exact amount (rounded up)."""

    asset: str
    chain: str
    network: str
    address: str
    derivation_index: int
    amount_due: Decimal
    amount_due_minor: int
    amount_remaining_minor: int
    decimals: int
    confirmations_required: int
    uri: str
    qr: QrLinks
    token_address: str | None = None
    token_symbol: str | None = None


class Invoice(Resource):
    """A tenge-priced invoice; ``version`` grows with every change, so newer views can be told apart."""

    id: str
    object: Literal["invoice"] = "invoice"
    merchant_id: str
    status: str
    flags: list[str] = Field(default_factory=list)
    version: int
    amount: Decimal
    amount_tiyn: int
    currency: str
    amount_paid: Decimal
    amount_paid_tiyn: int
    order_id: str | None = None
    description: str | None = None
    metadata: dict[str, Any] | None = None
    redirect_url: str | None = None
    checkout_url: str
    created_at: datetime
    updated_at: datetime
    expires_at: datetime
    quote: Quote
    payment_methods: list[PaymentMethod] = Field(default_factory=list)

    def has_flag(self, flag: str) -> bool:
        return flag in self.flags


class Payment(Resource):
    """One payment the gateway saw for an invoice; ``payment_key`` is the chain's own key (txid:vout)."""

    id: str
    object: Literal["payment"] = "payment"
    invoice_id: str
    asset: str
    chain: str
    payment_key: str
    address: str
    amount: Decimal
    amount_minor: int
    value_tiyn: int
    confirmations: int
    status: str
    late: bool
    rbf_signalling: bool = False
    hold_reason: str | None = None
    detected_at: datetime
    updated_at: datetime


class InvoiceList(Resource):
    object: Literal["list"] = "list"
    data: list[Invoice]
    has_more: bool
    next_starting_after: str | None = None


class PaymentList(Resource):
    object: Literal["list"] = "list"
    data: list[Payment]


class CreateInvoiceParams(_Request):
    """Body of ``POST /v1/invoices``. ``amount`` is tenge with at most 2 decimals (string or Decimal)."""

    amount: str
    currency: Literal["KZT"] = "KZT"
    assets: list[str] | None = None
    order_id: str | None = None
    description: str | None = None
    metadata: dict[str, Any] | None = None
    expires_in: int | None = None
    redirect_url: str | None = None

    @field_validator("amount", mode="before")
    @classmethod
    def _amount_text(cls, value: object) -> object:
        # A float would already have lost the exact tenge amount; refuse it rather than guess.
        if isinstance(value, float):
            raise ValueError("pass the amount as a decimal string or Decimal, never a float")
        if isinstance(value, Decimal | int) and not isinstance(value, bool):
            return format(Decimal(value), "f")
        return value


# --- rates, balance and ledger --------------------------------------------------------------------------


class Rate(Resource):
    kzt_per_unit: Decimal
    sources: list[str] = Field(default_factory=list)
    observed_at: datetime


class ProviderHealth(Resource):
    name: str
    healthy: bool
    last_success_at: datetime | None = None
    last_error: str | None = None
    last_error_type: str | None = None
    last_error_at: datetime | None = None
    consecutive_failures: int = 0
    next_attempt_at: datetime | None = None
    rate_limited_until: datetime | None = None


class RatesView(Resource):
    """``GET /v1/rates``: what a new invoice would be priced at now, and why (sources, health)."""

    mode: str
    taken_at: datetime
    rates: dict[str, Rate]
    unavailable: dict[str, str] = Field(default_factory=dict)
    providers: dict[str, ProviderHealth] = Field(default_factory=dict)


class Money(Resource):
    """A signed tenge amount in both forms; ``tiyn`` is the exact one (1 KZT = 100 tiyn)."""

    tiyn: int
    kzt: Decimal


class Balance(Resource):
    """``GET /v1/balance``: the merchant's digital-tenge accounts (settlement, fx, overpaid, held …)."""

    object: Literal["balance"] = "balance"
    merchant_id: str
    currency: str
    accounts: dict[str, Money]


class LedgerLine(Resource):
    account: str
    amount: Money


class LedgerEntry(Resource):
    """One balanced journal entry (its lines sum to zero), caused by one gateway event."""

    id: str
    seq: int
    event_id: str | None = None
    event_type: str
    leg: str | None = None
    invoice_id: str | None = None
    payment_key: str | None = None
    posted_at: datetime
    lines: list[LedgerLine]


class LedgerPage(Resource):
    object: Literal["list"] = "list"
    data: list[LedgerEntry]
    has_more: bool
    next_starting_after: str | None = None


# --- webhook endpoints, events and deliveries -----------------------------------------------------------


class WebhookEndpoint(Resource):
    """Where the gateway POSTs events. ``secret`` is present only in the create and rotate answers."""

    id: str
    object: Literal["webhook_endpoint"] = "webhook_endpoint"
    url: str
    event_types: list[str]
    description: str | None = None
    status: str
    disabled_reason: str | None = None
    disabled_at: datetime | None = None
    failing_since: datetime | None = None
    created_at: datetime
    updated_at: datetime
    secret: str | None = None


class WebhookEndpointList(Resource):
    object: Literal["list"] = "list"
    data: list[WebhookEndpoint]
    has_more: bool = False


class CreateWebhookEndpointParams(_Request):
    url: str
    event_types: list[str] = Field(default_factory=lambda: ["*"])
    description: str | None = None


class UpdateWebhookEndpointParams(_Request):
    """``PATCH`` body: only the fields given are sent, so the others stay as they are."""

    url: str | None = None
    event_types: list[str] | None = None
    description: str | None = None
    status: Literal["enabled", "disabled"] | None = None


class RotateSecretParams(_Request):
    expire_previous_in_seconds: int = Field(default=86400, ge=0)


class EventData(Resource):
    """An event's payload: the invoice as it was right after the change, plus type-specific fields
    (``payment_key`` on payment events, ``reason`` on payment.dropped)."""

    invoice: Invoice | None = None


class Event(Resource):
    """A change the gateway announced; also the exact body of a webhook POST.

    ``id`` is unique per event (de-duplicate by it). ``invoice_version`` is the invoice's version after
    the change: apply an event only if it is newer than what you already applied, since deliveries can
    arrive twice or out of order.
    """

    id: str
    object: Literal["event"] = "event"
    type: str
    created_at: datetime
    invoice_version: int | None = None
    data: EventData = Field(default_factory=EventData)


class EventList(Resource):
    object: Literal["list"] = "list"
    data: list[Event]
    has_more: bool
    next_starting_after: str | None = None


class WebhookDelivery(Resource):
    """One attempt (or a scheduled one) to deliver an event to one endpoint."""

    id: str
    object: Literal["webhook_delivery"] = "webhook_delivery"
    event_id: str
    endpoint_id: str
    attempt: int
    status: str
    response_status: int | None = None
    latency_ms: int | None = None
    error: str | None = None
    attempted_at: datetime | None = None
    next_attempt_at: datetime | None = None


class WebhookDeliveryList(Resource):
    object: Literal["list"] = "list"
    data: list[WebhookDelivery]


class RedeliverParams(_Request):
    endpoint_id: str | None = None
