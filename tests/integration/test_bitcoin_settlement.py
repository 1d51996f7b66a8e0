"""Bitcoin settlement end to end against a real bcoin regtest node.

A resident wallet (wallets/bitcoin.py) pays invoices through their BIP21 URIs; the gateway's watcher, running
inside the app as in production, sees the payments in the mempool and in blocks; the invoices move through
the lifecycle. Reorgs are real: competing blocks built and submitted to the node (sandbox/devnets).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from embit import bip39

from gateway.chains.bitcoin_rpc import BitcoinRpc
from sandbox.devnets.bitcoin import REGTEST_HRP, BitcoinDevnet
from tests.conftest import Gateway, GatewayFactory
from tests.integration.gateway_process import cli_env, create_merchant, start_gateway
from tests.integration.settlement_helpers import (
    confirmations_are,
    drop_reasons,
    eventually,
    invoice_body,
    method,
    payment_rows,
    wait_state,
)
from wallets.bitcoin import BitcoinWallet

pytestmark = pytest.mark.integration

SMALL = "12500.00"  # 0 confirmations by the default policy
MEDIUM = "100000.00"  # 1 confirmation
LARGE = "600000.00"  # 3 confirmations


def devnet_env(devnet: BitcoinDevnet) -> dict[str, str]:
    return {
        "CRYPTOCITY_BITCOIN__HRP": REGTEST_HRP,
        "CRYPTOCITY_BITCOIN__RPC__URL": devnet.url,
        "CRYPTOCITY_BITCOIN__RPC__USER": "cryptocity",
        "CRYPTOCITY_BITCOIN__RPC__PASSWORD": devnet.api_key,
        "CRYPTOCITY_BITCOIN__WATCHER__POLL_INTERVAL_SECONDS": "0.2",
    }


@pytest.fixture
async def devnet(tmp_path: Path) -> AsyncIterator[BitcoinDevnet]:
    async with BitcoinDevnet(log_path=tmp_path / "bcoin.log") as node:
        yield node


@pytest.fixture
async def wallet(devnet: BitcoinDevnet) -> BitcoinWallet:
    resident = BitcoinWallet.from_mnemonic(bip39.mnemonic_from_bytes(os.urandom(16)), REGTEST_HRP)
    await devnet.fund(resident)  # 432 coinbases: segwit active, hundreds of mature coins
    return resident


def rpc_of(devnet: BitcoinDevnet) -> BitcoinRpc:
    assert devnet.rpc is not None
    return devnet.rpc


async def wait_tip(gateway: Gateway, devnet: BitcoinDevnet) -> None:
    """Until the gateway's watcher has processed the node's current tip."""
    best = await rpc_of(devnet).best_block_hash()

    async def check() -> bool:
        response = await gateway.client.get("/readyz")
        body = await response.json()
        return bool(body.get("chains", {}).get("bitcoin", {}).get("tip_hash") == best)

    await eventually(check)


def btc_method(invoice: dict[str, Any]) -> dict[str, Any]:
    return method(invoice, "BTC")


async def test_payments_settle_by_policy_and_under_over_split_and_late_are_told_apart(
    make_gateway: GatewayFactory, devnet: BitcoinDevnet, wallet: BitcoinWallet
) -> None:
    gateway = await make_gateway(**devnet_env(devnet))
    rpc = rpc_of(devnet)
    await wait_tip(gateway, devnet)
    small = await gateway.create_invoice(SMALL, assets=["BTC"])
    medium = await gateway.create_invoice(MEDIUM, assets=["BTC"])
    under = await gateway.create_invoice(MEDIUM, assets=["BTC"])
    over = await gateway.create_invoice(MEDIUM, assets=["BTC"])
    split = await gateway.create_invoice(MEDIUM, assets=["BTC"])
    late = await gateway.create_invoice(MEDIUM, assets=["BTC"], expires_in=60)

    # exact payments through the BIP21 URI: 0 confirmations settles at once, 1 waits for a block
    await wallet.pay_uri(rpc, btc_method(small)["uri"])
    await wallet.pay_uri(rpc, btc_method(medium)["uri"])
    await wait_state(gateway, small["id"], "settled")
    await wait_state(gateway, medium["id"], "processing")
    [row] = await payment_rows(gateway, small["id"])
    assert row["payer"] is not None and row["payer"].startswith("0014")  # the payer's P2WPKH script

    due = btc_method(under)["amount_due_minor"]
    await wallet.pay(rpc, btc_method(under)["address"], due // 2)
    await wallet.pay(rpc, btc_method(over)["address"], btc_method(over)["amount_due_minor"] * 2)
    split_due = btc_method(split)["amount_due_minor"]
    await wallet.pay(rpc, btc_method(split)["address"], split_due // 2)
    body = await wait_state(gateway, split["id"], "new")
    await eventually(lambda: _flags_are(gateway, split["id"], ["underpaid"]))
    await wallet.pay(rpc, btc_method(split)["address"], split_due - split_due // 2)

    gateway.clock.advance(timedelta(seconds=61))  # the late invoice expires (the sweeper runs every second)
    await wait_state(gateway, late["id"], "expired")
    await wallet.pay_uri(rpc, btc_method(late)["uri"])

    await devnet.mine(1, wallet.address(0))
    await wait_state(gateway, medium["id"], "settled")
    await wait_state(gateway, split["id"], "settled")
    body = await wait_state(gateway, over["id"], "settled")
    assert body["flags"] == ["overpaid"]
    body = await invoice_body(gateway, under["id"])
    assert (body["status"], body["flags"]) == ("new", ["underpaid"])
    body = await wait_state(gateway, late["id"], "expired")
    await eventually(lambda: _flags_are(gateway, late["id"], ["paid_late"]))
    assert len(await payment_rows(gateway, split["id"])) == 2
    # the merchant takes the late payment
    response = await gateway.client.post(f"/v1/invoices/{late['id']}/accept-late", headers=gateway.auth())
    assert response.status == 200
    assert (await invoice_body(gateway, late["id"]))["status"] == "settled"


async def _flags_are(gateway: Gateway, invoice_id: str, flags: list[str]) -> bool:
    return bool((await invoice_body(gateway, invoice_id))["flags"] == flags)


async def test_two_hundred_invoices_paid_in_one_block_are_each_attributed(
    make_gateway: GatewayFactory, devnet: BitcoinDevnet, wallet: BitcoinWallet
) -> None:
    rpc = rpc_of(devnet)
    # independent confirmed coins, so 200 payments do not chain unconfirmed transactions
    await wallet.fan_out(rpc, 210, 400_000)
    await devnet.mine(1, wallet.address(0))
    await wallet.scan(rpc)
    gateway = await make_gateway(**devnet_env(devnet))
    invoices = [await gateway.create_invoice(f"{100000 + i}.00", assets=["BTC"]) for i in range(200)]
    await wait_tip(gateway, devnet)
    sent = {}
    for invoice in invoices:
        payment = await wallet.pay_uri(rpc, btc_method(invoice)["uri"])
        sent[invoice["id"]] = payment.txid
    assert len(await rpc.mempool_txids()) >= 200
    await devnet.mine(1, wallet.address(0))
    for invoice in invoices:
        await wait_state(gateway, invoice["id"], "settled", seconds=60)
    for invoice in invoices:
        [row] = await payment_rows(gateway, invoice["id"])
        assert row["payment_key"].split(":")[0] == sent[invoice["id"]]
        assert int(row["amount_minor"]) == btc_method(invoice)["amount_due_minor"]
        assert row["confirmations"] == 1


async def test_reorgs_retract_payments_and_a_double_spend_leaves_the_invoice_unpaid(
    make_gateway: GatewayFactory, devnet: BitcoinDevnet, wallet: BitcoinWallet
) -> None:
    rpc = rpc_of(devnet)
    gateway = await make_gateway(**devnet_env(devnet))
    await wait_tip(gateway, devnet)

    # depth 1: a 3-confirmation invoice with 1 confirmation loses its block; its coinbase-funded payment does
    # not return to bcoin's mempool, so the money is gone and the invoice waits again
    large = await gateway.create_invoice(LARGE, assets=["BTC"])
    await wallet.pay_uri(rpc, btc_method(large)["uri"])
    await devnet.mine(1, wallet.address(0))
    await wait_state(gateway, large["id"], "processing")
    await eventually(lambda: confirmations_are(gateway, large["id"], 1))
    await devnet.reorg(1)
    body = await wait_state(gateway, large["id"], "new")
    assert body["amount_paid_tiyn"] == 0
    [row] = await payment_rows(gateway, large["id"])
    assert row["status"] == "dropped"

    # depth 3 with a double spend in the competing branch: a settled 1-confirmation invoice is reversed
    medium = await gateway.create_invoice(MEDIUM, assets=["BTC"])
    payment = await wallet.pay_uri(rpc, btc_method(medium)["uri"])
    await devnet.mine(3, wallet.address(0))
    await wait_state(gateway, medium["id"], "settled")
    await eventually(lambda: confirmations_are(gateway, medium["id"], 3))
    theft = wallet.build_conflicting(payment)
    await devnet.reorg(3, txs_in_branch=[theft.raw])
    body = await wait_state(gateway, medium["id"], "reversed")
    assert body["amount_paid_tiyn"] == 0
    reasons = await drop_reasons(gateway, medium["id"])
    assert reasons == ["double_spent"]
    await wait_tip(gateway, devnet)
    assert await rpc.mempool_entry(payment.txid) is None


async def test_killed_gateway_catches_up_on_twenty_blocks_without_misses_or_doubles(
    tmp_path: Path, devnet: BitcoinDevnet, wallet: BitcoinWallet
) -> None:
    rpc = rpc_of(devnet)
    env = cli_env(tmp_path, **devnet_env(devnet))
    key = create_merchant(tmp_path)["api_key"]
    gateway = start_gateway(tmp_path, env=dict(env))
    try:
        invoices = []
        for i in range(10):
            status, body = gateway.request(
                "POST",
                "/v1/invoices",
                {"amount": f"{100000 + i}.00", "currency": "KZT", "assets": ["BTC"]},
                key,
            )
            assert status == 201, body
            invoices.append(body)
        await asyncio.sleep(1.0)  # the watcher has polled at least once: its checkpoint is stored
    finally:
        gateway.process.send_signal(signal.SIGKILL)
        gateway.stop()
    # while it is down: 20 blocks, the first ten carrying one payment each
    for invoice in invoices:
        await wallet.pay_uri(rpc, btc_method(invoice)["uri"])
        await devnet.mine(1, wallet.address(0))
    await devnet.mine(10, wallet.address(0))

    restarted = start_gateway(tmp_path, env=dict(env))
    try:
        deadline = asyncio.get_running_loop().time() + 30
        while True:
            statuses = [
                restarted.request("GET", f"/v1/invoices/{i['id']}", key=key)[1]["status"] for i in invoices
            ]
            if all(s == "settled" for s in statuses) or asyncio.get_running_loop().time() > deadline:
                break
            await asyncio.sleep(0.2)
        assert statuses == ["settled"] * 10
    finally:
        assert restarted.stop() == 0
    with sqlite3.connect(tmp_path / "gateway.sqlite3") as db:
        payments = db.execute("SELECT invoice_id, confirmations FROM payments").fetchall()
        detected = db.execute("SELECT COUNT(*) FROM outbox WHERE type = 'payment.detected'").fetchone()[0]
        settled = db.execute("SELECT COUNT(*) FROM outbox WHERE type = 'invoice.settled'").fetchone()[0]
        tip = db.execute("SELECT MAX(height) FROM chain_blocks WHERE chain = 'bitcoin'").fetchone()[0]
    assert len(payments) == 10 and {p[0] for p in payments} == {i["id"] for i in invoices}
    assert detected == 10 and settled == 10
    assert tip == await rpc.block_count()
    # each payment counted at the depth it had when the watcher caught up: 20 blocks for the first, 11 for the last
    assert sorted(p[1] for p in payments) == list(range(11, 21))
