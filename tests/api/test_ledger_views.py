"""Merchant views of the ledger over HTTP: balance, journal pages, streamed statements, bad queries."""

from __future__ import annotations

import asyncio
import csv
import io
import json
from typing import Any

from gateway.invoices.service import PaymentFact
from gateway.money import Asset, Chain
from sandbox.ledger.api import ledger_extensions
from tests.conftest import Gateway, GatewayFactory


async def settle_btc_invoice(gateway: Gateway, amount: str, paid_factor: int = 1) -> dict[str, Any]:
    invoice = await gateway.create_invoice(amount, assets=["BTC"])
    method = invoice["payment_methods"][0]
    await gateway.service.record_payment(
        PaymentFact(
            chain=Chain.BITCOIN,
            address=method["address"],
            payment_key=f"{'ab' * 32}:{invoice['id'][-4:]}",
            asset=Asset.BTC,
            amount_minor=method["amount_due_minor"] * paid_factor,
            confirmations=1,
        )
    )
    return invoice


async def get(gateway: Gateway, path: str, key: str | None = None) -> tuple[int, Any, str]:
    response = await gateway.client.get(path, headers=gateway.auth(key))
    text = await response.text()
    return response.status, text, response.headers.get("Content-Type", "")


async def balance_of(gateway: Gateway, key: str | None = None) -> dict[str, Any]:
    status, text, _ = await get(gateway, "/v1/balance", key)
    assert status == 200, text
    body: dict[str, Any] = json.loads(text)
    return body


async def test_balance_ledger_and_statements_follow_settlements(make_gateway: GatewayFactory) -> None:
    gateway = await make_gateway(ledger_extensions())
    await settle_btc_invoice(gateway, "10000.00")
    await settle_btc_invoice(gateway, "2500.00", paid_factor=2)  # overpaid: the surplus is payable
    deadline = asyncio.get_running_loop().time() + 10
    while (await balance_of(gateway))["accounts"]["settlement"]["tiyn"] != 1_250_000:
        assert asyncio.get_running_loop().time() < deadline, await balance_of(gateway)
        await asyncio.sleep(0.05)
    accounts = (await balance_of(gateway))["accounts"]
    assert accounts["settlement"] == {"tiyn": 1_250_000, "kzt": "12500.00"}
    assert accounts["overpaid"]["tiyn"] >= 250_000
    other = await balance_of(gateway, gateway.other_api_key)  # another merchant sees only its own
    assert other["accounts"]["settlement"]["tiyn"] == 0

    status, text, _ = await get(gateway, "/v1/ledger?limit=1")
    page = json.loads(text)
    assert status == 200 and len(page["data"]) == 1 and page["has_more"]
    assert sum(line["amount"]["tiyn"] for line in page["data"][0]["lines"]) == 0
    status, text, _ = await get(gateway, f"/v1/ledger?limit=200&starting_after={page['next_starting_after']}")
    assert status == 200 and not json.loads(text)["has_more"]

    window = "from=2026-11-23T00:00:00Z&to=2026-11-24T00:00:00Z"
    status, text, content_type = await get(gateway, f"/v1/ledger/statement?{window}")
    assert status == 200 and content_type.startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [int(r["amount_tiyn"]) for r in rows] == [1_000_000, 250_000]
    assert rows[-1]["balance_kzt"] == "12500.00"
    status, text, content_type = await get(
        gateway, f"/v1/ledger/statement?{window}&format=jsonl&account=overpaid"
    )
    assert status == 200 and content_type.startswith("application/x-ndjson")
    lines = [json.loads(line) for line in text.splitlines()]
    assert len(lines) == 1 and lines[0]["account"].startswith("overpaid:")


async def test_bad_statement_queries_get_a_400_naming_the_parameter(make_gateway: GatewayFactory) -> None:
    gateway = await make_gateway(ledger_extensions())
    for query, pointer in (
        ("to=2026-11-24T00:00:00Z", "?from"),
        ("from=2026-11-24T00:00:00Z&to=2026-11-23T00:00:00Z", "?to"),
        ("from=2026-11-23T00:00:00Z&to=2026-11-24T00:00:00Z&format=xml", "?format"),
        ("from=2026-11-23T00:00:00Z&to=2026-11-24T00:00:00Z&account=clearing", "?account"),
        ("from=yesterday&to=2026-11-24T00:00:00Z", "?from"),
    ):
        status, text, content_type = await get(gateway, f"/v1/ledger/statement?{query}")
        assert status == 400 and content_type.startswith("application/problem+json"), (query, text)
        assert json.loads(text)["errors"][0]["pointer"] == pointer
    status, text, _ = await get(gateway, "/v1/ledger?starting_after=nonsense")
    assert status == 400, text
    response = await gateway.client.get("/v1/balance")
    assert response.status == 401  # the gateway's API-key check guards these views too
