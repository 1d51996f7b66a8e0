"""The month's charts, drawn with the generic helpers of :mod:`sandbox.report.charts`.

Each chart is named after the table (and CSV file) that holds its figures. Categories that had nothing
this month (an asset nobody paid in, a day without payments) are drawn as zero so that months compare at
a glance; the CSV files list only what happened.
"""

from __future__ import annotations

from dataclasses import dataclass

from sandbox.registry import Category
from sandbox.report.charts import (
    Series,
    bar_chart,
    binned_histogram,
    line_chart,
    png_data_uri,
    seconds_text,
    stacked_bar_chart,
    tiyn_as_kzt,
)
from sandbox.report.data import OUTCOMES, MonthData
from sandbox.report.tables import invoice_statuses

NO_PAYMENTS = "no payments in this period"


@dataclass(frozen=True, slots=True)
class Chart:
    name: str  # the table / CSV file behind it
    title: str
    alt: str  # what the picture shows, for readers who cannot see it
    png: bytes

    @property
    def data_uri(self) -> str:
        return png_data_uri(self.png)


def _label(outcome: str) -> str:
    return outcome.replace("_", " ")


def month_charts(data: MonthData) -> dict[str, Chart]:
    s = data.summary
    volume = s["volume"]
    paid = data.has_payments
    month = data.period.start.strftime("%B %Y")
    days = data.period.days()
    by_day = volume["by_day"]
    charts: list[Chart] = []

    title = f"Volume by day, KZT ({data.period.timezone})"
    charts.append(
        Chart(
            "volume_by_day",
            title,
            "Line chart of the tenge value of counted payments on each day of the month.",
            line_chart(
                days if paid else [],
                [Series("volume", [by_day.get(d.isoformat(), 0) for d in days])] if paid else [],
                title=title,
                ylabel="KZT",
                value_format=tiyn_as_kzt,
                fill=True,
                empty_text=NO_PAYMENTS,
            ),
        )
    )

    assets = list(dict.fromkeys([*data.rules.allowed_assets, *volume["by_asset"]]))
    title = "Volume by asset, KZT"
    charts.append(
        Chart(
            "volume_by_asset",
            title,
            "Bar chart of the tenge value of counted payments per asset.",
            bar_chart(
                assets if paid else [],
                [volume["by_asset"].get(a, 0) for a in assets] if paid else [],
                title=title,
                ylabel="KZT",
                value_format=tiyn_as_kzt,
                empty_text=NO_PAYMENTS,
            ),
        )
    )

    categories = list(dict.fromkeys([*(c.value for c in Category), *volume["by_category"]]))
    title = "Volume by merchant category, KZT"
    charts.append(
        Chart(
            "volume_by_category",
            title,
            "Horizontal bar chart of the tenge value of counted payments per merchant category.",
            bar_chart(
                categories if paid else [],
                [volume["by_category"].get(c, 0) for c in categories] if paid else [],
                title=title,
                ylabel="KZT",
                value_format=tiyn_as_kzt,
                horizontal=True,
                empty_text=NO_PAYMENTS,
            ),
        )
    )

    per_day = {d.day: d for d in data.days}
    title = "Judged payments by day and outcome"
    charts.append(
        Chart(
            "payments_by_day",
            title,
            "Stacked bar chart of the payments judged each day: accepted, released, refunded, still held.",
            stacked_bar_chart(
                [f"{d.day:02d}" for d in days] if paid else [],
                [
                    Series(_label(o), [per_day[d].count(o) if d in per_day else 0 for d in days])
                    for o in OUTCOMES
                ]
                if paid
                else [],
                title=title,
                xlabel=f"day of {month}",
                ylabel="payments",
                integer_values=True,
                empty_text=NO_PAYMENTS,
            ),
        )
    )

    title = "Judged payments by tenge value"
    charts.append(
        Chart(
            "payment_sizes",
            title,
            "Histogram of the tenge value of the payments judged in the month.",
            binned_histogram(
                data.sizes.edges_tiyn,
                data.sizes.counts,
                title=title,
                xlabel="KZT",
                ylabel="payments",
                value_format=tiyn_as_kzt,
                empty_text=NO_PAYMENTS,
            ),
        )
    )

    statuses = invoice_statuses(s["invoices"]["by_status"])
    created = bool(s["invoices"]["created"])
    title = "Invoices created in the month, by status now"
    charts.append(
        Chart(
            "invoice_states",
            title,
            "Bar chart of the month's invoices by their status at report time.",
            bar_chart(
                [name for name, _ in statuses] if created else [],
                [n for _, n in statuses] if created else [],
                title=title,
                ylabel="invoices",
                integer_values=True,
                empty_text="no invoices in this period",
            ),
        )
    )

    settlement = s["settlement_seconds"]
    stats = ("p50", "p90", "p99", "max")
    title = f"Time to settlement ({settlement['count']} invoices settled)"
    charts.append(
        Chart(
            "settlement_times",
            title,
            "Bar chart of the settlement time percentiles p50, p90, p99 and the maximum.",
            bar_chart(
                list(stats) if settlement["count"] else [],
                [float(settlement[k]) for k in stats] if settlement["count"] else [],
                title=title,
                ylabel="time",
                value_format=seconds_text,
                empty_text="no invoice of this period settled",
            ),
        )
    )

    reasons = list(data.holds_by_reason)
    title = "Held payments by reason and decision"
    charts.append(
        Chart(
            "holds_by_reason",
            title,
            "Stacked bar chart of the month's held payments per reason: released, refunded, still held.",
            stacked_bar_chart(
                reasons,
                [Series(_label(o), [data.holds_by_reason[r][o] for r in reasons]) for o in OUTCOMES[1:]]
                if reasons
                else [],
                title=title,
                ylabel="payments",
                integer_values=True,
                empty_text="no payment was held in this period",
            ),
        )
    )

    use = s["limit_utilisation"]
    buckets = use["buckets_percent"]  # in bucket order, as metrics.utilisation builds it
    title = f"Residents by share of their monthly limit used ({use['month']})"
    charts.append(
        Chart(
            "utilisation",
            title,
            "Bar chart of how many residents used what share of their tier's monthly limit.",
            bar_chart(
                [f"{name} %" for name in buckets] if use["residents"] else [],
                list(buckets.values()) if use["residents"] else [],
                title=title,
                ylabel="residents",
                integer_values=True,
                empty_text="no resident paid in this period",
            ),
        )
    )
    return {chart.name: chart for chart in charts}
