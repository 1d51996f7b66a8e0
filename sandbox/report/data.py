"""What one month's report says, read from the store through the regulator API's own functions.

- the month's figures are :func:`sandbox.regulator.metrics.summary` for the month's bounds: the very call
  ``GET /sandbox/v1/summary?from=&to=`` makes, so the report and the API cannot disagree;
- the exposure is :func:`sandbox.regulator.exposure.exposure` (valued at report time, like the API);
- the ledger's soundness is :mod:`sandbox.ledger.store`'s ``trial_balance``, ``balances``,
  ``verify_balances`` and ``unbalanced_entries``; the per-account opening balance and the month's
  movement are the one query here that exists nowhere else;
- the decisions of the month use the SQL of ``GET /holds/decided``, and each payment row the exports' view
  (``sandbox.regulator.exports.payment_view``), so ``payments.csv`` reads like ``GET /exports/payments``.

The month's payments are read in pages of ``page_size`` in the export's order (decided_at, chain,
payment_key), and everything per merchant, per day and per size is counted while they stream, so memory
grows with the number of merchants and days, not with the number of payments. (``summary`` itself still
reads the month's payments at once, as the API does.)

Reads are separate ``store.read`` calls, not one snapshot: run the report after the month has closed and
its figures no longer move; the exposure and the ledger's current balances are "now" by definition.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from gateway.clock import parse_isoformat
from gateway.rates import RateSource
from gateway.store import Row, Tx
from sandbox.ledger import store as ledger
from sandbox.ledger.store import Reader
from sandbox.limits import Conversion, SandboxRules, Tier
from sandbox.policy import sandbox_volume
from sandbox.regulator.exports import payment_view
from sandbox.regulator.exposure import exposure
from sandbox.regulator.metrics import summary
from sandbox.report.period import ReportPeriod

PAGE_SIZE = 1000
SIZE_BINS = 20
OUTCOMES = ("accepted", "released", "refunded", "held_open")


# -- the rules in force ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TierFigures:
    tier: str
    per_operation: str  # as configured, e.g. "3 MRP"
    per_operation_tiyn: int
    monthly: str
    monthly_tiyn: int


@dataclass(frozen=True, slots=True)
class RulesInForce:
    """The configured limits and what they come to in tiyn with the conversion used (today's)."""

    timezone: str
    mrp_kzt: Decimal
    usd_kzt: Decimal
    tiers: tuple[TierFigures, ...]
    aggregate_cap: str
    aggregate_cap_tiyn: int
    travel_rule_threshold: str
    travel_rule_tiyn: int
    allowed_assets: tuple[str, ...]
    counted_month_tiyn: int  # the month's counted payments: what the invoice gate compares with the cap


def rules_in_force(rules: SandboxRules, conversion: Conversion, counted_month_tiyn: int) -> RulesInForce:
    config = rules.config
    tiers = []
    for tier in Tier:
        limits = rules.tier_limits(tier, conversion)
        configured = getattr(config.tiers, tier.value)
        tiers.append(
            TierFigures(
                tier.value,
                configured.per_operation,
                limits.per_operation_tiyn,
                configured.monthly,
                limits.monthly_tiyn,
            )
        )
    return RulesInForce(
        timezone=config.timezone,
        mrp_kzt=conversion.mrp_kzt,
        usd_kzt=conversion.usd_kzt,
        tiers=tuple(tiers),
        aggregate_cap=config.aggregate_cap,
        aggregate_cap_tiyn=rules.aggregate_cap_tiyn(conversion),
        travel_rule_threshold=config.travel_rule_threshold,
        travel_rule_tiyn=rules.travel_rule_tiyn(conversion),
        allowed_assets=tuple(asset.value for asset in config.allowed_assets),
        counted_month_tiyn=counted_month_tiyn,
    )


# -- what streams past: merchants, days, sizes, holds ------------------------------------------------------


@dataclass(slots=True)
class MerchantMonth:
    """One merchant's month, by its pseudonymous id (no name: the report goes outside the gateway)."""

    merchant_id: str
    category: str
    licence_status: str
    judged: int = 0
    counted: int = 0
    held: int = 0
    volume_tiyn: int = 0  # counted payments only, like the summary's volume


@dataclass(slots=True)
class DayOutcomes:
    """Payments judged on one day (pilot's time zone), by what became of them."""

    day: date
    accepted: int = 0
    released: int = 0
    refunded: int = 0
    held_open: int = 0

    @property
    def judged(self) -> int:
        return self.accepted + self.released + self.refunded + self.held_open

    def count(self, outcome: str) -> int:
        value: int = getattr(self, outcome)
        return value


def outcome_of(row: Row) -> str:
    """accepted; or, for a held payment, released, refunded or still held (held_open)."""
    if row["decision"] == "accepted":
        return "accepted"
    resolution = row["resolution"]
    return resolution if resolution in ("released", "refunded") else "held_open"


@dataclass(frozen=True, slots=True)
class SizeBins:
    """Judged payments by tenge value: ``counts[i]`` in ``[edges_tiyn[i], edges_tiyn[i+1])``."""

    edges_tiyn: tuple[int, ...] = ()
    counts: tuple[int, ...] = ()


def integer_edges(low: int, high: int, bins: int) -> list[int]:
    """Edges of at most ``bins`` equal integer-width bins covering ``low..high`` (the last edge is past
    ``high``, so every value falls in ``[edge, next edge)``)."""
    if bins < 1 or high < low:
        raise ValueError("need bins >= 1 and low <= high")
    span = high - low + 1
    width = -(-span // bins)  # ceiling division: integers stay integers
    count = -(-span // width)
    return [low + width * n for n in range(count + 1)]


@dataclass(slots=True)
class _Tally:
    """Counters filled while the month's payments stream past."""

    edges: list[int]
    merchants: dict[str, MerchantMonth] = field(default_factory=dict)
    days: dict[date, DayOutcomes] = field(default_factory=dict)
    holds: dict[str, dict[str, int]] = field(default_factory=dict)
    held: list[dict[str, Any]] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)

    def add(self, row: Row, rules: SandboxRules) -> None:
        value = int(row["value_tiyn"])
        merchant = self.merchants.get(row["merchant_id"])
        if merchant is None:
            merchant = self.merchants[row["merchant_id"]] = MerchantMonth(
                row["merchant_id"], row["category"], row["licence_status"]
            )
        merchant.judged += 1
        if row["counts"]:
            merchant.counted += 1
            merchant.volume_tiyn += value
        outcome = outcome_of(row)
        day = parse_isoformat(row["decided_at"]).astimezone(rules.zone).date()
        outcomes = self.days.setdefault(day, DayOutcomes(day))
        setattr(outcomes, outcome, outcomes.count(outcome) + 1)
        if row["decision"] == "held":
            merchant.held += 1
            reason = self.holds.setdefault(row["reason"] or "unknown", dict.fromkeys(OUTCOMES[1:], 0))
            reason[outcome] += 1
            self.held.append(payment_view(row))
        if self.edges:
            index = _bin_index(self.edges, value)
            self.sizes[index] += 1


def _bin_index(edges: list[int], value: int) -> int:
    """The bin ``[edges[i], edges[i+1])`` holding ``value`` (edges from :func:`integer_edges` cover it)."""
    return min(max(bisect_right(edges, value) - 1, 0), len(edges) - 2)


async def month_payments(
    store: Reader, period: ReportPeriod, page_size: int = PAGE_SIZE
) -> AsyncIterator[Row]:
    """Every payment judged in the month, oldest first, with its merchant's category and licence status;
    one short read per page (keyset on the export's order), so memory stays flat."""
    start, end = period.bounds_utc
    after: tuple[str, str, str] = (start, "", "")
    while True:

        async def page(tx: Tx, cursor: tuple[str, str, str] = after) -> list[Row]:
            return await tx.fetchall(
                "SELECT p.*, coalesce(m.category, 'other') AS category,"
                " coalesce(m.licence_status, 'active') AS licence_status FROM sandbox_payments p"
                " LEFT JOIN merchant_profiles m ON m.merchant_id = p.merchant_id"
                " WHERE p.decided_at >= ? AND p.decided_at < ?"
                " AND (p.decided_at, p.chain, p.payment_key) > (?, ?, ?)"
                " ORDER BY p.decided_at, p.chain, p.payment_key LIMIT ?",
                (start, end, *cursor, page_size),
            )

        rows = await store.read(page)
        for row in rows:
            yield row
        if len(rows) < page_size:
            return
        last = rows[-1]
        after = (last["decided_at"], last["chain"], last["payment_key"])


# -- the ledger -------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AccountLine:
    account: str
    opening_tiyn: int  # balance at the month's first instant
    movement_tiyn: int  # lines posted in the month
    closing_tiyn: int  # balance at the month's end
    current_tiyn: int  # balance now (the maintained balance, as GET /ledger/trial-balance shows)


@dataclass(frozen=True, slots=True)
class LedgerCheck:
    accounts: tuple[AccountLine, ...]
    journal_total_tiyn: int  # the sum of every line ever posted: 0 for a sound ledger
    mismatches: tuple[str, ...]  # accounts whose maintained balance is not the sum of their lines
    unbalanced_entries: tuple[str, ...]  # entries whose own lines do not sum to zero

    def totals(self) -> AccountLine:
        return AccountLine(
            "total",
            sum(a.opening_tiyn for a in self.accounts),
            sum(a.movement_tiyn for a in self.accounts),
            sum(a.closing_tiyn for a in self.accounts),
            sum(a.current_tiyn for a in self.accounts),
        )

    @property
    def balanced(self) -> bool:
        total = self.totals()
        return (
            self.journal_total_tiyn == 0
            and total.opening_tiyn == total.movement_tiyn == total.closing_tiyn == total.current_tiyn == 0
            and not self.mismatches
            and not self.unbalanced_entries
        )


async def ledger_check(tx: Tx, period: ReportPeriod) -> LedgerCheck:
    start, end = period.bounds_utc
    rows = await tx.fetchall(
        "SELECT account, coalesce(sum(CASE WHEN posted_at < ? THEN amount_tiyn ELSE 0 END), 0) AS opening,"
        " coalesce(sum(CASE WHEN posted_at >= ? AND posted_at < ? THEN amount_tiyn ELSE 0 END), 0) AS movement"
        " FROM ledger_lines GROUP BY account ORDER BY account",
        (start, start, end),
    )
    current = await ledger.balances(tx)
    by_account = {r["account"]: (int(r["opening"]), int(r["movement"])) for r in rows}
    accounts = tuple(
        AccountLine(name, opening, movement, opening + movement, current.get(name, 0))
        for name in sorted(by_account.keys() | current.keys())
        for opening, movement in (by_account.get(name, (0, 0)),)
    )
    return LedgerCheck(
        accounts,
        await ledger.trial_balance(tx),
        tuple(m.account for m in await ledger.verify_balances(tx)),
        tuple(await ledger.unbalanced_entries(tx)),
    )


# -- the month ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MonthData:
    period: ReportPeriod
    generated_at: datetime
    summary: dict[str, Any]  # exactly GET /sandbox/v1/summary for the month
    rules: RulesInForce
    merchants: tuple[MerchantMonth, ...]  # by category, then volume (largest first)
    days: tuple[DayOutcomes, ...]  # days with judged payments, in order
    holds_by_reason: dict[str, dict[str, int]]  # reason → released / refunded / held_open counts
    held: tuple[
        dict[str, Any], ...
    ]  # payments judged in the month that were held, with their decision so far
    decisions: tuple[dict[str, Any], ...]  # holds decided in the month (GET /holds/decided)
    sizes: SizeBins
    ledger: LedgerCheck
    exposure: dict[str, Any]  # GET /sandbox/v1/exposure at report time

    @property
    def has_payments(self) -> bool:
        return int(self.summary["payments"]["judged"]) > 0


async def gather_month(
    store: Reader,
    period: ReportPeriod,
    rules: SandboxRules,
    conversion: Conversion,
    rates: RateSource,
    now: datetime,
    *,
    page_size: int = PAGE_SIZE,
) -> MonthData:
    """Everything the month's report shows; ``now`` is the report's time (exposure, "generated at")."""
    metrics_period = period.metrics_period
    start, end = period.bounds_utc
    figures = await store.read(lambda tx: summary(tx, metrics_period, rules, conversion))
    position = await store.read(lambda tx: exposure(tx, rates, now))
    books = await store.read(lambda tx: ledger_check(tx, period))
    counted = await store.read(lambda tx: sandbox_volume(tx, period.month))
    decided = await store.read(
        lambda tx: tx.fetchall(
            "SELECT * FROM sandbox_payments WHERE decision = 'held' AND resolution IS NOT NULL"
            " AND resolved_at >= ? AND resolved_at < ? ORDER BY resolved_at",
            (start, end),
        )
    )
    span = await store.read(
        lambda tx: tx.fetchone(
            "SELECT min(value_tiyn) AS low, max(value_tiyn) AS high FROM sandbox_payments"
            " WHERE decided_at >= ? AND decided_at < ?",
            (start, end),
        )
    )
    edges = (
        integer_edges(int(span["low"]), int(span["high"]), SIZE_BINS)
        if span is not None and span["low"] is not None
        else []
    )
    tally = _Tally(edges, sizes=[0] * max(0, len(edges) - 1))
    async for row in month_payments(store, period, page_size):
        tally.add(row, rules)
    merchants = sorted(tally.merchants.values(), key=lambda m: (m.category, -m.volume_tiyn, m.merchant_id))
    return MonthData(
        period=period,
        generated_at=now,
        summary=figures,
        rules=rules_in_force(rules, conversion, counted),
        merchants=tuple(merchants),
        days=tuple(tally.days[d] for d in sorted(tally.days)),
        holds_by_reason=dict(sorted(tally.holds.items())),
        held=tuple(tally.held),
        decisions=tuple(payment_view(row) for row in decided),
        sizes=SizeBins(tuple(edges), tuple(tally.sizes)),
        ledger=books,
        exposure=position,
    )
