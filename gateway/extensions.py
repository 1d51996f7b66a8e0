"""Extension points through which the sandbox (or any deployment) shapes the gateway.

``gateway`` never imports ``sandbox``; the composition root passes an :class:`Extensions` to
``create_app``. Every point has a no-op default, so the bare gateway runs on its own.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from aiohttp import web

from gateway.money import Asset
from gateway.outbox import OutboxConsumer
from gateway.store import Tx


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why an invoice may not be created: becomes a problem+json answer with this status."""

    status: int
    title: str
    detail: str
    type_suffix: str = "invoice-refused"


@dataclass(frozen=True, slots=True)
class InvoiceRequestContext:
    merchant_id: str
    price_tiyn: int
    assets: tuple[Asset, ...]
    now: datetime


class InvoiceGate(Protocol):
    async def check(self, request: InvoiceRequestContext) -> Refusal | None:
        """Return a Refusal to stop the invoice (e.g. the sandbox cap is reached), or None to go on."""
        ...


@dataclass(frozen=True, slots=True)
class DetectedPayment:
    """What the policy sees of a payment at its first detection."""

    invoice_id: str
    merchant_id: str
    chain: str
    payment_key: str
    asset: Asset
    amount_minor: int
    value_tiyn: int  # tenge value at the invoice's locked quote, half-even
    payer: str | None  # script hex or address of the sender, when the watcher could tell
    detected_at: datetime
    # Every distinct owner the watcher recovered from the inputs (Bitcoin: P2WPKH scripts as hex), in input
    # order; more than one means the payment was funded by several wallets.
    payer_scripts: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class PolicyDecision:
    accept: bool
    reason: str | None = None

    @classmethod
    def accepted(cls) -> PolicyDecision:
        return cls(True)

    @classmethod
    def hold(cls, reason: str) -> PolicyDecision:
        return cls(False, reason)


class PaymentPolicy(Protocol):
    async def decide(self, tx: Tx, payment: DetectedPayment) -> PolicyDecision:
        """Called once per payment inside the transaction that records it; raising means hold."""
        ...


class AllowAllInvoices:
    async def check(self, request: InvoiceRequestContext) -> Refusal | None:
        return None


class AcceptAllPayments:
    async def decide(self, tx: Tx, payment: DetectedPayment) -> PolicyDecision:
        return PolicyDecision.accepted()


@dataclass(frozen=True, slots=True)
class RouteExtension:
    """A sub-application mounted under ``prefix`` with its OpenAPI paths and component schemas."""

    prefix: str
    app: web.Application
    openapi_paths: dict[str, Any] = field(default_factory=dict)
    openapi_schemas: dict[str, Any] = field(default_factory=dict)
    openapi_security_schemes: dict[str, Any] = field(default_factory=dict)


StartHook = Callable[[web.Application], Awaitable[None]]


@dataclass(slots=True)
class Extensions:
    invoice_gate: InvoiceGate = field(default_factory=AllowAllInvoices)
    payment_policy: PaymentPolicy = field(default_factory=AcceptAllPayments)
    consumers: Sequence[OutboxConsumer] = ()
    routes: Sequence[RouteExtension] = ()
    # Called once the store, clock and rates exist (before the API serves), so an extension can take what it
    # needs from the app (the sandbox takes the store and the official USD rate).
    on_start: Sequence[StartHook] = ()
