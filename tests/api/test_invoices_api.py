"""Merchant API v1 over real HTTP on a real SQLite store: create, read, list, cancel, QR, idempotency."""

from __future__ import annotations

import asyncio
import io
import json
from decimal import Decimal
from typing import Any

import pytest
import zxingcpp
from PIL import Image

from gateway.addresses import BitcoinAccount, EthereumAccount
from gateway.api.models import InvoiceList, InvoiceOut, PaymentList
from gateway.api.state import ADDRESSES
from gateway.invoices.service import PaymentFact
from gateway.money import Asset, Chain, crypto_due
from gateway.payment_uri import Bip21Request, Eip681Native, Eip681TokenTransfer, parse_payment_uri
from sandbox.demo import demo_account_keys
from tests.conftest import Gateway, GatewayFactory

RATES = {"BTC": Decimal("48450000.00"), "ETH": Decimal("1683000.00"), "USDT": Decimal("510.00")}


async def test_create_gives_each_asset_a_fresh_address_exact_amount_uri_and_qr(gateway: Gateway) -> None:
    body = await gateway.create_invoice(
        "12500.00", order_id="A-1", description="Coffee", metadata={"table": 4}
    )
    invoice = InvoiceOut.model_validate(body)
    assert invoice.status == "new" and invoice.flags == []
    assert invoice.amount == "12500.00" and invoice.amount_tiyn == 1_250_000
    assert invoice.checkout_url.endswith(f"/i/{invoice.id}")
    assert invoice.metadata == {"table": 4}
    btc_key, eth_key = demo_account_keys()
    methods = {m.asset: m for m in invoice.payment_methods}
    assert set(methods) == {Asset.BTC, Asset.ETH, Asset.USDT}

    btc = methods[Asset.BTC]
    assert btc.address == BitcoinAccount(btc_key).address(0, "bcrt")
    assert btc.amount_due_minor == crypto_due(1_250_000, RATES["BTC"], 8)
    assert btc.confirmations_required == 0  # below 50,000 KZT
    request = parse_payment_uri(btc.uri)
    assert request == Bip21Request(btc.address, btc.amount_due_minor, "Alatau Coffee", "Coffee")

    eth, usdt = methods[Asset.ETH], methods[Asset.USDT]
    assert (
        eth.address == usdt.address == EthereumAccount(eth_key).address(0)
    )  # one address per invoice on EVM
    assert parse_payment_uri(eth.uri) == Eip681Native(
        eth.address, 31337, crypto_due(1_250_000, RATES["ETH"], 18)
    )
    token = parse_payment_uri(usdt.uri)
    assert isinstance(token, Eip681TokenTransfer)
    assert token.to == usdt.address and token.amount_units == crypto_due(1_250_000, RATES["USDT"], 6)
    assert usdt.token_address == "0x5FbDB2315678afecb367f032d93F642f64180aa3"
    assert usdt.token_symbol == "tUSDT" and eth.token_symbol is None
    # crypto due rounds up: worth at least the price at the locked rate
    for method in invoice.payment_methods:
        rate = Decimal(invoice.quote.rates[method.asset.value].kzt_per_unit)
        assert Decimal(method.amount_due) * rate >= Decimal("12500.00")
        assert invoice.quote.rates[method.asset.value].sources == ["fixed"]
    assert invoice.quote.locked_until == invoice.expires_at

    second = InvoiceOut.model_validate(await gateway.create_invoice("100.00"))
    assert {m.derivation_index for m in second.payment_methods} == {1}
    assert not {m.address for m in second.payment_methods} & {m.address for m in invoice.payment_methods}


