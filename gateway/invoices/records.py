"""Invoice records as stored, and their API representation.

The lifecycle state (status, flags, payments, locked terms, version) is stored as one JSON document next to
indexed copies of status/flags/version, so every transition is a single-row update plus its outbox event.
The API resource is built here once and reused by the create answer, GET, lists and webhook payloads.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from gateway import jsonutil
from gateway.clock import isoformat, parse_isoformat
from gateway.invoices.lifecycle import (
    AssetTerms,
    Flag,
    InvoiceState,
    Payment,
    PaymentStatus,
    Status,
    accepted_value_tiyn,
    amount_remaining_minor,
)
from gateway.money import (
    ASSETS,
    Asset,
    format_minor_units,
    format_tiyn,
    round_half_even_tiyn,
    value_in_tiyn_exact,
)
from gateway.store import Row


@dataclass(frozen=True, slots=True)
class PaymentMethod:
    asset: Asset
    chain: str
    address: str
    derivation_index: int
    amount_due_minor: int
    rate_kzt: Decimal
    confirmations_required: int
    uri: str


@dataclass(frozen=True, slots=True)
class InvoiceRecord:
    id: str
    merchant_id: str
    order_id: str | None
    description: str | None
    metadata: dict[str, Any] | None
    redirect_url: str | None
    quote: dict[str, Any]
    state: InvoiceState
    methods: tuple[PaymentMethod, ...]
    created_at: str
    updated_at: str


# -- lifecycle state <-> JSON ------------------------------------------------------------------------


def state_to_json(state: InvoiceState) -> str:
    doc = {
        "status": state.status.value,
        "flags": sorted(f.value for f in state.flags),
        "price_tiyn": state.price_tiyn,
        "tolerance": str(state.tolerance),
        "expires_at": isoformat(state.expires_at),
        "terms": [
            {
                "asset": t.asset.value,
                "rate_kzt": str(t.rate_kzt),
                "decimals": t.decimals,
                "conf": t.confirmations_required,
            }
            for t in state.terms.values()
        ],
        "payments": [
            {
                "id": p.payment_id,
                "asset": p.asset.value,
                "amount": str(p.amount_minor),
                "conf": p.confirmations,
                "rbf": p.rbf_signalling,
                "status": p.status.value,
                "late": p.late,
                "hold": p.hold_reason,
            }
            for p in state.payments.values()
        ],
        "late_accepted": state.late_accepted,
        "version": state.version,
    }
    return jsonutil.dumps(doc)


def state_from_json(text: str) -> InvoiceState:
    doc = jsonutil.loads(text)
    terms = {
        Asset(t["asset"]): AssetTerms(
            Asset(t["asset"]), Decimal(t["rate_kzt"]), int(t["decimals"]), int(t["conf"])
        )
        for t in doc["terms"]
    }
    base = InvoiceState.new(
        price_tiyn=int(doc["price_tiyn"]),
        tolerance=Decimal(doc["tolerance"]),
        expires_at=parse_isoformat(doc["expires_at"]),
        terms=terms,
    )
    payments = {
        p["id"]: Payment(
            payment_id=p["id"],
            asset=Asset(p["asset"]),
            amount_minor=int(p["amount"]),
            confirmations=int(p["conf"]),
            rbf_signalling=bool(p["rbf"]),
            status=PaymentStatus(p["status"]),
            late=bool(p["late"]),
            hold_reason=p["hold"],
        )
        for p in doc["payments"]
    }
    return dataclasses.replace(
        base,
        status=Status(doc["status"]),
        flags=frozenset(Flag(f) for f in doc["flags"]),
        payments=payments,
        late_accepted=bool(doc["late_accepted"]),
        version=int(doc["version"]),
    )


# -- rows <-> records ----------------------------------------------------------------------------------

INVOICE_COLUMNS = (
    "id, merchant_id, order_id, description, metadata, redirect_url, quote, payment_methods, state,"
    " created_at, updated_at"
)


def methods_to_json(methods: tuple[PaymentMethod, ...]) -> str:
    return jsonutil.dumps(
        [
            {
                "asset": m.asset.value,
                "chain": m.chain,
                "address": m.address,
                "index": m.derivation_index,
                "due": str(m.amount_due_minor),
                "rate_kzt": str(m.rate_kzt),
                "conf": m.confirmations_required,
                "uri": m.uri,
            }
            for m in methods
        ]
    )


def methods_from_json(text: str) -> tuple[PaymentMethod, ...]:
    return tuple(
        PaymentMethod(
            asset=Asset(m["asset"]),
            chain=m["chain"],
            address=m["address"],
            derivation_index=int(m["index"]),
            amount_due_minor=int(m["due"]),
            rate_kzt=Decimal(m["rate_kzt"]),
            confirmations_required=int(m["conf"]),
            uri=m["uri"],
        )
        for m in jsonutil.loads(text)
    )


def record_from_row(row: Row) -> InvoiceRecord:
    return InvoiceRecord(
        id=row["id"],
        merchant_id=row["merchant_id"],
        order_id=row["order_id"],
        description=row["description"],
        metadata=None if row["metadata"] is None else json.loads(row["metadata"]),
        redirect_url=row["redirect_url"],
        quote=jsonutil.loads(row["quote"]),
        state=state_from_json(row["state"]),
        methods=methods_from_json(row["payment_methods"]),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


# -- API resources -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ResourceContext:
    """Deployment facts the resource needs: links and network names."""

    public_url: str
    btc_network: str
    eth_chain_id: int
    token_address: str
    token_symbol: str


def invoice_resource(record: InvoiceRecord, ctx: ResourceContext) -> dict[str, Any]:
    state = record.state
    # Fast path for the common case (a fresh invoice): nothing paid, everything still due.
    unpaid = not state.payments
    paid_tiyn = 0 if unpaid else round_half_even_tiyn(accepted_value_tiyn(state))
    base = f"{ctx.public_url}/v1/invoices/{record.id}"
    methods = []
    for m in record.methods:
        # The decimals locked in the terms, not the asset table's: the token's decimals are a deployment
        # setting (ethereum.token_decimals), and the amounts due were computed with the locked ones.
        locked = state.terms.get(m.asset)
        decimals = locked.decimals if locked is not None else ASSETS[m.asset].decimals
        methods.append(
            {
                "asset": m.asset.value,
                "chain": m.chain,
                "network": ctx.btc_network if m.chain == "bitcoin" else f"eip155:{ctx.eth_chain_id}",
                "address": m.address,
                "derivation_index": m.derivation_index,
                "amount_due": format_minor_units(m.amount_due_minor, decimals),
                "amount_due_minor": m.amount_due_minor,
                "amount_remaining_minor": m.amount_due_minor
                if unpaid
                else amount_remaining_minor(state, m.asset),
                "decimals": decimals,
                "confirmations_required": m.confirmations_required,
                "uri": m.uri,
                "qr": {"png": f"{base}/qr/{m.asset.value}.png", "svg": f"{base}/qr/{m.asset.value}.svg"},
                "token_address": ctx.token_address if m.asset is Asset.USDT else None,
                "token_symbol": ctx.token_symbol if m.asset is Asset.USDT else None,
            }
        )
    return {
        "id": record.id,
        "object": "invoice",
        "merchant_id": record.merchant_id,
        "status": state.status.value,
        "flags": sorted(f.value for f in state.flags),
        "version": state.version,
        "amount": format_tiyn(state.price_tiyn),
        "amount_tiyn": state.price_tiyn,
        "currency": "KZT",
        "amount_paid": format_tiyn(paid_tiyn),
        "amount_paid_tiyn": paid_tiyn,
        "order_id": record.order_id,
        "description": record.description,
        "metadata": record.metadata,
        "redirect_url": record.redirect_url,
        "checkout_url": f"{ctx.public_url}/i/{record.id}",
        "created_at": record.created_at,
        "updated_at": record.updated_at,
        "expires_at": isoformat(state.expires_at),
        "quote": record.quote,
        "payment_methods": methods,
    }


def payment_resource(row: Row, state: InvoiceState) -> dict[str, Any]:
    asset = Asset(row["asset"])
    amount = int(row["amount_minor"])
    terms = state.terms.get(asset)
    decimals = terms.decimals if terms is not None else ASSETS[asset].decimals
    value = round_half_even_tiyn(value_in_tiyn_exact(amount, terms.rate_kzt, decimals)) if terms else 0
    return {
        "id": row["id"],
        "object": "payment",
        "invoice_id": row["invoice_id"],
        "asset": asset.value,
        "chain": row["chain"],
        "payment_key": row["payment_key"],
        "address": row["address"],
        "amount": format_minor_units(amount, decimals),
        "amount_minor": amount,
        "value_tiyn": value,
        "confirmations": int(row["confirmations"]),
        "status": row["status"],
        "late": bool(row["late"]),
        "rbf_signalling": bool(row["rbf_signalling"]),
        "hold_reason": row["hold_reason"],
        "detected_at": row["detected_at"],
        "updated_at": row["updated_at"],
    }
