"""A chain node out of reach for a while: the gateway says so, then catches up with nothing missed or doubled.

Two kinds of outage, for Bitcoin (bcoin) and Ethereum (anvil) each, against the in-process gateway with its
real watchers:

- ``drop``: a loopback proxy (tcp_proxy.py) between the gateway and the node resets every connection. The
  node runs on, so invoices are paid and blocks mined *during* the outage, through the node's own port;
- ``sigstop``: the node process itself is stopped (SIGSTOP by its PID) and continued (SIGCONT). Its socket
  accepts but nothing answers, so only the gateway's timeouts notice; nothing can be mined meanwhile, so
  payments are mined right before the stop and more blocks right after the node continues.

While the node is out, /readyz must report the chain unavailable (503) and ``cryptocity_chain_up`` be 0;
after it, both healthy again, every invoice in the state its payments call for, each payment recorded once
with one ``payment.detected`` event and its block the node's. The outage lasts
``CRYPTOCITY_FAULT_OUTAGE_SECONDS`` (default 5; 60 is the full-size run), and at least until the gateway
has noticed it (a hung node is noticed only when the RPC client's timeouts and retries run out; the time
it took is reported as ``detected_after_seconds``). ``catch_up_seconds`` runs from the node's return to
the moment the watcher has its tip and every invoice its state.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from embit import bip39

from sandbox.devnets.bitcoin import REGTEST_HRP, BitcoinDevnet
from sandbox.devnets.ethereum import EthereumDevnet
from tests.conftest import Gateway, GatewayFactory
from tests.integration.settlement_helpers import eventually, invoice_body, method, wait_state
from tests.integration.test_bitcoin_settlement import LARGE as BTC_LARGE
from tests.integration.test_bitcoin_settlement import MEDIUM as BTC_MEDIUM
from tests.integration.test_bitcoin_settlement import SMALL as BTC_SMALL
from tests.integration.test_bitcoin_settlement import btc_method, devnet_env, rpc_of
from tests.integration.test_bitcoin_settlement import wait_tip as wait_btc_tip
from tests.integration.test_ethereum_settlement import LARGE as ETH_LARGE
from tests.integration.test_ethereum_settlement import MEDIUM as ETH_MEDIUM
from tests.integration.test_ethereum_settlement import anvil_env
from tests.integration.test_ethereum_settlement import wait_tip as wait_eth_tip
from tests.reliability.fault_checks import (
    assert_each_paid_once,
    chain_up_metric,
    env_number,
    readiness,
    report,
)
from tests.reliability.tcp_proxy import ProxyMode, TcpProxy
from wallets.bitcoin import BitcoinWallet
from wallets.ethereum import EthereumWallet

pytestmark = pytest.mark.integration

OUTAGE_SECONDS = env_number("CRYPTOCITY_FAULT_OUTAGE_SECONDS", 5.0)
# The watcher's backoff after failed polls doubles up to 30 s (watcher.py), so a long outage may be
# followed by up to that long a wait before the next poll: the catch-up allowance covers it.
CATCH_UP_LIMIT = 60.0
# Timeouts a local node deserves (the defaults, 10 s and 3 retries, are for remote nodes): a hung node is
# then reported within seconds. The ETH client's own retries (web3's, 5 attempts) come on top.
BTC_RPC = {"CRYPTOCITY_BITCOIN__RPC__TIMEOUT_SECONDS": "1", "CRYPTOCITY_BITCOIN__RPC__RETRIES": "1"}
ETH_RPC = {"CRYPTOCITY_ETHEREUM__RPC__TIMEOUT_SECONDS": "1"}
METHODS = ["drop", "sigstop"]


class Outage:
    """Starts and ends one outage of one node, by proxy or by signal, and times what the gateway saw."""

    def __init__(self, how: str, proxy: TcpProxy, pid: int | None) -> None:
        assert pid is not None
        self.how, self._proxy, self._pid = how, proxy, pid

    def begin(self) -> None:
        if self.how == "drop":
            self._proxy.set_mode(ProxyMode.DROP)
        else:
            os.kill(self._pid, signal.SIGSTOP)

    def end(self) -> None:
        if self.how == "drop":
            self._proxy.set_mode(ProxyMode.FORWARD)
        else:
            os.kill(self._pid, signal.SIGCONT)


async def hold_outage(
    gateway: Gateway, chain: str, outage: Outage, during: Callable[[], Awaitable[None]]
) -> float:
    """Begin the outage, run ``during`` (payments and blocks, when the node can take them), keep the node
    out for OUTAGE_SECONDS and until /readyz and /metrics say so; end it. How long the gateway took to
    notice, in seconds."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    outage.begin()
    try:
        await during()
        detected: float | None = None
        while detected is None or loop.time() - started < OUTAGE_SECONDS:
            status, body = await readiness(gateway)
            if detected is None and status == 503 and body["checks"][chain].startswith("unavailable"):
                assert await chain_up_metric(gateway, chain) == 0
                detected = loop.time() - started
            assert loop.time() - started < OUTAGE_SECONDS + 60, f"{chain} outage never reported by /readyz"
            await asyncio.sleep(0.1)
    finally:
        outage.end()
    assert detected is not None
    return detected


