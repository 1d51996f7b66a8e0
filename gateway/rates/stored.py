"""Rates for followers: the latest rate of each asset as the leader recorded it in the rate history.

With several gateway processes on one PostgreSQL store only the leader polls the providers (a provider's
rate limit is per client, and one set of quotes keeps every invoice on the same market). Every process
prices invoices, though, and invoice creation reads its rate synchronously. So each process keeps the
latest ``rate_history`` row of every asset in memory, refreshed from the store every ``poll_seconds``
(:class:`StoredRates`); the leader already writes a row for every new rate it derives (history.py).

The freshness rule is the composite's: a derived rate's ``observed_at`` is the oldest market observation
behind it (composite.py), and it is usable while ``now - observed_at <= max_crypto_age``; older, or none,
is :class:`RatesUnavailable` (503 with Retry-After), as on the leader. Official-rate legs are not in the
history, so a follower cannot re-check their own (4-day) age; the leader only records rates whose every
leg was fresh.

:class:`SharedRates` is the RateSource of a process on a shared store: the process's own composite while
that process polls the providers and holds quotes (the leader: its verdict is final, fresh rate or 503,
exactly as a single gateway's), otherwise the stored rates (a follower, or a new leader in the seconds
before its first fetch).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime, timedelta
from decimal import Decimal

import structlog

from gateway import jsonutil
from gateway.aio import cancel_and_wait, wait_for_event
from gateway.clock import parse_isoformat
from gateway.money import Asset
from gateway.rates.base import AssetRate, RateSource, RatesUnavailable
from gateway.store import Store, Tx

log = structlog.get_logger("gateway.rates")

_LATEST = (
    "SELECT asset, kzt_per_unit, sources, observed_at FROM rate_history WHERE asset = ?"
    " ORDER BY observed_at DESC, id DESC LIMIT 1"
)


class StoredRates:
    """A RateSource over the latest recorded rate of each asset (see the module docstring)."""

    def __init__(
        self,
        store: Store,
        *,
        max_age: timedelta,
        poll_seconds: float = 2.0,
        retry_after_seconds: int = 30,
        assets: tuple[Asset, ...] = tuple(Asset),
    ) -> None:
        self._store = store
        self._max_age = max_age
        self._poll = poll_seconds
        self._retry_after = retry_after_seconds
        self._assets = assets
        self._latest: dict[Asset, AssetRate] = {}
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self.loads = 0

    def current(self, asset: Asset, now: datetime) -> AssetRate:
        rate = self._latest.get(asset)
        if rate is None or now - rate.observed_at > self._max_age:
            raise RatesUnavailable(asset, self._retry_after)
        return rate

    def latest(self) -> dict[Asset, AssetRate]:
        """The rates held, fresh or not (for the rates view)."""
        return dict(self._latest)

    async def load(self) -> None:
        """Read the latest row of every asset now."""

        async def read(tx: Tx) -> dict[Asset, AssetRate]:
            found: dict[Asset, AssetRate] = {}
            for asset in self._assets:
                row = await tx.fetchone(_LATEST, (asset.value,))
                if row is not None:
                    found[asset] = AssetRate(
                        asset,
                        Decimal(str(row["kzt_per_unit"])),
                        tuple(jsonutil.loads(row["sources"])),
                        parse_isoformat(row["observed_at"]),
                    )
            return found

        self._latest.update(await self._store.read(read))
        self.loads += 1

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="rates-from-store")

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)

    def refresh_soon(self) -> None:
        self._wake.set()

    async def _run(self) -> None:
        failures = 0
        while True:
            self._wake.clear()
            try:
                await self.load()
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the store is away: keep the rates held; they age out by themselves
                failures += 1
                if failures == 1:
                    log.warning("rates.store_read_failed", error=f"{type(exc).__name__}: {exc}")
            await wait_for_event(self._wake, self._poll)


class SharedRates:
    """The local source while ``local_in_charge()``, else the stored rates (see the module docstring)."""

    def __init__(self, local: RateSource, stored: StoredRates, local_in_charge: Callable[[], bool]) -> None:
        self.local = local
        self.stored = stored
        self._local_in_charge = local_in_charge

    def current(self, asset: Asset, now: datetime) -> AssetRate:
        if self._local_in_charge():
            return self.local.current(asset, now)
        return self.stored.current(asset, now)
