"""Prometheus metric families from what the gateway knows: store figures, chain watchers, rates.

Pure functions of their inputs (no store, no clock of their own), so tests check each series directly and
the exporter stays a thin shell. Every label set that can exist is written out, with 0 where nothing is
counted: a series that appears only once something happens makes ``rate()`` and alerts on absence unreliable.

Ages are ``now - moment`` on the gateway's injected clock, never below 0, and 0 when there is nothing to be
old (no held payment, no pending delivery), so an alert such as ``> 3600`` needs no ``absent()`` guard.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any, Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from gateway.chains.watcher import WatcherStatus
from gateway.clock import parse_isoformat
from gateway.invoices.lifecycle import Flag, PaymentStatus, Status
from gateway.metrics.store_figures import StoreFigures, Tally
from gateway.money import Asset
from gateway.store.postgres import PostgresStats
from gateway.store.sqlite import WriterStats

# The values the CHECK constraints of migrations 0003 and 0006 allow.
DELIVERY_STATUSES = ("pending", "succeeded", "failed")
ENDPOINT_STATUSES = ("enabled", "disabled")
UNACCOUNTED_REASONS = ("unknown_token", "asset_not_accepted")


class Watched(Protocol):
    """A chain watcher as /metrics sees it: only its status (gateway/chains/watcher.py)."""

    @property
    def status(self) -> WatcherStatus: ...


def _age_seconds(now: datetime, moment: datetime | None) -> float:
    return 0.0 if moment is None else max(0.0, (now - moment).total_seconds())


def _gauge(name: str, doc: str, labels: Iterable[str] = ()) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=list(labels))


# -- from the store ---------------------------------------------------------------------------------------


def invoice_families(figures: StoreFigures) -> list[Metric]:
    count = _gauge("cryptocity_invoices", "Invoices by lifecycle status.", ["status"])
    value = _gauge(
        "cryptocity_invoice_value_tiyn",
        'Sum of invoice prices in tiyn, by status (status="settled": the settled volume).',
        ["status"],
    )
    for status in Status:
        tally = figures.invoices.get(status.value, Tally())
        count.add_metric([status.value], tally.count)
        value.add_metric([status.value], tally.tiyn)
    flagged = _gauge(
        "cryptocity_invoices_flagged", "Invoices carrying a flag, whatever their status.", ["flag"]
    )
    for flag in Flag:
        flagged.add_metric([flag.value], figures.flagged[flag.value])
    return [count, value, flagged]


def payment_families(figures: StoreFigures, now: datetime) -> list[Metric]:
    payments = _gauge(
        "cryptocity_payments", "Payments to invoice addresses, by status and asset.", ["status", "asset"]
    )
    for status in PaymentStatus:
        for asset in Asset:
            payments.add_metric([status.value, asset.value], figures.payments[(status.value, asset.value)])
    held = _gauge(
        "cryptocity_payments_held_oldest_age_seconds",
        "Age of the oldest payment on hold (waiting for the regulator); 0 when none is held.",
    )
    held.add_metric([], _age_seconds(now, figures.oldest_held_at))
    unaccounted = _gauge(
        "cryptocity_unaccounted_payments",
        "Money at invoice addresses that cannot count (unknown token, asset not offered), by reason.",
        ["reason"],
    )
    for reason in UNACCOUNTED_REASONS:
        unaccounted.add_metric([reason], figures.unaccounted[reason])
    return [payments, held, unaccounted]


def webhook_families(figures: StoreFigures, now: datetime) -> list[Metric]:
    deliveries = _gauge("cryptocity_webhook_deliveries", "Webhook deliveries by status.", ["status"])
    for status in DELIVERY_STATUSES:
        deliveries.add_metric([status], figures.deliveries[status])
    due = _gauge(
        "cryptocity_webhook_deliveries_due",
        "Pending deliveries whose next attempt is due now (the dispatcher's backlog, retries not yet due excluded).",
    )
    due.add_metric([], figures.deliveries_due)
    oldest = _gauge(
        "cryptocity_webhook_oldest_pending_age_seconds",
        "Age of the oldest pending delivery since it was queued; 0 when none is pending.",
    )
    oldest.add_metric([], _age_seconds(now, figures.oldest_pending_delivery_at))
    endpoints = _gauge(
        "cryptocity_webhook_endpoints", "Webhook endpoints (deleted ones excluded), by status.", ["status"]
    )
    for status in ENDPOINT_STATUSES:
        endpoints.add_metric([status], figures.endpoints[status])
    failing = _gauge(
        "cryptocity_webhook_endpoints_failing",
        "Endpoints whose deliveries have failed since their last success.",
    )
    failing.add_metric([], figures.endpoints_failing)
    return [deliveries, due, oldest, endpoints, failing]


def outbox_families(figures: StoreFigures, consumers: Iterable[str]) -> list[Metric]:
    events = CounterMetricFamily(
        "cryptocity_outbox_events", "Events ever written to the outbox (its highest seq)."
    )
    events.add_metric([], figures.outbox_head)
    lag = _gauge(
        "cryptocity_outbox_consumer_lag_events",
        "Outbox events a consumer has not handled yet (head seq minus its cursor).",
        ["consumer"],
    )
    # Consumers with a stored cursor (from any process) and those this process runs, even before their first
    # batch: a consumer that fails from its very first event has no cursor, and its lag matters most.
    for name in sorted(set(figures.cursors) | set(consumers)):
        lag.add_metric([name], max(0, figures.outbox_head - figures.cursors.get(name, 0)))
    return [events, lag]


def ledger_families(figures: StoreFigures) -> list[Metric]:
    trial = _gauge(
        "cryptocity_ledger_trial_balance_tiyn",
        "Sum of every digital-tenge ledger balance in tiyn; anything but 0 means the ledger is unsound.",
    )
    trial.add_metric([], figures.ledger_trial_balance_tiyn)
    entries = CounterMetricFamily("cryptocity_ledger_entries", "Journal entries ever posted to the ledger.")
    entries.add_metric([], figures.ledger_entries)
    return [trial, entries]


def store_families(figures: StoreFigures, now: datetime, consumers: Iterable[str]) -> list[Metric]:
    return [
        *invoice_families(figures),
        *payment_families(figures, now),
        *webhook_families(figures, now),
        *outbox_families(figures, consumers),
        *ledger_families(figures),
    ]


# -- from this process ------------------------------------------------------------------------------------


def cluster_families(leader: bool) -> list[Metric]:
    """Whether this process leads (gateway/cluster/): summed over a deployment's processes it must be 1."""
    gauge = _gauge(
        "cryptocity_leader",
        "1 if this process is the leader (runs the chain watchers, rates refresher, outbox and expiry sweeper), else 0.",
    )
    gauge.add_metric([], 1 if leader else 0)
    return [gauge]