async def caught_up(
    gateway: Gateway, expected: dict[str, str], at_tip: Callable[[], Awaitable[None]]
) -> None:
    """Until every invoice has its expected status and the watcher the node's tip."""

    async def states_reached() -> bool:
        for invoice_id, status in expected.items():
            if (await invoice_body(gateway, invoice_id))["status"] != status:
                return False
        return True

    await eventually(states_reached, CATCH_UP_LIMIT)
    await at_tip()


async def healthy_again(gateway: Gateway, chain: str) -> None:
    async def check() -> bool:
        status, body = await readiness(gateway)
        return status == 200 and body["checks"][chain] == "ok"

    await eventually(check, CATCH_UP_LIMIT)
    assert await chain_up_metric(gateway, chain) == 1


async def assert_blocks_are_the_nodes(
    gateway: Gateway, chain: str, node_hash: Callable[[int], Awaitable[str]]
) -> None:
    """Every mined payment is stored with the block the node has at its height (none from a stale view)."""
    rows = await gateway.store.read(
        lambda tx: tx.fetchall(
            "SELECT block_height, block_hash FROM payments WHERE chain = ? AND block_height IS NOT NULL",
            (chain,),
        )
    )
    assert rows
    for row in rows:
        assert await node_hash(int(row["block_height"])) == row["block_hash"]


# -- Bitcoin ------------------------------------------------------------------------------------------


@pytest.fixture
async def bitcoin(tmp_path: Path) -> AsyncIterator[tuple[BitcoinDevnet, BitcoinWallet, TcpProxy]]:
    async with BitcoinDevnet(log_path=tmp_path / "bcoin.log") as node, TcpProxy(node.port) as proxy:
        wallet = BitcoinWallet.from_mnemonic(bip39.mnemonic_from_bytes(os.urandom(16)), REGTEST_HRP)
        await node.fund(wallet)
        try:
            yield node, wallet, proxy
        finally:
            if node.pid is not None:  # never leave a stopped node behind (its SIGTERM would wait)
                os.kill(node.pid, signal.SIGCONT)


@pytest.mark.parametrize("how", METHODS)
async def test_bitcoin_watcher_catches_up_after_an_outage(
    make_gateway: GatewayFactory, bitcoin: tuple[BitcoinDevnet, BitcoinWallet, TcpProxy], how: str
) -> None:
    devnet, wallet, proxy = bitcoin
    rpc = rpc_of(devnet)
    miner = wallet.address(0)
    gateway = await make_gateway(
        **{**devnet_env(devnet), **BTC_RPC, "CRYPTOCITY_BITCOIN__RPC__URL": proxy.url}
    )
    await wait_btc_tip(gateway, devnet)
    early = await gateway.create_invoice(BTC_MEDIUM, assets=["BTC"])  # seen in the mempool before the outage
    await wallet.pay_uri(rpc, btc_method(early)["uri"])
    await wait_state(gateway, early["id"], "processing")
    small, medium, large, pending = [
        await gateway.create_invoice(amount, assets=["BTC"])
        for amount in (BTC_SMALL, BTC_MEDIUM, BTC_LARGE, BTC_MEDIUM)
    ]
    invoices = [early, small, medium, large, pending]
    await asyncio.sleep(0.5)  # the watcher has read the new addresses
    expected = {
        early["id"]: "settled",
        small["id"]: "settled",
        medium["id"]: "settled",
        large["id"]: "settled",
    }

    async def pay_and_mine() -> None:
        await devnet.mine(1, miner)  # the early payment is mined
        await wallet.pay_uri(rpc, btc_method(small)["uri"])  # a 0-confirmation invoice
        await wallet.pay_uri(rpc, btc_method(medium)["uri"])
        await devnet.mine(1, miner)
        await wallet.pay_uri(rpc, btc_method(large)["uri"])  # 3 confirmations by the policy
        await devnet.mine(3, miner)
        await wallet.pay_uri(rpc, btc_method(pending)["uri"])  # still in the mempool when the node is back

    async def nothing() -> None:
        return None

    if how == "drop":
        during, after = pay_and_mine, nothing
        expected[pending["id"]] = "processing"
    else:  # a stopped node takes nothing: pay and mine right before, mine more right after
        await pay_and_mine()
        await devnet.mine(1, miner)

        async def mine_after() -> None:
            await devnet.mine(2, miner)

        during, after = nothing, mine_after
        expected[pending["id"]] = "settled"
    detected = await hold_outage(gateway, "bitcoin", Outage(how, proxy, devnet.pid), during)
    resumed = asyncio.get_running_loop().time()
    await after()
    await caught_up(gateway, expected, lambda: wait_btc_tip(gateway, devnet))
    catch_up = asyncio.get_running_loop().time() - resumed
    await healthy_again(gateway, "bitcoin")
    if how == "drop":
        await devnet.mine(1, miner)
        await wait_state(gateway, pending["id"], "settled")

    await assert_each_paid_once(gateway, {i["id"]: btc_method(i)["amount_due_minor"] for i in invoices})
    await assert_blocks_are_the_nodes(gateway, "bitcoin", rpc.block_hash)
    for invoice in invoices:
        body = await invoice_body(gateway, invoice["id"])
        assert (body["status"], body["flags"]) == ("settled", []), body
    report(
        f"node_outage.bitcoin.{how}",
        outage_seconds=OUTAGE_SECONDS,
        detected_after_seconds=round(detected, 2),
        catch_up_seconds=round(catch_up, 2),
    )


