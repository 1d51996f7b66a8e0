"""The resident wallet without a node: derivation, coin selection, fees, signing, scanning and reorgs.

Blocks are built with sandbox.devnets.bitcoin_reorg (the same builder the devnet uses for real reorgs) and
served by a small in-memory node, so scanning, undo and conflict handling run on real serialised blocks.
Signatures are checked with python-bitcoinlib, independently of embit, which made them.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from hashlib import sha256
from typing import Any

import pytest
from bitcoin.core import (
    CBlock,
    COutPoint,
    CTransaction,
    CTxIn,
    CTxOut,
    b2lx,
    lx,
)
from bitcoin.core import scripteval as bitcoin_scripteval
from bitcoin.core.key import CPubKey
from bitcoin.core.script import (
    OP_CHECKSIG,
    OP_DUP,
    OP_EQUALVERIFY,
    OP_HASH160,
    SIGHASH_ALL,
    SIGVERSION_WITNESS_V0,
    CScript,
    SignatureHash,
)
from bitcoin.core.serialize import uint256_from_compact
from embit.bip32 import HDKey

from gateway.addresses import BitcoinAccount
from gateway.chains.bitcoin_blocks import hash160, parse_transaction, signals_rbf
from gateway.chains.bitcoin_rpc import RpcError
from gateway.payment_uri import Bip21Request, build_bip21
from sandbox.devnets.bitcoin_reorg import (
    COIN,
    REGTEST_BITS,
    WITNESS_RESERVED_VALUE,
    BlockBuildError,
    block_subsidy,
    build_block,
    median_time_past,
)
from wallets.bitcoin import (
    CHANGE,
    EXTERNAL,
    P2WPKH_DUST_SAT,
    SEQUENCE_FINAL,
    SEQUENCE_RBF,
    UNDO_DEPTH,
    BitcoinWallet,
    InsufficientFunds,
    Outpoint,
    Payment,
    PaymentRejected,
    Utxo,
    WalletError,
    dust_threshold,
    estimate_vsize,
)

ABANDON = "abandon " * 11 + "about"  # the BIP39/BIP84 test-vector mnemonic
OTHER_MNEMONIC = "legal winner thank year wave sausage worth useful legal winner thank yellow"
# abandon…about's m/84'/1'/0' exported as vpub (the second merchant of tests/conftest.py)
ABANDON_VPUB = "vpub5Y6cjg78GGuNLsaPhmYsiw4gYX3HoQiRBiSwDaBXKUafCt9bNwWQiitDk5VZ5BVxYnQdwoTyXSs2JHRPAgjAvtbBrf8ZhDYe2jWAqvZVnsc"
HRP = "rb"
ELSEWHERE = b"\x00\x14" + b"\x77" * 20  # a P2WPKH script of nobody in these tests


class FakeNode:
    """Just enough of BitcoinRpc for the wallet, over a list of real serialised blocks."""

    def __init__(self) -> None:
        self.hashes = ["00" * 32]  # height 0: a placeholder; wallets here are born at height 1
        self.blocks: dict[str, bytes] = {}
        self.times = [1_700_000_000]
        self.mempool: dict[str, bytes] = {}
        self.accept = True
        self.sent: list[bytes] = []

    @property
    def height(self) -> int:
        return len(self.hashes) - 1

    def mine(self, txs: Sequence[CTransaction | bytes] = (), coinbase_script: bytes = ELSEWHERE) -> str:
        height = len(self.hashes)
        time = max(self.times[-1] + 1, median_time_past(self.times) + 1)
        raw = build_block(self.hashes[-1], height, time, list(txs), coinbase_script)
        block_hash = str(b2lx(CBlock.deserialize(raw).GetHash()))
        self.hashes.append(block_hash)
        self.times.append(time)
        self.blocks[block_hash] = raw
        for tx in txs:
            parsed = tx if isinstance(tx, CTransaction) else CTransaction.deserialize(tx)
            self.mempool.pop(b2lx(parsed.GetTxid()), None)
        return block_hash

    def mine_empty(self, blocks: int) -> None:
        for _ in range(blocks):
            self.mine()

    def truncate(self, height: int) -> None:
        """Forget blocks above ``height`` (a competing branch is then mined on top)."""
        del self.hashes[height + 1 :]
        del self.times[height + 1 :]

    async def block_count(self) -> int:
        return self.height

    async def block_hash(self, height: int) -> str:
        if not 0 <= height <= self.height:
            raise RpcError("getblockhash", -8, "Block height out of range.")
        return self.hashes[height]

    async def batch(self, calls: Sequence[tuple[str, Sequence[Any]]]) -> list[Any]:
        answers: list[Any] = []
        for method, params in calls:
            if method == "getblockhash":
                try:
                    answers.append(await self.block_hash(int(params[0])))
                except RpcError as exc:
                    answers.append(exc)
            elif method == "getblock":
                raw = self.blocks.get(str(params[0]))
                answers.append(raw.hex() if raw else RpcError("getblock", -1, "Block not found."))
            else:
                raise AssertionError(f"unexpected call {method}")
        return answers

    async def send_raw_transaction(self, raw: bytes) -> str:
        self.sent.append(raw)
        txid = str(b2lx(CTransaction.deserialize(raw).GetTxid()))
        if self.accept:
            self.mempool[txid] = raw
        return txid  # like bcoin: the txid even when the mempool refused it

    async def mempool_entry(self, txid: str) -> dict[str, Any] | None:
        return {"size": len(self.mempool[txid])} if txid in self.mempool else None

    async def raw_transaction(self, txid: str) -> bytes:
        if txid in self.mempool:
            return self.mempool[txid]
        raise RpcError("getrawtransaction", -1, "Transaction not found.")


def funding_tx(*outputs: tuple[bytes, int]) -> CTransaction:
    """A transaction paying ``outputs`` from a made-up coin (the wallet does not validate inputs)."""
    prevout = COutPoint(secrets.token_bytes(32), 0)
    return CTransaction([CTxIn(prevout)], [CTxOut(value, CScript(script)) for script, value in outputs])


def wallet(mnemonic: str = ABANDON, **options: Any) -> BitcoinWallet:
    return BitcoinWallet.from_mnemonic(mnemonic, HRP, acceptance_wait_seconds=0.05, **options)


async def funded(amounts: Sequence[int], **options: Any) -> tuple[BitcoinWallet, FakeNode]:
    """A wallet holding one confirmed (non-coinbase) coin per amount, on receive indexes 0, 1, …"""
    w, node = wallet(**options), FakeNode()
    node.mine([funding_tx(*[(w.script_pubkey(i), a) for i, a in enumerate(amounts)])])
    await w.scan(node, from_height=1)
    return w, node


def state(w: BitcoinWallet) -> list[tuple[Outpoint, int, int | None, bool]]:
    return [(c.outpoint, c.amount_sat, c.height, c.coinbase) for c in w.utxos()]


def verify_inputs(payment: Payment) -> CTransaction:
    """Check every input's BIP143 signature with python-bitcoinlib (not embit, which signed it)."""
    tx = CTransaction.deserialize(payment.raw)
    assert b2lx(tx.GetTxid()) == payment.txid
    assert len(tx.vin) == len(payment.inputs) == len(tx.wit.vtxinwit)
    for index, (txin, coin) in enumerate(zip(tx.vin, payment.inputs, strict=True)):
        assert (b2lx(txin.prevout.hash), txin.prevout.n) == (coin.outpoint.txid, coin.outpoint.vout)
        signature, public_key = tx.wit.vtxinwit[index].scriptWitness.stack
        assert signature[-1] == SIGHASH_ALL
        assert coin.script_pubkey == b"\x00\x14" + hash160(public_key)
        script_code = CScript([OP_DUP, OP_HASH160, hash160(public_key), OP_EQUALVERIFY, OP_CHECKSIG])
        digest = SignatureHash(
            script_code, tx, index, SIGHASH_ALL, amount=coin.amount_sat, sigversion=SIGVERSION_WITNESS_V0
        )
        assert CPubKey(public_key).verify(digest, signature[:-1]), f"input {index} has a bad signature"
        # the same signature must not verify for another amount: BIP143 commits to the value spent
        other = SignatureHash(
            script_code, tx, index, SIGHASH_ALL, amount=coin.amount_sat + 1, sigversion=SIGVERSION_WITNESS_V0
        )
        assert not CPubKey(public_key).verify(other, signature[:-1])
    return tx


