"""Ethereum and ERC-20 settlement end to end against a real anvil node.

Residents pay invoices through their EIP-681 URIs with the wallet (wallets/ethereum.py); the gateway's
watcher runs inside the app as in production; reorgs are anvil's own (`anvil_reorg`).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
from web3 import AsyncHTTPProvider, AsyncWeb3

from gateway.api.state import WATCHERS
from sandbox.devnets.ethereum import EthereumDevnet
from sandbox.devnets.solc import load_test_usdt
from tests.conftest import Gateway, GatewayFactory
from tests.integration.gateway_process import cli_env, create_merchant, start_gateway
from tests.integration.settlement_helpers import (
    confirmations_are,
    eventually,
    invoice_body,
    method,
    payment_rows,
    wait_state,
)
from wallets.ethereum import EthereumWallet

pytestmark = pytest.mark.integration

MEDIUM = "50000.00"  # 1 confirmation by the default policy
LARGE = "600000.00"  # 6 confirmations


def anvil_env(devnet: EthereumDevnet) -> dict[str, str]:
    return {
        "CRYPTOCITY_ETHEREUM__RPC__URL": devnet.url,
        "CRYPTOCITY_ETHEREUM__CHAIN_ID": str(devnet.chain_id),
        "CRYPTOCITY_ETHEREUM__TOKEN_ADDRESS": devnet.token_address,
        "CRYPTOCITY_ETHEREUM__WATCHER__POLL_INTERVAL_SECONDS": "0.2",
    }


@pytest.fixture
async def devnet(tmp_path: Path) -> AsyncIterator[EthereumDevnet]:
    async with EthereumDevnet(log_path=tmp_path / "anvil.log") as node:
        yield node


@pytest.fixture
async def resident(devnet: EthereumDevnet) -> EthereumWallet:
    """Dev account 1 as a resident: 10,000 ETH from anvil and a million tUSDT minted."""
    wallet = EthereumWallet.from_private_key(devnet.accounts[1].private_key)
    await devnet.mint(wallet.address, 10**12)
    return wallet


async def wait_tip(gateway: Gateway, devnet: EthereumDevnet) -> None:
    head = await devnet.block_hash(await devnet.block_number())

    async def check() -> bool:
        body = await (await gateway.client.get("/readyz")).json()
        return bool(body.get("chains", {}).get("ethereum", {}).get("tip_hash") == head)

    await eventually(check)


async def test_eth_and_token_payments_by_policy_partial_over_and_late(
    make_gateway: GatewayFactory, devnet: EthereumDevnet, resident: EthereumWallet
) -> None:
    gateway = await make_gateway(**anvil_env(devnet))
    w3 = devnet.w3
    await wait_tip(gateway, devnet)
    eth_large = await gateway.create_invoice(LARGE, assets=["ETH"])
    token_large = await gateway.create_invoice(LARGE, assets=["USDT"])
    under = await gateway.create_invoice(MEDIUM, assets=["USDT"])
    over = await gateway.create_invoice(MEDIUM, assets=["ETH"])
    split = await gateway.create_invoice(MEDIUM, assets=["USDT"])
    late = await gateway.create_invoice(MEDIUM, assets=["USDT"], expires_in=60)

    # exact payments through the EIP-681 URIs: processing at 1 confirmation, settled at the policy's 6
    await resident.pay_uri(w3, method(eth_large, "ETH")["uri"])
    await resident.pay_uri(w3, method(token_large, "USDT")["uri"])
    await wait_state(gateway, eth_large["id"], "processing")
    await wait_state(gateway, token_large["id"], "processing")
    await eventually(lambda: confirmations_are(gateway, token_large["id"], 1))
    await devnet.mine(4)  # the token payment has 5 confirmations, the ether one (a block earlier) 6
    await eventually(lambda: confirmations_are(gateway, token_large["id"], 5))
    assert (await invoice_body(gateway, token_large["id"]))["status"] == "processing"
    await wait_state(gateway, eth_large["id"], "settled", [])
    await devnet.mine(1)
    await wait_state(gateway, eth_large["id"], "settled", [])
    await wait_state(gateway, token_large["id"], "settled", [])
    [eth_row] = await payment_rows(gateway, eth_large["id"])
    assert ":" not in eth_row["payment_key"]  # native ether: the tx hash alone
    assert eth_row["confirmations"] == 7  # counted on past the 6 it needed, up to the watched depth
    [token_row] = await payment_rows(gateway, token_large["id"])
    assert ":" in token_row["payment_key"]  # tx_hash:log_index

    token = devnet.token_address
    due = method(under, "USDT")["amount_due_minor"]
    await resident.transfer_token(w3, token, method(under, "USDT")["address"], due - 1)
    await resident.send_eth(w3, method(over, "ETH")["address"], method(over, "ETH")["amount_due_minor"] * 3)
    split_due = method(split, "USDT")["amount_due_minor"]
    await resident.transfer_token(w3, token, method(split, "USDT")["address"], split_due // 3)
    await wait_state(gateway, split["id"], "new", ["underpaid"])
    await resident.transfer_token(w3, token, method(split, "USDT")["address"], split_due - split_due // 3)
    await wait_state(gateway, under["id"], "new", ["underpaid"])
    await wait_state(gateway, over["id"], "settled", ["overpaid"])
    await wait_state(gateway, split["id"], "settled", [])
    assert len(await payment_rows(gateway, split["id"])) == 2

    gateway.clock.advance(timedelta(seconds=61))
    await wait_state(gateway, late["id"], "expired")
    await resident.pay_uri(w3, method(late, "USDT")["uri"])
    await wait_state(gateway, late["id"], "expired", ["paid_late"])


async def test_wrong_token_is_unaccounted_and_a_reverted_transfer_never_counts(
    make_gateway: GatewayFactory, devnet: EthereumDevnet, resident: EthereumWallet
) -> None:
    gateway = await make_gateway(**anvil_env(devnet))
    w3 = devnet.w3
    await wait_tip(gateway, devnet)
    invoice = await gateway.create_invoice(MEDIUM, assets=["USDT"])
    address, due = method(invoice, "USDT")["address"], method(invoice, "USDT")["amount_due_minor"]

    # another contract with the same code and symbol: a look-alike token the gateway does not accept
    artifact = load_test_usdt()
    issuer = devnet.accounts[2]
    raw = await devnet.sign_tx(issuer, {"data": artifact["bytecode"], "gas": 2_000_000, "value": 0})  # type: ignore[typeddict-item]
    receipt = await devnet.wait_for_receipt(await devnet.send_raw(raw))
    fake = w3.eth.contract(address=receipt["contractAddress"], abi=artifact["abi"])
    mint = await devnet.sign_tx(
        issuer,
        {
            "to": fake.address,
            "data": fake.encode_abi("mint", args=[resident.address, due]),
            "gas": 100_000,
            "value": 0,
        },  # type: ignore[typeddict-item]
    )
    await devnet.wait_for_receipt(await devnet.send_raw(mint))
    await resident.transfer_token(w3, fake.address, address, due)

    # a transfer of more tUSDT than the sender holds, mined with a fixed gas limit: status 0, no log
    poor = devnet.accounts[3]
    reverted = await devnet.sign_token_transfer(poor, address, due, gas=100_000)
    tx_hash = await devnet.send_raw(reverted)
    await eventually(lambda: _mined(w3, tx_hash))
    assert (await w3.eth.get_transaction_receipt(tx_hash))["status"] == 0  # type: ignore[arg-type]
    await devnet.mine(2)
    await wait_tip(gateway, devnet)
    body = await invoice_body(gateway, invoice["id"])
    assert (body["status"], body["amount_paid_tiyn"]) == ("new", 0)
    assert await payment_rows(gateway, invoice["id"]) == []
    [unaccounted] = await gateway.service.unaccounted_payments(invoice["id"])
    assert unaccounted["reason"] == "unknown_token" and int(unaccounted["amount_minor"]) == due
    assert unaccounted["contract"].lower() == fake.address.lower()


async def _mined(w3: AsyncWeb3[AsyncHTTPProvider], tx_hash: str) -> bool:
    try:
        receipt = await w3.eth.get_transaction_receipt(tx_hash)  # type: ignore[arg-type]
    except Exception:
        return False
    return receipt is not None


async def test_reorgs_of_depth_one_and_three_retract_and_a_moved_payment_still_counts(
    make_gateway: GatewayFactory, devnet: EthereumDevnet, resident: EthereumWallet
) -> None:
    gateway = await make_gateway(**anvil_env(devnet))
    w3 = devnet.w3
    await wait_tip(gateway, devnet)

    # depth 1: the payment's block is replaced by an empty one; the settled invoice is reversed
    medium = await gateway.create_invoice(MEDIUM, assets=["USDT"])
    await resident.pay_uri(w3, method(medium, "USDT")["uri"])
    await wait_state(gateway, medium["id"], "settled")
    await devnet.reorg(1)
    await resident.resync_nonce(w3)  # its transaction is gone with the block: the node's count went back
    await wait_state(gateway, medium["id"], "reversed")
    [row] = await payment_rows(gateway, medium["id"])
    assert row["status"] == "dropped"

    # depth 3 on a 6-confirmation invoice with 3 confirmations: back to new
    large = await gateway.create_invoice(LARGE, assets=["ETH"])
    await resident.pay_uri(w3, method(large, "ETH")["uri"])
    await devnet.mine(2)
    await eventually(lambda: confirmations_are(gateway, large["id"], 3))
    await wait_state(gateway, large["id"], "processing")
    await devnet.reorg(3)
    await resident.resync_nonce(w3)
    await wait_state(gateway, large["id"], "new", [])

    # depth 1 with the payment moved into the replacement block: it is counted again, in its new block
    moved = await gateway.create_invoice(MEDIUM, assets=["ETH"])
    payment = await resident.pay_uri(w3, method(moved, "ETH")["uri"])
    await wait_state(gateway, moved["id"], "settled")
    tx = await w3.eth.get_raw_transaction(payment.tx_hash)  # type: ignore[arg-type]
    await devnet.reorg(1, [(tx.to_0x_hex(), 0)])
    await wait_tip(gateway, devnet)
    body = await wait_state(gateway, moved["id"], "settled")
    [row] = await payment_rows(gateway, moved["id"])
    assert row["status"] == "accepted" and row["confirmations"] == 1
    assert body["amount_paid_tiyn"] >= 5_000_000


async def test_hundred_concurrent_invoices_paid_in_one_block(
    make_gateway: GatewayFactory, devnet: EthereumDevnet, resident: EthereumWallet
) -> None:
    gateway = await make_gateway(**anvil_env(devnet))
    w3 = devnet.w3
    invoices = await asyncio.gather(
        *(gateway.create_invoice(f"{10000 + i}.00", assets=["ETH", "USDT"]) for i in range(100))
    )
    await wait_tip(gateway, devnet)
    await devnet.set_automine(False)
    payments = await asyncio.gather(
        *(
            resident.pay_uri(w3, method(invoice, "USDT" if i % 2 else "ETH")["uri"], wait=False)
            for i, invoice in enumerate(invoices)
        )
    )
    await devnet.mine_until_pool_empty()
    blocks = {(await w3.eth.get_transaction_receipt(p.tx_hash))["blockNumber"] for p in payments}  # type: ignore[arg-type]
    assert len(blocks) == 1  # all in the same block
    for i, invoice in enumerate(invoices):
        await wait_state(gateway, invoice["id"], "settled", [], seconds=60)
        [row] = await payment_rows(gateway, invoice["id"])
        asset = "USDT" if i % 2 else "ETH"
        assert row["asset"] == asset
        assert int(row["amount_minor"]) == method(invoice, asset)["amount_due_minor"]
        assert row["payment_key"].split(":")[0] == payments[i].tx_hash


async def test_stopped_watcher_catches_up_twenty_blocks_without_misses_or_doubles(
    tmp_path: Path, devnet: EthereumDevnet, resident: EthereumWallet
) -> None:
    w3 = devnet.w3
    env = cli_env(tmp_path, **anvil_env(devnet))
    key = create_merchant(tmp_path)["api_key"]
    gateway = start_gateway(tmp_path, env=dict(env))
    try:
        invoices = []
        for i in range(8):
            status, body = gateway.request(
                "POST",
                "/v1/invoices",
                {"amount": f"{20000 + i}.00", "currency": "KZT", "assets": ["ETH", "USDT"]},
                key,
            )
            assert status == 201, body
            invoices.append(body)
        await asyncio.sleep(1.0)  # the watcher has its checkpoint
    finally:
        assert gateway.stop() == 0
    for i, invoice in enumerate(invoices):  # while it is down: 20 blocks, eight with a payment
        await resident.pay_uri(w3, method(invoice, "USDT" if i % 2 else "ETH")["uri"])
        await devnet.mine(1)
    await devnet.mine(20 - 2 * len(invoices))
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
        assert statuses == ["settled"] * len(invoices)
    finally:
        assert restarted.stop() == 0
    with sqlite3.connect(tmp_path / "gateway.sqlite3") as db:
        rows = db.execute("SELECT invoice_id FROM payments WHERE chain = 'ethereum'").fetchall()
        detected = db.execute("SELECT COUNT(*) FROM outbox WHERE type = 'payment.detected'").fetchone()[0]
        tip = db.execute("SELECT MAX(height) FROM chain_blocks WHERE chain = 'ethereum'").fetchone()[0]
    assert sorted(r[0] for r in rows) == sorted(i["id"] for i in invoices)
    assert detected == len(invoices)
    assert tip == await devnet.block_number()


async def test_a_node_on_another_chain_is_refused_at_start(tmp_path: Path, devnet: EthereumDevnet) -> None:
    env = cli_env(tmp_path, **{**anvil_env(devnet), "CRYPTOCITY_ETHEREUM__CHAIN_ID": "11155111"})
    create_merchant(tmp_path)
    with pytest.raises(AssertionError, match="refused to start"):
        start_gateway(tmp_path, env=env, deadline=30)


async def test_new_heads_subscription_wakes_the_watcher_between_polls(
    make_gateway: GatewayFactory, devnet: EthereumDevnet, resident: EthereumWallet
) -> None:
    ws_url = devnet.url.replace("http://", "ws://")
    # a 30 s poll interval: only the subscription can make detection prompt
    gateway = await make_gateway(
        **{
            **anvil_env(devnet),
            "CRYPTOCITY_ETHEREUM__RPC__WS_URL": ws_url,
            "CRYPTOCITY_ETHEREUM__WATCHER__POLL_INTERVAL_SECONDS": "30",
        }
    )
    await wait_tip(gateway, devnet)
    watcher = gateway.app[WATCHERS]["ethereum"]
    await eventually(lambda: _is(watcher.websocket_connected))  # evaluated anew at each look
    invoice = await gateway.create_invoice(MEDIUM, assets=["ETH"])
    await asyncio.sleep(0.5)
    started = asyncio.get_running_loop().time()
    await resident.pay_uri(devnet.w3, method(invoice, "ETH")["uri"])
    await wait_state(gateway, invoice["id"], "settled", seconds=10)
    assert asyncio.get_running_loop().time() - started < 10  # far below the poll interval


async def test_an_unreachable_websocket_leaves_polling_in_charge(
    make_gateway: GatewayFactory, devnet: EthereumDevnet, resident: EthereumWallet
) -> None:
    gateway = await make_gateway(
        **{**anvil_env(devnet), "CRYPTOCITY_ETHEREUM__RPC__WS_URL": "ws://127.0.0.1:9/"}  # nothing listens
    )
    await wait_tip(gateway, devnet)
    watcher = gateway.app[WATCHERS]["ethereum"]
    assert not watcher.websocket_connected
    invoice = await gateway.create_invoice(MEDIUM, assets=["USDT"])
    await resident.pay_uri(devnet.w3, method(invoice, "USDT")["uri"])
    await wait_state(gateway, invoice["id"], "settled")


async def _is(value: bool) -> bool:
    return value
