"""The regulator's summary of any period: what moved, how checkout behaved, and how close residents are to
their limits. Everything is computed from the store at request time (one read transaction), so it is
right after restarts and never drifts from the ledger and the payments it summarises.

Definitions (docs/regulator-guide.md repeats them for the regulator):

- volume: the tenge value (at each invoice's locked rate) of payments that count (accepted, or released
  from hold), by the day and month they were judged in the pilot's time zone, by asset, and by merchant
  category;
- invoices: invoices created in the period, by their status now; rates of invoices flagged underpaid,
  overpaid or paid late among them;
- settlement time: from an invoice's creation to its first ``invoice.settled`` event, in seconds, for
  invoices of the period that settled (p50, p90, p99, max);
- holds: payments judged in the period that were held, by reason, and the held rate;
- limit utilisation: for each resident who paid in the period's first month, what the month's counted
  payments are as a share of the tier's monthly limit, in buckets;
- unique payers: residents with at least one judged payment, and distinct unregistered payer wallets.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from gateway.clock import isoformat, parse_isoformat
from gateway.store import Tx
from sandbox.limits import Conversion, SandboxRules, Tier

UTILISATION_BUCKETS = ((0, 25), (25, 50), (50, 75), (75, 90), (90, 100), (100, None))


@dataclass(frozen=True, slots=True)
class Period:
    start: datetime
    end: datetime

    @property
    def bounds(self) -> tuple[str, str]:
        return isoformat(self.start), isoformat(self.end)


def percentile(values: list[float], q: float) -> float | None:
    """The nearest-rank ``q``-th percentile (0-100) of ``values``; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


async def summary(tx: Tx, period: Period, rules: SandboxRules, conversion: Conversion) -> dict[str, Any]:
    start, end = period.bounds
    payments = await tx.fetchall(
        "SELECT p.*, coalesce(m.category, 'other') AS category FROM sandbox_payments p"
        " LEFT JOIN merchant_profiles m ON m.merchant_id = p.merchant_id"
        " WHERE p.decided_at >= ? AND p.decided_at < ?",
        (start, end),
    )
    by_day: Counter[str] = Counter()
    by_asset: Counter[str] = Counter()
    by_category: Counter[str] = Counter()
    held_reasons: Counter[str] = Counter()
    residents: set[str] = set()
    unregistered: set[str] = set()
    for row in payments:
        if row["resident_id"]:
            residents.add(row["resident_id"])
        elif row["payer"]:
            unregistered.add(row["payer"])
        if row["decision"] == "held":
            held_reasons[row["reason"] or "unknown"] += 1
        if row["counts"]:
            value = int(row["value_tiyn"])
            day = parse_isoformat(row["decided_at"]).astimezone(rules.zone).date().isoformat()
            by_day[day] += value
            by_asset[row["asset"]] += value
            by_category[row["category"]] += value
    judged = len(payments)
    held = sum(held_reasons.values())

    invoices = await tx.fetchall(
        "SELECT id, status, flags, created_at FROM invoices WHERE created_at >= ? AND created_at < ?",
        (start, end),
    )
    statuses: Counter[str] = Counter(row["status"] for row in invoices)
    flags: Counter[str] = Counter()
    for row in invoices:
        for flag in _flags(row["flags"]):
            flags[flag] += 1
    total = len(invoices)

    settled_at = await tx.fetchall(
        "SELECT o.invoice_id, min(o.created_at) AS settled_at, i.created_at FROM outbox o"
        " JOIN invoices i ON i.id = o.invoice_id WHERE o.type = 'invoice.settled'"
        " AND i.created_at >= ? AND i.created_at < ? GROUP BY o.invoice_id, i.created_at",
        (start, end),
    )
    durations = [
        (parse_isoformat(row["settled_at"]) - parse_isoformat(row["created_at"])).total_seconds()
        for row in settled_at
    ]

    return {
        "period": {"from": start, "to": end, "timezone": rules.config.timezone},
        "volume": {
            "total_tiyn": sum(by_asset.values()),
            "by_day": dict(sorted(by_day.items())),
            "by_asset": dict(sorted(by_asset.items())),
            "by_category": dict(sorted(by_category.items())),
        },
        "invoices": {
            "created": total,
            "by_status": dict(sorted(statuses.items())),
            "rates": {name: _rate(flags[name], total) for name in ("underpaid", "overpaid", "paid_late")},
        },
        "settlement_seconds": {
            "count": len(durations),
            "p50": percentile(durations, 50),
            "p90": percentile(durations, 90),
            "p99": percentile(durations, 99),
            "max": max(durations) if durations else None,
        },
        "payments": {
            "judged": judged,
            "held": held,
            "held_rate": _rate(held, judged),
            "held_by_reason": dict(sorted(held_reasons.items())),
        },
        "limit_utilisation": await utilisation(tx, rules.month_of(period.start), rules, conversion),
        "unique_payers": {"residents": len(residents), "unregistered_wallets": len(unregistered)},
    }


async def utilisation(tx: Tx, month: str, rules: SandboxRules, conversion: Conversion) -> dict[str, Any]:
    rows = await tx.fetchall(
        "SELECT p.resident_id, r.tier, sum(CASE WHEN p.counts = 1 THEN p.value_tiyn ELSE 0 END) AS used"
        " FROM sandbox_payments p JOIN residents r ON r.id = p.resident_id WHERE p.month = ?"
        " GROUP BY p.resident_id, r.tier",
        (month,),
    )
    buckets: dict[str, int] = {_bucket_name(low, high): 0 for low, high in UTILISATION_BUCKETS}
    by_tier: dict[str, list[float]] = defaultdict(list)
    for row in rows:
        limit = rules.tier_limits(Tier(row["tier"]), conversion).monthly_tiyn
        share = 100 * int(row["used"]) / limit if limit else 100.0
        by_tier[row["tier"]].append(share)
        for low, high in UTILISATION_BUCKETS:
            if share >= low and (high is None or share < high):
                buckets[_bucket_name(low, high)] += 1
                break
    return {
        "month": month,
        "residents": len(rows),
        "buckets_percent": buckets,
        "median_percent_by_tier": {tier: percentile(shares, 50) for tier, shares in sorted(by_tier.items())},
    }


def _bucket_name(low: int, high: int | None) -> str:
    return f"{low}-{high}" if high is not None else f"{low}+"


def _rate(part: int, whole: int) -> float:
    return round(part / whole, 4) if whole else 0.0


def _flags(text: str | None) -> list[str]:
    if not text:
        return []
    import json

    value = json.loads(text)
    return [str(v) for v in value] if isinstance(value, list) else []
