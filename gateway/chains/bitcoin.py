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
   dropped.

Matching is a dict lookup per output, so the cost of a block does not depend on the number of open invoices.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog
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
from gateway.chains.chain_state import ChainState, StoredBlock, TrackedPayment
from gateway.ids import id_floor
from gateway.invoices.lifecycle import DropReason
from gateway.invoices.service import PaymentFact
from gateway.money import Asset, Chain
from gateway.store import StoreError

log = structlog.get_logger("gateway.chains.bitcoin")

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


class WatcherRefused(Exception):
    """The node is not the chain the configuration names (wrong network, mainnet without permission)."""


class BitcoinNode(Protocol):
    """The JSON-RPC calls the watcher makes (BitcoinRpc implements them; unit tests script them)."""

    async def call(self, method: str, *params: Any) -> Any: ...

    async def batch(self, calls: Sequence[tuple[str, Sequence[Any]]]) -> list[Any]: ...


class PaymentSink(Protocol):
    """Where payment facts go (the invoice service); both calls are idempotent."""

    async def record_payment(self, fact: PaymentFact) -> Any: ...

    async def payment_dropped(self, chain: Chain, payment_key: str, reason: DropReason) -> Any: ...


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


@dataclass(slots=True)
class WatcherStatus:
    tip_height: int | None = None
    tip_hash: str | None = None
    watched_scripts: int = 0
    mempool_tracked: int = 0
    last_poll_ok: bool = False
    last_error: str | None = None
    refused: str | None = None
    blocks_processed: int = 0
    reorgs: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