def writer_families(stats: WriterStats) -> list[Metric]:
    """The SQLite writer's group-commit counters since this process started (a restart resets them)."""
    counters = (
        ("cryptocity_store_commits", "Transactions the store's single writer committed.", stats.commits),
        ("cryptocity_store_units", "Units (callers' transactions) committed inside them.", stats.units),
        ("cryptocity_store_failed_units", "Units rolled back alone to their savepoint.", stats.failed_units),
        ("cryptocity_store_unit_seconds", "Time spent running units on the event loop.", stats.unit_seconds),
        (
            "cryptocity_store_commit_seconds",
            "Time from handing COMMIT over until the loop had the answer.",
            stats.commit_seconds,
        ),
        (
            "cryptocity_store_disk_seconds",
            "Time inside COMMIT itself (write-ahead log write and fsync).",
            stats.disk_seconds,
        ),
    )
    families: list[Metric] = []
    for name, doc, value in counters:
        family = CounterMetricFamily(name, doc)
        family.add_metric([], value)
        families.append(family)
    largest = _gauge("cryptocity_store_largest_batch", "Most units one commit has carried since start.")
    largest.add_metric([], stats.largest_batch)
    return [*families, largest]


def postgres_families(stats: PostgresStats) -> list[Metric]:
    """The PostgreSQL store's counters since this process started. Each unit is its own transaction, so
    commits and units are the same number; retries count attempts run again after a serialization failure,
    a deadlock or a broken connection (contention shows here first)."""
    counters = (
        ("cryptocity_store_commits", "Transactions the store committed.", stats.commits),
        ("cryptocity_store_units", "Units (callers' transactions) committed.", stats.commits),
        (
            "cryptocity_store_failed_units",
            "Units rolled back, their caller given the error.",
            stats.failed_units,
        ),
        (
            "cryptocity_store_retries",
            "Unit attempts run again after a conflict or a broken connection.",
            stats.retries,
        ),
        (
            "cryptocity_store_unit_seconds",
            "Wall time of committed units, BEGIN to COMMIT.",
            stats.unit_seconds,
        ),
    )
    families: list[Metric] = []
    for name, doc, value in counters:
        family = CounterMetricFamily(name, doc)
        family.add_metric([], value)
        families.append(family)
    return families


