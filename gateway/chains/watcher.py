"""What every chain watcher does the same way, whatever the chain: the loop, the stored chain, reorgs.

A watcher follows one node and turns what it sees into payment facts for the invoice service. The parts that
do not depend on the chain live here:

- the poll loop: faults (node down, garbled answers, store unavailable) are logged and retried with a
  doubling backoff; a node on the wrong chain stops the watcher for good (``WatcherRefused``);
- the recent chain, mirrored from the store (``ChainState``): one hash per height for the last few hundred
  heights, whose top row is the checkpoint a restarted watcher resumes from;
- syncing to the node's tip: walk back from our tip to the highest stored height whose hash is still the
  node's (a stale block keeps positive confirmations on bcoin, so only the hash comparison is trusted),
  forget the heights above it, apply the new blocks in order. Each block's payments are recorded before its
  row is written, so a watcher killed anywhere re-processes at most one block, and re-processing is a no-op
  (payments are unique by their chain key);
- after a sync, payments stored for blocks that are no longer the stored block at their height are resolved
  (still pending on the node → 0 confirmations; gone → a "dropped" fact), and payments in the last
  ``confirmation_depth`` heights get their current confirmation count (and so do deeper ones of the stored
  chain still counted short of that depth, which a tip that jumped several blocks would otherwise skip);
- the watch dict: invoice addresses read from the store by invoice id (whose time prefix makes "created
  since the last look" an index range), so invoices created by any process are watched without a restart.

Subclasses say how to ask their node for heights, hashes and blocks, and what a block's payments are.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import structlog

from gateway.chains.chain_state import AddressSpend, ChainState, PaidAddress, StoredBlock, TrackedPayment
from gateway.ids import id_floor
from gateway.invoices.lifecycle import DropReason
from gateway.invoices.service import PaymentFact
from gateway.money import Chain

K = TypeVar("K")  # what the watch dict is keyed by (a scriptPubKey, a lower-case address)


class WatcherRefused(Exception):
    """The node is not the chain the configuration names (wrong network, mainnet without permission)."""


class ChainMoving(Exception):
    """Blocks kept failing to extend our chain while syncing; the poll loop backs off and tries again."""


_SYNC_ATTEMPTS = 5


class PaymentSink(Protocol):
    """Where payment facts go (the invoice service); both calls are idempotent."""

    async def record_payment(self, fact: PaymentFact) -> Any: ...

    async def payment_dropped(self, chain: Chain, payment_key: str, reason: DropReason) -> Any: ...


@dataclass(slots=True)
class WatcherStatus:
    tip_height: int | None = None
    tip_hash: str | None = None
    watched: int = 0
    pending_tracked: int = 0
    last_poll_ok: bool = False
    last_error: str | None = None
    refused: str | None = None
    blocks_processed: int = 0
    reorgs: int = 0


class ChainWatcher(ABC, Generic[K]):
    chain: Chain

    def __init__(
        self,
        state: ChainState,
        sink: PaymentSink,
        *,
        poll_interval_seconds: float,
        confirmation_depth: int,
        address_refresh_margin_seconds: float = 10.0,
        error_backoff_max_seconds: float = 30.0,
        wall_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._state = state
        self._sink = sink
        self._poll_interval = poll_interval_seconds
        self._confirmation_depth = confirmation_depth
        self._refresh_margin_ms = int(address_refresh_margin_seconds * 1000)
        self._backoff_max = error_backoff_max_seconds
        self._wall_ms = wall_ms
        self._sleep = sleep
        self._log = structlog.get_logger(f"gateway.chains.{self.chain.value}")
        self._watched: dict[K, str] = {}  # watch key → the address as stored
        self._watched_addresses: set[str] = set()  # the same addresses as stored, already decoded
        self._address_floor_ms = 0  # invoices created from here on are (re)read at each refresh
        self._chain: dict[int, StoredBlock] = {}  # the stored recent chain, mirrored in memory
        self._started = False
        self.status = WatcherStatus()

    # -- what a chain provides -------------------------------------------------------------------------

    @abstractmethod
    async def poll_once(self) -> None:
        """One round of watching (the loop calls it every poll interval)."""

    @abstractmethod
    async def _check_network(self) -> None:
        """Raise WatcherRefused when the node is not on the configured chain."""

    @abstractmethod
    async def _node_height(self) -> int: ...

    @abstractmethod
    async def _hashes_at(self, heights: Sequence[int]) -> list[str | None]:
        """The node's main-chain block hash at each height (None where it has none)."""

    @abstractmethod
    async def _block_at(self, height: int) -> StoredBlock:
        """Height, hash and parent of the node's block at ``height`` (for the first checkpoint)."""

    @abstractmethod
    async def _connect_range(self, first: int, last: int) -> bool:
        """Apply the node's blocks ``first..last`` in order (each via :meth:`_connected`); False if the
        node's chain moved under us (a block does not extend ours), so the sync starts over."""

    @abstractmethod
    def _watch_key(self, address: str) -> K:
        """The watch-dict key of a stored invoice address (raises ValueError if it is not one of ours)."""

    @abstractmethod
    async def _pending_again(self, payments: Sequence[TrackedPayment]) -> set[str]:
        """Transaction ids among ``payments`` that the node holds unconfirmed (back in its pool)."""

    def _drop_reason(self, payment: TrackedPayment) -> DropReason:
        return DropReason.REORGED_OUT

    def _back_to_pending(self, payment: TrackedPayment) -> None:
        """A payment whose block left the chain is unconfirmed again (subclasses follow it from here)."""

    def _forget_below(self, height: int) -> None:
        """Drop per-block memory at or below ``height`` (it fell out of the stored window)."""

    def _note_paid(self, paid: PaidAddress) -> None:
        """Follow spends of what a payment brought to an invoice address (each chain keys them its own way)."""

    def _note_facts(self, facts: Iterable[PaymentFact]) -> None:
        for fact in facts:
            self._note_paid(PaidAddress(fact.payment_key, fact.asset, fact.address, fact.amount_minor))

    # -- the loop ------------------------------------------------------------------------------------

    async def run(self) -> None:
        """Poll until cancelled. Faults are logged and retried with backoff; only a refusal ends it."""
        backoff = self._poll_interval
        while True:
            try:
                await self.poll_once()
                backoff = self._poll_interval
                await self._wait_for_next_poll()
            except WatcherRefused as exc:
                self.status.refused = str(exc)
                self._log.error(f"{self.chain.value}.watcher_refused", reason=str(exc))
                return
            except Exception as exc:  # a node, store or parsing fault: log, back off, try again
                self.status.last_poll_ok = False
                self.status.last_error = f"{type(exc).__name__}: {exc}"
                self._log.warning(
                    f"{self.chain.value}.poll_failed", error=self.status.last_error, retry_in=backoff
                )
                await self._sleep(backoff)
                backoff = min(backoff * 2, self._backoff_max)

    async def _wait_for_next_poll(self) -> None:
        await self._sleep(self._poll_interval)

    def _poll_succeeded(self, pending: int = 0) -> None:
        self.status.last_poll_ok = True
        self.status.last_error = None
        self.status.watched = len(self._watched)
        self.status.pending_tracked = pending

    # -- start-up and addresses ----------------------------------------------------------------------

    async def _start(self, first_height: Callable[[], Awaitable[int]]) -> None:
        await self._check_network()
        stored = await self._state.recent_blocks()
        if not stored:
            stored = [await self._block_at(await first_height())]
            await self._state.connect(stored[0])
        self._chain = {b.height: b for b in stored}
        for paid in await self._state.paid_addresses():
            self._note_paid(paid)
        self._set_tip_status()
        self._started = True
        self._log.info(
            f"{self.chain.value}.watcher_started", tip_height=self._tip.height, tip_hash=self._tip.hash
        )

    async def _refresh_addresses(self) -> None:
        now_ms = self._wall_ms()
        for address, _invoice_id in await self._state.addresses_since(
            id_floor("inv", self._address_floor_ms)
        ):
            # The floor's margin returns the last seconds' addresses at every poll: decode each once
            # (a bech32 decode per address per poll was half the gateway's CPU in the full-city run).
            if address in self._watched_addresses:
                continue
            try:
                self.watch_address(address)
            except ValueError:
                self._log.warning(f"{self.chain.value}.unwatchable_address", address=address)
        self._address_floor_ms = now_ms - self._refresh_margin_ms

    def watch_address(self, address: str) -> None:
        """Watch an address at once (the creating process may call this; others find it by polling)."""
        self._watched[self._watch_key(address)] = address
        self._watched_addresses.add(address)

    # -- the chain -----------------------------------------------------------------------------------

    @property
    def _tip(self) -> StoredBlock:
        return self._chain[max(self._chain)]

    def _set_tip_status(self) -> None:
        tip = self._tip
        self.status.tip_height, self.status.tip_hash = tip.height, tip.hash

    async def _sync_chain(self) -> None:
        """Bring the stored chain to the node's tip, through a reorg if there was one."""
        for attempt in itertools.count(1):
            if attempt > _SYNC_ATTEMPTS:  # the node keeps changing (or contradicts itself): back off, retry
                raise ChainMoving(f"the node's chain changed under {_SYNC_ATTEMPTS} sync attempts in a row")
            target = await self._node_height()
            fork = await self._find_fork(min(target, self._tip.height))
            if fork < self._tip.height:
                # Below the stored window the new branch needs an anchor: ask for it before forgetting
                # anything, so a node that fails now leaves the stored chain as it was. (Asked afterwards, a
                # failure left no chain in memory, and every later poll failed on it.)
                base = await self._block_at(fork) if fork < min(self._chain) else None
                self.status.reorgs += 1
                self._log.warning(
                    f"{self.chain.value}.reorg",
                    fork_height=fork,
                    disconnected=self._tip.height - fork,
                    new_height=target,
                )
                await self._state.disconnect_above(fork)
                for height in [h for h in self._chain if h > fork]:
                    del self._chain[height]
                if base is not None:  # the fork is below the stored window: re-anchor on the node's block
                    await self._state.connect(base)
                    self._chain[fork] = base
            if await self._connect_range(fork + 1, target):
                break
        await self._resolve_stale()
        await self._update_confirmations()
        self._set_tip_status()

    async def _find_fork(self, start: int) -> int:
        """The highest stored height whose hash is still the node's hash at that height."""
        heights = sorted((h for h in self._chain if h <= start), reverse=True)
        step = 16
        for i in range(0, len(heights), step):
            chunk = heights[i : i + step]
            for height, node_hash in zip(chunk, await self._hashes_at(chunk), strict=True):
                if node_hash == self._chain[height].hash:
                    return height
        lowest = min(self._chain)
        self._log.error(
            f"{self.chain.value}.reorg_beyond_window", lowest_stored=lowest, kept=self._state.keep
        )
        return max(lowest - 1, 0)

    async def _connected(
        self, stored: StoredBlock, facts: Iterable[PaymentFact], spends: Sequence[AddressSpend] = ()
    ) -> None:
        """Record a block's payments, then the block itself with its spends from invoice addresses (the
        order that makes the checkpoint safe)."""
        await self._record_all(facts)
        await self._state.connect(stored, spends)
        self._remember([stored])

    async def _connected_span(
        self, blocks: Sequence[tuple[StoredBlock, Sequence[PaymentFact], Sequence[AddressSpend]]]
    ) -> None:
        """:meth:`_connected` for consecutive blocks: every payment of the span first, then all the blocks
        in one transaction. A crash between the two reprocesses the span, and recording is idempotent."""
        await self._record_all([fact for _, facts, _ in blocks for fact in facts])
        await self._state.connect_many([(stored, spends) for stored, _, spends in blocks])
        self._remember([stored for stored, _, _ in blocks])

    def _remember(self, blocks: Sequence[StoredBlock]) -> None:
        for stored in blocks:
            self._chain[stored.height] = stored
        horizon = blocks[-1].height - self._state.keep
        for height in [h for h in self._chain if h <= horizon]:
            del self._chain[height]
        self._forget_below(horizon)
        self.status.blocks_processed += len(blocks)

    async def _resolve_stale(self) -> None:
        """Payments recorded in blocks that left the main chain: pending again, or dropped."""
        if not self._chain:
            return
        # No upper bound: after a sync every stored height up to the node's tip has its row, so a payment
        # above the tip belongs to blocks the node no longer has.
        stale = await self._state.stale_payments(min(self._chain), None)
        if not stale:
            return
        pending = await self._pending_again(stale)
        for payment in stale:
            if payment.txid in pending:
                self._back_to_pending(payment)
                await self._sink.record_payment(self._fact_from_tracked(payment, 0, None))
                continue
            reason = self._drop_reason(payment)
            self._log.info(
                f"{self.chain.value}.payment_reorged_out",
                payment_key=payment.payment_key,
                reason=reason.value,
            )
            await self._sink.payment_dropped(self.chain, payment.payment_key, reason)

    async def _update_confirmations(self) -> None:
        """Bring the stored confirmation counts up to the tip: payments in the last ``confirmation_depth``
        heights, and any deeper payment of the stored chain still counted short of that depth. Without the
        latter, a tip that moved more than a few blocks between two counts (a takeover, a restart, a
        poll that failed) would leave a payment below its invoice's rule, and the invoice processing, for
        good."""
        tip = self._tip.height
        updates = []
        depth = self._confirmation_depth
        for payment in await self._state.payments_to_count(min(self._chain), tip - depth + 1, depth):
            assert payment.block_height is not None
            stored = self._chain.get(payment.block_height)
            if stored is None or stored.hash != payment.block_hash:
                continue  # resolved as stale above, or mined in a block we have not stored
            count = tip - payment.block_height + 1
            if count != payment.confirmations:
                updates.append(self._fact_from_tracked(payment, count, stored))
        await self._record_all(updates)

    # -- facts ---------------------------------------------------------------------------------------

    def _fact_from_tracked(
        self, payment: TrackedPayment, confirmations: int, block: StoredBlock | None
    ) -> PaymentFact:
        return PaymentFact(
            chain=self.chain,
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
        facts = list(facts)
        self._note_facts(facts)
        pending = [self._sink.record_payment(f) for f in facts]
        if not pending:
            return
        results = await asyncio.gather(*pending, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
