"""The Ethereum watcher on eth-tester's in-process chain, with the real invoice service and SQLite store.

eth-tester serves the same AsyncWeb3 code path as anvil (blocks with full transactions, receipts, logs), and
its snapshots give real reorgs: after a revert, newly mined blocks take the same heights with other hashes.
The same scenarios run against a real anvil node in tests/integration/test_ethereum_settlement.py.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from eth_tester import EthereumTester
from web3 import AsyncWeb3
from web3.providers.eth_tester import AsyncEthereumTesterProvider

from gateway.chains.chain_state import ChainState
from gateway.chains.ethereum import EthereumSettings, EthereumWatcher
from gateway.chains.watcher import WatcherRefused
from gateway.money import Asset, Chain
from tests.conftest import Gateway, GatewayFactory

ROOT = Path(__file__).resolve().parents[2]
ARTIFACT = json.loads((ROOT / "sandbox" / "devnets" / "contracts" / "TestUSDT.json").read_text())
MEDIUM = "50000.00"  # 1 confirmation by the default policy
LARGE = "600000.00"  # 6 confirmations


@dataclass
class DevChain:
    w3: AsyncWeb3[Any]
    tester: EthereumTester
    accounts: list[str]
    token: Any
    other_token: Any

    @property
    def chain_id(self) -> int:
        return 131277322940537

    async def pay_eth(self, to: str, wei: int) -> str:
        tx = await self.w3.eth.send_transaction({"from": self.accounts[1], "to": to, "value": wei})  # type: ignore[typeddict-item]
        return tx.to_0x_hex()

    async def pay_token(self, to: str, units: int, token: Any = None) -> str:
        tx = await (token or self.token).functions.transfer(to, units).transact({"from": self.accounts[1]})
        return str(tx.to_0x_hex())

    def mine(self, blocks: int = 1) -> None:
        self.tester.mine_blocks(blocks)


async def _deploy(w3: AsyncWeb3[Any], owner: str) -> Any:
    factory = w3.eth.contract(abi=ARTIFACT["abi"], bytecode=ARTIFACT["bytecode"])
    tx = await factory.constructor().transact({"from": owner})
    receipt = await w3.eth.wait_for_transaction_receipt(tx)
    return w3.eth.contract(address=receipt["contractAddress"], abi=ARTIFACT["abi"])


@pytest.fixture
async def dev_chain() -> DevChain:
    provider = AsyncEthereumTesterProvider()
    w3 = AsyncWeb3(provider)
    accounts = list(await w3.eth.accounts)
    token = await _deploy(w3, accounts[0])
    other = await _deploy(w3, accounts[0])  # a second tUSDT-like contract the gateway does not accept
    for contract in (token, other):
        await contract.functions.mint(accounts[1], 10**15).transact({"from": accounts[0]})
    return DevChain(w3, provider.ethereum_tester, accounts, token, other)


@pytest.fixture
async def eth_gateway(make_gateway: GatewayFactory, dev_chain: DevChain) -> Gateway:
    return await make_gateway(
        CRYPTOCITY_ETHEREUM__CHAIN_ID=str(dev_chain.chain_id),
        CRYPTOCITY_ETHEREUM__TOKEN_ADDRESS=dev_chain.token.address,
    )


def make_watcher(gateway: Gateway, chain: DevChain, **overrides: Any) -> EthereumWatcher:
    settings: dict[str, Any] = {
        "chain_id": chain.chain_id,
        "tokens": {chain.token.address.lower(): Asset.USDT},
        **overrides,
    }
    return EthereumWatcher(
        chain.w3, ChainState(gateway.store, Chain.ETHEREUM), gateway.service, EthereumSettings(**settings)
    )


async def eth_invoice(
    gateway: Gateway, amount: str, assets: tuple[str, ...] = ("ETH", "USDT")
) -> dict[str, Any]:
    invoice = await gateway.create_invoice(amount, assets=list(assets))
    return {m["asset"]: m for m in invoice["payment_methods"]} | {"id": invoice["id"]}


async def status_of(gateway: Gateway, invoice_id: str) -> tuple[str, list[str]]:
    response = await gateway.client.get(f"/v1/invoices/{invoice_id}", headers=gateway.auth())
    body = await response.json()
    return body["status"], body["flags"]


async def payments(gateway: Gateway, invoice_id: str) -> list[dict[str, Any]]:
    rows = await gateway.store.read(
        lambda tx: tx.fetchall(
            "SELECT payment_key, asset, amount_minor, status, confirmations, payer FROM payments"
            " WHERE invoice_id = ? ORDER BY detected_at",
            (invoice_id,),
        )
    )
    return [dict(r) for r in rows]


async def test_native_payment_processing_then_settled_after_policy_confirmations(
    eth_gateway: Gateway, dev_chain: DevChain
) -> None:
    watcher = make_watcher(eth_gateway, dev_chain)
    await watcher.poll_once()
    invoice = await eth_invoice(eth_gateway, LARGE)  # created while the watcher runs
    tx_hash = await dev_chain.pay_eth(invoice["ETH"]["address"], invoice["ETH"]["amount_due_minor"])
    await watcher.poll_once()
    assert await status_of(eth_gateway, invoice["id"]) == ("processing", [])
    [row] = await payments(eth_gateway, invoice["id"])
    assert row["payment_key"] == tx_hash and row["confirmations"] == 1
    assert row["payer"] == dev_chain.accounts[1]
    dev_chain.mine(4)
    await watcher.poll_once()
    assert (await status_of(eth_gateway, invoice["id"]))[0] == "processing"
    dev_chain.mine(1)
    await watcher.poll_once()
    assert await status_of(eth_gateway, invoice["id"]) == ("settled", [])
    assert (await payments(eth_gateway, invoice["id"]))[0]["confirmations"] == 6


async def test_token_payments_exact_under_over_and_two_partials(
    eth_gateway: Gateway, dev_chain: DevChain
) -> None:
    watcher = make_watcher(eth_gateway, dev_chain)
    await watcher.poll_once()
    exact, under, over, split = [await eth_invoice(eth_gateway, MEDIUM) for _ in range(4)]
    due = exact["USDT"]["amount_due_minor"]
    await dev_chain.pay_token(exact["USDT"]["address"], due)
    await dev_chain.pay_token(under["USDT"]["address"], due - 1000)
    await dev_chain.pay_token(over["USDT"]["address"], due * 2)
    await dev_chain.pay_token(split["USDT"]["address"], due // 2)
    await watcher.poll_once()
    assert await status_of(eth_gateway, split["id"]) == ("new", ["underpaid"])
    await dev_chain.pay_token(split["USDT"]["address"], due - due // 2)
    await watcher.poll_once()
    assert await status_of(eth_gateway, exact["id"]) == ("settled", [])
    assert await status_of(eth_gateway, under["id"]) == ("new", ["underpaid"])
    assert await status_of(eth_gateway, over["id"]) == ("settled", ["overpaid"])
    assert await status_of(eth_gateway, split["id"]) == ("settled", [])
    keys = [p["payment_key"] for p in await payments(eth_gateway, split["id"])]
    assert len(keys) == 2 and all(":" in k for k in keys)  # tx_hash:log_index


async def test_wrong_token_and_unoffered_asset_are_unaccounted_never_counted(
    eth_gateway: Gateway, dev_chain: DevChain
) -> None:
    watcher = make_watcher(eth_gateway, dev_chain)
    await watcher.poll_once()
    invoice = await eth_invoice(eth_gateway, MEDIUM)
    usdt_only = await eth_invoice(eth_gateway, MEDIUM, assets=("USDT",))
    await dev_chain.pay_token(
        invoice["USDT"]["address"], invoice["USDT"]["amount_due_minor"], dev_chain.other_token
    )
    await dev_chain.pay_eth(usdt_only["USDT"]["address"], 10**18)
    await watcher.poll_once()
    assert await status_of(eth_gateway, invoice["id"]) == ("new", [])
    assert await status_of(eth_gateway, usdt_only["id"]) == ("new", [])
    assert await payments(eth_gateway, invoice["id"]) == []
    [wrong_token] = await eth_gateway.service.unaccounted_payments(invoice["id"])
    assert wrong_token["reason"] == "unknown_token"
    assert wrong_token["contract"].lower() == dev_chain.other_token.address.lower()
    assert int(wrong_token["amount_minor"]) == invoice["USDT"]["amount_due_minor"]
    [unoffered] = await eth_gateway.service.unaccounted_payments(usdt_only["id"])
    assert (unoffered["reason"], unoffered["asset"], unoffered["amount_minor"]) == (
        "asset_not_accepted",
        "ETH",
        str(10**18),
    )
    dev_chain.mine(3)
    await watcher.poll_once()  # later blocks do not record them again
    assert len(await eth_gateway.service.unaccounted_payments(invoice["id"])) == 1


async def test_reorgs_of_depth_one_and_three_retract_payments(
    eth_gateway: Gateway, dev_chain: DevChain
) -> None:
    watcher = make_watcher(eth_gateway, dev_chain)
    await watcher.poll_once()
    medium = await eth_invoice(eth_gateway, MEDIUM)
    before = dev_chain.tester.take_snapshot()
    await dev_chain.pay_token(medium["USDT"]["address"], medium["USDT"]["amount_due_minor"])
    await watcher.poll_once()
    assert (await status_of(eth_gateway, medium["id"]))[0] == "settled"
    dev_chain.tester.revert_to_snapshot(before)  # depth 1: the payment's block is replaced by empty ones
    dev_chain.mine(2)
    await watcher.poll_once()
    assert (await status_of(eth_gateway, medium["id"]))[0] == "reversed"
    assert watcher.status.reorgs == 1
    [row] = await payments(eth_gateway, medium["id"])
    assert row["status"] == "dropped"

    large = await eth_invoice(eth_gateway, LARGE)
    before = dev_chain.tester.take_snapshot()
    await dev_chain.pay_eth(large["ETH"]["address"], large["ETH"]["amount_due_minor"])
    dev_chain.mine(2)
    await watcher.poll_once()
    assert await status_of(eth_gateway, large["id"]) == ("processing", [])
    dev_chain.tester.revert_to_snapshot(before)  # depth 3
    dev_chain.mine(4)
    await watcher.poll_once()
    assert await status_of(eth_gateway, large["id"]) == ("new", [])
    assert watcher.status.reorgs == 2


async def test_restarted_watcher_catches_up_twenty_blocks_in_log_spans(
    eth_gateway: Gateway, dev_chain: DevChain
) -> None:
    first = make_watcher(eth_gateway, dev_chain)
    await first.poll_once()
    invoices = [await eth_invoice(eth_gateway, MEDIUM) for _ in range(6)]
    for i, invoice in enumerate(invoices):  # the watcher is down: 20 blocks, six of them with payments
        if i % 2:
            await dev_chain.pay_token(invoice["USDT"]["address"], invoice["USDT"]["amount_due_minor"])
        else:
            await dev_chain.pay_eth(invoice["ETH"]["address"], invoice["ETH"]["amount_due_minor"])
        dev_chain.mine(2)
    dev_chain.mine(20 - 3 * len(invoices))
    second = make_watcher(eth_gateway, dev_chain, log_span=3)  # several eth_getLogs calls on the way
    await second.poll_once()
    await second.poll_once()
    for invoice in invoices:
        assert (await status_of(eth_gateway, invoice["id"]))[0] == "settled"
        assert len(await payments(eth_gateway, invoice["id"])) == 1
    detected = await eth_gateway.store.read(
        lambda tx: tx.fetchone("SELECT COUNT(*) AS n FROM outbox WHERE type = 'payment.detected'")
    )
    assert detected is not None and detected["n"] == len(invoices)
    stored = await ChainState(eth_gateway.store, Chain.ETHEREUM).recent_blocks()
    assert stored[-1].height == await dev_chain.w3.eth.block_number


async def test_a_payment_short_of_its_confirmations_is_counted_after_the_tip_jumps_past_the_window(
    eth_gateway: Gateway, dev_chain: DevChain
) -> None:
    """Seen with 1 of its 6 confirmations, then the watcher is away for 10 blocks (a takeover by another
    process, a restart, a node or store outage): the next watcher's first sync lands 10 blocks on, so
    the payment is deeper than the watched depth (7) below the tip. It must still be counted, or its invoice
    stays processing for good (tests/cluster/test_failover_chains.py found this)."""
    first = make_watcher(eth_gateway, dev_chain)
    await first.poll_once()
    invoice = await eth_invoice(eth_gateway, LARGE)
    await dev_chain.pay_eth(invoice["ETH"]["address"], invoice["ETH"]["amount_due_minor"])
    await first.poll_once()
    assert await status_of(eth_gateway, invoice["id"]) == ("processing", [])
    dev_chain.mine(10)
    second = make_watcher(eth_gateway, dev_chain)
    await second.poll_once()
    assert await status_of(eth_gateway, invoice["id"]) == ("settled", [])
    [row] = await payments(eth_gateway, invoice["id"])
    assert row["confirmations"] == 11


async def test_chain_id_guard(eth_gateway: Gateway, dev_chain: DevChain) -> None:
    with pytest.raises(WatcherRefused, match="chain id"):
        await make_watcher(eth_gateway, dev_chain, chain_id=11155111).poll_once()
    with pytest.raises(WatcherRefused, match="mainnet"):
        await make_watcher(eth_gateway, dev_chain, mainnet_chain_ids=(1, dev_chain.chain_id)).poll_once()


async def test_block_calls_failing_while_looking_for_the_fork_point_are_no_reorg(
    eth_gateway: Gateway, dev_chain: DevChain, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A node whose ``eth_getBlockByNumber`` fails (a timeout, a 5xx, a reset) while the watcher compares
    stored hashes with the node's is not a node without that block. Taken for one, the stored tip looked
    reorged out: a reorg was counted and logged and the tip forgotten, and had every call failed, the whole
    stored window (found with tests/reliability/rpc_fault_proxy.py)."""
    watcher = make_watcher(eth_gateway, dev_chain)
    await watcher.poll_once()
    invoice = await eth_invoice(eth_gateway, MEDIUM)
    await dev_chain.pay_eth(invoice["ETH"]["address"], invoice["ETH"]["amount_due_minor"])
    await watcher.poll_once()
    assert await status_of(eth_gateway, invoice["id"]) == ("settled", [])
    paid_at = int(await dev_chain.w3.eth.block_number)  # the stored tip
    dev_chain.mine(1)
    get_block = dev_chain.w3.eth.get_block

    async def failing(block_id: Any, *args: Any, **kwargs: Any) -> Any:
        if block_id == paid_at:
            raise aiohttp.ClientConnectionError("connection reset by peer")
        return await get_block(block_id, *args, **kwargs)

    monkeypatch.setattr(dev_chain.w3.eth, "get_block", failing)
    with pytest.raises(aiohttp.ClientConnectionError):
        await watcher.poll_once()
    assert watcher.status.reorgs == 0
    stored = await ChainState(eth_gateway.store, Chain.ETHEREUM).recent_blocks()
    assert stored[-1].height == paid_at  # nothing forgotten
    monkeypatch.setattr(dev_chain.w3.eth, "get_block", get_block)
    await watcher.poll_once()
    assert watcher.status.tip_height == await dev_chain.w3.eth.block_number
    assert await status_of(eth_gateway, invoice["id"]) == ("settled", [])
    [row] = await payments(eth_gateway, invoice["id"])
    assert row["status"] == "accepted" and row["confirmations"] == 2


