"""What a run leaves in its output folder: ``summary.json`` (every figure), ``report.html`` (self-contained:
charts as embedded PNGs, readable offline) and ``exports/`` (the regulator's payments, invoices and ledger
exports of the run, fetched through the regulator API with a regulator token, as a regulator would).

The charts reuse the monthly report's helpers (sandbox/report/charts.py).
"""

from __future__ import annotations

import json
from collections import Counter
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from jinja2 import Environment, select_autoescape

from gateway.money import Asset
from sandbox.limits import SandboxRules
from sandbox.regulator.metrics import Period, percentile, summary, utilisation
from sandbox.regulator.tokens import RegulatorTokens
from sandbox.report import charts
from sandbox.simulation.plan import counts
from sandbox.simulation.reconcile import Check

if TYPE_CHECKING:
    from sandbox.simulation.driver import CitySimulation


def _percentiles(values: list[float]) -> dict[str, float | None]:
    return {
        "p50": percentile(values, 50),
        "p90": percentile(values, 90),
        "p99": percentile(values, 99),
        "max": max(values) if values else None,
    }


async def _figures(sim: CitySimulation, checks: list[Check]) -> dict[str, Any]:
    rules = SandboxRules(sim.gateway_config.sandbox)
    conversion = rules.conversion()
    period = Period(sim.start, sim.clock.now() + timedelta(seconds=1))
    metrics = await sim.store.read(lambda tx: summary(tx, period, rules, conversion))
    used = await sim.store.read(lambda tx: utilisation(tx, rules.month_of(sim.start), rules, conversion))
    statuses = await sim.store.read(
        lambda tx: tx.fetchall("SELECT status, flags, COUNT(*) AS n FROM invoices GROUP BY status, flags")
    )
    by_status: Counter[str] = Counter()
    by_flag: Counter[str] = Counter()
    for row in statuses:
        by_status[row["status"]] += int(row["n"])
        for flag in json.loads(row["flags"]):
            by_flag[flag] += int(row["n"])
    records = sim.state.records
    paid = [r for r in records if r.txid is not None]
    per_hour = Counter((r.purchase.at_seconds // 3600) for r in paid)
    hours = sim.plan.total_seconds // 3600
    webhook_latency = [
        sim.shops.settled_wall[r.invoice_id] - r.broadcast_wall
        for r in paid
        if r.invoice_id in sim.shops.settled_wall and r.broadcast_wall is not None
    ]
    outcomes = Counter(r.outcome for r in records)
    play = sim.timings.get("play_seconds", 0.0)
    return {
        "run": {
            "seed": sim.sim.seed,
            "residents": sim.sim.residents,
            "merchants": len(sim.plan.merchants),
            "days": sim.sim.days,
            "start": sim.start.isoformat(),
            "end": sim.clock.now().isoformat(),
            "aggregate_cap": sim.gateway_config.sandbox.aggregate_cap,
            "setup_seconds": round(sim.timings.get("setup_seconds", 0.0), 2),
            "play_seconds": round(play, 2),
            "play_breakdown_seconds": {
                k.removesuffix("_seconds"): round(sim.timings.get(k, 0.0), 2)
                for k in (
                    "pay_seconds",
                    "mine_seconds",
                    "mine_btc_seconds",
                    "mine_eth_seconds",
                    "drain_seconds",
                    "reconcile_seconds",
                    *sorted(k for k in sim.timings if k.startswith("wait_")),
                )
            },
            "payments_per_second": round(len(paid) / play, 2) if play else None,
            "peak_rss_bytes": sim.peak_rss.peak,
            "block_times": sim.block_times,
        },
        "plan": {"purchases": len(sim.plan.purchases), "by_behaviour": counts(sim.plan)},
        "purchases": {
            "by_outcome": dict(sorted(outcomes.items())),
            "counters": dict(sorted(sim.state.counters.items())),
        },
        "invoices": {"by_status": dict(sorted(by_status.items())), "by_flag": dict(sorted(by_flag.items()))},
        "payments_per_hour": [per_hour.get(h, 0) for h in range(hours)],
        "sandbox": metrics,
        "limit_utilisation": used,
        "webhooks": {
            "received": sim.shops.counts.received,
            "duplicates": sim.shops.counts.duplicates,
            "rejected": sim.shops.counts.rejected,
            "payment_to_settled_webhook_wall_seconds": _percentiles(webhook_latency),
        },
        "rates": {
            "series_hourly": {a.value: sim.market.hourly(a) for a in Asset},
            "quotes_refused_in_outages": sim.market.refused,
        },
        "wallet_failures": sim.failures[:20],
        "reconciliation": [c.view() for c in checks],
        "ok": all(c.ok for c in checks),
    }


async def _exports(sim: CitySimulation) -> list[str]:
    token = (await RegulatorTokens(sim.store, sim.clock).issue("simulation report")).plaintext
    folder = sim.out / "exports"
    folder.mkdir(exist_ok=True)
    start = sim.start.strftime("%Y-%m-%dT%H:%M:%SZ")
    end = (sim.clock.now() + timedelta(seconds=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    written = []
    for name in ("payments", "invoices", "ledger"):
        url = f"{sim.base}/sandbox/v1/exports/{name}?from={start}&to={end}&format=csv"
        async with sim.http.get(url, headers={"Authorization": f"Bearer {token}"}) as response:
            response.raise_for_status()
            (folder / f"{name}.csv").write_bytes(await response.read())
        written.append(f"exports/{name}.csv")
    return written


def _charts(figures: dict[str, Any]) -> list[tuple[str, str]]:
    metrics = figures["sandbox"]
    volume = metrics["volume"]
    made = [
        (
            "Payments per hour",
            charts.bar_chart(
                [f"{h % 24:02d}" for h in range(len(figures["payments_per_hour"]))],
                figures["payments_per_hour"],
                title="Payments sent per virtual hour",
                xlabel="hour (Asia/Almaty)",
                integer_values=True,
                annotate=False,
            ),
        ),
        (
            "Volume by asset",
            charts.bar_chart(
                list(volume["by_asset"]),
                list(volume["by_asset"].values()),
                title="Accepted volume by asset, KZT",
                value_format=charts.tiyn_as_kzt,
            ),
        ),
        (
            "Volume by category",
            charts.bar_chart(
                list(volume["by_category"]),
                list(volume["by_category"].values()),
                title="Accepted volume by merchant category, KZT",
                value_format=charts.tiyn_as_kzt,
                horizontal=True,
            ),
        ),
        (
            "Invoice outcomes",
            charts.bar_chart(
                list(figures["invoices"]["by_status"]),
                list(figures["invoices"]["by_status"].values()),
                title="Invoices by final status",
                integer_values=True,
            ),
        ),
        (
            "Holds by reason",
            charts.bar_chart(
                list(metrics["payments"]["held_by_reason"]),
                list(metrics["payments"]["held_by_reason"].values()),
                title="Held payments by reason",
                integer_values=True,
                horizontal=True,
                empty_text="no holds",
            ),
        ),
        (
            "Limit utilisation",
            charts.bar_chart(
                list(figures["limit_utilisation"].get("buckets_percent", {})),
                list(figures["limit_utilisation"].get("buckets_percent", {}).values()),
                title="Residents by share of their monthly limit used (%)",
                integer_values=True,
            ),
        ),
    ]
    settlement = metrics.get("settlement_seconds", {})
    made.append(
        (
            "Settlement latency",
            charts.bar_chart(
                [k for k in ("p50", "p90", "p99", "max") if settlement.get(k) is not None],
                [settlement[k] for k in ("p50", "p90", "p99", "max") if settlement.get(k) is not None],
                title="Invoice creation to settlement (virtual seconds)",
                value_format=charts.seconds_text,
            ),
        )
    )
    latency = figures["webhooks"]["payment_to_settled_webhook_wall_seconds"]
    made.append(
        (
            "Webhook delivery latency",
            charts.bar_chart(
                [k for k in latency if latency[k] is not None],
                [latency[k] for k in latency if latency[k] is not None],
                title="Payment broadcast to the shop's invoice.settled webhook (wall seconds)",
                value_format=lambda v: f"{v:.2f} s",
            ),
        )
    )
    series = figures["rates"]["series_hourly"]
    for asset in ("BTC", "ETH", "USDT"):
        points = series[asset]
        made.append(
            (
                f"{asset} rate",
                charts.line_chart(
                    [h for h, _ in points],
                    [charts.Series(f"{asset}/KZT", [float(p) for _, p in points])],
                    title=f"{asset}/KZT quoted by the simulated market, by virtual hour",
                    markers=False,
                ),
            )
        )
    return [(title, charts.png_data_uri(png)) for title, png in made]


_TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Alatau CryptoCity simulation report</title>
<style>body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;color:#222;padding:0 1rem}
table{border-collapse:collapse;margin:1rem 0}td,th{border:1px solid #ccc;padding:.3rem .6rem;text-align:left}
.ok{color:#006b3c}.bad{color:#b00020;font-weight:bold}img{max-width:100%}</style></head><body>
<h1>Alatau CryptoCity: a simulated day</h1>
<p>{{ run.residents }} residents, {{ run.merchants }} merchants, {{ run.days }} day(s) from {{ run.start }}; seed {{ run.seed }}.
{{ plan.purchases }} purchases planned; wall time {{ run.play_seconds }} s ({{ run.payments_per_second }} payments/s end to end),
set-up {{ run.setup_seconds }} s, peak memory of the process tree {{ rss }}.</p>
<h2>Reconciliation</h2><table><tr><th>check</th><th>result</th><th>detail</th></tr>
{% for c in reconciliation %}<tr><td>{{ c.name }}</td><td class="{{ 'ok' if c.ok else 'bad' }}">{{ 'passed' if c.ok else 'FAILED' }}</td><td>{{ c.detail }}</td></tr>{% endfor %}
</table>
<h2>For merchants</h2><p>Invoices by final status and flags, webhooks received by the shops.</p>
<table><tr><th>status</th><th>invoices</th></tr>{% for k, v in invoices.by_status.items() %}<tr><td>{{ k }}</td><td>{{ v }}</td></tr>{% endfor %}</table>
<table><tr><th>flag</th><th>invoices</th></tr>{% for k, v in invoices.by_flag.items() %}<tr><td>{{ k }}</td><td>{{ v }}</td></tr>{% endfor %}</table>
<p>Webhooks: {{ webhooks.received }} deliveries received, {{ webhooks.duplicates }} duplicates, {{ webhooks.rejected }} rejected.</p>
<h2>For residents</h2><p>What happened to each purchase, and what the plan asked for.</p>
<table><tr><th>outcome</th><th>purchases</th></tr>{% for k, v in purchases.by_outcome.items() %}<tr><td>{{ k }}</td><td>{{ v }}</td></tr>{% endfor %}</table>
<table><tr><th>planned behaviour</th><th>purchases</th></tr>{% for k, v in plan.by_behaviour.items() %}<tr><td>{{ k }}</td><td>{{ v }}</td></tr>{% endfor %}</table>
<h2>For the regulator</h2>
<p>Accepted volume {{ volume_kzt }} KZT; {{ sandbox.payments.judged }} payments judged, {{ sandbox.payments.held }} held
(rate {{ sandbox.payments.held_rate }}); unique payers {{ sandbox.unique_payers }}. The exports of the run are in
<code>exports/</code>, each ending with the audit chain head.</p>
{% for title, uri in charts %}<h3>{{ title }}</h3><img alt="{{ title }}" src="{{ uri }}">{% endfor %}
</body></html>
"""


async def write_outputs(sim: CitySimulation, checks: list[Check]) -> dict[str, Any]:
    figures = await _figures(sim, checks)
    figures["exports"] = await _exports(sim)
    (sim.out / "summary.json").write_text(json.dumps(figures, indent=2, default=str) + "\n", encoding="utf-8")
    environment = Environment(autoescape=select_autoescape(default=True, default_for_string=True))
    rss = figures["run"]["peak_rss_bytes"]
    html = environment.from_string(_TEMPLATE).render(
        **figures,
        charts=_charts(figures),
        rss="unavailable" if rss is None else f"{rss / 2**20:,.0f} MiB",
        volume_kzt=f"{figures['sandbox']['volume']['total_tiyn'] / 100:,.2f}",
    )
    (sim.out / "report.html").write_text(html, encoding="utf-8")
    return figures
