"""The regulator's streamed exports with the audit log on: payments, invoices and ledger lines of a period,
each ending with the authenticated audit head that the store holds, in pages (bounded memory), and empty
periods exported as headers plus the head."""

from __future__ import annotations

import asyncio
import csv
import io
import json
from datetime import timedelta
from typing import Any

import pytest

from gateway.config import SandboxConfig
from gateway.extensions import Extensions
from sandbox.audit import audit_extensions
from sandbox.audit.keys import AuditKey
from sandbox.audit.store import latest_head
from sandbox.extension import sandbox_extensions
from sandbox.limits import Tier
from sandbox.registry import Category, Registry
from sandbox.regulator import exports
from sandbox.regulator.tokens import RegulatorTokens
from tests.api.test_sandbox import SCRIPT_A, SCRIPT_B, pay, resident, txid
from tests.conftest import Gateway, GatewayFactory

KEY = AuditKey(bytes.fromhex("3c" * 32))


async def audited_gateway(make_gateway: GatewayFactory) -> tuple[Gateway, str]:
    audit = audit_extensions(KEY)
    gateway = await make_gateway(sandbox_extensions(SandboxConfig(), Extensions(consumers=audit.consumers)))
    token = (await RegulatorTokens(gateway.store, gateway.clock).issue("exports")).plaintext
    return gateway, token


async def fetch(gateway: Gateway, path: str, token: str) -> tuple[int, str, dict[str, str]]:
    response = await gateway.client.get(f"/sandbox/v1{path}", headers={"Authorization": f"Bearer {token}"})
    return response.status, await response.text(), dict(response.headers)


def split_csv(text: str) -> tuple[list[dict[str, str]], str]:
    body, trailer = text.rstrip("\n").rsplit("\n", 1)
    return list(csv.DictReader(io.StringIO(body))), trailer


async def settled_head(gateway: Gateway) -> dict[str, Any]:
    """The audit head once the audit consumer has caught up with the outbox."""
    for _ in range(200):
        lag = await gateway.store.read(
            lambda tx: tx.fetchone(
                "SELECT (SELECT MAX(seq) FROM outbox) - COALESCE((SELECT position FROM consumer_cursors"
                " WHERE consumer = 'audit'), 0) AS lag"
            )
        )
        if lag is not None and int(lag["lag"] or 0) == 0:
            break
        await asyncio.sleep(0.05)
    head = await gateway.store.read(latest_head)
    assert head is not None and head.mac is not None
    return head.view()


async def test_payments_invoices_and_ledger_exports_carry_the_audit_head(
    make_gateway: GatewayFactory,
) -> None:
    gateway, token = await audited_gateway(make_gateway)
    registry = Registry(gateway.store, gateway.clock)
    await resident(registry, Tier.BASIC, SCRIPT_A)
    await registry.set_merchant_profile(gateway.merchant_id, category=Category.PHARMACY)
    settled = await gateway.create_invoice("5300.00", assets=["BTC"])
    await pay(gateway, settled, txid(1), script=SCRIPT_A)
    held = await gateway.create_invoice("700.00", assets=["BTC"])
    await pay(gateway, held, txid(2), script=SCRIPT_B)
    gateway.clock.advance(timedelta(seconds=1))
    open_invoice = await gateway.create_invoice("100.00")
    head = await settled_head(gateway)
    start = (gateway.clock.now() - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    end = (gateway.clock.now() + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    period = f"from={start}&to={end}"
    expected_head = f"seq={head['seq']}; hash={head['hash']}; mac={head['mac']}; key_id={head['key_id']}"

    status, text, headers = await fetch(gateway, f"/exports/invoices?{period}", token)
    assert status == 200 and headers["Audit-Head"] == expected_head
    rows, trailer = split_csv(text)
    assert trailer == f"# audit_head {expected_head}"
    assert [r["id"] for r in rows] == [settled["id"], held["id"], open_invoice["id"]]
    assert [r["status"] for r in rows] == ["settled", "new", "new"]
    assert {r["category"] for r in rows} == {"pharmacy"}
    assert rows[1]["flags"] == "on_hold" and rows[0]["price_tiyn"] == "530000"
    assert "description" not in rows[0]  # the merchant's text stays with the merchant

    status, text, _ = await fetch(gateway, f"/exports/ledger?{period}&format=jsonl", token)
    *lines, last = [json.loads(line) for line in text.splitlines()]
    assert status == 200 and last == {"audit_head": head}
    by_entry: dict[str, int] = {}
    for line in lines:
        by_entry[line["entry_id"]] = by_entry.get(line["entry_id"], 0) + line["amount_tiyn"]
    assert len(by_entry) >= 2 and set(by_entry.values()) == {0}  # every entry balances
    assert {line["invoice_id"] for line in lines} == {settled["id"], held["id"]}

    status, text, _ = await fetch(gateway, f"/exports/payments?{period}", token)
    rows, trailer = split_csv(text)
    assert [r["decision"] for r in rows] == ["accepted", "held"] and trailer.endswith(expected_head)


@pytest.mark.parametrize("name", ["payments", "invoices", "ledger"])
async def test_an_empty_period_exports_the_header_and_the_head(
    make_gateway: GatewayFactory, name: str
) -> None:
    gateway, token = await audited_gateway(make_gateway)
    await gateway.create_invoice("100.00")
    period = "from=2020-01-01T00:00:00Z&to=2020-02-01T00:00:00Z"
    status, text, _ = await fetch(gateway, f"/exports/{name}?{period}", token)
    header, trailer = text.splitlines()
    assert status == 200 and header.split(",")[0] in ("decided_at", "created_at", "posted_at")
    assert trailer.startswith("# audit_head ")
    status, text, _ = await fetch(gateway, f"/exports/{name}?{period}&format=jsonl", token)
    assert status == 200 and list(json.loads(text)) == ["audit_head"]
    status, text, _ = await fetch(gateway, f"/exports/{name}?{period}&format=xml", token)
    assert status == 400 and "csv or jsonl" in text


async def test_exports_page_through_more_rows_than_one_page(
    make_gateway: GatewayFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(exports, "PAGE", 3)
    gateway, token = await audited_gateway(make_gateway)
    created = []
    for n in range(8):
        created.append((await gateway.create_invoice(f"{100 + n}.00"))["id"])
        gateway.clock.advance(timedelta(milliseconds=1 if n % 2 else 0))  # ties on created_at, too
    start = (gateway.clock.now() - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    end = (gateway.clock.now() + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    status, text, _ = await fetch(gateway, f"/exports/invoices?from={start}&to={end}", token)
    rows, _ = split_csv(text)
    assert status == 200 and sorted(r["id"] for r in rows) == sorted(created) and len(rows) == 8