async def test_get_list_and_payments_of_an_invoice(gateway: Gateway) -> None:
    created = [await gateway.create_invoice(f"{1000 + i}.00", order_id=f"o-{i % 2}") for i in range(5)]
    response = await gateway.client.get(f"/v1/invoices/{created[0]['id']}", headers=gateway.auth())
    assert response.status == 200
    assert await response.json() == created[0]

    page = InvoiceList.model_validate(
        await (await gateway.client.get("/v1/invoices?limit=2", headers=gateway.auth())).json()
    )
    assert [i.id for i in page.data] == [created[4]["id"], created[3]["id"]]  # newest first
    assert page.has_more and page.next_starting_after == created[3]["id"]
    rest = InvoiceList.model_validate(
        await (
            await gateway.client.get(
                f"/v1/invoices?limit=10&starting_after={page.next_starting_after}", headers=gateway.auth()
            )
        ).json()
    )
    assert [i.id for i in rest.data] == [c["id"] for c in reversed(created[:3])]
    assert not rest.has_more

    by_order = await (await gateway.client.get("/v1/invoices?order_id=o-1", headers=gateway.auth())).json()
    assert {i["id"] for i in by_order["data"]} == {created[1]["id"], created[3]["id"]}
    created_at = created[2]["created_at"]
    window = await (
        await gateway.client.get(
            "/v1/invoices", params={"created_gte": created_at, "status": "new"}, headers=gateway.auth()
        )
    ).json()
    assert len(window["data"]) == 5  # the manual clock did not move: all share one timestamp
    none = await (await gateway.client.get("/v1/invoices?status=settled", headers=gateway.auth())).json()
    assert none["data"] == []

    address = created[0]["payment_methods"][0]["address"]
    assert created[0]["payment_methods"][0]["asset"] == "BTC"
    await gateway.service.record_payment(
        PaymentFact(Chain.BITCOIN, address, "ab" * 32 + ":0", Asset.BTC, 1000, 0)
    )
    payments = PaymentList.model_validate(
        await (
            await gateway.client.get(f"/v1/invoices/{created[0]['id']}/payments", headers=gateway.auth())
        ).json()
    )
    assert [(p.payment_key, p.amount_minor, p.status) for p in payments.data] == [
        ("ab" * 32 + ":0", 1000, "accepted")
    ]


async def test_another_merchants_invoice_is_404_everywhere(gateway: Gateway) -> None:
    mine = await gateway.create_invoice()
    theirs = await gateway.create_invoice("500.00", key=gateway.other_api_key)
    other = gateway.auth(gateway.other_api_key)
    for path in (
        f"/v1/invoices/{mine['id']}",
        f"/v1/invoices/{mine['id']}/payments",
        f"/v1/invoices/{mine['id']}/qr/BTC.png",
    ):
        response = await gateway.client.get(path, headers=other)
        assert response.status == 404, path
        assert response.content_type == "application/problem+json"
    response = await gateway.client.post(f"/v1/invoices/{mine['id']}/cancel", headers=other)
    assert response.status == 404
    listed = await (await gateway.client.get("/v1/invoices", headers=other)).json()
    assert [i["id"] for i in listed["data"]] == [theirs["id"]]
    assert theirs["merchant_id"] == gateway.other_merchant_id
    assert [m["asset"] for m in theirs["payment_methods"]] == ["BTC"]


async def test_idempotency_key_replays_same_body_and_refuses_another(gateway: Gateway) -> None:
    headers = {**gateway.auth(), "Idempotency-Key": "order-77"}
    payload = {"amount": "990.00", "currency": "KZT", "order_id": "77"}
    first = await gateway.client.post("/v1/invoices", json=payload, headers=headers)
    again = await gateway.client.post("/v1/invoices", json=payload, headers=headers)
    assert first.status == again.status == 201
    assert await first.read() == await again.read()
    assert again.headers["Idempotent-Replayed"] == "true"
    other = await gateway.client.post("/v1/invoices", json={**payload, "amount": "991.00"}, headers=headers)
    assert other.status == 409
    assert "Idempotency-Key" in (await other.json())["detail"]
    # the same key of another merchant is a different key
    theirs = await gateway.client.post(
        "/v1/invoices",
        json=payload,
        headers={**gateway.auth(gateway.other_api_key), "Idempotency-Key": "order-77"},
    )
    assert theirs.status == 201
    listed = await (await gateway.client.get("/v1/invoices", headers=gateway.auth())).json()
    assert len(listed["data"]) == 1


async def test_racing_requests_with_one_idempotency_key_create_one_invoice(gateway: Gateway) -> None:
    headers = {**gateway.auth(), "Idempotency-Key": "race"}
    payload = {"amount": "10.00", "currency": "KZT"}
    responses = await asyncio.gather(
        *(gateway.client.post("/v1/invoices", json=payload, headers=headers) for _ in range(20))
    )
    bodies = {await r.read() for r in responses}
    assert {r.status for r in responses} == {201} and len(bodies) == 1
    listed = await (await gateway.client.get("/v1/invoices", headers=gateway.auth())).json()
    assert len(listed["data"]) == 1


