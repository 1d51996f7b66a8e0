"""GET /metrics on a real gateway: every figure is read from the store at scrape time, so it follows what the
service does (create, settle, hold, release), the webhook dispatcher's backlog, the outbox consumers' lag,
the ledger, and the injected clock; and it survives a restart.

Scrapes are parsed with prometheus_client's own parser, so the output is checked as Prometheus reads it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.api.state import WATCHERS, WEBHOOKS
from gateway.chains.watcher import WatcherStatus
from gateway.clock import ManualClock
from gateway.extensions import Extensions
from gateway.invoices.lifecycle import amount_remaining_minor
from gateway.metrics import MetricsExporter, MetricSources
from gateway.money import Asset
from gateway.outbox import OutboxEvent
from gateway.rates.base import AssetRate, RatesUnavailable
from gateway.store import Tx
from sandbox.ledger.consumer import LedgerConsumer
from tests.api.test_live_rates import live_env
from tests.conftest import Gateway, GatewayFactory
from tests.fixtures.rates.fake_providers import FakeProviders, Mode
from tests.unit.test_ledger_consumer import HoldForPayer, fact

Labels = tuple[tuple[str, str], ...]


@dataclass
class Scrape:
    text: str
    samples: dict[tuple[str, Labels], float]
    types: dict[str, str]

    def __call__(self, name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        assert key in self.samples, f"no sample {key}; have {sorted(k for k in self.samples if k[0] == name)}"
        return self.samples[key]

    def has(self, name: str, **labels: str) -> bool:
        return (name, tuple(sorted(labels.items()))) in self.samples


def parse(text: str) -> Scrape:
    samples: dict[tuple[str, Labels], float] = {}
    types: dict[str, str] = {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return Scrape(text, samples, types)


async def scrape(gateway: Gateway) -> Scrape:
    response = await gateway.client.get("/metrics")  # no Authorization header: none is needed
    text = await response.text()
    assert response.status == 200, text
    return parse(text)


async def until(check: Callable[[], Any], seconds: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


async def test_the_scrape_is_prometheus_text_needs_no_key_and_names_no_merchant(gateway: Gateway) -> None:
    invoice = await gateway.create_invoice("1000.00", assets=["BTC"])
    response = await gateway.client.get("/metrics")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    got = parse(await response.text())

    assert got("cryptocity_invoices", status="new") == 1
    assert all(got("cryptocity_invoices", status=s) == 0 for s in ("processing", "settled", "expired"))
    assert got("cryptocity_invoice_value_tiyn", status="new") == 100_000
    assert got("cryptocity_outbox_events_total") >= 1
    assert got.types["cryptocity_outbox_events"] == "counter"
    # Process basics come from the app's own registry.
    assert got("process_cpu_seconds_total") > 0 and got.has("python_info", **_python_info(got))
    assert got("cryptocity_metrics_store_read_seconds") >= 0
    # The writer committed the merchants and the invoice in this process.
    assert got("cryptocity_store_commits_total") >= 1 and got("cryptocity_store_units_total") >= 3
    for secret in (gateway.merchant_id, gateway.other_merchant_id, invoice["id"], gateway.api_key):
        assert secret not in got.text
    prefixes = ("cryptocity_", "process_", "python_")
    assert all(name.startswith(prefixes) for name in got.types), sorted(got.types)


def _python_info(got: Scrape) -> dict[str, str]:
    (labels,) = (dict(labels) for name, labels in got.samples if name == "python_info")
    return labels


async def test_invoices_payments_and_the_settled_volume_follow_the_service(
    make_gateway: GatewayFactory,
) -> None:
    gateway = await make_gateway(Extensions(payment_policy=HoldForPayer()))
    service, clock = gateway.service, gateway.clock
    paid = await gateway.create_invoice("1000.00", assets=["BTC"])
    held = await gateway.create_invoice("2000.00", assets=["BTC"])
    partly = await gateway.create_invoice("1500.00", assets=["BTC"])
    split = await gateway.create_invoice("5000.00", assets=["BTC", "USDT"])
    before = await scrape(gateway)
    assert before("cryptocity_invoices", status="new") == 4
    assert before("cryptocity_invoice_value_tiyn", status="new") == 950_000
    assert before("cryptocity_payments", status="accepted", asset="BTC") == 0

    await service.record_payment(fact(paid, "01" * 32 + ":0"))
    await service.record_payment(fact(held, "02" * 32 + ":0", payer="suspect"))
    half = partly["payment_methods"][0]["amount_due_minor"] // 2
    await service.record_payment(fact(partly, "03" * 32 + ":0", amount=half))
    btc_half = split["payment_methods"][0]["amount_due_minor"] // 2
    await service.record_payment(fact(split, "04" * 32 + ":0", amount=btc_half))
    usdt_due = amount_remaining_minor((await service.get(None, split["id"])).state, Asset.USDT)
    await service.record_payment(fact(split, "0x" + "05" * 32 + ":1", "USDT", amount=usdt_due))
    clock.advance(timedelta(seconds=45))

    got = await scrape(gateway)
    assert got("cryptocity_invoices", status="settled") == 2
    assert got("cryptocity_invoices", status="new") == 2
    assert got("cryptocity_invoice_value_tiyn", status="settled") == 600_000
    assert got("cryptocity_invoices_flagged", flag="on_hold") == 1
    assert got("cryptocity_invoices_flagged", flag="underpaid") == 1
    assert got("cryptocity_invoices_flagged", flag="reorged") == 0
    assert got("cryptocity_payments", status="accepted", asset="BTC") == 3
    assert got("cryptocity_payments", status="accepted", asset="USDT") == 1
    assert got("cryptocity_payments", status="held", asset="BTC") == 1
    assert got("cryptocity_payments_held_oldest_age_seconds") == 45

    await service.release_hold(held["id"], "02" * 32 + ":0")
    after = await scrape(gateway)
    assert after("cryptocity_payments", status="held", asset="BTC") == 0
    assert after("cryptocity_payments_held_oldest_age_seconds") == 0
    assert after("cryptocity_invoices_flagged", flag="on_hold") == 0
    assert after("cryptocity_invoice_value_tiyn", status="settled") == 800_000
    assert after("cryptocity_invoices", status="settled") == 3


async def test_the_webhook_backlog_pending_then_failed_and_the_endpoint_disabled(
    make_gateway: GatewayFactory,
) -> None:
    gateway = await make_gateway(
        CRYPTOCITY_WEBHOOKS__RETRY_SCHEDULE_SECONDS="[10]",  # two attempts, then failed
        CRYPTOCITY_WEBHOOKS__JITTER="0",
        CRYPTOCITY_WEBHOOKS__DISABLE_AFTER_SECONDS="10",
    )
    response = await gateway.client.post(
        "/v1/webhook-endpoints", json={"url": "http://127.0.0.1:9/x"}, headers=gateway.auth()
    )
    assert response.status == 201, await response.text()
    first = await scrape(gateway)
    assert first("cryptocity_webhook_endpoints", status="enabled") == 1
    assert first("cryptocity_webhook_deliveries", status="pending") == 0

    await gateway.create_invoice("1000.00")  # invoice.created → one delivery; port 9 refuses it

    async def first_attempt_failed() -> bool:
        got = await scrape(gateway)
        return got("cryptocity_webhook_deliveries", status="pending") == 1 and (
            got("cryptocity_webhook_endpoints_failing") == 1
        )

    await until(first_attempt_failed)
    gateway.clock.advance(timedelta(seconds=5))  # the retry is due after 10 s
    waiting = await scrape(gateway)
    assert waiting("cryptocity_webhook_oldest_pending_age_seconds") == 5
    assert waiting("cryptocity_webhook_deliveries_due") == 0
    assert waiting("cryptocity_webhook_deliveries", status="failed") == 0

    gateway.clock.advance(timedelta(seconds=7))
    gateway.app[WEBHOOKS].wake()

    async def gave_up() -> bool:
        return (await scrape(gateway))("cryptocity_webhook_deliveries", status="failed") == 1

    await until(gave_up)
    done = await scrape(gateway)
    assert done("cryptocity_webhook_deliveries", status="pending") == 0
    assert done("cryptocity_webhook_oldest_pending_age_seconds") == 0
    assert done("cryptocity_webhook_endpoints", status="disabled") == 1
    assert done("cryptocity_webhook_endpoints", status="enabled") == 0


@dataclass
class Refusing:
    """An outbox consumer that fails on every batch, so its cursor never moves."""

    name: str = "refusing"
    tries: list[int] = field(default_factory=list)

    async def handle(self, tx: Tx, events: Sequence[OutboxEvent]) -> None:
        self.tries.append(len(events))
        raise RuntimeError("this consumer is broken")


async def test_consumer_lag_per_consumer(make_gateway: GatewayFactory) -> None:
    refusing = Refusing()
    gateway = await make_gateway(Extensions(consumers=[refusing]))
    await gateway.create_invoice("1000.00")
    await gateway.create_invoice("2000.00")
    # A consumer of another process (an audit job, say) that has read nothing yet.
    await gateway.store.transaction(
        lambda tx: tx.execute(
            "INSERT INTO consumer_cursors (consumer, position, updated_at) VALUES ('audit', 0, 'x')"
        )
    )

    async def webhooks_caught_up() -> bool:
        got = await scrape(gateway)
        return bool(refusing.tries) and got("cryptocity_outbox_consumer_lag_events", consumer="webhooks") == 0

    await until(webhooks_caught_up)
    got = await scrape(gateway)
    head = got("cryptocity_outbox_events_total")
    assert head >= 2
    assert got("cryptocity_outbox_consumer_lag_events", consumer="refusing") == head  # never a cursor row
    assert got("cryptocity_outbox_consumer_lag_events", consumer="audit") == head


@dataclass
class ObservedRates:
    """Rates for BTC and USDT observed once, at a fixed moment; ETH has none."""

    observed_at: datetime

    def current(self, asset: Asset, now: datetime) -> AssetRate:
        if asset is Asset.ETH:
            raise RatesUnavailable(asset)
        kzt = Decimal("30000000") if asset is Asset.BTC else Decimal("500")
        return AssetRate(asset, kzt, ("test",), self.observed_at)


async def test_rate_age_runs_on_the_injected_clock(make_gateway: GatewayFactory, clock: ManualClock) -> None:
    gateway = await make_gateway(rates=ObservedRates(clock.now()))
    got = await scrape(gateway)
    assert got("cryptocity_rate_age_seconds", asset="BTC") == 0
    assert got("cryptocity_rate_available", asset="BTC") == 1
    assert got("cryptocity_rate_available", asset="ETH") == 0
    assert not got.has("cryptocity_rate_age_seconds", asset="ETH")
    gateway.clock.advance(timedelta(seconds=90))
    later = await scrape(gateway)
    assert later("cryptocity_rate_age_seconds", asset="BTC") == 90
    assert later("cryptocity_rate_age_seconds", asset="USDT") == 90


@pytest.mark.integration
async def test_provider_health_per_provider(
    make_gateway: GatewayFactory, providers: tuple[FakeProviders, str]
) -> None:
    fake, base = providers
    gateway = await make_gateway(**live_env(base, "nbk", "binance", "kraken"))

    async def all_up() -> bool:
        got = await scrape(gateway)
        names = ("nbk", "binance", "kraken")
        return all(got.has("cryptocity_rate_provider_up", provider=n) for n in names) and all(
            got("cryptocity_rate_provider_up", provider=n) == 1 for n in names
        )

    await until(all_up)
    assert (await scrape(gateway))("cryptocity_rate_available", asset="BTC") == 1
    fake.kraken.mode = Mode.DOWN
    gateway.clock.advance(timedelta(seconds=6))  # past the 5 s refresh interval

    async def kraken_down() -> bool:
        return (await scrape(gateway))("cryptocity_rate_provider_up", provider="kraken") == 0

    await until(kraken_down)
    got = await scrape(gateway)
    assert got("cryptocity_rate_provider_consecutive_failures", provider="kraken") >= 1
    assert got("cryptocity_rate_provider_up", provider="binance") == 1


@dataclass
class FakeWatcher:
    status: WatcherStatus


async def test_chain_watchers_report_their_status(gateway: Gateway) -> None:
    got = await scrape(gateway)
    assert not any(name.startswith("cryptocity_chain_") for name, _ in got.samples)  # no node configured

    watchers = gateway.app[WATCHERS]
    watchers["bitcoin"] = FakeWatcher(
        WatcherStatus(tip_height=812, last_poll_ok=True, watched=3, blocks_processed=10, reorgs=1)
    )
    watchers["ethereum"] = FakeWatcher(WatcherStatus(refused="chain id 1 is mainnet"))
    got = await scrape(gateway)
    assert got("cryptocity_chain_up", chain="bitcoin") == 1
    assert got("cryptocity_chain_tip_height", chain="bitcoin") == 812
    assert got("cryptocity_chain_watched_addresses", chain="bitcoin") == 3
    assert got("cryptocity_chain_blocks_processed_total", chain="bitcoin") == 10
    assert got("cryptocity_chain_reorgs_total", chain="bitcoin") == 1
    assert got("cryptocity_chain_up", chain="ethereum") == 0
    assert got("cryptocity_chain_refused", chain="ethereum") == 1
    assert not got.has("cryptocity_chain_tip_height", chain="ethereum")  # never synced


async def test_the_ledger_trial_balance(make_gateway: GatewayFactory) -> None:
    gateway = await make_gateway(Extensions(consumers=[LedgerConsumer()]))
    invoice = await gateway.create_invoice("1000.00", assets=["BTC"])
    await gateway.service.record_payment(fact(invoice, "0a" * 32 + ":0"))

    async def booked() -> bool:
        got = await scrape(gateway)
        return got("cryptocity_outbox_consumer_lag_events", consumer="ledger") == 0 and (
            got("cryptocity_ledger_entries_total") >= 1
        )

    await until(booked)
    assert (await scrape(gateway))("cryptocity_ledger_trial_balance_tiyn") == 0
    # A balance that no entry explains: exactly what the metric exists to show.
    await gateway.store.transaction(
        lambda tx: tx.execute(
            "INSERT INTO ledger_balances (account, balance_tiyn, line_count, last_entry_seq)"
            " VALUES ('test:broken', 5, 1, 1)"
        )
    )
    assert (await scrape(gateway))("cryptocity_ledger_trial_balance_tiyn") == 5


async def test_the_figures_survive_a_restart(make_gateway: GatewayFactory) -> None:
    first = await make_gateway()
    for _ in range(3):
        await first.create_invoice("1000.00")
    await first.client.close()  # runs the app's cleanup: the store is closed

    second = await make_gateway()  # same database file
    got = await scrape(second)
    assert got("cryptocity_invoices", status="new") == 3


async def test_each_exporter_has_its_own_registry(gateway: Gateway) -> None:
    """Two exporters in one process (two apps, say) each render the process collectors without a clash."""
    sources = MetricSources(
        store=gateway.store, clock=gateway.clock, watchers={}, rates_view={}, consumers=("webhooks",)
    )
    texts = [await MetricsExporter().scrape(sources) for _ in range(2)]
    for text in texts:
        got = parse(text.decode())
        assert got.has("process_cpu_seconds_total") and got.has("cryptocity_invoices", status="new")
