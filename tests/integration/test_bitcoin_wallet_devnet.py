"""The resident wallet and real reorgs against a real bcoin regtest node.

Each test starts its own node, mines 432 blocks to the resident's first address (segwit active, 333 mature
coinbases) and scans them. Reorgs are made the way a network makes them: competing blocks built locally and
submitted with ``submitblock`` (sandbox.devnets.bitcoin_reorg), never ``invalidateblock``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from bitcoin.core import b2lx

from gateway.chains.bitcoin_blocks import parse_block, parse_transaction, signals_rbf, transaction_facts
from gateway.chains.bitcoin_rpc import BitcoinRpc, RpcError
from gateway.payment_uri import Bip21Request, build_bip21
from sandbox.devnets.bitcoin import REGTEST_HRP, SEGWIT_HEIGHT, BitcoinDevnet
from sandbox.devnets.bitcoin_reorg import COIN
from sandbox.devnets.process import DevnetError
from wallets.bitcoin import BitcoinWallet, PaymentRejected

pytestmark = pytest.mark.integration

RESIDENT = "abandon " * 11 + "about"
SHOP = "legal winner thank year wave sausage worth useful legal winner thank yellow"


@dataclass
class Net:
    devnet: BitcoinDevnet
    rpc: BitcoinRpc
    resident: BitcoinWallet
    shop: BitcoinWallet


@pytest.fixture
async def net(tmp_path: Path) -> AsyncIterator[Net]:
    async with BitcoinDevnet(log_path=tmp_path / "bcoin.log") as devnet:
        assert devnet.rpc is not None
        resident = BitcoinWallet.from_mnemonic(RESIDENT, REGTEST_HRP)
        shop = BitcoinWallet.from_mnemonic(SHOP, REGTEST_HRP)
        await devnet.fund(resident)
        await shop.scan(devnet.rpc)
        assert resident.tip_height == SEGWIT_HEIGHT
        yield Net(devnet, devnet.rpc, resident, shop)


def coins(wallet: BitcoinWallet) -> list[tuple[str, int, int | None]]:
    return [(str(c.outpoint), c.amount_sat, c.height) for c in wallet.utxos()]


async def restored_coins(rpc: BitcoinRpc, mnemonic: str) -> list[tuple[str, int, int | None]]:
    """The coins a wallet restored from ``mnemonic`` finds by scanning the whole main chain."""
    wallet = BitcoinWallet.from_mnemonic(mnemonic, REGTEST_HRP)
    await wallet.scan(rpc)
    return coins(wallet)


async def settled_mempool(rpc: BitcoinRpc) -> set[str]:
    """The mempool once it stops changing: bcoin updates it after a block or reorg asynchronously (the
    chain's connect/disconnect handlers are not awaited), so right after submitblock or generatetoaddress
    it may still show the state before."""
    previous, stable = None, 0
    while stable < 3:
        await asyncio.sleep(0.05)
        current = set(await rpc.mempool_txids())
        stable = stable + 1 if current == previous else 0
        previous = current
    assert previous is not None
    return previous


async def main_chain_txids(rpc: BitcoinRpc, from_height: int) -> set[str]:
    txids: set[str] = set()
    for height in range(from_height, await rpc.block_count() + 1):
        block = parse_block(await rpc.raw_block(await rpc.block_hash(height)))
        txids.update(b2lx(tx.GetTxid()) for tx in block.vtx)
    return txids


async def test_pays_a_bip21_request_and_sees_its_change_after_mining(net: Net) -> None:
    rpc, resident, shop = net.rpc, net.resident, net.shop
    # mature coinbases: heights 1-149 at 50 BTC, 150-299 at 25 BTC, 300-333 at 12.5 BTC (regtest halvings)
    assert resident.balance() == (149 * 50 + 150 * 25) * COIN + 34 * 1_250_000_000
    uri = build_bip21(Bip21Request(shop.address(0), 123_456, label="Alatau Coffee"))
    payment = await resident.pay_uri(rpc, uri)
    entry = await rpc.mempool_entry(payment.txid)
    assert entry is not None and entry["descendantfees"] == payment.fee_sat  # bcoin: integer satoshi here
    assert int(entry["size"]) <= payment.vsize  # bcoin's "size" is the vsize
    (spent,) = payment.inputs
    assert spent.coinbase and spent.amount_sat == 1_250_000_000  # the smallest coinbase that covers it
    # what the gateway's watcher extracts: the shop's output, and the resident as payer
    facts = transaction_facts(
        parse_transaction(await rpc.raw_transaction(payment.txid)), {shop.script_pubkey(0): "inv"}
    )
    assert facts is not None and [(m.watch, m.amount_sat) for m in facts.matches] == [("inv", 123_456)]
    assert facts.payer_scripts == (spent.script_pubkey,) and not facts.rbf_signalling

    await net.devnet.mine(1, shop.address(19))
    report = await resident.scan(rpc)
    assert (report.connected, report.disconnected, report.tip_height) == (1, 0, SEGWIT_HEIGHT + 1)
    assert resident.utxo(spent.outpoint) is None
    assert payment.change is not None
    change = resident.utxo(payment.change.outpoint)
    assert change is not None and change.height == SEGWIT_HEIGHT + 1 and change.spent_by is None
    assert change.amount_sat == spent.amount_sat - 123_456 - payment.fee_sat
    await shop.scan(rpc)
    assert [c.amount_sat for c in shop.utxos() if not c.coinbase] == [123_456]
    assert coins(resident) == await restored_coins(rpc, RESIDENT)


async def test_double_spends_are_refused_by_the_mempool_and_raise_payment_rejected(net: Net) -> None:
    rpc, resident, shop = net.rpc, net.resident, net.shop
    payment = await resident.pay(rpc, shop.address(0), 50_000, rbf=True)
    assert await rpc.mempool_entry(payment.txid) is not None
    assert signals_rbf(parse_transaction(await rpc.raw_transaction(payment.txid)))  # bcoin keeps nSequence

    # bcoin answers the txid of a double spend, a higher-fee one included (no RBF), and drops it
    conflict = resident.build_conflicting(payment, fee_rate_sat_vb=10)
    assert set(conflict.spent_outpoints) == set(payment.spent_outpoints)
    assert await rpc.send_raw_transaction(conflict.raw) == conflict.txid
    with pytest.raises(PaymentRejected) as caught:
        await resident.broadcast(rpc, conflict)
    assert caught.value.txid == conflict.txid and conflict.txid in str(caught.value)
    assert await rpc.mempool_txids() == [payment.txid]  # the original stays

    # a second copy of the wallet, unaware of the payment, picks the same coin: the pay call raises
    twin = BitcoinWallet.from_mnemonic(RESIDENT, REGTEST_HRP)
    await twin.scan(rpc)
    balance = twin.balance()
    with pytest.raises(PaymentRejected) as caught:
        await twin.pay(rpc, shop.address(1), 70_000)
    assert caught.value.payment.spent_outpoints == payment.spent_outpoints
    assert await rpc.mempool_entry(caught.value.txid) is None
    assert twin.balance() == balance and twin.pending() == []  # its coins were released
    assert await rpc.mempool_txids() == [payment.txid]


async def test_reorgs_of_depth_1_and_3_replace_the_main_chain(net: Net) -> None:
    rpc, devnet, resident, shop = net.rpc, net.devnet, net.resident, net.shop
    for depth in (1, 3):
        tip = await rpc.block_count()
        fork_hash = await rpc.block_hash(tip - depth)
        old = [await rpc.block_hash(h) for h in range(tip - depth + 1, tip + 1)]
        await resident.scan(rpc)
        started = time.monotonic()
        branch = await devnet.reorg(depth, coinbase_address=shop.address(0))
        assert time.monotonic() - started < 5
        assert len(branch) == depth + 1
        assert await rpc.block_count() == tip + 1 and await rpc.best_block_hash() == branch[-1]
        assert await rpc.block_hash(tip - depth) == fork_hash
        for offset, stale in enumerate(old):
            current = await rpc.block_hash(tip - depth + 1 + offset)
            assert current == branch[offset] != stale
            # devnets.md: a stale block still answers with positive confirmations
            assert int((await rpc.block_header(stale))["confirmations"]) > 0
        report = await resident.scan(rpc)
        assert (report.disconnected, report.connected, report.rescanned) == (depth, depth + 1, False)
        assert report.tip_hash == branch[-1]
        assert coins(resident) == await restored_coins(rpc, RESIDENT)
    # blocks 432 and then 431 paid the resident and were replaced by blocks paying the shop
    assert len(resident.utxos()) == SEGWIT_HEIGHT - 2
    with pytest.raises(DevnetError):
        await devnet.reorg(10_000)


async def test_a_double_spend_in_the_competing_branch_wins(net: Net) -> None:
    rpc, devnet, resident, shop = net.rpc, net.devnet, net.resident, net.shop
    # 1. the payment is mined, then a branch with its double spend replaces that block
    payment = await resident.pay(rpc, shop.address(0), 80_000)
    await devnet.mine(1, shop.address(19))
    await resident.scan(rpc)
    height = await rpc.block_count()
    assert payment.txid in await main_chain_txids(rpc, height)
    conflict = resident.build_conflicting(payment)
    branch = await devnet.reorg(1, txs_in_branch=[conflict.raw])
    in_chain = await main_chain_txids(rpc, height - 1)
    assert conflict.txid in in_chain and payment.txid not in in_chain
    confirmed = parse_block(await rpc.raw_block(branch[0]))
    assert conflict.txid in {b2lx(tx.GetTxid()) for tx in confirmed.vtx}
    assert payment.txid not in await settled_mempool(rpc)
    with pytest.raises(RpcError):
        await rpc.raw_transaction(payment.txid)  # gone from the node's transaction index as well
    report = await resident.scan(rpc)
    assert report.disconnected == 1
    assert payment.change is not None and resident.utxo(payment.change.outpoint) is None
    assert conflict.change is not None
    won = resident.utxo(conflict.change.outpoint)
    assert won is not None and won.height == height
    assert resident.pending() == []
    assert coins(resident) == await restored_coins(rpc, RESIDENT)

    # 2. a payment still in the mempool loses to a double spend in a competing branch
    waiting = await resident.pay(rpc, shop.address(1), 90_000)
    assert await rpc.mempool_entry(waiting.txid) is not None
    rival = resident.build_conflicting(waiting)
    await devnet.reorg(1, txs_in_branch=[rival.raw])
    assert waiting.txid not in await settled_mempool(rpc)
    assert rival.txid in await main_chain_txids(rpc, height)
    await resident.scan(rpc)
    assert rival.change is not None and resident.utxo(rival.change.outpoint) is not None
    assert waiting.change is not None and resident.utxo(waiting.change.outpoint) is None
    assert all(c.spent_by is None for c in resident.utxos()) and resident.pending() == []
    assert coins(resident) == await restored_coins(rpc, RESIDENT)
    await shop.scan(rpc)
    assert [c.amount_sat for c in shop.utxos() if not c.coinbase] == []  # neither payment reached the shop


async def test_200_payments_from_distinct_coins_are_accepted_and_mined_in_one_block(net: Net) -> None:
    rpc, devnet, resident, shop = net.rpc, net.devnet, net.resident, net.shop
    fan = await resident.fan_out(rpc, 200, 100_000)
    await devnet.mine(1, shop.address(19))
    await resident.scan(rpc)
    assert all(resident.utxo(c.outpoint) is not None for c in fan.own_outputs)

    started = time.monotonic()
    payments = [await resident.pay(rpc, shop.address(i % 10), 50_000) for i in range(200)]
    elapsed = time.monotonic() - started
    assert len({p.spent_outpoints for p in payments}) == 200
    assert {p.spent_outpoints[0] for p in payments} <= {c.outpoint for c in fan.own_outputs}
    assert set(await rpc.mempool_txids()) == {p.txid for p in payments}

    (block_hash,) = await devnet.mine(1, shop.address(19))
    block = parse_block(await rpc.raw_block(block_hash))
    assert {b2lx(tx.GetTxid()) for tx in block.vtx[1:]} == {p.txid for p in payments}
    assert await settled_mempool(rpc) == set()
    await resident.scan(rpc)
    await shop.scan(rpc)
    assert sum(c.amount_sat for c in shop.utxos() if not c.coinbase) == 200 * 50_000
    assert resident.pending() == []
    assert coins(resident) == await restored_coins(rpc, RESIDENT)
    assert elapsed < 30, f"200 payments took {elapsed:.1f} s"