async def test_200_concurrent_creates_never_share_an_address(make_gateway: GatewayFactory) -> None:
    # with the derivation worker process the production default uses
    gateway = await make_gateway(
        CRYPTOCITY_ADDRESSES__DERIVE_WORKERS="1", CRYPTOCITY_ADDRESSES__POOL_SIZE="64"
    )
    await gateway.create_invoice("1000.00")  # the first use asks the worker for addresses ahead
    pool = gateway.app[ADDRESSES]
    for _ in range(300):  # a liveness deadline of 30 s for the worker process to start and derive
        if pool.ready_total >= 64:
            break
        await asyncio.sleep(0.1)
    assert pool.ready_total >= 64
    responses = await asyncio.gather(
        *(
            gateway.client.post(
                "/v1/invoices", json={"amount": f"{1000 + i}.00", "currency": "KZT"}, headers=gateway.auth()
            )
            for i in range(200)
        )
    )
    assert {r.status for r in responses} == {201}
    bodies = [await r.json() for r in responses]
    for asset in ("BTC", "ETH"):
        methods = [next(m for m in b["payment_methods"] if m["asset"] == asset) for b in bodies]
        assert len({m["address"] for m in methods}) == 200
        assert sorted(m["derivation_index"] for m in methods) == list(range(1, 201))
    btc_key, _ = demo_account_keys()
    account = BitcoinAccount(btc_key)
    for body in bodies:  # the pool never hands out an address of another index
        method = next(m for m in body["payment_methods"] if m["asset"] == "BTC")
        assert method["address"] == account.address(method["derivation_index"], "bcrt")
    assert gateway.app[ADDRESSES].hits > 0  # the worker's addresses were used
    events = await gateway.store.read(
        lambda tx: tx.fetchone("SELECT count(*) AS n FROM outbox WHERE type = 'invoice.created'")
    )
    assert events is not None and events["n"] == 201  # every invoice (and the first one) with its event


async def test_cancel_and_cancel_of_a_settled_invoice(gateway: Gateway) -> None:
    invoice = await gateway.create_invoice("1000.00")
    response = await gateway.client.post(f"/v1/invoices/{invoice['id']}/cancel", headers=gateway.auth())
    assert response.status == 200
    cancelled = await response.json()
    assert cancelled["status"] == "cancelled" and cancelled["version"] == invoice["version"] + 1

    paid = await gateway.create_invoice("1000.00")
    btc = next(m for m in paid["payment_methods"] if m["asset"] == "BTC")
    await gateway.service.record_payment(
        PaymentFact(Chain.BITCOIN, btc["address"], "cd" * 32 + ":1", Asset.BTC, btc["amount_due_minor"], 1)
    )
    settled = await (await gateway.client.get(f"/v1/invoices/{paid['id']}", headers=gateway.auth())).json()
    assert settled["status"] == "settled"
    response = await gateway.client.post(f"/v1/invoices/{paid['id']}/cancel", headers=gateway.auth())
    assert response.status == 409
    problem = await response.json()
    assert problem["status"] == 409 and "settled" in problem["detail"]


async def test_qr_png_decodes_to_the_payment_uri_and_svg_is_served(gateway: Gateway) -> None:
    invoice = await gateway.create_invoice("5300.00", description="Баурсаки & чай")
    for method in invoice["payment_methods"]:
        response = await gateway.client.get(
            f"/v1/invoices/{invoice['id']}/qr/{method['asset']}.png", headers=gateway.auth()
        )
        assert response.status == 200 and response.content_type == "image/png"
        decoded = zxingcpp.read_barcodes(Image.open(io.BytesIO(await response.read())))
        assert [d.text for d in decoded] == [method["uri"]]
        svg = await gateway.client.get(
            f"/v1/invoices/{invoice['id']}/qr/{method['asset']}.svg", headers=gateway.auth()
        )
        assert svg.status == 200 and svg.content_type == "image/svg+xml"
        assert "<svg" in await svg.text()
    for bad in ("DOGE.png", "BTC.gif", "BTC"):
        response = await gateway.client.get(f"/v1/invoices/{invoice['id']}/qr/{bad}", headers=gateway.auth())
        assert response.status == 404


