"""Rate history: every distinct rate the gateway derived, kept in the store for reports and audits.

Why a table and not just the locked quotes: a quote shows the rate one invoice got, but a report (or a
regulator asking "was this quote fair?") needs the market of that moment too, including minutes in which
nobody bought anything. The refresher hands every snapshot to :meth:`RateHistory.record`; a row is written
only for a rate not recorded before (same asset, value and observation time), so a refresh that brings
nothing new writes nothing, and a restart that re-records the same snapshot is a no-op.

Rows older than ``retention_days`` are pruned at most once an hour, in the same transaction as a record.
Reads are keyset-paginated by row id (ascending: history is read oldest first, as a report draws it).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import structlog

from gateway import jsonutil
from gateway.clock import Clock, isoformat
from gateway.money import Asset
from gateway.rates.base import AssetRate
from gateway.rates.composite import RatesSnapshot
from gateway.store import Store, Tx

log = structlog.get_logger("gateway.rates")

_PRUNE_EVERY = timedelta(hours=1)


@dataclass(frozen=True, slots=True)
class HistoricalRate:
    id: int
    asset: Asset
    kzt_per_unit: Decimal
    sources: tuple[str, ...]
    observed_at: str
    recorded_at: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "asset": self.asset.value,
            "kzt_per_unit": str(self.kzt_per_unit),
            "sources": list(self.sources),
            "observed_at": self.observed_at,
            "recorded_at": self.recorded_at,
        }


@dataclass(frozen=True, slots=True)
class HistoryPage:
    rates: tuple[HistoricalRate, ...]
    has_more: bool


class RateHistory:
    def __init__(self, store: Store, clock: Clock, *, retention_days: float) -> None:
        if retention_days <= 0:
            raise ValueError("retention_days must be positive")
        self._store = store
        self._clock = clock
        self._retention = timedelta(days=retention_days)
        self._last_prune: datetime | None = None

    async def record(self, snapshot: RatesSnapshot) -> None:
        """Store the snapshot's rates not stored yet (the refresher's ``on_snapshot`` hook)."""
        await self.record_rates(snapshot.rates.values())

    async def record_rates(self, rates: Iterable[AssetRate]) -> int:
        rows = [_row(rate) for rate in rates]
        if not rows:
            return 0
        now = self._clock.now()
        prune_before = None
        if self._last_prune is None or now - self._last_prune >= _PRUNE_EVERY:
            prune_before = isoformat(now - self._retention)
        stamp = isoformat(now)

        async def unit(tx: Tx) -> int:
            added = 0
            for asset, value, sources, observed_at in rows:
                added += await tx.execute(
                    "INSERT INTO rate_history (asset, kzt_per_unit, sources, observed_at, recorded_at)"
                    " VALUES (?, ?, ?, ?, ?) ON CONFLICT (asset, observed_at, kzt_per_unit) DO NOTHING",
                    (asset, value, sources, observed_at, stamp),
                )
            if prune_before is not None:
                pruned = await tx.execute("DELETE FROM rate_history WHERE observed_at < ?", (prune_before,))
                if pruned:
                    log.info("rates.history_pruned", rows=pruned, before=prune_before)
            return added

        added = await self._store.transaction(unit)
        if prune_before is not None:
            self._last_prune = now
        return added

    async def page(
        self,
        asset: Asset | None = None,
        *,
        since: str | None = None,
        until: str | None = None,
        after_id: int = 0,
        limit: int = 100,
    ) -> HistoryPage:
        """Rates observed in ``[since, until)``, oldest first, after row ``after_id``."""
        clauses: list[str] = ["id > ?"]
        params: list[object] = [after_id]
        if asset is not None:
            clauses.append("asset = ?")
            params.append(asset.value)
        if since is not None:
            clauses.append("observed_at >= ?")
            params.append(since)
        if until is not None:
            clauses.append("observed_at < ?")
            params.append(until)
        sql = (
            "SELECT id, asset, kzt_per_unit, sources, observed_at, recorded_at FROM rate_history"  # noqa: S608
            f" WHERE {' AND '.join(clauses)} ORDER BY id LIMIT ?"
        )
        params.append(limit + 1)
        rows = await self._store.read(lambda tx: tx.fetchall(sql, tuple(params)))
        rates = tuple(
            HistoricalRate(
                int(row["id"]),
                Asset(row["asset"]),
                Decimal(row["kzt_per_unit"]),
                tuple(jsonutil.loads(row["sources"])),
                row["observed_at"],
                row["recorded_at"],
            )
            for row in rows[:limit]
        )
        return HistoryPage(rates, len(rows) > limit)


def _row(rate: AssetRate) -> tuple[str, str, str, str]:
    sources = jsonutil.dumps(list(rate.sources))
    return (rate.asset.value, str(rate.kzt_per_unit), sources, isoformat(rate.observed_at))