class BitcoinWatcher:
    def __init__(
        self,
        node: BitcoinNode,
        state: ChainState,
        sink: PaymentSink,
        settings: WatcherSettings,
        *,
        wall_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._node = node
        self._state = state
        self._sink = sink
        self._settings = settings
        self._wall_ms = wall_ms
        self._sleep = sleep
        self._watched: dict[bytes, str] = {}  # scriptPubKey → address
        self._address_floor_ms = 0  # invoices created from here on are (re)read at each refresh
        self._chain: dict[int, StoredBlock] = {}  # the stored recent chain, mirrored in memory
        self._mempool_seen: set[str] = set()  # txids of the node's mempool already fetched and matched
        self._pending: dict[str, set[str]] = {}  # unconfirmed txid paying followed payments → payment keys
        self._payment_txs: dict[str, _PaymentTx] = {}  # recent payment transactions whose inputs we know
        self._input_owner: dict[Outpoint, str] = {}  # outpoint → the payment transaction spending it
        self._conflicts: dict[str, DropReason] = {}  # payment txid → another transaction spent its inputs
        self._started = False
        self.status = WatcherStatus()

    # -- the loop ------------------------------------------------------------------------------------

    async def run(self) -> None:
        """Poll until cancelled. Node or store faults are logged and retried with backoff, never fatal."""
        backoff = self._settings.poll_interval_seconds
        while True:
            try:
                await self.poll_once()
                backoff = self._settings.poll_interval_seconds
                await self._sleep(self._settings.poll_interval_seconds)
            except WatcherRefused as exc:
                self.status.refused = str(exc)
                log.error("bitcoin.watcher_refused", reason=str(exc))
                return
            except Exception as exc:  # a node, store or parsing fault: log, back off, try again
                self.status.last_poll_ok = False
                self.status.last_error = f"{type(exc).__name__}: {exc}"
                expected = isinstance(exc, RpcUnavailable | RpcError | BlockParseError | StoreError)
                (log.warning if expected else log.exception)(
                    "bitcoin.poll_failed", error=self.status.last_error, retry_in=backoff
                )
                await self._sleep(backoff)
                backoff = min(backoff * 2, self._settings.error_backoff_max_seconds)

    async def poll_once(self) -> None:
        """One round: new addresses, the chain (with reorgs), confirmations, the mempool."""
        if not self._started:
            await self._start()
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
        self.status.last_poll_ok = True
        self.status.last_error = None
        self.status.watched_scripts = len(self._watched)
        self.status.mempool_tracked = len(self._pending)

    # -- start-up ------------------------------------------------------------------------------------

    async def _start(self) -> None:
        await self._check_network()
        stored = await self._state.recent_blocks()
        if not stored:
            stored = [await self._first_checkpoint()]
            await self._state.connect(stored[0])
        self._chain = {b.height: b for b in stored}
        self._set_tip_status()
        for payment in await self._state.unconfirmed_payments():
            self._pending.setdefault(payment.txid, set()).add(payment.payment_key)
        self._started = True
        log.info(
            "bitcoin.watcher_started",
            tip_height=self._tip.height,
            tip_hash=self._tip.hash,
            mempool_tracked=len(self._pending),
        )

    async def _check_network(self) -> None:
        info = await self._node.call("getblockchaininfo")
        chain = str(info.get("chain", "")) if isinstance(info, dict) else ""
        genesis = str(await self._node.call("getblockhash", 0))
        expected = CHAIN_NAMES[self._settings.network]
        if (genesis == MAINNET_GENESIS or chain == "main") and not self._settings.allow_mainnet:
            raise WatcherRefused("the node is on Bitcoin mainnet and bitcoin.allow_mainnet is false")
        if chain != expected:
            raise WatcherRefused(
                f"the node is on {chain!r}, but bitcoin.network is {self._settings.network!r}"
            )
        if self._settings.genesis_hash and genesis != self._settings.genesis_hash:
            raise WatcherRefused(
                f"the node's genesis block is {genesis}, not the configured bitcoin.genesis_hash"
            )

    async def _first_checkpoint(self) -> StoredBlock:
        """Where a watcher with no stored chain begins: the node's tip, or just below ``start_height``."""
        if self._settings.start_height < 0:
            height = int(await self._node.call("getblockcount"))
        else:
            height = max(self._settings.start_height - 1, 0)
        block_hash = str(await self._node.call("getblockhash", height))
        block = await self._fetch_block(block_hash)
        return StoredBlock(height, block_hash, b2lx(block.hashPrevBlock))

    # -- addresses -----------------------------------------------------------------------------------

    async def _refresh_addresses(self) -> None:
        now_ms = self._wall_ms()
        floor = id_floor("inv", self._address_floor_ms)
        for address, _invoice_id in await self._state.addresses_since(floor):
            try:
                script = btc_script_for_address(address, self._settings.hrp)
            except ValueError:
                log.warning("bitcoin.unwatchable_address", address=address)
                continue
            self._watched[script] = address
        self._address_floor_ms = now_ms - int(self._settings.address_refresh_margin_seconds * 1000)

    def watch_address(self, address: str) -> None:
        """Watch an address at once (the creating process calls this; other processes find it by polling)."""
        self._watched[btc_script_for_address(address, self._settings.hrp)] = address

    # -- the chain -----------------------------------------------------------------------------------

    @property
    def _tip(self) -> StoredBlock:
        return self._chain[max(self._chain)]

    def _set_tip_status(self) -> None:
        tip = self._tip
        self.status.tip_height, self.status.tip_hash = tip.height, tip.hash

    async def _sync_chain(self) -> None:
        """Bring the stored chain to the node's tip, through a reorg if there was one."""
        while True:
            target = int(await self._node.call("getblockcount"))
            fork = await self._find_fork(min(target, self._tip.height))
            if fork < self._tip.height:
                disconnected = self._tip.height - fork
                self.status.reorgs += 1
                log.warning("bitcoin.reorg", fork_height=fork, disconnected=disconnected, new_height=target)
                await self._state.disconnect_above(fork)
                for height in [h for h in self._chain if h > fork]:
                    del self._chain[height]
                if not self._chain:  # the fork is below the stored window: re-anchor on the node's block
                    anchor_hash = str(await self._node.call("getblockhash", fork))
                    anchor = await self._fetch_block(anchor_hash)
                    base = StoredBlock(fork, anchor_hash, b2lx(anchor.hashPrevBlock))
                    await self._state.connect(base)
                    self._chain[fork] = base
            if await self._connect_range(fork + 1, target):
                break
            # the node's chain moved under us (a block we fetched does not extend ours): look again
        await self._resolve_stale()
        await self._update_confirmations()
        self._set_tip_status()

    async def _find_fork(self, start: int) -> int:
        """The highest stored height whose hash is still the node's hash at that height."""
        heights = sorted((h for h in self._chain if h <= start), reverse=True)
        step = 16
        for i in range(0, len(heights), step):
            chunk = heights[i : i + step]
            answers = await self._node.batch([("getblockhash", [h]) for h in chunk])
            for height, answer in zip(chunk, answers, strict=True):
                if not isinstance(answer, RpcError) and str(answer) == self._chain[height].hash:
                    return height
        lowest = min(self._chain)
        log.error("bitcoin.reorg_beyond_window", lowest_stored=lowest, kept=self._state.keep)
        return lowest - 1 if lowest > 0 else 0

    async def _connect_range(self, first: int, last: int) -> bool:
        step = self._settings.fetch_batch
        for start in range(first, last + 1, step):
            heights = list(range(start, min(start + step, last + 1)))
            answers = await self._node.batch([("getblockhash", [h]) for h in heights])
            for height, answer in zip(heights, answers, strict=True):
                if isinstance(answer, RpcError):
                    return False  # the node's chain got shorter under us
                block_hash = str(answer)
                block = await self._fetch_block(block_hash)
                prev = b2lx(block.hashPrevBlock)
                if self._chain and prev != self._tip.hash:
                    return False
                await self._connect(StoredBlock(height, block_hash, prev), block, last)
        return True

    async def _fetch_block(self, block_hash: str) -> CBlock:
        raw = await self._node.call("getblock", block_hash, False)
        try:
            return parse_block(bytes.fromhex(str(raw)))
        except ValueError as exc:
            raise BlockParseError(f"block {block_hash}: {exc}") from None

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
        await self._record_all(
            self._payment_fact(f, m.watch, m.payment_key, m.amount_sat, confirmations, stored)
            for f in facts_by_tx
            for m in f.matches
        )
        for facts in facts_by_tx:
            self._pending.pop(facts.txid, None)
        await self._state.connect(stored)
        self._chain[stored.height] = stored
        horizon = stored.height - self._state.keep
        for height in [h for h in self._chain if h <= horizon]:
            del self._chain[height]
        for txid in [t for t, p in self._payment_txs.items() if p.height is not None and p.height <= horizon]:
            self._forget_payment_tx(txid)
        self.status.blocks_processed += 1

    async def _resolve_stale(self) -> None:
        """Payments recorded in blocks that left the main chain: back to the mempool, or dropped."""
        if not self._chain:
            return
        # No upper bound: after a sync every stored height up to the node's tip has its row, so a payment above
        # the tip belongs to blocks the node no longer has.
        stale = await self._state.stale_payments(min(self._chain), None)
        if not stale:
            return
        in_mempool = {str(t) for t in await self._node.call("getrawmempool")}
        for payment in stale:
            if payment.txid in in_mempool:
                self._pending.setdefault(payment.txid, set()).add(payment.payment_key)
                known = self._payment_txs.get(payment.txid)
                if known is not None:
                    known.height = None
                await self._sink.record_payment(self._fact_from_tracked(payment, 0, None))
                continue
            reason = self._conflicts.get(payment.txid, DropReason.REORGED_OUT)
            log.info("bitcoin.payment_reorged_out", payment_key=payment.payment_key, reason=reason.value)
            await self._sink.payment_dropped(Chain.BITCOIN, payment.payment_key, reason)

    async def _update_confirmations(self) -> None:
        tip = self._tip.height
        lowest = tip - self._settings.confirmation_depth + 1
        updates = []
        for payment in await self._state.payments_from(lowest):
            assert payment.block_height is not None
            stored = self._chain.get(payment.block_height)
            if stored is None or stored.hash != payment.block_hash:
                continue  # resolved as stale above, or mined in a block we have not stored
            count = tip - payment.block_height + 1
            if count != payment.confirmations:
                updates.append(self._fact_from_tracked(payment, count, stored))
        await self._record_all(updates)

    # -- the mempool ---------------------------------------------------------------------------------

    async def _scan_mempool(self, txids: list[str], *, judge_drops: bool) -> None:
        current = set(txids)
        fresh = [t for t in txids if t not in self._mempool_seen]
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
                log.info("bitcoin.payment_dropped", payment_key=key, reason=reason.value)
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

    def _fact_from_tracked(
        self, payment: TrackedPayment, confirmations: int, block: StoredBlock | None
    ) -> PaymentFact:
        return PaymentFact(
            chain=Chain.BITCOIN,
            address=payment.address,
            payment_key=payment.payment_key,
            asset=payment.asset,
            amount_minor=payment.amount_minor,
            confirmations=confirmations,
            rbf_signalling=payment.rbf_signalling,
            payer=payment.payer,
            block_hash=None if block is None else block.hash,
            block_height=None if block is None else block.height,
        )

    async def _record_all(self, facts: Iterable[PaymentFact]) -> None:
        """Record facts concurrently, so the store's group commit writes a block's payments together."""
        pending = [self._sink.record_payment(f) for f in facts]
        if not pending:
            return
        results = await asyncio.gather(*pending, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result


def _outpoints(tx: CTransaction) -> frozenset[Outpoint]:
    return frozenset(
        (bytes(txin.prevout.hash), int(txin.prevout.n)) for txin in tx.vin if not txin.prevout.is_null()
    )
