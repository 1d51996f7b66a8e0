"""The report's tables, each written once as a CSV file and shown in the HTML page from the same rows.

A :class:`Table` is a file name, columns and rows. Money columns (kind ``tiyn``) hold integer tiyn; in
the CSV a ``…_kzt`` column beside them repeats the amount as a plain decimal (``12500.00``) where that
helps a reader; decimal rates are strings (``48450000.00``), never floats. A CSV has a header row and
one row per item, and no total row (the HTML page shows totals under its tables). A table with nothing to
list is written with its header alone.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum

from gateway.invoices.lifecycle import Status
from gateway.money import format_tiyn
from sandbox.csvutil import csv_line
from sandbox.report.data import OUTCOMES, MonthData

Cell = str | int | float | Decimal | None


class Kind(StrEnum):
    TEXT = "text"
    COUNT = "count"
    TIYN = "tiyn"
    DECIMAL = "decimal"  # a Decimal or an integer of crypto minor units, kept as text
    RATE = "rate"  # a share between 0 and 1
    PERCENT = "percent"
    SECONDS = "seconds"


@dataclass(frozen=True, slots=True)
class Column:
    name: str  # the CSV header
    title: str  # the HTML header
    kind: Kind = Kind.TEXT
    kzt: bool = False  # TIYN only: add "<name minus _tiyn>_kzt" after it in the CSV


@dataclass(frozen=True, slots=True)
class Table:
    name: str  # the CSV file is <name>.csv
    title: str
    columns: tuple[Column, ...]
    rows: tuple[tuple[Cell, ...], ...]
    totals: tuple[Cell, ...] | None = None  # under the HTML table only
    html_limit: int | None = None  # show at most this many rows in the page (the CSV has them all)

    @property
    def filename(self) -> str:
        return f"{self.name}.csv"

    def csv_header(self) -> list[str]:
        header: list[str] = []
        for column in self.columns:
            header.append(column.name)
            if column.kzt:
                header.append(kzt_column_name(column.name))
        return header

    def csv_rows(self) -> Iterator[list[str]]:
        for row in self.rows:
            yield csv_cells(self.columns, row)

    def to_csv(self) -> bytes:
        return csv_bytes(self.csv_header(), self.csv_rows())


def kzt_column_name(name: str) -> str:
    return (name[: -len("_tiyn")] if name.endswith("_tiyn") else name) + "_kzt"


def csv_cells(columns: Sequence[Column], row: Sequence[Cell]) -> list[str]:
    if len(columns) != len(row):
        raise ValueError(f"{len(row)} cells for {len(columns)} columns")
    cells: list[str] = []
    for column, value in zip(columns, row, strict=True):
        cells.append(csv_text(value))
        if column.kzt:
            cells.append("" if value is None else kzt_plain(int(value)))
    return cells


def csv_text(value: Cell) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def csv_lines(rows: Iterable[Sequence[str]]) -> bytes:
    """CSV rows as UTF-8, ``\n``-terminated, quoted where needed: the rows of the API's exports."""
    return b"".join(csv_line(row) for row in rows)


def csv_bytes(header: Sequence[str], rows: Iterable[Sequence[str]]) -> bytes:
    return csv_lines(itertools.chain([header], rows))


def kzt_plain(amount_tiyn: int) -> str:
    """Signed tenge with two decimals and no grouping, for CSV: ``-12500.05``."""
    return ("-" if amount_tiyn < 0 else "") + format_tiyn(abs(amount_tiyn))


# -- the month's tables -----------------------------------------------------------------------------------


def _tiyn(name: str, title: str, *, kzt: bool = True) -> Column:
    return Column(name, title, Kind.TIYN, kzt)


def _count(name: str, title: str) -> Column:
    return Column(name, title, Kind.COUNT)


HTML_ROWS = 500


