"""Addresses derived ahead of use, and derivation indexes reserved ahead of use.

Deriving a BIP32 child costs ~60-70 us of elliptic-curve maths and encoding. ``AddressPool`` keeps
``pool_size`` addresses per account key ready beyond the last one handed out, refilled in the background;
with a process executor (``addresses.derive_workers``) the maths runs on another core, so the event loop
that serves requests only looks addresses up. Uniqueness never depends on this cache: indexes come from
``IndexAllocator``, whose blocks are reserved in the store before use.

With several processes on one PostgreSQL store (``blocks_only``), each process's allocator takes blocks
from the same counter, so the blocks of one process are interleaved with the others'. A pool deriving
every index ahead of the last one it handed out would then derive, in every process, the addresses all
the other processes hand out: N processes would do N times the derivation work. There the pool derives
only inside the blocks its own allocator reserved (``IndexAllocator(on_reserved=pool.reserved)``): the
block in use and the spare one reserved ahead.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Executor

import structlog

from gateway.addresses import BitcoinAccount, EthereumAccount
from gateway.money import Chain
from gateway.store import Store, Tx

log = structlog.get_logger("gateway.addresses")

_PoolKey = tuple[Chain, str]
_REFILL_CHUNK = 128


@functools.lru_cache(maxsize=1024)
def _account(chain: Chain, account_key: str) -> BitcoinAccount | EthereumAccount:
    return BitcoinAccount(account_key) if chain is Chain.BITCOIN else EthereumAccount(account_key)


def derive_addresses(chain: Chain, account_key: str, hrp: str, first: int, count: int) -> list[str]:
    """Addresses ``first .. first+count-1`` of a key; runs in a worker process (hence top level)."""
    account = _account(chain, account_key)
    if isinstance(account, BitcoinAccount):
        return [account.address(index, hrp) for index in range(first, first + count)]
    return [account.address(index) for index in range(first, first + count)]


class AddressPool:
    """Ready addresses per account key. Used from the event loop only."""

    def __init__(
        self,
        *,
        btc_hrp: str,
        pool_size: int,
        executor: Executor | None = None,
        max_accounts: int = 10_000,
        blocks_only: bool = False,
    ) -> None:
        self._hrp = btc_hrp
        self._size = pool_size
        self._executor = executor
        self._max_accounts = max_accounts
        # True: derive ahead only inside the blocks reported by reserved() (several processes; module doc)
        self._blocks_only = blocks_only
        self._ready: OrderedDict[_PoolKey, dict[int, str]] = OrderedDict()
        self._wanted: dict[_PoolKey, int] = {}
        self._derived_upto: dict[_PoolKey, int] = {}
        self._owned: dict[_PoolKey, list[tuple[int, int]]] = {}  # blocks_only: [start, end) spans, sorted
        self._next: dict[_PoolKey, int] = {}  # the index after the last one handed out
        self._refill_task: asyncio.Task[None] | None = None
        self.hits = 0
        self.misses = 0

    def address(self, chain: Chain, account_key: str, index: int) -> str:
        """The address at ``index``: from the pool when ready, derived now otherwise."""
        key = (chain, account_key)
        ready = self._ready.get(key)
        address = ready.pop(index, None) if ready is not None else None
        if address is None:
            self.misses += 1
            address = derive_addresses(chain, account_key, self._hrp, index, 1)[0]
        else:
            self.hits += 1
        self._next[key] = index + 1
        self._want(key, index + 1)
        return address

    @property
    def ready_total(self) -> int:
        """Addresses derived and waiting, over all keys (for metrics and tests)."""
        return sum(len(ready) for ready in self._ready.values())

    def ready_indexes(self, chain: Chain, account_key: str) -> list[int]:
        """The indexes whose addresses are derived and waiting for one key (for tests)."""
        return sorted(self._ready.get((chain, account_key), {}))

    def prime(self, chain: Chain, account_key: str, next_index: int) -> None:
        """Ask for addresses from ``next_index`` on (at start-up, for each key in use). With ``blocks_only``
        nothing is derived before this process reserves a block: the next indexes may be another's."""
        if not self._blocks_only:
            self._want((chain, account_key), next_index)

    def reserved(self, chain: Chain, account_key: str, start: int, end: int) -> None:
        """``IndexAllocator`` reserved indexes ``start .. end-1`` for this process: with ``blocks_only``,
        derive them ahead (and nothing outside such blocks); otherwise nothing to do."""
        if not self._blocks_only or end <= start:
            return
        key = (chain, account_key)
        owned = self._owned.setdefault(key, [])
        owned.append((start, end))
        owned.sort()
        self._want(key, self._next.get(key, start))

    def _want(self, key: _PoolKey, next_index: int) -> None:
        if self._size <= 0:
            return
        self._wanted[key] = max(self._wanted.get(key, 0), next_index)
        if self._refill_task is None or self._refill_task.done():
            with contextlib.suppress(RuntimeError):  # no running loop (CLI use): derive on demand only
                self._refill_task = asyncio.get_running_loop().create_task(
                    self._refill(), name="address-pool"
                )

    async def _refill(self) -> None:
        loop = asyncio.get_running_loop()
        while self._wanted:
            key, start = self._wanted.popitem()
            ready = self._ready.setdefault(key, {})
            self._ready.move_to_end(key)
            if len(self._ready) > self._max_accounts:
                dropped, _ = self._ready.popitem(last=False)
                self._derived_upto.pop(dropped, None)
            # Derive only past what was derived before: O(new addresses), not O(pool size), per refill.
            first = max(start, self._derived_upto.get(key, 0))
            last = start + self._size
            owned = self._owned.get(key) if self._blocks_only else None
            if owned is not None:
                owned[:] = [(lo, hi) for lo, hi in owned if hi > start]  # spans handed out entirely
            # In a worker, chunks amortise the hand-off; in-process, small steps keep the loop responsive.
            chunk = _REFILL_CHUNK if self._executor is not None else 4
            while first < last:
                span_end = last
                if self._blocks_only:
                    span = _owned_span(owned or [], first)
                    if span is None:  # nothing of ours beyond here (yet)
                        break
                    first, span_end = max(first, span[0]), min(last, span[1])
                    if first >= span_end:
                        break
                count = min(chunk, span_end - first)
                try:
                    if self._executor is not None:
                        addresses = await loop.run_in_executor(
                            self._executor, derive_addresses, key[0], key[1], self._hrp, first, count
                        )
                    else:
                        addresses = derive_addresses(key[0], key[1], self._hrp, first, count)
                except Exception:  # a broken worker or key: requests still derive on demand
                    log.exception("addresses.derive_failed", chain=key[0].value, first=first)
                    break
                for offset, address in enumerate(addresses):
                    ready[first + offset] = address
                first += count
                self._derived_upto[key] = first
                await asyncio.sleep(0)

    async def close(self) -> None:
        if self._refill_task is not None:
            self._refill_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refill_task


