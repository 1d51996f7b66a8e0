"""Addresses derived ahead of use, so invoice creation does not pay for elliptic-curve maths.

The index itself is always allocated by the store (an atomic counter per account key inside the invoice's
transaction), so uniqueness never depends on this cache; the pool only remembers what index N of a key
derives to. After each allocation it tops itself up to ``pool_size`` addresses beyond the counter in a
background task that yields to the event loop between derivations.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict

import structlog

from gateway.addresses import BitcoinAccount, EthereumAccount
from gateway.money import Chain

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
        self._refill_task: asyncio.Task[None] | None = None
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
        else:
            self._accounts.move_to_end(key)
        return account

    def _derive(self, key: _PoolKey, index: int) -> str:
        account = self._account(key)
        if isinstance(account, BitcoinAccount):
            return account.address(index, self._hrp)
        return account.address(index)

    def address(self, chain: Chain, account_key: str, index: int) -> str:
        """The address at ``index``: from the pool when ready, derived now otherwise."""
        key = (chain, account_key)
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
        if self._size <= 0:
            return
        self._wanted[key] = max(self._wanted.get(key, 0), next_index)
        if self._refill_task is None or self._refill_task.done():
            with contextlib.suppress(RuntimeError):  # no running loop (CLI use): derive on demand only
                self._refill_task = asyncio.get_running_loop().create_task(
                    self._refill(), name="address-pool"
                )

    def prime(self, chain: Chain, account_key: str, next_index: int) -> None:
        """Ask for addresses from ``next_index`` on (at start-up, for each key in use)."""
        self._want((chain, account_key), next_index)

    async def _refill(self) -> None:
        while self._wanted:
            key, start = self._wanted.popitem()
            ready = self._ready.setdefault(key, {})
            for stale in [i for i in ready if i < start]:
                del ready[stale]
            for index in range(start, start + self._size):
                if index not in ready:
                    try:
                        ready[index] = self._derive(key, index)
                    except ValueError:
                        log.exception("addresses.derive_failed", chain=key[0].value, index=index)
                        break
                    await asyncio.sleep(0)

    async def close(self) -> None:
        if self._refill_task is not None:
            self._refill_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refill_task