def month_tables(data: MonthData) -> dict[str, Table]:
    """Every table of the month's report by name, in the order the bundle lists them."""
    s = data.summary
    tables = [
        _summary(data),
        _limits(data),
        Table(
            "volume_by_day",
            "Volume by day",
            (Column("day", "Day"), _tiyn("volume_tiyn", "Volume")),
            tuple((day, value) for day, value in s["volume"]["by_day"].items()),
            totals=("total", s["volume"]["total_tiyn"]),
        ),
        Table(
            "volume_by_asset",
            "Volume by asset",
            (Column("asset", "Asset"), _tiyn("volume_tiyn", "Volume")),
            tuple((asset, value) for asset, value in s["volume"]["by_asset"].items()),
            totals=("total", s["volume"]["total_tiyn"]),
        ),
        Table(
            "volume_by_category",
            "Volume by merchant category",
            (Column("category", "Category"), _tiyn("volume_tiyn", "Volume")),
            tuple((category, value) for category, value in s["volume"]["by_category"].items()),
            totals=("total", s["volume"]["total_tiyn"]),
        ),
        Table(
            "payments_by_day",
            "Judged payments by day and outcome",
            (
                Column("day", "Day"),
                _count("judged", "Judged"),
                *(_count(outcome, outcome.replace("_", " ").capitalize()) for outcome in OUTCOMES),
            ),
            tuple(
                (d.day.isoformat(), d.judged, *(d.count(outcome) for outcome in OUTCOMES)) for d in data.days
            ),
            totals=(
                "total",
                sum(d.judged for d in data.days),
                *(sum(d.count(outcome) for d in data.days) for outcome in OUTCOMES),
            ),
        ),
        Table(
            "payment_sizes",
            "Judged payments by tenge value",
            (
                _tiyn("from_tiyn", "From"),
                _tiyn("to_tiyn", "Up to (excluded)"),
                _count("payments", "Payments"),
            ),
            tuple(
                (low, high, count)
                for low, high, count in zip(
                    data.sizes.edges_tiyn, data.sizes.edges_tiyn[1:], data.sizes.counts, strict=False
                )
            ),
        ),
        Table(
            "invoice_states",
            "Invoices created in the month, by status now",
            (Column("status", "Status"), _count("invoices", "Invoices")),
            tuple((status, count) for status, count in s["invoices"]["by_status"].items()),
            totals=("total", s["invoices"]["created"]),
        ),
        Table(
            "invoice_flags",
            "Share of the month's invoices flagged",
            (Column("flag", "Flag"), Column("rate", "Share", Kind.RATE)),
            tuple((flag, rate) for flag, rate in s["invoices"]["rates"].items())
            if s["invoices"]["created"]
            else (),
        ),
        Table(
            "settlement_times",
            "Time from invoice creation to settlement",
            (Column("statistic", "Statistic"), Column("seconds", "Seconds", Kind.SECONDS)),
            tuple((name, s["settlement_seconds"][name]) for name in ("p50", "p90", "p99", "max"))
            if s["settlement_seconds"]["count"]
            else (),
        ),
        Table(
            "holds_by_reason",
            "Held payments by reason and decision",
            (
                Column("reason", "Reason"),
                _count("held", "Held"),
                *(_count(outcome, outcome.replace("_", " ").capitalize()) for outcome in OUTCOMES[1:]),
            ),
            tuple(
                (reason, sum(counts.values()), *(counts[o] for o in OUTCOMES[1:]))
                for reason, counts in data.holds_by_reason.items()
            ),
            totals=(
                "total",
                s["payments"]["held"],
                *(sum(c[o] for c in data.holds_by_reason.values()) for o in OUTCOMES[1:]),
            ),
        ),
        Table(
            "holds",
            "Payments held in the month",
            (
                Column("decided_at", "Judged at (UTC)"),
                Column("chain", "Chain"),
                Column("payment_key", "Payment"),
                Column("invoice_id", "Invoice"),
                Column("merchant_id", "Merchant"),
                Column("resident_id", "Resident"),
                Column("asset", "Asset"),
                Column("amount_minor", "Amount (minor units)", Kind.DECIMAL),
                _tiyn("value_tiyn", "Value"),
                Column("reason", "Reason"),
                Column("resolution", "Decision"),
                Column("resolved_at", "Decided at (UTC)"),
                Column("resolved_by", "Decided by (token id)"),
            ),
            tuple(
                tuple(
                    view[name]
                    for name in (
                        "decided_at",
                        "chain",
                        "payment_key",
                        "invoice_id",
                        "merchant_id",
                        "resident_id",
                        "asset",
                        "amount_minor",
                        "value_tiyn",
                        "reason",
                        "resolution",
                        "resolved_at",
                        "resolved_by",
                    )
                )
                for view in data.held
            ),
            html_limit=HTML_ROWS,
        ),
        Table(
            "decisions",
            "Regulator decisions on holds made in the month",
            (
                Column("resolved_at", "Decided at (UTC)"),
                Column("resolution", "Decision"),
                Column("resolved_by", "Decided by (token id)"),
                Column("chain", "Chain"),
                Column("payment_key", "Payment"),
                Column("invoice_id", "Invoice"),
                Column("merchant_id", "Merchant"),
                Column("resident_id", "Resident"),
                _tiyn("value_tiyn", "Value"),
                Column("reason", "Held for"),
                Column("decided_at", "Judged at (UTC)"),
                Column("refund_address", "Refund address"),
                Column("note", "Note"),
            ),
            tuple(
                tuple(
                    view[name]
                    for name in (
                        "resolved_at",
                        "resolution",
                        "resolved_by",
                        "chain",
                        "payment_key",
                        "invoice_id",
                        "merchant_id",
                        "resident_id",
                        "value_tiyn",
                        "reason",
                        "decided_at",
                        "refund_address",
                        "note",
                    )
                )
                for view in data.decisions
            ),
            html_limit=HTML_ROWS,
        ),
        _utilisation(data),
        Table(
            "utilisation_by_tier",
            f"Median share of the monthly limit used, by tier ({s['limit_utilisation']['month']})",
            (Column("tier", "Tier"), Column("median_percent", "Median", Kind.PERCENT)),
            tuple((tier, share) for tier, share in s["limit_utilisation"]["median_percent_by_tier"].items()),
        ),
        Table(
            "merchants",
            "Merchants by category and volume",
            (
                Column("merchant_id", "Merchant"),
                Column("category", "Category"),
                Column("licence_status", "Licence"),
                _count("judged", "Judged"),
                _count("counted", "Counted"),
                _count("held", "Held"),
                _tiyn("volume_tiyn", "Volume"),
            ),
            tuple(
                (m.merchant_id, m.category, m.licence_status, m.judged, m.counted, m.held, m.volume_tiyn)
                for m in data.merchants
            ),
            html_limit=HTML_ROWS,
        ),
        _trial_balance(data),
        _exposure(data),
    ]
    return {table.name: table for table in tables}


