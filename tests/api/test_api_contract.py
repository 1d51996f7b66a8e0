"""The API's promises beyond single endpoints: OpenAPI validity, no secrets in logs, extension points."""

from __future__ import annotations

import io
import json
from datetime import datetime
from typing import Any

from openapi_spec_validator import validate

from gateway.api.openapi import build_openapi
from gateway.extensions import (
    DetectedPayment,
    Extensions,
    InvoiceRequestContext,
    PolicyDecision,
    Refusal,
)
from gateway.invoices.service import PaymentFact
from gateway.logging import configure_logging
from gateway.money import Asset, Chain
from gateway.rates import AssetRate, RatesUnavailable
from gateway.store import Tx
from sandbox.demo import demo_account_keys
from tests.conftest import GatewayFactory


async def test_openapi_document_is_valid_3_1_and_served(make_gateway: GatewayFactory) -> None:
    gateway = await make_gateway()
    response = await gateway.client.get("/openapi.json")
    document = await response.json()
    assert document["openapi"] == "3.1.0"
    validate(document)
    assert document == json.loads(json.dumps(build_openapi()))
    for path in (
        "/v1/invoices",
        "/v1/invoices/{invoice_id}",
        "/v1/invoices/{invoice_id}/cancel",
        "/v1/invoices/{invoice_id}/payments",
        "/v1/invoices/{invoice_id}/qr/{filename}",
    ):
        assert path in document["paths"]
    schema = document["components"]["schemas"]["CreateInvoiceRequest"]
    assert schema["additionalProperties"] is False


async def test_api_keys_and_xpubs_never_reach_the_logs(make_gateway: GatewayFactory) -> None:
    sink = io.StringIO()
    configure_logging("debug", "json", stream=sink)
    try:
        gateway = await make_gateway(CRYPTOCITY_LOGGING__ACCESS_LOG="true")
        await gateway.create_invoice()
        await gateway.client.get("/v1/invoices", headers=gateway.auth("cc_test_" + "z" * 38))
        await gateway.client.get("/v1/invoices", headers=gateway.auth())
        new_key = await gateway.registry.rotate_key(gateway.merchant_id)
        await gateway.client.get("/v1/invoices", headers=gateway.auth(new_key.plaintext))
        # even a careless log call with a secret in it is masked
        import structlog

        structlog.get_logger("test").error(
            "oops", header=f"Bearer {new_key.plaintext}", key=demo_account_keys()[0]
        )
    finally:
        configure_logging("warning", "json")
    text = sink.getvalue()
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]
    assert any(line.get("event") == "invoice.created" for line in lines)
    created = next(line for line in lines if line.get("event") == "invoice.created")
    assert created["merchant_id"] == gateway.merchant_id and created["request_id"].startswith("req_")
    assert created["invoice_id"].startswith("inv_")
    for secret in (gateway.api_key, new_key.plaintext, *demo_account_keys(), gateway.other_api_key):
        assert secret not in text
    assert "[redacted]" in text


class _Refuse:
    async def check(self, request: InvoiceRequestContext) -> Refusal | None:
        if request.price_tiyn > 100_000:
            return Refusal(403, "Sandbox cap reached", "the pilot's monthly cap is used up", "sandbox-cap")
        return None


async def test_invoice_gate_can_refuse_with_403(make_gateway: GatewayFactory) -> None:
    gateway = await make_gateway(Extensions(invoice_gate=_Refuse()))
    await gateway.create_invoice("1000.00")
    response = await gateway.client.post(
        "/v1/invoices", json={"amount": "1000.01", "currency": "KZT"}, headers=gateway.auth()
    )
    assert response.status == 403
    body = await response.json()
    assert body["title"] == "Sandbox cap reached" and body["type"].endswith("sandbox-cap")


class _NoRates:
    def current(self, asset: Asset, now: datetime) -> AssetRate:
        raise RatesUnavailable(asset, retry_after_seconds=17)


