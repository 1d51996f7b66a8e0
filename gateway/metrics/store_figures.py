"""The durable half of /metrics: aggregate figures read from the store at scrape time.

Why from the store and not from in-process counters: the store is the record. Counts read from it are right
after a restart, and stay right when several gateway processes share one database, where each process's own
counters would see only its share.

Why one statement: the SQLite backend's readers run in autocommit, so two statements may see two different
commits (a consumer cursor read after the outbox head could even make a lag negative). A single
``UNION ALL`` statement sees one snapshot, on SQLite and on PostgreSQL alike. Every part returns the same
six columns, ``(family, a, b, n, m, at)``: what the row is about, up to two labels, two numbers and one
timestamp. Every part is an aggregate, so the rows returned are bounded by the number of label
combinations, never by the number of invoices, and the output carries no merchant, invoice or endpoint id.

The scans behind those aggregates still grow with the tables. docs/metrics.md ("Cost") gives what a scrape
costs on a large store and the index that keeps it cheap. That is also why nothing here joins invoices to
payments: settled volume by asset would need a join per settled invoice, which measured ten times the cost
of everything else together.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from gateway import jsonutil
from gateway.clock import isoformat, parse_isoformat
from gateway.store import Row, Tx

# Statuses and flags together: one pass over the invoices gives both (flags is a sorted JSON array, so the
# groups are the few flag combinations that occur, not the invoices).
_INVOICES = (
    "SELECT 'invoices' AS family, status AS a, flags AS b, COUNT(*) AS n, SUM(price_tiyn) AS m, NULL AS at"
    " FROM invoices GROUP BY status, flags"
)
_PAYMENTS = (
    "SELECT 'payments', status, asset, COUNT(*), NULL, MIN(detected_at) FROM payments GROUP BY status, asset"
)
_UNACCOUNTED = (
    "SELECT 'unaccounted', reason, NULL, COUNT(*), NULL, NULL FROM unaccounted_payments GROUP BY reason"
)
# Counted from the (status, next_attempt_at) index alone; the pending ones are few and read apart.
_DELIVERIES = (
    "SELECT 'deliveries', status, NULL, COUNT(*), NULL, NULL FROM webhook_deliveries GROUP BY status"
)
# Parameter: now. A pending delivery whose retry time has not come is waiting by design; one that is due is
# backlog the dispatcher has not reached yet.
_PENDING = (
    "SELECT 'pending', NULL, NULL, COUNT(*), SUM(CASE WHEN next_attempt_at <= ? THEN 1 ELSE 0 END),"
    " MIN(created_at) FROM webhook_deliveries WHERE status = 'pending'"
)
_ENDPOINTS = (
    "SELECT 'endpoints', status, NULL, COUNT(*),"
    " SUM(CASE WHEN failing_since IS NOT NULL THEN 1 ELSE 0 END), NULL"
    " FROM webhook_endpoints WHERE deleted_at IS NULL GROUP BY status"
)
_OUTBOX = "SELECT 'outbox', NULL, NULL, COALESCE(MAX(seq), 0), NULL, NULL FROM outbox"
_CURSORS = "SELECT 'cursor', consumer, NULL, position, NULL, NULL FROM consumer_cursors"
# The ledger's tables come with the gateway's migrations (0004), so they exist even when no ledger consumer
# runs (then both figures are 0). The trial balance is the sum of the maintained balances: one row per
# account rather than one per journal line, and equal to the lines' sum while the ledger is sound.
_LEDGER = (
    "SELECT 'ledger', NULL, NULL, COALESCE(MAX(seq), 0),"
    " (SELECT COALESCE(SUM(balance_tiyn), 0) FROM ledger_balances), NULL FROM ledger_entries"
)

FIGURES_SQL = " UNION ALL ".join(
    (_INVOICES, _PAYMENTS, _UNACCOUNTED, _DELIVERIES, _PENDING, _ENDPOINTS, _OUTBOX, _CURSORS, _LEDGER)
)


@dataclass(frozen=True, slots=True)
class Tally:
    """A count with its tiyn total."""

    count: int = 0
    tiyn: int = 0


@dataclass(slots=True)
class StoreFigures:
    """Everything /metrics reads from the store, as of one snapshot. Keys are label values."""

    invoices: dict[str, Tally] = field(default_factory=dict)  # by status
    flagged: Counter[str] = field(default_factory=Counter)  # by flag
    payments: Counter[tuple[str, str]] = field(default_factory=Counter)  # by (status, asset)
    oldest_held_at: datetime | None = None
    unaccounted: Counter[str] = field(default_factory=Counter)  # by reason
    deliveries: Counter[str] = field(default_factory=Counter)  # by status
    deliveries_due: int = 0
    oldest_pending_delivery_at: datetime | None = None
    endpoints: Counter[str] = field(default_factory=Counter)  # by status, deleted ones left out
    endpoints_failing: int = 0
    outbox_head: int = 0
    cursors: dict[str, int] = field(default_factory=dict)  # by consumer
    ledger_entries: int = 0
    ledger_trial_balance_tiyn: int = 0


async def read_store_figures(tx: Tx, now: datetime) -> StoreFigures:
    """Run the one statement on ``tx`` (a read) and sort its rows into :class:`StoreFigures`."""
    return figures_from_rows(await tx.fetchall(FIGURES_SQL, (isoformat(now),)))


def figures_from_rows(rows: Sequence[Row]) -> StoreFigures:
    figures = StoreFigures()
    for row in rows:
        family, a, b, n, m, at = (row[k] for k in ("family", "a", "b", "n", "m", "at"))
        count = _int(n)
        if family == "invoices":
            figures.invoices[a] = _add(figures.invoices.get(a), count, _int(m))
            for flag in jsonutil.loads(b):
                figures.flagged[flag] += count
        elif family == "payments":
            figures.payments[(a, b)] += count
            if a == "held" and at is not None:
                figures.oldest_held_at = _earliest(figures.oldest_held_at, parse_isoformat(at))
        elif family == "unaccounted":
            figures.unaccounted[a] += count
        elif family == "deliveries":
            figures.deliveries[a] += count
        elif family == "pending":
            figures.deliveries_due = _int(m)
            figures.oldest_pending_delivery_at = None if at is None else parse_isoformat(at)
        elif family == "endpoints":
            figures.endpoints[a] += count
            figures.endpoints_failing += _int(m)
        elif family == "outbox":
            figures.outbox_head = count
        elif family == "cursor":
            figures.cursors[a] = count
        elif family == "ledger":
            figures.ledger_entries, figures.ledger_trial_balance_tiyn = count, _int(m)
    return figures


def _int(value: Any) -> int:
    """SQLite answers int, PostgreSQL's SUM answers Decimal; NULL (an empty SUM) is 0."""
    return 0 if value is None else int(value)


def _add(tally: Tally | None, count: int, tiyn: int) -> Tally:
    if tally is None:
        return Tally(count, tiyn)
    return Tally(tally.count + count, tally.tiyn + tiyn)


def _earliest(current: datetime | None, candidate: datetime) -> datetime:
    return candidate if current is None or candidate < current else current
