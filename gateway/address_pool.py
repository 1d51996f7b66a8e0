"""Addresses derived ahead of use, so invoice creation does not pay for elliptic-curve maths.

The index itself is always allocated by the store (an atomic counter per account key inside the invoice's
transaction), so uniqueness never depends on this cache; the pool only remembers what index N of a key
derives to. After each allocation it tops itself up to ``pool_size`` addresses beyond the counter in a
background task that yields to the event loop between derivations.

``address`` is called inside store units, which the SQLite writer runs on its own thread, so the pool's
maps are guarded by a lock and refills are scheduled onto the event loop thread-safely.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import OrderedDict

import structlog

from gateway.addresses import BitcoinAccount, EthereumAccount
from gateway.money import Chain
from gateway.store import Store, Tx

log = structlog.get_logger("gateway.addresses")

_PoolKey = tuple[Chain, str]


class AddressPool:
    def __init__(self, *, btc_hrp: str, pool_size: int, max_accounts: int = 10_000) -> None:
        self._hrp = btc_hrp
        self._size = pool_size
        self._max_accounts = max_accounts
        self._accounts: OrderedDict[_PoolKey, BitcoinAccount | EthereumAccount] = OrderedDict()
        self._ready: dict[_PoolKey, dict[int, str]] = {}
        self._wanted: dict[_PoolKey, int] = {}
        self._derived_upto: dict[_PoolKey, int] = {}
        self._refill_task: asyncio.Task[None] | None = None
        self._lock = threading.Lock()
        self._refill_scheduled = False
        try:
            self._loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:  # built outside a loop (the CLI): derive on demand only
            self._loop = None
        self.hits = 0
        self.misses = 0

    def _account(self, key: _PoolKey) -> BitcoinAccount | EthereumAccount:
        account = self._accounts.get(key)
        if account is None:
            chain, account_key = key
            account = BitcoinAccount(account_key) if chain is Chain.BITCOIN else EthereumAccount(account_key)
            self._accounts[key] = account
            if len(self._accounts) > self._max_accounts:
                dropped, _ = self._accounts.popitem(last=False)
                self._ready.pop(dropped, None)
                self._derived_upto.pop(dropped, None)
        else:
            self._accounts.move_to_end(key)
        return account

    def _derive(self, key: _PoolKey, index: int) -> str:
        account = self._account(key)
        if isinstance(account, BitcoinAccount):
            return account.address(index, self._hrp)
        return account.address(index)

    def address(self, chain: Chain, account_key: str, index: int) -> str:
        """The address at ``index``: from the pool when ready, derived now otherwise (any thread)."""
        key = (chain, account_key)
        with self._lock:
            ready = self._ready.get(key)
            address = ready.pop(index, None) if ready is not None else None
            if address is None:
                self.misses += 1
                address = self._derive(key, index)
            else:
                self.hits += 1
            self._want(key, index + 1)
        return address

    def _want(self, key: _PoolKey, next_index: int) -> None:
        """Note what should be ready (lock held) and make sure a refill runs on the event loop."""
        if self._size <= 0 or self._loop is None:
            return
        self._wanted[key] = max(self._wanted.get(key, 0), next_index)
        if not self._refill_scheduled:  # one wake-up per refill, not one per address
            self._refill_scheduled = True
            with contextlib.suppress(RuntimeError):  # the loop is closing: nothing left to prepare for
                self._loop.call_soon_threadsafe(self._ensure_refill)

    def _ensure_refill(self) -> None:
        if self._refill_task is None or self._refill_task.done():
            self._refill_task = asyncio.get_running_loop().create_task(self._refill(), name="address-pool")

    def prime(self, chain: Chain, account_key: str, next_index: int) -> None:
        """Ask for addresses from ``next_index`` on (at start-up, for each key in use)."""
        with self._lock:
            self._want((chain, account_key), next_index)

    async def _refill(self) -> None:
        while True:
            with self._lock:
                if not self._wanted:
                    self._refill_scheduled = False
                    return
                key, start = self._wanted.popitem()
                ready = self._ready.setdefault(key, {})
                # Derive only past what was derived before: O(new addresses), not O(pool size), per refill.
                first = max(start, self._derived_upto.get(key, 0))
                last = start + self._size
            for index in range(first, last):
                with self._lock:
                    try:
                        ready[index] = self._derive(key, index)
                    except ValueError:
                        log.exception("addresses.derive_failed", chain=key[0].value, index=index)
                        break
                    self._derived_upto[key] = index + 1
                await asyncio.sleep(0)

    async def close(self) -> None:
        if self._refill_task is not None:
            self._refill_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refill_task


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

    def __init__(self, store: Store, block_size: int) -> None:
        self._store = store
        self._block = block_size
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
        return end - size, end


def _note_reservation_failure(task: asyncio.Task[tuple[int, int]]) -> None:
    """Log a failed reservation made ahead; the caller that needs the block retries it."""
    if not task.cancelled() and task.exception() is not None:
        log.warning("addresses.reservation_failed", error=str(task.exception()))
