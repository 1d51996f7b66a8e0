"""Reorgs of every depth from 1 to 6 on both chains, each orphaning two payments: one mined again in the new
branch, one gone for good. The invoices and their stored payments must follow the lifecycle exactly.

Both invoices are LARGE, so the policy wants 3 confirmations in BTC and 6 in ETH, and the depths cross
that line: a reorg shallower than it catches both invoices processing, a deeper one catches them settled.
The orphaned payments are mined together in the first block above the fork point; the competing branch
(bcoin: built and submitted, sandbox/devnets/bitcoin.py; anvil: ``anvil_reorg``) carries the first payment
again in its last block, so it comes back with a single confirmation, and leaves the second out (its
coinbase-funded inputs keep it out of bcoin's mempool; anvil drops reorged transactions). What
docs/lifecycle.md says must happen:

| before the reorg | payment mined again (1 confirmation) | payment gone |
|---|---|---|
| processing | processing, then settled once confirmed again | new, nothing counted |
| settled | processing + ``reorged``, then settled + ``reorged`` | reversed, nothing counted |

so a reorg as deep as the confirmation policy undoes settled invoices: that is the expected behaviour, told
to the merchant by ``invoice.reorged`` / ``invoice.reversed`` webhooks. Each payment stays one row (no double
count), the mined-again one with the new branch's block, and ``payment.detected`` is written once.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from embit import bip39

from sandbox.devnets.bitcoin import REGTEST_HRP, BitcoinDevnet
from sandbox.devnets.ethereum import EthereumDevnet
from tests.conftest import Gateway, GatewayFactory
from tests.integration.settlement_helpers import (
    confirmations_are,
    drop_reasons,
    eventually,
    invoice_body,
    method,
    payment_rows,
    wait_state,
)
from tests.integration.test_bitcoin_settlement import LARGE as BTC_LARGE
from tests.integration.test_bitcoin_settlement import btc_method, devnet_env, rpc_of
from tests.integration.test_bitcoin_settlement import wait_tip as wait_btc_tip
from tests.integration.test_ethereum_settlement import LARGE as ETH_LARGE
from tests.integration.test_ethereum_settlement import anvil_env
from tests.integration.test_ethereum_settlement import wait_tip as wait_eth_tip
from tests.reliability.fault_checks import event_types
from wallets.bitcoin import BitcoinWallet
from wallets.ethereum import EthereumWallet

pytestmark = pytest.mark.integration

DEPTHS = list(range(1, 7))
BTC_REQUIRED = 3  # confirmations config.toml asks of a LARGE BTC invoice
ETH_REQUIRED = 6  # ... and of a LARGE ETH or USDT invoice


@dataclass(frozen=True, slots=True)
class Expected:
    """What the lifecycle must make of a reorg of ``depth`` blocks under a ``required``-confirmation policy."""

    depth: int
    required: int

    @property
    def settled_before(self) -> bool:
        return self.depth >= self.required

    @property
    def before(self) -> str:
        return "settled" if self.settled_before else "processing"

    @property
    def flags_after(self) -> list[str]:
        return ["reorged"] if self.settled_before else []

    @property
    def gone(self) -> str:
        return "reversed" if self.settled_before else "new"

    def events_of_the_gone(self) -> list[str]:
        return ["payment.dropped", "invoice.reversed"] if self.settled_before else ["payment.dropped"]

    def events_of_the_mined_again(self) -> list[str]:
        """Written for the mined-again payment from the reorg until it settles again."""
        if self.settled_before:
            return ["invoice.processing", "invoice.reorged", "payment.confirmed", "invoice.settled"]
        return ["payment.confirmed", "invoice.settled"]


async def check_outcome(
    gateway: Gateway,
    expected: Expected,
    mined_again: dict[str, Any],
    gone: dict[str, Any],
    events_before: dict[str, int],
    amounts: dict[str, int],
) -> None:
    """The invoices' states, stored payments and outbox events once the mined-again payment settled."""
    body = await invoice_body(gateway, gone["id"])
    assert (body["status"], body["flags"], body["amount_paid_tiyn"]) == (expected.gone, [], 0), body
    assert (await event_types(gateway, gone["id"]))[
        events_before[gone["id"]] :
    ] == expected.events_of_the_gone()
    assert await drop_reasons(gateway, gone["id"]) == ["reorged_out"]
    [row] = await payment_rows(gateway, gone["id"])
    assert row["status"] == "dropped" and int(row["amount_minor"]) == amounts[gone["id"]]

    body = await invoice_body(gateway, mined_again["id"])
    assert (body["status"], body["flags"]) == ("settled", expected.flags_after), body
    assert body["amount_paid_tiyn"] > 0
    types = await event_types(gateway, mined_again["id"])
    assert types[events_before[mined_again["id"]] :] == expected.events_of_the_mined_again()
    assert types.count("payment.detected") == 1
    [row] = await payment_rows(gateway, mined_again["id"])
    assert row["status"] == "accepted" and int(row["amount_minor"]) == amounts[mined_again["id"]]
    assert row["confirmations"] == expected.required


async def block_of(gateway: Gateway, invoice_id: str) -> tuple[int, str]:
    row = await gateway.store.read(
        lambda tx: tx.fetchone(
            "SELECT block_height, block_hash FROM payments WHERE invoice_id = ?", (invoice_id,)
        )
    )
    assert row is not None and row["block_height"] is not None
    return int(row["block_height"]), str(row["block_hash"])


