"""The Bitcoin chain watcher: follows the node's tip and mempool and reports payments to the invoice service.

It talks to the node only through the JSON-RPC calls Bitcoin Core and bcoin share (bitcoin_rpc.py) and
parses raw blocks and transactions itself (bitcoin_blocks.py), so it runs unchanged against the local bcoin
regtest node and against Bitcoin Core on testnet4 or signet.

One poll (every ``poll_interval_seconds``) is one JSON-RPC batch: the mempool's txids, the best block hash
and the block count. Then:

1. New invoice addresses are added to the watch dict (script → address), read from the store by invoice id,
   whose time prefix makes "created since the last look" an index range scan; so invoices created by any
   process are watched without a restart. This happens after the poll's snapshot of the node was taken, so
   a payment in the snapshot always finds its (earlier committed) address watched.
2. If the best block is not our tip, the chain is synced: walk back from our tip, comparing the stored
   hash of each height with ``getblockhash(height)`` (a stale block keeps positive ``confirmations`` on bcoin,
   so that field is never trusted), forget the disconnected heights, then fetch and apply every block from
   the fork point to the node's tip in order. Each block's payments are recorded before the block's row is
   written, so the stored tip is a checkpoint: a watcher killed at any point re-processes at most one block,
   and re-processing is a no-op (payments are keyed ``txid:vout``, unique in the store).
3. After a sync, payments stored for heights whose block is no longer the stored one are resolved: back in
   the mempool → 0 confirmations (the invoice moves back), gone → a "dropped" fact (reorged out, or double
   spent when the new branch spent its inputs). Payments in the last ``confirmation_depth`` heights get their
   current confirmation count.
4. Mempool transactions not seen before are fetched (only those) and matched; a followed unconfirmed payment
   that leaves the mempool without being mined produces a "dropped" fact: replaced when another mempool
   transaction spent its inputs, double spent when a block did, evicted otherwise. Drops are only judged
   when the mempool snapshot was taken at our tip, so a transaction that was just mined is never called
   dropped. The snapshot predates the sync, so it may still list a payment the sync has just found in a
   block: that one is skipped (a node with a transaction index would return it, and it would be recorded
   as pending again, then dropped).

Matching is a dict lookup per output, so the cost of a block does not depend on the number of open invoices.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from bitcoin.core import CBlock, CTransaction, b2lx

from gateway.addresses import btc_script_for_address
from gateway.chains.bitcoin_blocks import (
    BlockParseError,
    TransactionFacts,
    block_facts,
    parse_block,
    parse_transaction,
    transaction_facts,
)
from gateway.chains.bitcoin_rpc import RpcError, RpcUnavailable
from gateway.chains.chain_state import AddressSpend, ChainState, PaidAddress, StoredBlock, TrackedPayment
from gateway.chains.watcher import ChainWatcher, PaymentSink, WatcherRefused, WatcherStatus
from gateway.invoices.lifecycle import DropReason
from gateway.invoices.service import PaymentFact
from gateway.money import Asset, Chain

Outpoint = tuple[bytes, int]  # (txid in internal byte order, output index): no hex work per input

# getblockchaininfo's "chain" for each configured network name
CHAIN_NAMES = {
    "mainnet": "main",
    "testnet": "test",
    "testnet4": "testnet4",
    "signet": "signet",
    "regtest": "regtest",
}
MAINNET_GENESIS = "000000000019d6689c085ae165831e934ff763ae46a2a6c172b3f1b60a8ce26f"

__all__ = [
    "BitcoinNode",
    "BitcoinWatcher",
    "PaymentSink",
    "WatcherRefused",
    "WatcherSettings",
    "WatcherStatus",
]


class BitcoinNode(Protocol):
    """The JSON-RPC calls the watcher makes (BitcoinRpc implements them; unit tests script them)."""

    async def call(self, method: str, *params: Any) -> Any: ...

    async def batch(self, calls: Sequence[tuple[str, Sequence[Any]]]) -> list[Any]: ...


@dataclass(frozen=True, slots=True)
class WatcherSettings:
    hrp: str
    network: str
    allow_mainnet: bool = False
    genesis_hash: str = ""
    poll_interval_seconds: float = 1.0
    start_height: int = -1  # < 0: start at the node's tip the first time
    confirmation_depth: int = 6
    fetch_batch: int = 100
    address_refresh_margin_seconds: float = 10.0
    error_backoff_max_seconds: float = 30.0


@dataclass(slots=True)
class _PaymentTx:
    """The inputs of a transaction that pays a followed payment, so a spend of them elsewhere is noticed."""

    height: int | None  # None while unconfirmed
    outpoints: frozenset[Outpoint]


async def check_bitcoin_node(node: BitcoinNode, settings: WatcherSettings) -> None:
    """Raise WatcherRefused unless the node is on the configured network (and not mainnet by accident).

    Only a real answer can refuse: a refusal stops the watcher for good, so an answer that is not a
    ``getblockchaininfo`` object naming a chain, or a genesis that is not a block hash (a garbled or
    misrouted answer, a node still starting), raises RpcUnavailable and is asked again at the next poll.
    """
    info = await node.call("getblockchaininfo")
    chain = info.get("chain") if isinstance(info, dict) else None
    if not isinstance(chain, str) or not chain:
        raise RpcUnavailable(f"getblockchaininfo answered no chain name: {str(info)[:80]!r}")
    genesis = str(await node.call("getblockhash", 0))
    if not _is_block_hash(genesis):
        raise RpcUnavailable(f"getblockhash 0 answered something that is not a block hash: {genesis[:80]!r}")
    if (genesis == MAINNET_GENESIS or chain == "main") and not settings.allow_mainnet:
        raise WatcherRefused("the node is on Bitcoin mainnet and bitcoin.allow_mainnet is false")
    if chain != CHAIN_NAMES[settings.network]:
        raise WatcherRefused(f"the node is on {chain!r}, but bitcoin.network is {settings.network!r}")
    if settings.genesis_hash and genesis != settings.genesis_hash:
        raise WatcherRefused(
            f"the node's genesis block is {genesis}, not the configured bitcoin.genesis_hash"
        )


class BitcoinWatcher(ChainWatcher[bytes]):
    chain = Chain.BITCOIN

    def __init__(
        self,
        node: BitcoinNode,
        state: ChainState,
        sink: PaymentSink,
        settings: WatcherSettings,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            state,
            sink,
            poll_interval_seconds=settings.poll_interval_seconds,
            confirmation_depth=settings.confirmation_depth,
            address_refresh_margin_seconds=settings.address_refresh_margin_seconds,
            error_backoff_max_seconds=settings.error_backoff_max_seconds,
            **kwargs,
        )
        self._node = node
        self._settings = settings
        self._mempool_seen: set[str] = set()  # txids of the node's mempool already fetched and matched
        self._pending: dict[str, set[str]] = {}  # unconfirmed txid paying followed payments → payment keys
        self._payment_txs: dict[str, _PaymentTx] = {}  # recent payment transactions whose inputs we know
        self._input_owner: dict[Outpoint, str] = {}  # outpoint → the payment transaction spending it
        self._conflicts: dict[str, DropReason] = {}  # payment txid → another transaction spent its inputs
        # Outputs that paid invoice addresses (every one not dropped, loaded at start): an input spending
        # one in a block is recorded as coins leaving the invoice address (the exposure view's spends).
        self._paid_outputs: dict[Outpoint, PaidAddress] = {}

    # -- one poll ------------------------------------------------------------------------------------

    async def poll_once(self) -> None:
        """One round: the mempool snapshot and tip, new addresses, the chain (with reorgs), the mempool."""
        if not self._started:
            await self._start(self._first_height)
            for payment in await self._state.unconfirmed_payments():
                self._pending.setdefault(payment.txid, set()).add(payment.payment_key)
        answers = await self._node.batch([("getrawmempool", []), ("getbestblockhash", [])])
        for answer in answers:
            if isinstance(answer, RpcError):
                raise answer
        # After the snapshot, not before: a transaction in it pays an address committed before it was sent,
        # so this refresh finds that address even if the invoice was created a moment ago.
        await self._refresh_addresses()
        mempool, best = answers
        if not isinstance(mempool, list):
            raise RpcUnavailable("getrawmempool answered something that is not a list")
        at_tip = str(best) == self._tip.hash
        if not at_tip:
            await self._sync_chain()
        await self._scan_mempool([str(t) for t in mempool], judge_drops=at_tip)
        self._poll_succeeded(len(self._pending))

    # -- the node ------------------------------------------------------------------------------------

    async def _check_network(self) -> None:
        await check_bitcoin_node(self._node, self._settings)

    async def _first_height(self) -> int:
        """Where a watcher with no stored chain begins: the node's tip, or just below ``start_height``."""
        if self._settings.start_height < 0:
            return await self._node_height()
        return max(self._settings.start_height - 1, 0)

    async def _node_height(self) -> int:
        return int(await self._node.call("getblockcount"))

    async def _hashes_at(self, heights: Sequence[int]) -> list[str | None]:
        answers = await self._node.batch([("getblockhash", [h]) for h in heights])
        return [None if isinstance(a, RpcError) else str(a) for a in answers]

    async def _block_at(self, height: int) -> StoredBlock:
        block_hash = str(await self._node.call("getblockhash", height))
        block = await self._fetch_block(block_hash)
        return StoredBlock(height, block_hash, b2lx(block.hashPrevBlock))

    async def _fetch_block(self, block_hash: str) -> CBlock:
        raw = await self._node.call("getblock", block_hash, False)
        try:
            return parse_block(bytes.fromhex(str(raw)))
        except ValueError as exc:
            raise BlockParseError(f"block {block_hash}: {exc}") from None

    def _watch_key(self, address: str) -> bytes:
        return btc_script_for_address(address, self._settings.hrp)

    # -- blocks --------------------------------------------------------------------------------------

    async def _connect_range(self, first: int, last: int) -> bool:
        step = self._settings.fetch_batch
        for start in range(first, last + 1, step):
            heights = list(range(start, min(start + step, last + 1)))
            for height, block_hash in zip(heights, await self._hashes_at(heights), strict=True):
                if block_hash is None:
                    return False  # the node's chain got shorter under us
                block = await self._fetch_block(block_hash)
                prev = b2lx(block.hashPrevBlock)
                if prev != self._tip.hash:
                    return False
                await self._connect(StoredBlock(height, block_hash, prev), block, last)
        return True

    async def _connect(self, stored: StoredBlock, block: CBlock, target: int) -> None:
        confirmations = target - stored.height + 1
        owners = self._input_owner
        if owners:  # a spend of a payment's inputs by another transaction is a double spend
            for tx in block.vtx:
                for txin in tx.vin:
                    owner = owners.get((bytes(txin.prevout.hash), int(txin.prevout.n)))
                    if owner is not None and owner != b2lx(tx.GetTxid()):
                        self._conflicts[owner] = DropReason.DOUBLE_SPENT
        facts_by_tx = list(block_facts(block, self._watched))
        if facts_by_tx:
            by_txid = {f.txid for f in facts_by_tx}
            for tx in block.vtx:
                txid = b2lx(tx.GetTxid())
                if txid in by_txid:
                    self._note_payment_tx(txid, stored.height, tx)
        facts = [
            self._payment_fact(f, m.watch, m.payment_key, m.amount_sat, confirmations, stored)
            for f in facts_by_tx
            for m in f.matches
        ]
        self._note_facts(facts)  # before the spends: a block may pay an invoice address and sweep it
        await self._connected(stored, facts, self._spends_in(block))
        for tx_facts in facts_by_tx:
            self._pending.pop(tx_facts.txid, None)

    def _note_paid(self, paid: PaidAddress) -> None:
        txid, _, vout = paid.payment_key.partition(":")
        self._paid_outputs[(bytes.fromhex(txid)[::-1], int(vout))] = paid

    def _spends_in(self, block: CBlock) -> list[AddressSpend]:
        """Inputs of ``block`` that spend outputs paid to invoice addresses."""
        paid_outputs = self._paid_outputs
        if not paid_outputs:
            return []
        spends = []
        for tx in block.vtx:
            txid: str | None = None
            for index, txin in enumerate(tx.vin):
                paid = paid_outputs.get((bytes(txin.prevout.hash), int(txin.prevout.n)))
                if paid is None:
                    continue
                txid = txid or b2lx(tx.GetTxid())
                spends.append(
                    AddressSpend(
                        f"{txid}:{index}", Asset.BTC, paid.address, paid.amount_minor, txid, paid.payment_key
                    )
                )
        return spends

    def _forget_below(self, height: int) -> None:
        for txid in [t for t, p in self._payment_txs.items() if p.height is not None and p.height <= height]:
            self._forget_payment_tx(txid)

    # -- reorged payments ----------------------------------------------------------------------------

    async def _pending_again(self, payments: Sequence[TrackedPayment]) -> set[str]:
        return {str(t) for t in await self._node.call("getrawmempool")}

    def _back_to_pending(self, payment: TrackedPayment) -> None:
        self._pending.setdefault(payment.txid, set()).add(payment.payment_key)
        known = self._payment_txs.get(payment.txid)
        if known is not None:
            known.height = None

    def _drop_reason(self, payment: TrackedPayment) -> DropReason:
        return self._conflicts.get(payment.txid, DropReason.REORGED_OUT)

    # -- the mempool ---------------------------------------------------------------------------------
    async def _scan_mempool(self, txids: list[str], *, judge_drops: bool) -> None:
        current = set(txids)
        # The snapshot was taken before this poll's sync: a payment the sync has just found in a block may
        # still be listed. It is mined, not pending; and a node with a transaction index would hand it out
        # again, recorded anew with 0 confirmations and no block, then judged dropped at the next poll.
        fresh = [t for t in txids if t not in self._mempool_seen and not self._mined_here(t)]
        fetched: set[str] = set()
        step = self._settings.fetch_batch
        facts: list[PaymentFact] = []
        for start in range(0, len(fresh), step):
            chunk = fresh[start : start + step]
            answers = await self._node.batch([("getrawtransaction", [t, False]) for t in chunk])
            for txid, answer in zip(chunk, answers, strict=True):
                if isinstance(answer, RpcError):
                    continue  # left the mempool between the two calls; judged at the next poll
                tx = parse_transaction(bytes.fromhex(str(answer)))
                fetched.add(txid)
                self._note_mempool_spends(txid, tx)
                matched = transaction_facts(tx, self._watched)
                if matched is None:
                    continue
                self._pending.setdefault(txid, set()).update(m.payment_key for m in matched.matches)
                self._note_payment_tx(txid, None, tx)
                facts += [
                    self._payment_fact(matched, m.watch, m.payment_key, m.amount_sat, 0, None)
                    for m in matched.matches
                ]
        await self._record_all(facts)
        self._mempool_seen = (self._mempool_seen & current) | fetched
        if judge_drops:
            await self._judge_drops(current)

    def _mined_here(self, txid: str) -> bool:
        """Whether ``txid`` is a payment transaction in a block of the stored chain."""
        known = self._payment_txs.get(txid)
        return known is not None and known.height is not None

    def _note_mempool_spends(self, txid: str, tx: CTransaction) -> None:
        if not self._input_owner:
            return
        for outpoint in _outpoints(tx):
            owner = self._input_owner.get(outpoint)
            if owner is not None and owner != txid:
                self._conflicts.setdefault(owner, DropReason.REPLACED)

    async def _judge_drops(self, mempool: set[str]) -> None:
        for txid in [t for t in self._pending if t not in mempool]:
            reason = self._conflicts.get(txid, DropReason.EVICTED)
            for key in sorted(self._pending.pop(txid)):
                self._log.info("bitcoin.payment_dropped", payment_key=key, reason=reason.value)
                await self._sink.payment_dropped(Chain.BITCOIN, key, reason)
            self._forget_payment_tx(txid)

    def _note_payment_tx(self, txid: str, height: int | None, tx: CTransaction) -> None:
        known = self._payment_txs.get(txid)
        if known is not None:
            known.height = height
            return
        outpoints = _outpoints(tx)
        self._payment_txs[txid] = _PaymentTx(height, outpoints)
        for outpoint in outpoints:
            self._input_owner[outpoint] = txid

    def _forget_payment_tx(self, txid: str) -> None:
        self._conflicts.pop(txid, None)
        known = self._payment_txs.pop(txid, None)
        if known is None:
            return
        for outpoint in known.outpoints:
            if self._input_owner.get(outpoint) == txid:
                del self._input_owner[outpoint]

    # -- facts ---------------------------------------------------------------------------------------

    def _payment_fact(
        self,
        facts: TransactionFacts[str],
        address: str,
        payment_key: str,
        amount_sat: int,
        confirmations: int,
        block: StoredBlock | None,
    ) -> PaymentFact:
        payers = tuple(s.hex() for s in facts.payer_scripts)
        return PaymentFact(
            chain=Chain.BITCOIN,
            address=address,
            payment_key=payment_key,
            asset=Asset.BTC,
            amount_minor=amount_sat,
            confirmations=confirmations,
            rbf_signalling=facts.rbf_signalling,
            payer=payers[0] if payers else None,
            payer_scripts=payers,
            block_hash=None if block is None else block.hash,
            block_height=None if block is None else block.height,
        )


def _outpoints(tx: CTransaction) -> frozenset[Outpoint]:
    return frozenset(
        (bytes(txin.prevout.hash), int(txin.prevout.n)) for txin in tx.vin if not txin.prevout.is_null()
    )


def _is_block_hash(text: str) -> bool:
    return len(text) == 64 and all(c in "0123456789abcdef" for c in text.lower())