def _owned_span(owned: list[tuple[int, int]], index: int) -> tuple[int, int] | None:
    """The first of the sorted ``owned`` spans that ends after ``index``."""
    for start, end in owned:
        if end > index:
            return start, end
    return None


class IndexAllocator:
    """Hands out derivation indexes from blocks reserved durably in the store.

    Reserving one index per invoice inside the invoice's transaction would cost an UPDATE per chain per
    create on the single writer. Instead a block of ``block_size`` indexes is reserved in its own committed
    transaction (an atomic ``UPDATE … RETURNING`` on the key's counter) BEFORE any of them is used, and
    indexes are then taken from memory. Uniqueness therefore never depends on memory: after a crash or in
    another process the counter is already past every index handed out. The price is a gap of at most two
    blocks (the current and the spare) in the derivation sequence after a restart; merchants' wallets need
    a gap limit above that anyway, since abandoned invoices leave unused addresses too
    (docs/architecture.md).
    """

    def __init__(
        self,
        store: Store,
        block_size: int,
        *,
        on_reserved: Callable[[Chain, str, int, int], None] | None = None,
    ) -> None:
        self._store = store
        self._block = block_size
        self._on_reserved = on_reserved  # told of every block reserved: AddressPool.reserved
        self._current: dict[_PoolKey, tuple[int, int]] = {}  # key -> (next index, end of block)
        self._spare: dict[_PoolKey, asyncio.Task[tuple[int, int]]] = {}  # the next block, reserved ahead
        self._locks: dict[_PoolKey, asyncio.Lock] = {}

    async def take(self, chain: Chain, account_key: str) -> int:
        """The next unused index. Callers are served in arrival order (the lock is FIFO), and the next block
        is always being reserved while the current one is used, so a caller waits only when indexes are
        consumed faster than one store round trip per block."""
        key = (chain, account_key)
        following, end = self._current.get(key, (0, 0))
        if following < end:  # the common case: no await, so no other task can interleave
            self._current[key] = (following + 1, end)
            return following
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            following, end = self._current.get(key, (0, 0))
            if following >= end:
                spare = self._spare.pop(key, None)
                if spare is None or (spare.done() and (spare.cancelled() or spare.exception() is not None)):
                    spare = self._start_reservation(key)  # none ahead, or the one ahead failed: try now
                following, end = await spare  # a failure raises here; the next caller tries again
            self._current[key] = (following + 1, end)
            if key not in self._spare:
                self._spare[key] = self._start_reservation(key)
            return following

    def _start_reservation(self, key: _PoolKey) -> asyncio.Task[tuple[int, int]]:
        task = asyncio.get_running_loop().create_task(self._reserve(*key), name="index-reserve")
        task.add_done_callback(_note_reservation_failure)
        return task

    async def close(self) -> None:
        """Cancel reservations made ahead (their blocks, if committed, simply stay unused)."""
        spares = list(self._spare.values())
        self._spare.clear()
        for task in spares:
            task.cancel()
        await asyncio.gather(*spares, return_exceptions=True)

    async def _reserve(self, chain: Chain, account_key: str) -> tuple[int, int]:
        size = self._block

        async def unit(tx: Tx) -> int:
            row = await tx.fetchone(
                "UPDATE address_counters SET next_index = next_index + ? WHERE chain = ? AND account_key = ?"
                " RETURNING next_index",
                (size, chain.value, account_key),
            )
            if row is None:
                raise LookupError(f"no {chain.value} address counter for this account key")
            return int(row["next_index"])

        end = await self._store.transaction(unit)
        if self._on_reserved is not None:
            self._on_reserved(chain, account_key, end - size, end)
        return end - size, end


def _note_reservation_failure(task: asyncio.Task[tuple[int, int]]) -> None:
    """Log a failed reservation made ahead; the caller that needs the block retries it."""
    if not task.cancelled() and task.exception() is not None:
        log.warning("addresses.reservation_failed", error=str(task.exception()))
