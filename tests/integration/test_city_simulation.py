"""A small city day on real bcoin and anvil nodes: the simulation reconciles, and its report says so.

This is the issue's must-show at CI size: a few hundred residents, every payment the real way (SDK,
wallets, chains, watchers, sandbox, ledger, audit log, webhooks to the shops), then the five
reconciliation checks and the report's files and contents.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from gateway.config import load_config
from sandbox.simulation.driver import CitySimulation

pytestmark = pytest.mark.integration

CONFIG = Path(__file__).resolve().parents[2] / "config.toml"

CHART_TITLES = (
    "Payments per hour",
    "Volume by asset",
    "Volume by category",
    "Invoice outcomes",
    "Holds by reason",
    "Limit utilisation",
    "Settlement latency",
    "Webhook delivery latency",
    "BTC rate",
)


async def test_a_small_city_day_reconciles_and_reports(tmp_path: Path) -> None:
    config = load_config(
        CONFIG,
        environ={"CRYPTOCITY_SIMULATION__RESIDENTS": "200", "CRYPTOCITY_SIMULATION__SEED": "11"},
    )
    out = tmp_path / "city"
    figures = await CitySimulation(config, out).run()

    checks = {c["name"]: c for c in figures["reconciliation"]}
    assert len(checks) == 5 and all(c["ok"] for c in checks.values()), checks
    assert figures["ok"] is True

    # What the plan asked for happened: every purchase was offered an invoice or refused with a reason,
    # and the gateway's invoices are the ones the shops opened orders for.
    outcomes = figures["purchases"]["by_outcome"]
    assert sum(outcomes.values()) == figures["plan"]["purchases"] > 30
    created = sum(figures["invoices"]["by_status"].values())
    refused = sum(n for name, n in outcomes.items() if name.startswith("refused_"))
    assert created + refused == figures["plan"]["purchases"]
    assert figures["invoices"]["by_status"].get("settled", 0) > created // 2
    assert figures["sandbox"]["payments"]["judged"] > 0
    assert figures["webhooks"]["received"] > created  # several events per invoice reach the shops
    assert figures["webhooks"]["rejected"] == 0
    assert figures["run"]["peak_rss_bytes"] > 0 and figures["run"]["play_seconds"] > 0
    # Both nodes stamp blocks with the virtual clock: the day's blocks lie within the simulated day.
    start, end = (datetime.fromisoformat(figures["run"][k]) for k in ("start", "end"))
    for chain, (first, last) in figures["run"]["block_times"].items():
        first_at, last_at = datetime.fromisoformat(first), datetime.fromisoformat(last)
        assert (
            start < first_at <= start + timedelta(minutes=10) and end - timedelta(hours=1) <= last_at <= end
        ), (
            chain,
            first,
            last,
        )

    summary = json.loads((out / "summary.json").read_text())
    assert summary["reconciliation"] == figures["reconciliation"]
    html = (out / "report.html").read_text()
    for title in CHART_TITLES:
        assert f"<h3>{title}</h3>" in html
    assert html.count('src="data:image/png;base64,') == len(CHART_TITLES) + 2  # ETH and USDT rates too
    assert "FAILED" not in html and "http://" not in html and "https://" not in html
    for name in ("payments", "invoices", "ledger"):
        lines = (out / "exports" / f"{name}.csv").read_text().splitlines()
        assert lines[-1].startswith("# audit_head seq=")  # the authenticated head closes every export
    invoice_rows = (out / "exports" / "invoices.csv").read_text().splitlines()[1:-1]
    assert len(invoice_rows) == created
