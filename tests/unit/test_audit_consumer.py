"""The AuditConsumer behind the real gateway: real invoice, payment, merchant and webhook-endpoint events from
the service and the API, ``sandbox.*`` events as the sandbox writes them, the real OutboxRunner.

Checks what an entry keeps of each event (small summaries, no secrets), that every batch signs a head, that
replaying the outbox appends nothing, and that tampering with the resulting database is found by verify.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from gateway.extensions import DetectedPayment, Extensions, PolicyDecision
from gateway.invoices.lifecycle import DropReason
from gateway.money import Chain
from gateway.outbox import OutboxRunner, insert_event, prepare_event
from gateway.store import SqliteStore, Tx
from sandbox.audit.canonical import FloatRefused
from sandbox.audit.consumer import AuditConsumer, audit_extensions
from sandbox.audit.keys import AuditKey
from sandbox.audit.verify import ProblemKind, verify
from tests.conftest import Gateway, GatewayFactory
from tests.unit.test_audit_chain import assert_fault, attacker, edit_body, rewrite_from
from tests.unit.test_ledger_consumer import fact

KEY = AuditKey(bytes(range(32)), "test")


class HoldForPayer:
    async def decide(self, tx: Tx, payment: DetectedPayment) -> PolicyDecision:
        return (
            PolicyDecision.hold("unregistered_payer")
            if payment.payer == "suspect"
            else PolicyDecision.accepted()
        )


async def drain(gateway: Gateway, consumer: AuditConsumer, batch_size: int = 4) -> int:
    runner = OutboxRunner(gateway.store, gateway.clock, [consumer], batch_size=batch_size)
    handled, total = 1, 0
    while handled:
        handled = await runner.drain_once(consumer)
        total += handled
    return total


async def entries(gateway: Gateway) -> list[dict[str, Any]]:
    rows = await gateway.store.read(lambda tx: tx.fetchall("SELECT * FROM audit_log ORDER BY seq"))
    return [{**row, "body": json.loads(row["body"])} for row in rows]


async def outbox_ids(gateway: Gateway) -> list[str]:
    rows = await gateway.store.read(lambda tx: tx.fetchall("SELECT id FROM outbox ORDER BY seq"))
    return [row["id"] for row in rows]


def path_of(gateway: Gateway) -> Path:
    store = gateway.store
    assert isinstance(store, SqliteStore)
    return store.path


async def sandbox_event(gateway: Gateway, event_type: str, data: dict[str, Any], **ids: Any) -> str:
    """An event as the sandbox writes it (its regulator actions and policy decisions)."""
    event = prepare_event(event_type=event_type, now=gateway.clock.now(), data=data, **ids)
    return await gateway.store.transaction(lambda tx: insert_event(tx, event))


async def busy_day(gateway: Gateway) -> dict[str, Any]:
    """Invoices that settle, get held and released or refunded, and reverse; a webhook endpoint; a suspension."""
    service = gateway.service
    settled = await gateway.create_invoice("1000.00", assets=["BTC"])
    held = await gateway.create_invoice("2000.00", assets=["BTC"])
    refunded = await gateway.create_invoice("3000.00", assets=["BTC"])
    reversed_ = await gateway.create_invoice("1500.00", assets=["BTC"])
    await service.record_payment(fact(settled, "01" * 32 + ":0"))
    await service.record_payment(fact(held, "02" * 32 + ":0", payer="suspect"))
    await service.release_hold(held["id"], "02" * 32 + ":0")
    await service.record_payment(fact(refunded, "03" * 32 + ":0", payer="suspect"))
    await service.refund_hold(refunded["id"], "03" * 32 + ":0")
    await service.record_payment(fact(reversed_, "04" * 32 + ":0"))
    await service.payment_dropped(Chain.BITCOIN, "04" * 32 + ":0", DropReason.DOUBLE_SPENT)
    response = await gateway.client.post(
        "/v1/webhook-endpoints",
        json={"url": "http://127.0.0.1:9/hook?token=s3cr3t-in-query", "event_types": ["invoice.settled"]},
        headers=gateway.auth(),
    )
    assert response.status == 201, await response.text()
    endpoint = await response.json()
    await gateway.registry.set_spread(gateway.merchant_id, 25)
    await gateway.registry.add_key(gateway.merchant_id)
    # The shapes sandbox/policy.py, registry.py and regulator/api.py write (ids in data, not on the event row).
    await sandbox_event(
        gateway,
        "sandbox.payment_decided",
        {
            "chain": "bitcoin",
            "payment_key": "02" * 32 + ":0",
            "invoice_id": held["id"],
            "merchant_id": gateway.merchant_id,
            "resident_id": None,
            "asset": "BTC",
            "value_tiyn": 200_000,
            "month": "2026-11",
            "decision": "held",
            "reason": "unregistered_payer",
        },
    )
    await sandbox_event(
        gateway,
        "sandbox.merchant_suspended",
        {
            "merchant_id": gateway.other_merchant_id,
            "category": "cafe",
            "licence_status": "suspended",
            "reason": "licence expired",
            "actor": "crt_01example",
            "regulator_token_secret": "x",
        },
    )
    await sandbox_event(
        gateway,
        "sandbox.resident_registered",
        {"resident": {"id": "res_01example", "tier": "basic", "status": "active"}, "limit_wei": 10**20},
    )
    await sandbox_event(
        gateway, "sandbox.regulator_token_issued", {"token_id": "rtk_01example", "label": "NBK"}
    )
    return {
        "settled": settled,
        "held": held,
        "refunded": refunded,
        "reversed": reversed_,
        "endpoint": endpoint,
    }


async def test_every_event_becomes_one_small_entry(make_gateway: GatewayFactory) -> None:
    gateway = await make_gateway(Extensions(payment_policy=HoldForPayer()))
    day = await busy_day(gateway)
    handled = await drain(gateway, AuditConsumer(KEY, gateway.clock))
    log = await entries(gateway)
    ids = await outbox_ids(gateway)
    assert handled == len(ids) == len(log)  # every event of the day is audited, once, in outbox order
    assert [e["event_id"] for e in log] == ids
    assert [e["seq"] for e in log] == list(range(1, len(log) + 1))
    kinds = [e["kind"] for e in log]
    for kind in (
        "merchant.created",
        "invoice.created",
        "payment.detected",
        "payment.held",
        "payment.released",
        "payment.refunded",
        "payment.dropped",
        "invoice.settled",
        "invoice.reversed",
        "webhook_endpoint.created",
        "merchant.updated",
        "merchant.key_added",
        "sandbox.payment_decided",
        "sandbox.merchant_suspended",
        "sandbox.resident_registered",
        "sandbox.regulator_token_issued",
    ):
        assert kind in kinds, kind

    settled = next(e for e in log if e["kind"] == "invoice.settled" and e["subject"] == day["settled"]["id"])
    paid = settled["body"]["data"]["invoice"]["amount_paid_tiyn"]
    assert paid >= 100_000  # the due amount is rounded up, so the merchant is never short
    assert settled["body"] == {
        "event_type": "invoice.settled",
        "event_created_at": settled["body"]["event_created_at"],
        "merchant_id": gateway.merchant_id,
        "invoice_id": day["settled"]["id"],
        "invoice_version": settled["body"]["data"]["invoice"]["version"],
        "data": {
            "invoice": {
                "id": day["settled"]["id"],
                "merchant_id": gateway.merchant_id,
                "status": "settled",
                "flags": [],
                "version": settled["body"]["invoice_version"],
                "amount_tiyn": 100_000,
                "amount_paid_tiyn": paid,
            }
        },
    }
    dropped = next(e for e in log if e["kind"] == "payment.dropped")
    assert dropped["body"]["data"]["payment_key"] == "04" * 32 + ":0"
    assert dropped["body"]["data"]["reason"] == "double_spent"
    assert dropped["subject"] == day["reversed"]["id"]
    held = next(e for e in log if e["kind"] == "payment.held")
    assert held["body"]["data"]["invoice"]["flags"] == ["on_hold"]

    endpoint = next(e for e in log if e["kind"] == "webhook_endpoint.created")
    assert endpoint["subject"] == day["endpoint"]["id"]
    assert endpoint["body"]["data"]["webhook_endpoint"]["url"] == "http://127.0.0.1:9/hook"
    suspended = next(e for e in log if e["kind"] == "sandbox.merchant_suspended")
    assert suspended["subject"] == gateway.other_merchant_id
    assert "regulator_token_secret" not in suspended["body"]["data"]
    assert suspended["body"]["data"]["actor"] == "crt_01example"
    resident = next(e for e in log if e["kind"] == "sandbox.resident_registered")
    assert resident["subject"] == "res_01example"
    assert resident["body"]["data"]["limit_wei"] == str(10**20)  # beyond JSON's exact integers: a string
    token = next(e for e in log if e["kind"] == "sandbox.regulator_token_issued")
    assert token["subject"] == "rtk_01example" and token["body"]["data"]["token_id"] == "rtk_01example"
    decided = next(e for e in log if e["kind"] == "sandbox.payment_decided")
    assert decided["subject"] == day["held"]["id"]
    assert decided["body"]["data"]["reason"] == "unregistered_payer"

    text = json.dumps(log)
    for leaked in ("s3cr3t-in-query", "payment_methods", "checkout_url", "secret", gateway.api_key):
        assert leaked not in text
    biggest = max(len(json.dumps(e["body"])) for e in log)
    assert biggest < 600, biggest  # summaries, not resources

    result = await verify(gateway.store, KEY, page_size=5)
    assert result.ok and result.authenticated and result.last_seq == len(log), result.verdict()
    heads = await gateway.store.read(lambda tx: tx.fetchall("SELECT seq FROM audit_heads ORDER BY seq"))
    assert len(heads) == -(-len(log) // 4)  # one head per batch of 4 events


async def test_replaying_the_outbox_appends_nothing(make_gateway: GatewayFactory) -> None:
    gateway = await make_gateway(Extensions(payment_policy=HoldForPayer()))
    await busy_day(gateway)
    consumer = AuditConsumer(KEY, gateway.clock)
    handled = await drain(gateway, consumer)
    before = await entries(gateway)
    heads = await gateway.store.read(lambda tx: tx.fetchall("SELECT * FROM audit_heads ORDER BY seq"))
    # At-least-once delivery: the cursor goes back to the start (a crash before it committed).
    await gateway.store.transaction(
        lambda tx: tx.execute("UPDATE consumer_cursors SET position = 0 WHERE consumer = 'audit'")
    )
    assert await drain(gateway, consumer, batch_size=7) == handled
    assert await entries(gateway) == before
    assert await gateway.store.read(lambda tx: tx.fetchall("SELECT * FROM audit_heads ORDER BY seq")) == heads
    # New events after the replay continue the same chain.
    await gateway.create_invoice("700.00", assets=["BTC"])
    assert await drain(gateway, consumer) == 1
    after = await entries(gateway)
    assert len(after) == len(before) + 1 and after[-1]["prev_hash"] == before[-1]["hash"]
    assert (await verify(gateway.store, KEY)).ok


async def test_a_float_in_an_event_stops_the_audit_log_and_records_nothing(
    make_gateway: GatewayFactory,
) -> None:
    gateway = await make_gateway()
    consumer = AuditConsumer(KEY, gateway.clock)
    await drain(gateway, consumer)
    before = await entries(gateway)
    await sandbox_event(gateway, "sandbox.limit_checked", {"usd_rate": 470.25})
    runner = OutboxRunner(gateway.store, gateway.clock, [consumer])
    with pytest.raises(FloatRefused, match=r"\$\.data\.usd_rate: float 470.25 refused"):
        await runner.drain_once(consumer)
    assert await entries(gateway) == before
    cursor = await gateway.store.read(
        lambda tx: tx.fetchone("SELECT position FROM consumer_cursors WHERE consumer = 'audit'")
    )
    assert cursor is not None and cursor["position"] == len(before)  # the event is handed again later


async def test_unaudited_event_types_are_skipped(make_gateway: GatewayFactory) -> None:
    gateway = await make_gateway()
    consumer = AuditConsumer(KEY, gateway.clock)
    await drain(gateway, consumer)
    before = await entries(gateway)
    await sandbox_event(gateway, "simulation.step", {"n": 1})
    assert await drain(gateway, consumer) == 1
    assert await entries(gateway) == before


async def test_the_extension_runs_inside_the_gateway(make_gateway: GatewayFactory) -> None:
    """audit_extensions as the composition root passes it: the app's own OutboxRunner feeds the consumer."""
    gateway = await make_gateway(audit_extensions(KEY, None))
    invoice = await gateway.create_invoice("900.00", assets=["BTC"])
    for _ in range(200):
        log = await entries(gateway)
        if any(e["subject"] == invoice["id"] for e in log):
            break
        await asyncio.sleep(0.02)
    else:
        pytest.fail("the audit consumer did not record invoice.created")
    assert [e["kind"] for e in log] == ["merchant.created", "merchant.created", "invoice.created"]
    assert (await verify(gateway.store, KEY)).ok