def _summary(data: MonthData) -> Table:
    s, rules = data.summary, data.rules
    settlement = s["settlement_seconds"]
    rows: list[tuple[Cell, ...]] = [
        ("month", data.period.month),
        ("period_from", s["period"]["from"]),
        ("period_to", s["period"]["to"]),
        ("timezone", s["period"]["timezone"]),
        ("volume_total_tiyn", s["volume"]["total_tiyn"]),
        ("invoices_created", s["invoices"]["created"]),
        *((f"invoices_{name}_rate", rate) for name, rate in s["invoices"]["rates"].items()),
        ("payments_judged", s["payments"]["judged"]),
        ("payments_held", s["payments"]["held"]),
        ("payments_held_rate", s["payments"]["held_rate"]),
        ("settlement_count", settlement["count"]),
        *((f"settlement_{name}_seconds", settlement[name]) for name in ("p50", "p90", "p99", "max")),
        ("unique_residents", s["unique_payers"]["residents"]),
        ("unregistered_wallets", s["unique_payers"]["unregistered_wallets"]),
        ("utilisation_month", s["limit_utilisation"]["month"]),
        ("utilisation_residents", s["limit_utilisation"]["residents"]),
        ("ledger_journal_total_tiyn", data.ledger.journal_total_tiyn),
        ("ledger_balanced", "true" if data.ledger.balanced else "false"),
        ("counted_month_tiyn", rules.counted_month_tiyn),
        ("aggregate_cap_tiyn", rules.aggregate_cap_tiyn),
        ("allowed_assets", " ".join(rules.allowed_assets)),
        ("mrp_kzt", rules.mrp_kzt),
        ("usd_kzt", rules.usd_kzt),
    ]
    return Table("summary", "Summary", (Column("metric", "Metric"), Column("value", "Value")), tuple(rows))