async def test_assets_field_narrows_the_offer_and_unaccepted_asset_is_refused(gateway: Gateway) -> None:
    body = await gateway.create_invoice("100.00", assets=["USDT"])
    assert [m["asset"] for m in body["payment_methods"]] == ["USDT"]
    response = await gateway.client.post(
        "/v1/invoices",
        json={"amount": "100.00", "currency": "KZT", "assets": ["ETH"]},
        headers=gateway.auth(gateway.other_api_key),
    )
    assert response.status == 422
    problem = await response.json()
    assert problem["errors"][0]["pointer"] == "/assets/0"


async def test_tiny_invoice_leaves_out_assets_below_dust(gateway: Gateway) -> None:
    body = await gateway.create_invoice("1.00")  # 1 KZT is ~2 sat: below the 294 sat dust limit
    assert [m["asset"] for m in body["payment_methods"]] == ["ETH", "USDT"]
    response = await gateway.client.post(
        "/v1/invoices",
        json={"amount": "1.00", "currency": "KZT"},
        headers=gateway.auth(gateway.other_api_key),
    )
    assert response.status == 422
    assert "dust" in (await response.json())["detail"]


def _problem_ok(body: dict[str, Any], status: int) -> None:
    assert body["status"] == status
    assert {"type", "title", "detail", "instance"} <= set(body)
    assert body["detail"]


@pytest.mark.parametrize(
    ("payload", "pointer", "fragment"),
    [
        ({"amount": "12500.001", "currency": "KZT"}, "/amount", "more than 2 decimal places"),
        ({"amount": "0", "currency": "KZT"}, "/amount", "greater than zero"),
        ({"amount": "0.00", "currency": "KZT"}, "/amount", "greater than zero"),
        ({"amount": "-5.00", "currency": "KZT"}, "/amount", "not a plain decimal"),
        ({"amount": "1e3", "currency": "KZT"}, "/amount", "not a plain decimal"),
        ({"amount": "1000000.01", "currency": "KZT"}, "/amount", "at most 1000000.00"),
        ({"amount": "0.50", "currency": "KZT"}, "/amount", "at least 1.00"),
        ({"amount": 12500, "currency": "KZT"}, "/amount", "valid string"),
        ({"amount": "100.00"}, "/currency", "required"),
        ({"amount": "100.00", "currency": "USD"}, "/currency", "KZT"),
        ({"amount": "100.00", "currency": "KZT", "tip": "1"}, "/tip", "unknown field"),
        ({"amount": "100.00", "currency": "KZT", "expires_in": 5}, "/expires_in", "between"),
        ({"amount": "100.00", "currency": "KZT", "expires_in": 0}, "/expires_in", "between"),
        ({"amount": "100.00", "currency": "KZT", "assets": ["BTC", "BTC"]}, "/assets", "twice"),
        (
            {"amount": "100.00", "currency": "KZT", "redirect_url": "javascript:alert(1)"},
            "/redirect_url",
            "http",
        ),
        ({"amount": "100.00", "currency": "KZT", "metadata": {"x": "y" * 5000}}, "/metadata", "4096 bytes"),
    ],
)
async def test_invalid_fields_get_422_with_a_pointer(
    gateway: Gateway, payload: dict[str, Any], pointer: str, fragment: str
) -> None:
    response = await gateway.client.post("/v1/invoices", json=payload, headers=gateway.auth())
    assert response.status == 422
    assert response.content_type == "application/problem+json"
    body = await response.json()
    _problem_ok(body, 422)
    assert body["errors"][0]["pointer"] == pointer
    assert fragment in body["errors"][0]["detail"], body