def actual_vsize(tx: CTransaction) -> int:
    return int((tx.calc_weight() + 3) // 4)


# --- keys and scripts ---------------------------------------------------------------------------------


def test_bip84_test_vectors_and_the_gateways_own_derivation_agree() -> None:
    mainnet = BitcoinWallet.from_mnemonic(ABANDON, "bc", coin_type=0)
    # BIP84's published vectors for the "abandon … about" mnemonic
    assert mainnet.address(0) == "bc1qcr8te4kr609gcawutmrza0j4xv80jy8z306fyu"
    assert mainnet.address(1) == "bc1qnjg0jd8228aq7egyzacy8cys3knf9xvrerkf9g"
    assert mainnet.address(0, chain=CHANGE) == "bc1q8c6fshw2dlwun7ekn9qwf37cu2rn755upcp6el"
    # coin type 1 is what the gateway derives from the account's vpub for invoices
    account, resident = BitcoinAccount(ABANDON_VPUB), wallet()
    for index in range(5):
        assert resident.script_pubkey(index) == account.script_pubkey(index)
        assert resident.address(index) == account.address(index, HRP)
    assert resident.address(0).startswith("rb1q")


def test_scripts_cover_the_gap_of_both_chains_and_change_addresses_are_fresh() -> None:
    w = wallet(gap=5)
    assert sorted(w.scripts.values()) == [(c, i) for c in (EXTERNAL, CHANGE) for i in range(5)]
    first, second = w.next_change_address(), w.next_change_address()
    assert first == w.address(0, chain=CHANGE) and second == w.address(1, chain=CHANGE)
    # handing out change index 1 keeps 5 unused change scripts watched beyond it
    assert max(i for c, i in w.scripts.values() if c == CHANGE) == 6


def test_refuses_bad_mnemonics_prefixes_and_public_keys() -> None:
    with pytest.raises(WalletError, match="mnemonic"):
        wallet("abandon " * 12)  # bad checksum
    with pytest.raises(WalletError, match="out of range"):
        wallet(account=2**31)
    with pytest.raises(WalletError, match="bech32 prefix"):
        BitcoinWallet.from_mnemonic(ABANDON, "RB")
    with pytest.raises(WalletError, match="private key"):
        BitcoinWallet(HDKey.from_seed(bytes(64)).to_public(), HRP)


async def test_a_used_index_near_the_end_extends_the_watched_window() -> None:
    w, node = wallet(gap=5), FakeNode()
    node.mine([funding_tx((w.script_pubkey(4), 10_000))])  # the last watched receive index
    await w.scan(node, from_height=1)
    assert max(i for c, i in w.scripts.values() if c == EXTERNAL) == 9
    # a wallet restored from the mnemonic finds a coin at index 9 too, found only thanks to the extension
    node.mine([funding_tx((w.script_pubkey(9), 20_000))])
    restored = wallet(gap=5)
    await restored.scan(node, from_height=1)
    assert sorted(c.amount_sat for c in restored.utxos()) == [10_000, 20_000]


# --- fees, coin selection, change -----------------------------------------------------------------------


def test_vsize_estimates_of_p2wpkh_transactions() -> None:
    p2wpkh = b"\x00\x14" + bytes(20)
    assert estimate_vsize(1, [p2wpkh]) == 110  # the well-known 1-in-1-out P2WPKH size (109.5 rounded up)
    assert estimate_vsize(1, [p2wpkh, p2wpkh]) == 141
    assert estimate_vsize(2, [p2wpkh, p2wpkh]) == 209
    assert dust_threshold(p2wpkh) == P2WPKH_DUST_SAT == 294
    assert dust_threshold(b"\x00\x20" + bytes(32)) == 330
    assert dust_threshold(b"\x6a\x04test") == 0


@pytest.mark.parametrize("inputs", [1, 2, 3, 5])
async def test_fee_is_the_estimated_vsize_times_the_rate_and_never_under_pays(inputs: int) -> None:
    w, _ = await funded([100_000] * inputs)
    amount = 100_000 * inputs - 50_000  # needs every coin
    payment = w.build_payment(ELSEWHERE, amount, fee_rate_sat_vb=3)
    tx = verify_inputs(payment)
    assert len(payment.inputs) == inputs
    assert payment.fee_sat == payment.vsize * 3
    assert sum(c.amount_sat for c in payment.inputs) - sum(o.nValue for o in tx.vout) == payment.fee_sat
    # each signature is 71 or 72 bytes: the estimate is an upper bound, off by at most a quarter vB per input
    assert 0 <= payment.vsize - actual_vsize(tx) <= (inputs + 3) // 4
    assert payment.fee_sat >= 3 * actual_vsize(tx)


async def test_prefers_the_single_smallest_coin_that_covers_amount_and_fee() -> None:
    w, _ = await funded([10_000, 50_000, 200_000, 1_000_000])
    assert [c.amount_sat for c in w.build_payment(ELSEWHERE, 40_000).inputs] == [50_000]
    assert [c.amount_sat for c in w.build_payment(ELSEWHERE, 150_000).inputs] == [200_000]
    # amount + fee exceeds 50,000 by one satoshi: the next coin up is taken
    fee_1in_1out = estimate_vsize(1, [ELSEWHERE]) * 2
    v, _ = await funded([50_000, 60_000])
    assert [c.amount_sat for c in v.build_payment(ELSEWHERE, 50_000 - fee_1in_1out + 1).inputs] == [60_000]


async def test_without_a_single_covering_coin_accumulates_largest_first() -> None:
    w, _ = await funded([30_000, 40_000, 50_000, 20_000])
    payment = w.build_payment(ELSEWHERE, 85_000)
    assert [c.amount_sat for c in payment.inputs] == [50_000, 40_000]
    verify_inputs(payment)
    assert payment.change is not None
    assert payment.change.amount_sat == 90_000 - 85_000 - payment.fee_sat
    payment = w.build_payment(ELSEWHERE, 45_000)  # 30,000 + 20,000 left
    assert [c.amount_sat for c in payment.inputs] == [30_000, 20_000]
    with pytest.raises(InsufficientFunds):
        w.build_payment(ELSEWHERE, 10_000)  # only unconfirmed change left, and it is 4,582 and 4,582 sat
    assert w.balance() == 0


async def test_change_below_the_dust_limit_is_left_to_the_fee() -> None:
    fee_with_change = estimate_vsize(1, [ELSEWHERE, ELSEWHERE]) * 2
    # change would be exactly the dust limit: kept
    w, _ = await funded([100_000])
    kept = w.build_payment(ELSEWHERE, 100_000 - fee_with_change - 294)
    assert kept.change is not None and kept.change.amount_sat == 294
    assert kept.change.chain == CHANGE and kept.change.height is None
    assert len(kept.outputs) == 2 and kept.fee_sat == fee_with_change
    # one satoshi less of change would be dust: no change output, the remainder pays the fee
    w, _ = await funded([100_000])
    dropped = w.build_payment(ELSEWHERE, 100_000 - fee_with_change - 293)
    tx = verify_inputs(dropped)
    assert dropped.change is None and len(tx.vout) == 1
    assert dropped.fee_sat == fee_with_change + 293
    assert tx.vout[0].nValue == dropped.amount_sat


async def test_dust_and_invalid_outputs_are_refused() -> None:
    w, _ = await funded([100_000])
    with pytest.raises(WalletError, match="dust"):
        w.build_payment(ELSEWHERE, 293)
    with pytest.raises(WalletError, match="positive"):
        w.build_payment(ELSEWHERE, 0)
    with pytest.raises(WalletError, match="another network"):
        w.build_payment("bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080", 1_000)
    with pytest.raises(WalletError, match="fee rate"):
        w.build_payment(ELSEWHERE, 1_000, fee_rate_sat_vb=1.5)  # type: ignore[arg-type]


async def test_rbf_sets_nsequence_on_every_input() -> None:
    w, _ = await funded([30_000, 40_000])
    rbf = w.build_payment(ELSEWHERE, 60_000, rbf=True)
    tx = parse_transaction(rbf.raw)
    assert [txin.nSequence for txin in tx.vin] == [SEQUENCE_RBF, SEQUENCE_RBF]
    assert signals_rbf(tx) and rbf.rbf
    w, _ = await funded([30_000])
    final = parse_transaction(w.build_payment(ELSEWHERE, 10_000).raw)
    assert [txin.nSequence for txin in final.vin] == [SEQUENCE_FINAL]
    assert not signals_rbf(final)


async def test_payments_reserve_coins_and_chain_on_unconfirmed_change_only_as_a_last_resort() -> None:
    w, _ = await funded([1_000_000, 300_000])
    first = w.build_payment(ELSEWHERE, 100_000)
    assert [c.amount_sat for c in first.inputs] == [300_000]
    second = w.build_payment(ELSEWHERE, 100_000)  # the confirmed 1,000,000 before the unconfirmed change
    assert [c.amount_sat for c in second.inputs] == [1_000_000]
    assert first.change is not None and second.change is not None
    third = w.build_payment(ELSEWHERE, 100_000)  # only unconfirmed change is left: the smallest covering
    assert third.spent_outpoints == (first.change.outpoint,)
    assert first.change.index == 0 and second.change.index == 1 and third.change is not None
    assert third.change.index == 2
    assert len({first.spent_outpoints, second.spent_outpoints, third.spent_outpoints}) == 3
    coin = w.utxo(first.change.outpoint)
    assert coin is not None and coin.spent_by == third.txid
    assert w.balance() == 0  # everything confirmed is reserved
    w.release(third)
    coin = w.utxo(first.change.outpoint)
    assert coin is not None and coin.spent_by is None
    assert w.utxo(third.change.outpoint) is None
    verify_inputs(third)


async def test_excluded_coins_are_not_selected() -> None:
    w, _ = await funded([50_000, 60_000])
    smallest = next(c for c in w.utxos() if c.amount_sat == 50_000)
    payment = w.build_payment(ELSEWHERE, 20_000, exclude=[smallest.outpoint])
    assert [c.amount_sat for c in payment.inputs] == [60_000]


async def test_a_conflicting_transaction_spends_the_same_outpoints_back_to_the_wallet() -> None:
    w, _ = await funded([30_000, 40_000])
    payment = w.build_payment(ELSEWHERE, 60_000, rbf=True)
    conflict = w.build_conflicting(payment)
    tx = verify_inputs(conflict)
    assert conflict.txid != payment.txid
    assert set(conflict.spent_outpoints) == set(payment.spent_outpoints)
    assert len(tx.vout) == 1 and conflict.change is not None
    assert w.scripts[bytes(tx.vout[0].scriptPubKey)][0] == CHANGE
    assert conflict.change.outpoint != (payment.change.outpoint if payment.change else None)
    assert conflict.fee_sat == estimate_vsize(2, [conflict.change.script_pubkey]) * 5
    assert tx.vout[0].nValue == 70_000 - conflict.fee_sat
    assert w.utxo(conflict.change.outpoint) is None  # not recorded: the chain decides which one wins


# --- scanning ------------------------------------------------------------------------------------------


async def test_a_mined_payment_confirms_its_change_and_removes_its_coin() -> None:
    w, node = await funded([1_000_000, 300_000])
    first = w.build_payment(ELSEWHERE, 100_000)
    second = w.build_payment(ELSEWHERE, 100_000)
    third = w.build_payment(ELSEWHERE, 50_000)  # spends first's unconfirmed change
    assert first.change is not None and third.spent_outpoints == (first.change.outpoint,)
    node.mine([first.raw])
    report = await w.scan(node)
    assert (report.connected, report.disconnected, report.tip_height) == (1, 0, 2)
    assert all(w.utxo(o) is None for o in first.spent_outpoints)
    change = w.utxo(first.change.outpoint)
    assert change is not None and change.height == 2 and change.spent_by == third.txid  # still reserved
    node.mine([second.raw, third.raw])
    await w.scan(node)
    assert second.change is not None and third.change is not None
    assert {c.outpoint for c in w.utxos()} == {second.change.outpoint, third.change.outpoint}
    assert w.balance() == second.change.amount_sat + third.change.amount_sat
    # a wallet restored from the mnemonic sees the same coins
    restored = wallet()
    await restored.scan(node, from_height=1)
    assert state(restored) == state(w)


async def test_coinbase_needs_100_confirmations() -> None:
    w, node = wallet(), FakeNode()
    node.mine(coinbase_script=w.script_pubkey(0))  # height 1
    node.mine_empty(98)
    await w.scan(node, from_height=1)
    (coin,) = w.utxos()
    assert coin.coinbase and coin.amount_sat == 50 * COIN and coin.confirmations(w.tip_height) == 99
    assert w.balance() == 0
    with pytest.raises(InsufficientFunds):
        w.build_payment(ELSEWHERE, 10_000)
    node.mine()
    await w.scan(node)
    assert coin.confirmations(w.tip_height) == 100 and w.balance() == 50 * COIN
    verify_inputs(w.build_payment(ELSEWHERE, 10_000))


async def test_a_reorg_undoes_stale_blocks_and_applies_the_new_branch() -> None:
    w, node = wallet(), FakeNode()
    node.mine([funding_tx((w.script_pubkey(0), 10_000))])  # 1: stays
    node.mine([funding_tx((w.script_pubkey(1), 20_000))])  # 2: replaced
    node.mine([funding_tx((w.script_pubkey(2), 30_000))])  # 3: replaced
    await w.scan(node, from_height=1)
    payment = w.build_payment(ELSEWHERE, 15_000)  # spends the 20,000 coin of block 2
    node.mine([payment.raw])  # 4: replaced
    await w.scan(node)
    assert payment.change is not None
    assert sorted(c.amount_sat for c in w.utxos()) == sorted([10_000, 30_000, payment.change.amount_sat])
    stale = node.hashes[2:]
    node.truncate(1)
    node.mine([funding_tx((w.script_pubkey(3), 40_000))])
    node.mine()
    node.mine()
    node.mine()
    assert all(node.hashes[h] != stale[h - 2] for h in (2, 3, 4))
    report = await w.scan(node)
    assert (report.disconnected, report.connected, report.tip_height, report.rescanned) == (3, 4, 5, False)
    # the payment left the chain with block 4, and its coin with block 2: neither comes back
    assert sorted(c.amount_sat for c in w.utxos()) == [10_000, 40_000]
    restored = wallet()
    await restored.scan(node, from_height=1)
    assert state(restored) == state(w)


async def test_a_reorg_deeper_than_the_undo_records_rescans_from_birth() -> None:
    w, node = wallet(), FakeNode()
    node.mine([funding_tx((w.script_pubkey(0), 10_000))])
    node.mine_empty(UNDO_DEPTH + 1)
    await w.scan(node, from_height=1)
    node.truncate(0)
    node.mine([funding_tx((w.script_pubkey(1), 20_000))])
    node.mine_empty(UNDO_DEPTH + 2)
    report = await w.scan(node)
    assert report.rescanned and report.disconnected == UNDO_DEPTH
    assert [c.amount_sat for c in w.utxos()] == [20_000]


async def test_a_double_spend_in_a_block_releases_the_losing_payment() -> None:
    w, node = await funded([30_000, 40_000])
    payment = w.build_payment(ELSEWHERE, 60_000)  # both coins
    child = w.build_payment(ELSEWHERE, 5_000)  # only the payment's unconfirmed change is left
    assert payment.change is not None and child.change is not None
    assert child.spent_outpoints == (payment.change.outpoint,)
    assert set(w.pending()) == {payment.txid, child.txid}
    # a double spend of one of the payment's two coins wins in a block
    stolen = payment.inputs[0].outpoint
    thief = CTransaction(
        [CTxIn(COutPoint(lx(stolen.txid), stolen.vout))], [CTxOut(20_000, CScript(ELSEWHERE))]
    )
    node.mine([thief])
    await w.scan(node)
    assert w.utxo(stolen) is None
    released = w.utxo(payment.inputs[1].outpoint)
    assert released is not None and released.spent_by is None  # spendable again
    # the loser's change is gone, and so is the child payment that spent it
    assert w.utxo(payment.change.outpoint) is None and w.utxo(child.change.outpoint) is None
    assert w.pending() == [] and w.balance() == payment.inputs[1].amount_sat


async def test_the_conflicting_transaction_confirming_replaces_the_payment() -> None:
    w, node = await funded([30_000, 40_000])
    payment = w.build_payment(ELSEWHERE, 60_000)
    conflict = w.build_conflicting(payment)
    node.mine([conflict.raw])
    await w.scan(node)
    assert conflict.change is not None
    assert [c.outpoint for c in w.utxos()] == [conflict.change.outpoint]
    assert w.balance() == 70_000 - conflict.fee_sat


# --- broadcasting --------------------------------------------------------------------------------------


async def test_pay_uri_broadcasts_and_checks_the_mempool() -> None:
    w, node = await funded([100_000])
    shop = wallet(OTHER_MNEMONIC)
    uri = build_bip21(Bip21Request(shop.address(0), 12_345, label="Alatau Coffee"))
    payment = await w.pay_uri(node, uri, fee_rate_sat_vb=4)
    assert node.mempool[payment.txid] == payment.raw
    assert payment.outputs[0] == (shop.script_pubkey(0), 12_345) and payment.fee_sat == payment.vsize * 4
    with pytest.raises(WalletError, match="no amount"):
        await w.pay_uri(node, build_bip21(Bip21Request(shop.address(0), None)))


async def test_a_refused_payment_raises_and_releases_its_coins() -> None:
    w, node = await funded([100_000])
    node.accept = False
    with pytest.raises(PaymentRejected) as caught:
        await w.pay(node, wallet(OTHER_MNEMONIC).address(0), 10_000)
    rejected = caught.value.payment
    assert caught.value.txid == rejected.txid and rejected.txid in str(caught.value)
    assert node.sent == [rejected.raw]
    assert w.balance() == 100_000 and all(c.spent_by is None for c in w.utxos())
    assert rejected.change is not None and w.utxo(rejected.change.outpoint) is None
    node.accept = True
    again = await w.pay(node, wallet(OTHER_MNEMONIC).address(0), 10_000)
    assert again.spent_outpoints == rejected.spent_outpoints


async def test_fan_out_makes_many_coins_in_one_transaction() -> None:
    w, node = await funded([10_000_000])
    fan = await w.fan_out(node, 50, 100_000)
    tx = verify_inputs(fan)
    assert len(tx.vout) == 51 and len(fan.own_outputs) == 51  # 50 coins and the change
    assert all(w.scripts[bytes(out.scriptPubKey)][0] == CHANGE for out in tx.vout)
    node.mine([fan.raw])
    await w.scan(node)
    coins = [c for c in w.spendable(include_unconfirmed=False) if c.amount_sat == 100_000]
    assert len(coins) == 50
    payments = [w.build_payment(ELSEWHERE, 50_000) for _ in range(50)]
    assert len({p.spent_outpoints for p in payments}) == 50
    assert all(p.inputs[0].amount_sat == 100_000 for p in payments)


# --- competing blocks ----------------------------------------------------------------------------------


def test_built_blocks_are_valid_regtest_blocks() -> None:
    w = wallet()
    spend = funding_tx((w.script_pubkey(0), 1_000))
    raw = build_block("11" * 32, 500, 1_700_000_000, [spend], w.script_pubkey(1), fees_sat=7)
    block = CBlock.deserialize(raw)
    assert int.from_bytes(block.GetHash(), "little") <= uint256_from_compact(REGTEST_BITS)
    assert block.nBits == REGTEST_BITS and block.nVersion == 0x20000000
    assert b2lx(block.hashPrevBlock) == "11" * 32 and block.nTime == 1_700_000_000
    assert block.hashMerkleRoot == block.calc_merkle_root()
    coinbase = block.vtx[0]
    assert coinbase.is_coinbase() and block.vtx[1].GetTxid() == spend.GetTxid()
    assert coinbase.vin[0].scriptSig[:3] == b"\x02\xf4\x01"  # BIP34: push of 500, little-endian
    assert coinbase.vout[0].nValue == block_subsidy(500) + 7 == 625_000_007  # 3 halvings
    assert list(coinbase.wit.vtxinwit[0].scriptWitness.stack) == [WITNESS_RESERVED_VALUE]
    commitment = coinbase.vout[block.get_witness_commitment_index()].scriptPubKey
    expected = sha256(sha256(block.calc_witness_merkle_root() + WITNESS_RESERVED_VALUE).digest()).digest()
    assert bytes(commitment) == b"\x6a\x24\xaa\x21\xa9\xed" + expected
    # before segwit activation a block must carry no witness data
    legacy = CBlock.deserialize(
        build_block("11" * 32, 5, 1_700_000_000, [], w.script_pubkey(1), segwit=False)
    )
    assert legacy.vtx[0].wit.is_null() and len(legacy.vtx[0].vout) == 1
    assert legacy.vtx[0].vin[0].scriptSig[0] == 0x55  # heights 1-16 are OP_1..OP_16, as in Core
    # two blocks built alike still differ (random coinbase tag), so a competing block never equals the old one
    assert build_block("11" * 32, 5, 1, [], b"\x51", segwit=False) != build_block(
        "11" * 32, 5, 1, [], b"\x51", segwit=False
    )


def test_subsidy_halves_every_150_blocks_and_mtp() -> None:
    assert [block_subsidy(h) for h in (1, 149, 150, 299, 300, 450)] == [
        50 * COIN,
        50 * COIN,
        25 * COIN,
        25 * COIN,
        1_250_000_000,
        625_000_000,
    ]
    assert block_subsidy(150 * 64) == 0
    assert median_time_past([5, 1, 9]) == 5
    assert median_time_past(list(range(100))) == 94  # the median of the last 11
    with pytest.raises(BlockBuildError):
        build_block("11" * 32, 0, 1, [], b"\x51")


def test_python_bitcoinlib_cannot_verify_witness_scripts() -> None:
    """Why verify_inputs checks BIP143 digests itself: VerifyScript in python-bitcoinlib 0.12 has no
    witness support (no SCRIPT_VERIFY_WITNESS flag), so it cannot evaluate a P2WPKH spend."""
    assert not hasattr(bitcoin_scripteval, "SCRIPT_VERIFY_WITNESS")


def test_utxo_maturity_arithmetic() -> None:
    coin = Utxo(Outpoint("aa" * 32, 0), 1, b"", 0, 0, height=10, coinbase=True)
    assert coin.confirmations(108) == 99 and not coin.is_mature(108)
    assert coin.is_mature(109)
    assert Utxo(Outpoint("aa" * 32, 0), 1, b"", 0, 0, height=None).confirmations(5) == 0


async def test_a_block_using_change_indexes_out_of_order_is_found_by_a_restored_wallet() -> None:
    w, node = wallet(gap=3), FakeNode()
    # indexes 0, 3, 6, 9, 12 arrive in reverse order in one block: each is within the gap of the previous
    scripts = [w.script_pubkey(i, chain=CHANGE) for i in (12, 9, 6, 3, 0)]
    node.mine([funding_tx((script, 1_000 + n)) for n, script in enumerate(scripts)])
    await w.scan(node, from_height=1)
    restored = wallet(gap=3)
    await restored.scan(node, from_height=1)
    assert len(restored.utxos()) == 5 and state(restored) == state(w)
    assert restored.next_change_address() == w.address(13, chain=CHANGE)


async def test_acceptance_is_polled_because_bcoin_answers_before_its_mempool_decides() -> None:
    w, node = await funded([100_000])
    shown_after = 3
    queries = 0
    original = node.mempool_entry

    async def late_mempool_entry(txid: str) -> dict[str, Any] | None:
        nonlocal queries
        queries += 1
        return await original(txid) if queries >= shown_after else None

    node.mempool_entry = late_mempool_entry  # type: ignore[method-assign]
    payment = await w.pay(node, ELSEWHERE, 10_000)
    assert queries == shown_after and payment.txid in node.mempool