def _limits(data: MonthData) -> Table:
    rules = data.rules
    rows: list[tuple[Cell, ...]] = []
    for tier in rules.tiers:
        rows.append((f"{tier.tier} per operation", tier.per_operation, tier.per_operation_tiyn))
        rows.append((f"{tier.tier} per month", tier.monthly, tier.monthly_tiyn))
    rows.append(("sandbox aggregate cap", rules.aggregate_cap, rules.aggregate_cap_tiyn))
    rows.append(("travel rule threshold", rules.travel_rule_threshold, rules.travel_rule_tiyn))
    return Table(
        "limits",
        "Limits in force",
        (Column("rule", "Rule"), Column("configured", "As configured"), _tiyn("limit_tiyn", "In tenge")),
        tuple(rows),
    )


def _utilisation(data: MonthData) -> Table:
    use = data.summary["limit_utilisation"]
    return Table(
        "utilisation",
        f"Residents by share of their monthly limit used ({use['month']})",
        (Column("bucket_percent", "Share of the limit (%)"), _count("residents", "Residents")),
        tuple(use["buckets_percent"].items()) if use["residents"] else (),  # in bucket order
        totals=("total", use["residents"]) if use["residents"] else None,
    )


def _trial_balance(data: MonthData) -> Table:
    books = data.ledger
    total = books.totals()
    return Table(
        "trial_balance",
        "Digital-tenge ledger: trial balance",
        (
            Column("account", "Account"),
            _tiyn("opening_tiyn", "Opening", kzt=False),
            _tiyn("movement_tiyn", "Month's movement", kzt=False),
            _tiyn("closing_tiyn", "Closing", kzt=False),
            _tiyn("current_tiyn", "Now", kzt=False),
        ),
        tuple(
            (a.account, a.opening_tiyn, a.movement_tiyn, a.closing_tiyn, a.current_tiyn)
            for a in books.accounts
        ),
        totals=("total", total.opening_tiyn, total.movement_tiyn, total.closing_tiyn, total.current_tiyn),
    )


def _exposure(data: MonthData) -> Table:
    position = data.exposure
    totals = position["totals"]
    return Table(
        "exposure",
        f"Open crypto position at {position['as_of']}",
        (
            Column("asset", "Asset"),
            _count("decimals", "Decimals"),
            Column("on_addresses_minor", "On invoice addresses (minor units)", Kind.DECIMAL),
            Column("current_rate_kzt", "Rate now (KZT per unit)", Kind.DECIMAL),
            _tiyn("locked_value_tiyn", "At locked rates", kzt=False),
            _tiyn("booked_tiyn", "Booked in the ledger", kzt=False),
            _tiyn("current_value_tiyn", "At the rate now", kzt=False),
            _tiyn("unrealised_fx_tiyn", "Unrealised FX", kzt=False),
        ),
        tuple(
            (
                asset,
                view["decimals"],
                view["on_addresses_minor"],
                view["current_rate_kzt"],
                view["locked_value_tiyn"],
                view["booked_tiyn"],
                view["current_value_tiyn"],
                view["unrealised_fx_tiyn"],
            )
            for asset, view in position["assets"].items()
        ),
        totals=(
            "total",
            None,
            None,
            None,
            totals["locked_value_tiyn"],
            totals["booked_tiyn"],
            totals["current_value_tiyn"],
            totals["unrealised_fx_tiyn"],
        ),
    )


def invoice_statuses(by_status: dict[str, int]) -> list[tuple[str, int]]:
    """Every lifecycle status in lifecycle order, zero where none (for the chart; the CSV lists what the
    summary lists)."""
    known = [(status.value, int(by_status.get(status.value, 0))) for status in Status]
    return known + [(name, int(n)) for name, n in by_status.items() if name not in {s.value for s in Status}]
