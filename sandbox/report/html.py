"""``report.html``: one self-contained page (charts as PNG ``data:`` URIs, styles inline, no script, nothing
fetched from anywhere), rendered with Jinja2 with autoescaping on, so no stored text (a note, a category)
can become markup.

The page is laid out as sections; each pairs its charts with the tables behind them and says in a
sentence what the figures mean (docs/sandbox-report.md says it at length).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any, Final

import jinja2

from gateway.checkout.render import format_kzt
from gateway.clock import isoformat
from sandbox.audit.verify import VerifyResult
from sandbox.report.charts import plain_number, seconds_text
from sandbox.report.data import MonthData
from sandbox.report.figures import Chart
from sandbox.report.tables import Cell, Kind, Table

_HERE: Final = Path(__file__).parent


@dataclass(frozen=True, slots=True)
class Section:
    id: str
    title: str
    intro: str
    charts: Sequence[Chart] = ()
    tables: Sequence[Table] = ()


@dataclass(frozen=True, slots=True)
class Tile:
    label: str
    value: str
    note: str = ""
    alarm: bool = False


@dataclass(frozen=True, slots=True)
class ReportMeta:
    """What the command line adds: who sends the report, from which gateway."""

    participant: str
    gateway: str
    files: Sequence[str] = field(default_factory=tuple)  # the bundle's other files, for the list at the end


def kzt(amount_tiyn: int) -> str:
    """Signed tenge for people: ``12,500.00 ₸``, ``−300.00 ₸``."""
    return ("−" if amount_tiyn < 0 else "") + format_kzt(abs(amount_tiyn), "en")


def cell_text(value: Cell, kind: str) -> str:
    """A table cell as the page shows it (the CSV keeps the raw value)."""
    if value is None or value == "":
        return "—"
    if kind == Kind.TIYN:
        return kzt(int(value))
    if kind == Kind.COUNT:
        return plain_number(int(value))
    if kind == Kind.RATE:
        return f"{float(value) * 100:.1f} %"
    if kind == Kind.PERCENT:
        return f"{float(value):.1f} %"
    if kind == Kind.SECONDS:
        return seconds_text(float(value))
    return str(value)


def local_time(moment: datetime, data: MonthData) -> str:
    zone = data.period.start.tzinfo
    return moment.astimezone(zone).strftime("%Y-%m-%d %H:%M:%S %z")


@cache
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(_HERE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(cell=cell_text, kzt=kzt, number=plain_number)
    return env


def _tiles(data: MonthData, audit: VerifyResult) -> list[Tile]:
    s = data.summary
    settlement = s["settlement_seconds"]
    payments = s["payments"]
    rules = data.rules
    return [
        Tile("Volume (counted payments)", kzt(s["volume"]["total_tiyn"])),
        Tile("Payments judged", plain_number(payments["judged"])),
        Tile(
            "Held",
            plain_number(payments["held"]),
            f"{payments['held_rate'] * 100:.1f} % of judged" if payments["judged"] else "",
        ),
        Tile("Invoices created", plain_number(s["invoices"]["created"])),
        Tile(
            "Median time to settle",
            seconds_text(settlement["p50"]) if settlement["count"] else "—",
            f"{settlement['count']} settled",
        ),
        Tile(
            "Payers",
            plain_number(s["unique_payers"]["residents"]),
            f"residents; {s['unique_payers']['unregistered_wallets']} unregistered wallets",
        ),
        Tile(
            "Ledger trial balance",
            kzt(data.ledger.journal_total_tiyn),
            "balances" if data.ledger.balanced else "DOES NOT BALANCE",
            alarm=not data.ledger.balanced,
        ),
        Tile(
            "Counted this month vs aggregate cap",
            kzt(rules.counted_month_tiyn),
            f"of {kzt(rules.aggregate_cap_tiyn)} ({rules.aggregate_cap})",
        ),
        Tile(
            "Audit log",
            "verified" if audit.ok else "VERIFICATION FAILED",
            (audit.problem.kind.value if audit.problem is not None else "")
            or ("head authenticated" if audit.authenticated else "head not checked with the key"),
            alarm=not audit.ok,
        ),
    ]


def _sections(tables: dict[str, Table], charts: dict[str, Chart]) -> list[Section]:
    def t(*names: str) -> list[Table]:
        return [tables[n] for n in names]

    def c(*names: str) -> list[Chart]:
        return [charts[n] for n in names]

    return [
        Section(
            "volume",
            "Volume",
            "The tenge value, at each invoice's locked rate, of the payments that count (accepted, or released"
            " from hold), by the day they were judged in the pilot's time zone, by asset and by merchant category.",
            c("volume_by_day", "volume_by_asset", "volume_by_category"),
            t("volume_by_day", "volume_by_asset", "volume_by_category"),
        ),
        Section(
            "payments",
            "Payments",
            "Every payment the sandbox judged in the month, by day and by what became of it (accepted at once,"
            " held then released, held then refunded, still held), and by tenge value.",
            c("payments_by_day", "payment_sizes"),
            t("payments_by_day", "payment_sizes"),
        ),
        Section(
            "invoices",
            "Invoices",
            "Invoices created in the month, by their status at report time, and the share flagged underpaid,"
            " overpaid or paid late. Settlement time runs from an invoice's creation to its first settlement.",
            c("invoice_states", "settlement_times"),
            t("invoice_states", "invoice_flags", "settlement_times"),
        ),
        Section(
            "holds",
            "Holds and decisions",
            "Payments held by the sandbox policy in the month, by reason and by the regulator's decision so far,"
            " each held payment, and the decisions taken in the month (on holds of this or earlier months).",
            c("holds_by_reason"),
            t("holds_by_reason", "holds", "decisions"),
        ),
        Section(
            "utilisation",
            "Limit utilisation",
            "For each resident who paid in the month: the month's counted payments as a share of the tier's"
            " monthly limit (converted with the conversion shown under Limits).",
            c("utilisation"),
            t("utilisation", "utilisation_by_tier"),
        ),
        Section(
            "merchants",
            "Merchants",
            "Merchants with payments judged in the month, by pseudonymous id, category and counted volume.",
            (),
            t("merchants"),
        ),
        Section(
            "ledger",
            "Digital-tenge ledger",
            "Every account's balance at the month's start and end, the month's movement, and the balance now."
            " Each column must sum to zero: every entry books as much out of one account as into others.",
            (),
            t("trial_balance"),
        ),
        Section(
            "exposure",
            "Exposure",
            "The crypto received on invoice addresses that the chains still show, at the locked rates, as"
            " booked in the ledger, and at the rate at report time. Spends from invoice addresses are not"
            " followed yet, so this is what was received, not what is still there.",
            (),
            t("exposure"),
        ),
    ]


def render_report(
    data: MonthData, audit: VerifyResult, tables: dict[str, Table], charts: dict[str, Chart], meta: ReportMeta
) -> str:
    """The page as text (UTF-8 when written)."""
    context: dict[str, Any] = {
        "data": data,
        "s": data.summary,
        "audit": audit,
        "meta": meta,
        "tiles": _tiles(data, audit),
        "limits": tables["limits"],
        "sections": _sections(tables, charts),
        "period_local": (local_time(data.period.start, data), local_time(data.period.end, data)),
        "generated_utc": isoformat(data.generated_at),
        "generated_local": local_time(data.generated_at, data),
    }
    return _environment().get_template("report.html").render(context)