def chain_families(watchers: Mapping[str, Watched]) -> list[Metric]:
    """What each chain watcher of this process reports; no series at all when no node is configured."""
    labels = ["chain"]
    up = _gauge("cryptocity_chain_up", "1 if the watcher's last poll of its node succeeded, else 0.", labels)
    refused = _gauge(
        "cryptocity_chain_refused",
        "1 if the watcher stopped for good (the node is on another chain).",
        labels,
    )
    tip = _gauge("cryptocity_chain_tip_height", "Height of the last block the watcher processed.", labels)
    watched = _gauge(
        "cryptocity_chain_watched_addresses", "Invoice addresses the watcher matches against.", labels
    )
    pending = _gauge(
        "cryptocity_chain_unconfirmed_payments",
        "Unconfirmed payments the watcher follows in the mempool.",
        labels,
    )
    blocks = CounterMetricFamily(
        "cryptocity_chain_blocks_processed", "Blocks processed by this process's watcher.", labels=labels
    )
    reorgs = CounterMetricFamily(
        "cryptocity_chain_reorgs", "Reorgs this process's watcher undid.", labels=labels
    )
    for name, watcher in sorted(watchers.items()):
        status = watcher.status
        up.add_metric([name], 1 if status.last_poll_ok and status.refused is None else 0)
        refused.add_metric([name], 0 if status.refused is None else 1)
        if status.tip_height is not None:
            tip.add_metric([name], status.tip_height)
        watched.add_metric([name], status.watched)
        pending.add_metric([name], status.pending_tracked)
        blocks.add_metric([name], status.blocks_processed)
        reorgs.add_metric([name], status.reorgs)
    return [up, refused, tip, watched, pending, blocks, reorgs]


def rate_families(view: Mapping[str, Any], now: datetime) -> list[Metric]:
    """Rate age and availability per asset, and provider health, from ``ConfiguredRates.view()``.

    The view is what ``GET /v1/rates`` shows, so /metrics and the API can never disagree on it. A rate's age
    runs from ``observed_at``, the moment its oldest input was observed (a fixed table is always fresh).
    """
    rates: Mapping[str, Any] = view.get("rates", {})
    age = _gauge(
        "cryptocity_rate_age_seconds",
        "Seconds since the current KZT rate's oldest input was observed.",
        ["asset"],
    )
    available = _gauge(
        "cryptocity_rate_available", "1 if invoices can be priced in the asset now, else 0.", ["asset"]
    )
    for asset in Asset:
        rate = rates.get(asset.value)
        available.add_metric([asset.value], 0 if rate is None else 1)
        if rate is not None:
            age.add_metric([asset.value], _age_seconds(now, parse_isoformat(rate["observed_at"])))
    providers: Mapping[str, Any] = view.get("providers", {})
    healthy = _gauge(
        "cryptocity_rate_provider_up", "1 if the provider's last attempt succeeded, else 0.", ["provider"]
    )
    failures = _gauge(
        "cryptocity_rate_provider_consecutive_failures",
        "Failed attempts since the provider's last success.",
        ["provider"],
    )
    for name, health in sorted(providers.items()):
        healthy.add_metric([name], 1 if health["healthy"] else 0)
        failures.add_metric([name], int(health["consecutive_failures"]))
    return [age, available, healthy, failures]