# -- Ethereum -----------------------------------------------------------------------------------------


@pytest.fixture
async def ethereum(tmp_path: Path) -> AsyncIterator[tuple[EthereumDevnet, EthereumWallet, TcpProxy]]:
    async with EthereumDevnet(log_path=tmp_path / "anvil.log") as node, TcpProxy(node.port) as proxy:
        resident = EthereumWallet.from_private_key(node.accounts[1].private_key)
        await node.mint(resident.address, 10**12)
        try:
            yield node, resident, proxy
        finally:
            if node.pid is not None:
                os.kill(node.pid, signal.SIGCONT)


@pytest.mark.parametrize("how", METHODS)
async def test_ethereum_watcher_catches_up_after_an_outage(
    make_gateway: GatewayFactory, ethereum: tuple[EthereumDevnet, EthereumWallet, TcpProxy], how: str
) -> None:
    devnet, resident, proxy = ethereum
    w3 = devnet.w3
    gateway = await make_gateway(
        **{**anvil_env(devnet), **ETH_RPC, "CRYPTOCITY_ETHEREUM__RPC__URL": proxy.url}
    )
    await wait_eth_tip(gateway, devnet)
    plan: list[tuple[str, str]] = [
        (ETH_MEDIUM, "ETH"),
        (ETH_MEDIUM, "USDT"),
        (ETH_LARGE, "ETH"),
        (ETH_LARGE, "USDT"),
    ]
    invoices = [await gateway.create_invoice(amount, assets=[asset]) for amount, asset in plan]
    assets = {invoice["id"]: asset for invoice, (_, asset) in zip(invoices, plan, strict=True)}
    await asyncio.sleep(0.5)

    async def pay_all() -> None:
        for invoice in invoices:
            await resident.pay_uri(
                w3, method(invoice, assets[invoice["id"]])["uri"]
            )  # one block each (automine)

    async def six_deep() -> None:
        await devnet.mine(5)  # the large invoices' 6 confirmations

    async def nothing() -> None:
        return None

    if how == "drop":

        async def during() -> None:
            await pay_all()
            await six_deep()

        after = nothing
    else:
        await pay_all()
        during, after = nothing, six_deep
    detected = await hold_outage(gateway, "ethereum", Outage(how, proxy, devnet.pid), during)
    resumed = asyncio.get_running_loop().time()
    await after()
    await caught_up(gateway, {i["id"]: "settled" for i in invoices}, lambda: wait_eth_tip(gateway, devnet))
    catch_up = asyncio.get_running_loop().time() - resumed
    await healthy_again(gateway, "ethereum")

    await assert_each_paid_once(
        gateway, {i["id"]: method(i, assets[i["id"]])["amount_due_minor"] for i in invoices}, asset_of=assets
    )
    await assert_blocks_are_the_nodes(gateway, "ethereum", devnet.block_hash)
    for invoice in invoices:
        body = await invoice_body(gateway, invoice["id"])
        assert (body["status"], body["flags"]) == ("settled", []), body
    report(
        f"node_outage.ethereum.{how}",
        outage_seconds=OUTAGE_SECONDS,
        detected_after_seconds=round(detected, 2),
        catch_up_seconds=round(catch_up, 2),
    )