@pytest.mark.sqlite_only  # edits the store's file as an attacker would
async def test_tampering_with_the_gateways_log(make_gateway: GatewayFactory) -> None:
    gateway = await make_gateway(Extensions(payment_policy=HoldForPayer()))
    await busy_day(gateway)
    await drain(gateway, AuditConsumer(KEY, gateway.clock), batch_size=5)
    log = await entries(gateway)
    settled = next(e for e in log if e["kind"] == "invoice.settled")
    path = path_of(gateway)

    def richer(body: dict[str, Any]) -> None:
        body["data"]["invoice"]["amount_tiyn"] += 100

    edit_body(path, settled["seq"], richer)
    assert_fault(await verify(gateway.store, KEY), ProblemKind.HASH_MISMATCH, settled["seq"], settled["id"])
    edit_body(path, settled["seq"], lambda body: body["data"]["invoice"].update(amount_tiyn=100_000))
    assert (await verify(gateway.store, KEY)).ok  # the original content hashes to the original hash again

    rewrite_from(path, settled["seq"], richer, fix_heads=True)
    assert (await verify(gateway.store, None)).ok
    result = await verify(gateway.store, KEY)
    first_head = -(-settled["seq"] // 5) * 5  # batches of 5: the head at or after the edited entry
    assert_fault(result, ProblemKind.HEAD_MAC_MISMATCH, first_head, log[first_head - 1]["id"])
    assert result.problem is not None and result.problem.first_suspect_seq <= settled["seq"]


@pytest.mark.sqlite_only  # edits the store's file as an attacker would
async def test_deleting_the_last_entry_of_the_gateways_log(make_gateway: GatewayFactory) -> None:
    gateway = await make_gateway(Extensions(payment_policy=HoldForPayer()))
    await busy_day(gateway)
    await drain(gateway, AuditConsumer(KEY, gateway.clock))
    last = (await entries(gateway))[-1]
    with attacker(path_of(gateway)) as conn:
        conn.execute("DELETE FROM audit_log WHERE seq = ?", (last["seq"],))
    assert_fault(await verify(gateway.store, KEY), ProblemKind.HEAD_AHEAD_OF_CHAIN, last["seq"], None)
    assert_fault(await verify(path_of(gateway), None), ProblemKind.HEAD_AHEAD_OF_CHAIN, last["seq"], None)
