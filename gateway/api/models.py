"""Pydantic models of the merchant API v1: request validation at the edge and the OpenAPI schema source.

Requests are strict (unknown fields refused, amounts only as decimal strings) because a payment API must
never guess what a client meant. Responses are built as plain dicts on the hot path and these models
describe them; tests validate real responses against them so the two cannot drift.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, field_validator

from gateway.money import KZT_DECIMALS, AmountError, Asset, parse_decimal_amount


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class CreateInvoiceRequest(_Strict):
    """Body of ``POST /v1/invoices``."""

    amount: StrictStr = Field(
        description='Price in KZT as a decimal string with at most 2 decimals, e.g. "12500.00".',
        examples=["12500.00"],
        max_length=32,
    )
    currency: Literal["KZT"] = Field(description="Only tenge-priced invoices exist.")
    assets: Annotated[list[Asset], Field(min_length=1, max_length=3)] | None = Field(
        default=None, description="Assets offered to the payer; default: every asset the merchant accepts."
    )
    order_id: Annotated[StrictStr, Field(min_length=1, max_length=200)] | None = Field(
        default=None, description="The merchant's own order reference (searchable)."
    )
    description: StrictStr | None = Field(default=None, max_length=10000, description="Shown to the payer.")
    metadata: dict[str, Any] | None = Field(
        default=None, description="Small JSON object stored with the invoice and echoed in webhooks."
    )
    expires_in: StrictInt | None = Field(default=None, description="Seconds until the invoice expires.")
    redirect_url: (
        Annotated[
            StrictStr, Field(max_length=2000, json_schema_extra={"pattern": "^[Hh][Tt][Tt][Pp][Ss]?://"})
        ]
        | None
    ) = Field(
        default=None, description="Where the hosted checkout sends the payer after payment (http or https)."
    )

    @field_validator("amount")
    @classmethod
    def _amount(cls, value: str) -> str:
        try:
            tiyn = parse_decimal_amount(value, KZT_DECIMALS)
        except AmountError as exc:
            raise ValueError(str(exc)) from None
        if tiyn <= 0:
            raise ValueError("must be greater than zero")
        return value

    @field_validator("assets")
    @classmethod
    def _unique_assets(cls, value: list[Asset] | None) -> list[Asset] | None:
        if value is not None and len(set(value)) != len(value):
            raise ValueError("lists an asset twice")
        return value

    @field_validator("redirect_url")
    @classmethod
    def _redirect(cls, value: str | None) -> str | None:
        if value is not None and not value.lower().startswith(("https://", "http://")):
            raise ValueError("must be an http:// or https:// URL")
        return value


class RateOut(BaseModel):
    kzt_per_unit: str = Field(
        description="Locked rate: KZT per whole coin, decimal string, after the merchant's spread."
    )
    mid_kzt_per_unit: str | None = Field(
        default=None,
        description="The market rate before the spread (absent on invoices created before migration 0005).",
    )
    sources: list[str]
    observed_at: str


class QuoteOut(BaseModel):
    locked_at: str
    locked_until: str
    spread_bps: int = Field(description="The merchant's spread in basis points, applied to every rate.")
    rates: dict[str, RateOut]


class QrLinks(BaseModel):
    png: str
    svg: str


class PaymentMethodOut(BaseModel):
    asset: Asset
    chain: str
    network: str
    address: str
    derivation_index: int
    amount_due: str = Field(description="Exact amount to pay, decimal string in whole coins.")
    amount_due_minor: int = Field(description="The same in the smallest unit (sat, wei, token units).")
    amount_remaining_minor: int
    decimals: int
    confirmations_required: int
    uri: str = Field(description="BIP21 or EIP-681 payment request.")
    qr: QrLinks
    token_address: str | None = Field(default=None, description="ERC-20 contract (USDT only).")
    token_symbol: str | None = Field(
        default=None, description="The token's symbol on this chain, e.g. tUSDT."
    )


class PaymentOut(BaseModel):
    id: str
    object: Literal["payment"]
    invoice_id: str
    asset: Asset
    chain: str
    payment_key: str = Field(description="txid:vout (Bitcoin), tx_hash or tx_hash:log_index (Ethereum).")
    address: str
    amount: str
    amount_minor: int
    value_tiyn: int
    confirmations: int
    status: str
    late: bool
    rbf_signalling: bool
    hold_reason: str | None
    detected_at: str
    updated_at: str


class InvoiceOut(BaseModel):
    id: str
    object: Literal["invoice"]
    merchant_id: str
    status: Literal["new", "processing", "settled", "expired", "cancelled", "reversed"]
    flags: list[str]
    version: int
    amount: str
    amount_tiyn: int
    currency: Literal["KZT"]
    amount_paid: str
    amount_paid_tiyn: int
    order_id: str | None
    description: str | None
    metadata: dict[str, Any] | None
    redirect_url: str | None
    checkout_url: str
    created_at: str
    updated_at: str
    expires_at: str
    quote: QuoteOut
    payment_methods: list[PaymentMethodOut]


class InvoiceList(BaseModel):
    object: Literal["list"]
    data: list[InvoiceOut]
    has_more: bool
    next_starting_after: str | None


class PaymentList(BaseModel):
    object: Literal["list"]
    data: list[PaymentOut]


class ProblemFieldError(BaseModel):
    pointer: str
    detail: str


class ProblemOut(BaseModel):
    type: str
    title: str
    status: int
    detail: str
    instance: str
    errors: list[ProblemFieldError] | None = None


class ClusterOut(BaseModel):
    """This process's part among the gateways sharing a store (gateway/cluster/)."""

    role: Literal["leader", "follower"] = Field(
        description="The leader runs the chain watchers, rates refresher, outbox consumers and expiry sweeper."
    )
    election: Literal["advisory_lock", "single_process"] = Field(
        description="advisory_lock: PostgreSQL, several processes may share the store; single_process: SQLite."
    )
    terms: int = Field(description="How many times this process has become leader since it started.")
    pid: int = Field(description="The process id, to tell the processes behind one address apart.")


class HealthOut(BaseModel):
    status: Literal["ok", "unavailable"]
    checks: dict[str, str] = Field(default_factory=dict)
    cluster: ClusterOut | None = Field(
        default=None, description="Always on /readyz; on /healthz only when the store is PostgreSQL."
    )
