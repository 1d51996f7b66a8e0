"""Garbled node answers: the watcher neither stops nor records anything wrong, and catches up once honest.

A real node (bcoin, anvil) sits behind rpc_fault_proxy.py; the gateway (in-process, as in production)
talks to the proxy only, the test's wallets and miner to the node directly. For every fault mode in turn
the proxy starts answering badly, a payment is sent and mined, the fault lasts
``CRYPTOCITY_FAULT_MALFORMED_SECONDS`` (default 1; longer, the watcher backs off further), then the proxy turns honest and the invoice must
settle. Throughout, an invoice settled before the faults must stay settled, and at the end every invoice
has exactly its one payment, one ``payment.detected`` event and no drop or reversal. A second test starts
the gateway while the answers are garbled: a garbled answer to the chain check must not pass for "the
node is on another chain" (which stops the watcher for good).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from embit import bip39

from gateway.api.state import WATCHERS
from sandbox.devnets.bitcoin import REGTEST_HRP, BitcoinDevnet
from sandbox.devnets.ethereum import EthereumDevnet
from tests.conftest import Gateway, GatewayFactory
from tests.integration.settlement_helpers import method, wait_state
from tests.integration.test_bitcoin_settlement import MEDIUM as BTC_MEDIUM
from tests.integration.test_bitcoin_settlement import btc_method, devnet_env, rpc_of
from tests.integration.test_bitcoin_settlement import wait_tip as wait_btc_tip
from tests.integration.test_ethereum_settlement import MEDIUM as ETH_MEDIUM
from tests.integration.test_ethereum_settlement import anvil_env
from tests.integration.test_ethereum_settlement import wait_tip as wait_eth_tip
from tests.reliability.fault_checks import assert_each_paid_once, env_number, hold_fault, report
from tests.reliability.rpc_fault_proxy import FaultMode, RpcFaultProxy
from wallets.bitcoin import BitcoinWallet
from wallets.ethereum import EthereumWallet

pytestmark = pytest.mark.integration

FAULT_SECONDS = env_number("CRYPTOCITY_FAULT_MALFORMED_SECONDS", 1.0)
FAULTS = [mode for mode in FaultMode if mode is not FaultMode.HONEST]
# Every call fails in these modes, so /readyz must say so; FLAKY lets half the calls through.
ALWAYS_FAILING = [mode for mode in FAULTS if mode is not FaultMode.FLAKY]
# Short RPC timeouts and one retry: a fault is noticed (and a recovery made) within a poll or two.
BTC_RPC = {"CRYPTOCITY_BITCOIN__RPC__TIMEOUT_SECONDS": "2", "CRYPTOCITY_BITCOIN__RPC__RETRIES": "1"}
ETH_RPC = {"CRYPTOCITY_ETHEREUM__RPC__TIMEOUT_SECONDS": "2"}


@pytest.fixture
async def bitcoin(tmp_path: Path) -> AsyncIterator[tuple[BitcoinDevnet, BitcoinWallet, RpcFaultProxy]]:
    async with BitcoinDevnet(log_path=tmp_path / "bcoin.log") as node, RpcFaultProxy(node.url) as proxy:
        wallet = BitcoinWallet.from_mnemonic(bip39.mnemonic_from_bytes(os.urandom(16)), REGTEST_HRP)
        await node.fund(wallet)
        yield node, wallet, proxy


@pytest.fixture
async def ethereum(tmp_path: Path) -> AsyncIterator[tuple[EthereumDevnet, EthereumWallet, RpcFaultProxy]]:
    async with EthereumDevnet(log_path=tmp_path / "anvil.log") as node, RpcFaultProxy(node.url) as proxy:
        yield node, EthereumWallet.from_private_key(node.accounts[1].private_key), proxy


def watcher_alive(gateway: Gateway, chain: str) -> bool:
    watcher = gateway.app[WATCHERS].get(chain)
    return watcher is not None and watcher.status.refused is None


async def test_bitcoin_watcher_outlives_every_garbled_answer_and_settles_when_honest(
    make_gateway: GatewayFactory, bitcoin: tuple[BitcoinDevnet, BitcoinWallet, RpcFaultProxy]
) -> None:
    devnet, wallet, proxy = bitcoin
    rpc = rpc_of(devnet)
    gateway = await make_gateway(
        **{**devnet_env(devnet), **BTC_RPC, "CRYPTOCITY_BITCOIN__RPC__URL": proxy.url}
    )
    await wait_btc_tip(gateway, devnet)
    before = await gateway.create_invoice(BTC_MEDIUM, assets=["BTC"])
    await wallet.pay_uri(rpc, btc_method(before)["uri"])
    await devnet.mine(1, wallet.address(0))
    await wait_state(gateway, before["id"], "settled", [])
    paid = {before["id"]: btc_method(before)["amount_due_minor"]}
    recovery: dict[str, float] = {}

    for mode in FAULTS:
        invoice = await gateway.create_invoice(BTC_MEDIUM, assets=["BTC"])
        await asyncio.sleep(0.3)  # watched before the fault (the address refresh needs one good poll)
        proxy.mode = mode
        await wallet.pay_uri(rpc, btc_method(invoice)["uri"])
        await devnet.mine(1, wallet.address(0))
        degraded = await hold_fault(gateway, "bitcoin", FAULT_SECONDS, until_degraded=mode in ALWAYS_FAILING)
        assert watcher_alive(gateway, "bitcoin"), mode
        if mode in ALWAYS_FAILING:
            assert degraded, f"/readyz never reported bitcoin unavailable while answering {mode}"
        await wait_state(gateway, before["id"], "settled", [])  # a fault is never taken for a reorg
        proxy.mode = FaultMode.HONEST
        started = asyncio.get_running_loop().time()
        await wait_state(gateway, invoice["id"], "settled", [], seconds=30)
        await wait_btc_tip(gateway, devnet)
        recovery[mode.value] = round(asyncio.get_running_loop().time() - started, 2)
        paid[invoice["id"]] = btc_method(invoice)["amount_due_minor"]

    await assert_each_paid_once(gateway, paid)
    assert all(proxy.spoiled[mode] > 0 for mode in FAULTS), proxy.spoiled
    report("malformed_rpc.bitcoin", fault_seconds=FAULT_SECONDS, recovery_seconds=recovery)


async def test_ethereum_watcher_outlives_every_garbled_answer_and_settles_when_honest(
    make_gateway: GatewayFactory, ethereum: tuple[EthereumDevnet, EthereumWallet, RpcFaultProxy]
) -> None:
    devnet, resident, proxy = ethereum
    w3 = devnet.w3
    await devnet.mint(resident.address, 10**12)
    gateway = await make_gateway(
        **{**anvil_env(devnet), **ETH_RPC, "CRYPTOCITY_ETHEREUM__RPC__URL": proxy.url}
    )
    await wait_eth_tip(gateway, devnet)
    before = await gateway.create_invoice(ETH_MEDIUM, assets=["USDT"])
    await resident.pay_uri(w3, method(before, "USDT")["uri"])
    await wait_state(gateway, before["id"], "settled", [])
    paid = {before["id"]: method(before, "USDT")["amount_due_minor"]}
    assets = {before["id"]: "USDT"}
    recovery: dict[str, float] = {}

    for number, mode in enumerate(FAULTS):
        asset = "USDT" if number % 2 else "ETH"  # token logs and native transfers take different calls
        invoice = await gateway.create_invoice(ETH_MEDIUM, assets=[asset])
        await asyncio.sleep(0.3)
        proxy.mode = mode
        await resident.pay_uri(w3, method(invoice, asset)["uri"])  # mined at once (automine)
        degraded = await hold_fault(gateway, "ethereum", FAULT_SECONDS, until_degraded=mode in ALWAYS_FAILING)
        assert watcher_alive(gateway, "ethereum"), mode
        if mode in ALWAYS_FAILING:
            assert degraded, f"/readyz never reported ethereum unavailable while answering {mode}"
        await wait_state(gateway, before["id"], "settled", [])
        proxy.mode = FaultMode.HONEST
        started = asyncio.get_running_loop().time()
        await wait_state(gateway, invoice["id"], "settled", [], seconds=30)
        await wait_eth_tip(gateway, devnet)
        recovery[mode.value] = round(asyncio.get_running_loop().time() - started, 2)
        paid[invoice["id"]] = method(invoice, asset)["amount_due_minor"]
        assets[invoice["id"]] = asset

    await assert_each_paid_once(gateway, paid, asset_of=assets)
    assert all(proxy.spoiled[mode] > 0 for mode in FAULTS), proxy.spoiled
    report("malformed_rpc.ethereum", fault_seconds=FAULT_SECONDS, recovery_seconds=recovery)


# the two that look like answers: they once passed for "the node is on another chain"
@pytest.mark.parametrize("mode", [FaultMode.WRONG_ID, FaultMode.NULL_RESULT])
async def test_a_gateway_started_behind_garbled_answers_waits_for_honest_ones(
    make_gateway: GatewayFactory,
    bitcoin: tuple[BitcoinDevnet, BitcoinWallet, RpcFaultProxy],
    ethereum: tuple[EthereumDevnet, EthereumWallet, RpcFaultProxy],
    mode: FaultMode,
) -> None:
    btc, wallet, btc_proxy = bitcoin
    eth, resident, eth_proxy = ethereum
    btc_proxy.mode = eth_proxy.mode = mode
    gateway = await make_gateway(
        **{**devnet_env(btc), **BTC_RPC, "CRYPTOCITY_BITCOIN__RPC__URL": btc_proxy.url},
        **{**anvil_env(eth), **ETH_RPC, "CRYPTOCITY_ETHEREUM__RPC__URL": eth_proxy.url},
    )
    btc_invoice = await gateway.create_invoice(BTC_MEDIUM, assets=["BTC"])
    eth_invoice = await gateway.create_invoice(ETH_MEDIUM, assets=["ETH"])
    await asyncio.sleep(FAULT_SECONDS)
    for chain in ("bitcoin", "ethereum"):
        assert watcher_alive(gateway, chain), (chain, gateway.app[WATCHERS][chain].status)
    btc_proxy.mode = eth_proxy.mode = FaultMode.HONEST
    await wait_btc_tip(gateway, btc)
    await wait_eth_tip(gateway, eth)
    await wallet.pay_uri(rpc_of(btc), btc_method(btc_invoice)["uri"])
    await btc.mine(1, wallet.address(0))
    await resident.pay_uri(eth.w3, method(eth_invoice, "ETH")["uri"])
    await wait_state(gateway, btc_invoice["id"], "settled", [])
    await wait_state(gateway, eth_invoice["id"], "settled", [])