async def counts(gateway: Gateway, *invoices: dict[str, Any]) -> dict[str, int]:
    return {i["id"]: len(await event_types(gateway, i["id"])) for i in invoices}


# -- Bitcoin ------------------------------------------------------------------------------------------


@pytest.fixture
async def bitcoin(tmp_path: Path) -> AsyncIterator[tuple[BitcoinDevnet, BitcoinWallet]]:
    async with BitcoinDevnet(log_path=tmp_path / "bcoin.log") as node:
        wallet = BitcoinWallet.from_mnemonic(bip39.mnemonic_from_bytes(os.urandom(16)), REGTEST_HRP)
        await node.fund(wallet)
        yield node, wallet


@pytest.mark.parametrize("depth", DEPTHS)
async def test_bitcoin_reorg_retracts_the_gone_payment_and_recounts_the_mined_again_one(
    make_gateway: GatewayFactory, bitcoin: tuple[BitcoinDevnet, BitcoinWallet], depth: int
) -> None:
    devnet, wallet = bitcoin
    rpc = rpc_of(devnet)
    miner = wallet.address(0)
    expected = Expected(depth, BTC_REQUIRED)
    gateway = await make_gateway(**devnet_env(devnet))
    await wait_btc_tip(gateway, devnet)
    mined_again = await gateway.create_invoice(BTC_LARGE, assets=["BTC"])
    gone = await gateway.create_invoice(BTC_LARGE, assets=["BTC"])
    amounts = {i["id"]: btc_method(i)["amount_due_minor"] for i in (mined_again, gone)}
    back = await wallet.pay_uri(rpc, btc_method(mined_again)["uri"])
    lost = await wallet.pay_uri(rpc, btc_method(gone)["uri"])
    await devnet.mine(depth, miner)  # both in the first of the blocks the reorg will orphan
    for invoice in (mined_again, gone):
        await eventually(lambda i=invoice: confirmations_are(gateway, i["id"], depth))
        await wait_state(gateway, invoice["id"], expected.before, [])
    orphaned = await block_of(gateway, mined_again["id"])
    before = await counts(gateway, mined_again, gone)

    branch = await devnet.reorg(depth, txs_in_branch=[back.raw], txs_at=depth)
    await wait_btc_tip(gateway, devnet)
    await wait_state(gateway, gone["id"], expected.gone)
    await wait_state(gateway, mined_again["id"], "processing", expected.flags_after)
    assert await rpc.mempool_entry(lost.txid) is None  # gone for good, not waiting to be mined again
    assert await block_of(gateway, mined_again["id"]) == (orphaned[0] + depth, branch[-1])
    await devnet.mine(BTC_REQUIRED - 1, miner)
    await wait_state(gateway, mined_again["id"], "settled", expected.flags_after)
    await check_outcome(gateway, expected, mined_again, gone, before, amounts)


# -- Ethereum -----------------------------------------------------------------------------------------


@pytest.fixture
async def ethereum(tmp_path: Path) -> AsyncIterator[tuple[EthereumDevnet, EthereumWallet]]:
    async with EthereumDevnet(log_path=tmp_path / "anvil.log") as node:
        resident = EthereumWallet.from_private_key(node.accounts[1].private_key)
        await node.mint(resident.address, 10**12)
        yield node, resident


@pytest.mark.parametrize("depth", DEPTHS)
async def test_ethereum_reorg_retracts_the_gone_payment_and_recounts_the_mined_again_one(
    make_gateway: GatewayFactory, ethereum: tuple[EthereumDevnet, EthereumWallet], depth: int
) -> None:
    devnet, resident = ethereum
    w3 = devnet.w3
    expected = Expected(depth, ETH_REQUIRED)
    gateway = await make_gateway(**anvil_env(devnet))
    await wait_eth_tip(gateway, devnet)
    mined_again = await gateway.create_invoice(ETH_LARGE, assets=["ETH"])
    gone = await gateway.create_invoice(ETH_LARGE, assets=["USDT"])
    amounts = {mined_again["id"]: method(mined_again, "ETH")["amount_due_minor"]}
    amounts[gone["id"]] = method(gone, "USDT")["amount_due_minor"]
    await devnet.set_automine(False)
    # the one mined again first: the other's nonce follows it, so leaving the other out breaks no order
    back = await resident.pay_uri(w3, method(mined_again, "ETH")["uri"], wait=False)
    await resident.pay_uri(w3, method(gone, "USDT")["uri"], wait=False)
    await devnet.mine(depth)  # both in the first of the blocks the reorg will orphan
    for invoice in (mined_again, gone):
        await eventually(lambda i=invoice: confirmations_are(gateway, i["id"], depth))
        await wait_state(gateway, invoice["id"], expected.before, [])
    orphaned = await block_of(gateway, mined_again["id"])
    before = await counts(gateway, mined_again, gone)

    raw = (await w3.eth.get_raw_transaction(back.tx_hash)).to_0x_hex()
    branch = await devnet.reorg(depth, [(raw, depth - 1)])
    await resident.resync_nonce(w3)
    await wait_eth_tip(gateway, devnet)
    await wait_state(gateway, gone["id"], expected.gone)
    await wait_state(gateway, mined_again["id"], "processing", expected.flags_after)
    assert await block_of(gateway, mined_again["id"]) == (orphaned[0] + depth - 1, branch[-1])
    await devnet.mine(ETH_REQUIRED - 1)
    await wait_state(gateway, mined_again["id"], "settled", expected.flags_after)
    await check_outcome(gateway, expected, mined_again, gone, before, amounts)