async def test_a_reorg_below_the_stored_window_forgets_nothing_until_the_new_anchor_is_read(
    eth_gateway: Gateway, dev_chain: DevChain, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reorg deeper than the stored window re-anchors the chain on the node's block below it. If reading
    that block fails, the stored chain must stay as it was: forgotten first, it left the watcher with no
    chain at all, failing every later poll, and a restart would have begun at the node's tip."""
    watcher = EthereumWatcher(
        dev_chain.w3,
        ChainState(eth_gateway.store, Chain.ETHEREUM, keep=3),
        eth_gateway.service,
        EthereumSettings(chain_id=dev_chain.chain_id, tokens={dev_chain.token.address.lower(): Asset.USDT}),
    )
    await watcher.poll_once()
    start = int(await dev_chain.w3.eth.block_number)
    before = dev_chain.tester.take_snapshot()
    dev_chain.mine(5)
    await watcher.poll_once()
    dev_chain.tester.revert_to_snapshot(before)
    dev_chain.mine(6)  # every stored height (start+3 .. start+5) now holds another block
    get_block = dev_chain.w3.eth.get_block
    anchor = start + 2

    async def failing_at_anchor(block_id: Any, *args: Any, **kwargs: Any) -> Any:
        if block_id == anchor:
            raise aiohttp.ClientConnectionError("connection reset by peer")
        return await get_block(block_id, *args, **kwargs)

    monkeypatch.setattr(dev_chain.w3.eth, "get_block", failing_at_anchor)
    with pytest.raises(aiohttp.ClientConnectionError):
        await watcher.poll_once()
    assert [b.height for b in await ChainState(eth_gateway.store, Chain.ETHEREUM).recent_blocks()] == [
        start + 3,
        start + 4,
        start + 5,
    ]
    monkeypatch.setattr(dev_chain.w3.eth, "get_block", get_block)
    await watcher.poll_once()
    assert watcher.status.tip_height == start + 6
    assert watcher.status.tip_hash == (await get_block(start + 6))["hash"].to_0x_hex()