async def test_protocol_errors_are_problem_json(gateway: Gateway) -> None:
    client, auth = gateway.client, gateway.auth()
    cases = [
        (await client.get("/nowhere"), 404),
        (await client.delete("/v1/invoices", headers=auth), 405),
        (
            await client.post(
                "/v1/invoices", data=b"{not json", headers={**auth, "Content-Type": "application/json"}
            ),
            400,
        ),
        (
            await client.post(
                "/v1/invoices", data=b"[1, 2]", headers={**auth, "Content-Type": "application/json"}
            ),
            400,
        ),
        (
            await client.post(
                "/v1/invoices", data=b"amount=1", headers={**auth, "Content-Type": "text/plain"}
            ),
            415,
        ),
        (
            await client.post(
                "/v1/invoices",
                data=b'{"amount":"' + b"1" * 70000 + b'"}',
                headers={**auth, "Content-Type": "application/json"},
            ),
            413,
        ),
        (await client.get("/v1/invoices/inv_00000000000000000000000000", headers=auth), 404),
        (await client.get("/v1/invoices/not-an-id", headers=auth), 404),
        (await client.get("/v1/invoices?limit=1000", headers=auth), 400),
        (await client.get("/v1/invoices?status=paid", headers=auth), 400),
        (await client.get("/v1/invoices?created_gte=yesterday", headers=auth), 400),
        (await client.get("/v1/invoices?starting_after=inv_00000000000000000000000000", headers=auth), 404),
    ]
    for response, status in cases:
        assert response.status == status, (response.url, response.status)
        assert response.content_type == "application/problem+json"
        _problem_ok(await response.json(), status)
    assert "Allow" in cases[1][0].headers


async def test_missing_or_wrong_api_key_is_401_with_challenge(gateway: Gateway) -> None:
    for headers in (
        {},
        {"Authorization": "Basic abc"},
        {"Authorization": "Bearer cc_test_wrong"},
        # the last character changed (to "x", or "y" when it is an "x" already: 1 key in 32 ends so)
        {"Authorization": f"Bearer {gateway.api_key[:-1]}{'y' if gateway.api_key.endswith('x') else 'x'}"},
    ):
        response = await gateway.client.get("/v1/invoices", headers=headers)
        assert response.status == 401
        assert response.headers["WWW-Authenticate"].startswith('Bearer realm="cryptocity"')
        _problem_ok(await response.json(), 401)


async def test_rotated_revoked_and_disabled_keys_stop_working(gateway: Gateway) -> None:
    new_key = await gateway.registry.rotate_key(gateway.merchant_id)
    assert (await gateway.client.get("/v1/invoices", headers=gateway.auth())).status == 401
    assert (await gateway.client.get("/v1/invoices", headers=gateway.auth(new_key.plaintext))).status == 200
    extra = await gateway.registry.add_key(gateway.merchant_id, "pos-2")
    assert (await gateway.client.get("/v1/invoices", headers=gateway.auth(extra.plaintext))).status == 200
    await gateway.registry.revoke_key(gateway.merchant_id, extra.lookup)
    assert (await gateway.client.get("/v1/invoices", headers=gateway.auth(extra.plaintext))).status == 401
    await gateway.registry.disable(gateway.merchant_id)
    assert (await gateway.client.get("/v1/invoices", headers=gateway.auth(new_key.plaintext))).status == 401
    stored = await gateway.store.read(lambda tx: tx.fetchall("SELECT secret_hash FROM api_keys"))
    assert all(new_key.plaintext not in json.dumps(r) for r in stored)  # only hashes are stored


async def test_health_and_readiness(gateway: Gateway) -> None:
    assert (await (await gateway.client.get("/healthz")).json())["status"] == "ok"
    ready = await gateway.client.get("/readyz")
    assert ready.status == 200 and (await ready.json())["checks"] == {"store": "ok"}


async def test_idempotency_keys_are_forgotten_after_the_retention(gateway: Gateway) -> None:
    headers = {**gateway.auth(), "Idempotency-Key": "old-order"}
    payload = {"amount": "990.00", "currency": "KZT"}
    first = await (await gateway.client.post("/v1/invoices", json=payload, headers=headers)).json()
    gateway.clock.advance(23 * 3600)
    assert await gateway.service.forget_idempotency_keys() == 0
    replay = await (await gateway.client.post("/v1/invoices", json=payload, headers=headers)).json()
    assert replay["id"] == first["id"]  # still remembered within 24 h
    gateway.clock.advance(2 * 3600)
    assert await gateway.service.forget_idempotency_keys() == 1
    fresh = await gateway.client.post("/v1/invoices", json=payload, headers=headers)
    assert fresh.status == 201 and (await fresh.json())["id"] != first["id"]  # a new invoice after expiry