async def test_no_fresh_rate_gives_503_with_retry_after(make_gateway: GatewayFactory) -> None:
    gateway = await make_gateway(rates=_NoRates())
    response = await gateway.client.post(
        "/v1/invoices", json={"amount": "10.00", "currency": "KZT"}, headers=gateway.auth()
    )
    assert response.status == 503
    assert response.headers["Retry-After"] == "17"
    assert response.content_type == "application/problem+json"
    assert "rate" in (await response.json())["detail"]


class _Policy:
    def __init__(self) -> None:
        self.seen: list[DetectedPayment] = []

    async def decide(self, tx: Tx, payment: DetectedPayment) -> PolicyDecision:
        self.seen.append(payment)
        if payment.payer == "broken":
            raise RuntimeError("policy bug")
        if payment.value_tiyn > 500_000:
            return PolicyDecision.hold("over_operation_limit")
        return PolicyDecision.accepted()


async def test_payment_policy_is_called_once_and_holds_fail_closed(make_gateway: GatewayFactory) -> None:
    policy = _Policy()
    gateway = await make_gateway(Extensions(payment_policy=policy))
    small = await gateway.create_invoice("1000.00", assets=["BTC"])
    large = await gateway.create_invoice("10000.00", assets=["BTC"])
    odd = await gateway.create_invoice("2000.00", assets=["BTC"])

    def fact(invoice: dict[str, Any], key: str, payer: str = "alice", confirmations: int = 0) -> PaymentFact:
        method = invoice["payment_methods"][0]
        return PaymentFact(
            Chain.BITCOIN,
            method["address"],
            key,
            Asset.BTC,
            method["amount_due_minor"],
            confirmations,
            payer=payer,
        )

    settled = await gateway.service.record_payment(fact(small, "01" * 32 + ":0"))
    assert settled is not None and settled.state.status.value == "settled"
    held = await gateway.service.record_payment(fact(large, "02" * 32 + ":0"))
    assert (
        held is not None
        and held.state.status.value == "new"
        and "on_hold" in {f.value for f in held.state.flags}
    )
    await gateway.service.record_payment(
        fact(large, "02" * 32 + ":0", confirmations=2)
    )  # seen again: no new call
    broken = await gateway.service.record_payment(fact(odd, "03" * 32 + ":0", payer="broken"))
    assert broken is not None and "on_hold" in {f.value for f in broken.state.flags}
    assert [p.payment_key for p in policy.seen] == ["01" * 32 + ":0", "02" * 32 + ":0", "03" * 32 + ":0"]
    payments = await (
        await gateway.client.get(f"/v1/invoices/{odd['id']}/payments", headers=gateway.auth())
    ).json()
    assert payments["data"][0]["status"] == "held" and payments["data"][0]["hold_reason"] == "policy_error"

    released = await gateway.service.release_hold(large["id"], "02" * 32 + ":0")
    assert released.state.status.value in {"processing", "settled"}
    events = await gateway.store.read(
        lambda tx: tx.fetchall("SELECT type FROM outbox WHERE invoice_id = ? ORDER BY seq", (large["id"],))
    )
    kinds = [e["type"] for e in events]
    assert kinds[0] == "invoice.created" and "payment.held" in kinds and "payment.released" in kinds


async def test_unknown_address_is_not_an_invoice_payment(make_gateway: GatewayFactory) -> None:
    gateway = await make_gateway()
    result = await gateway.service.record_payment(
        PaymentFact(Chain.BITCOIN, "bcrt1qnotours", "04" * 32 + ":0", Asset.BTC, 1000, 0)
    )
    assert result is None


async def test_fixed_rates_switched_off_means_no_quotes(make_gateway: GatewayFactory) -> None:
    gateway = await make_gateway(CRYPTOCITY_RATES__FIXED__ENABLED="false")
    response = await gateway.client.post(
        "/v1/invoices", json={"amount": "10.00", "currency": "KZT"}, headers=gateway.auth()
    )
    assert response.status == 503
    assert "Retry-After" in response.headers
