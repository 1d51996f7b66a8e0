"""One exporter per application: its own registry, and the store read at every scrape.

prometheus_client's collectors are synchronous, but the store is read asynchronously. So the store is not a
registered collector: each scrape first awaits one read (``read_store_figures``), then renders the app's
registry (process, platform and GC collectors: CPU, memory, open files, Python version) together with the
families built from that read. Nothing is cached between scrapes, and no state is shared between two
concurrent scrapes.

A registry per app, not prometheus_client's global ``REGISTRY``: tests and embedders build several apps in
one process, and registering the same collectors twice in one registry is an error.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest

from gateway.clock import Clock
from gateway.metrics.families import (
    Watched,
    chain_families,
    cluster_families,
    postgres_families,
    rate_families,
    store_families,
    writer_families,
)
from gateway.metrics.store_figures import read_store_figures
from gateway.store import Store
from gateway.store.postgres import PostgresStore
from gateway.store.sqlite import SqliteStore

# What generate_latest writes. Spelled out: newer prometheus_client releases point CONTENT_TYPE_LATEST at
# text format 1.0.0, and the 0.0.4 constant exists in recent releases only.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass(frozen=True, slots=True)
class MetricSources:
    """What one scrape reads: the store, the clock ages are measured on, and this process's live parts."""

    store: Store
    clock: Clock
    watchers: Mapping[str, Watched]  # may be empty: no node configured
    rates_view: Mapping[str, Any]  # ConfiguredRates.view(), as GET /v1/rates shows it
    consumers: Sequence[str]  # names of the outbox consumers this process runs
    leader: bool = True  # this process runs the single-writer jobs (always, with SQLite)


class _Scrape:
    """The app's registry plus this scrape's families, as the one collector ``generate_latest`` renders."""

    def __init__(self, registry: CollectorRegistry, families: Iterable[Metric]) -> None:
        self._registry = registry
        self._families = families

    def collect(self) -> Iterator[Metric]:
        yield from self._registry.collect()
        yield from self._families


class MetricsExporter:
    """Renders /metrics for one app; the process collectors live in its own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)  # process_*: CPU seconds, memory, open fds, start time
        PlatformCollector(registry=self.registry)  # python_info
        GCCollector(registry=self.registry)  # python_gc_*

    async def scrape(self, sources: MetricSources) -> bytes:
        """The Prometheus text exposition (format 0.0.4) of everything, as of now."""
        now = sources.clock.now()
        started = time.perf_counter()  # a duration of our own I/O, not domain time
        figures = await sources.store.read(lambda tx: read_store_figures(tx, now))
        read_seconds = GaugeMetricFamily(
            "cryptocity_metrics_store_read_seconds", "How long this scrape's read of the store took."
        )
        read_seconds.add_metric([], time.perf_counter() - started)
        families = [
            *store_families(figures, now, sources.consumers),
            *chain_families(sources.watchers),
            *rate_families(sources.rates_view, now),
            *cluster_families(sources.leader),
            read_seconds,
        ]
        if isinstance(sources.store, SqliteStore):
            families.extend(writer_families(sources.store.stats))
        elif isinstance(sources.store, PostgresStore):
            families.extend(postgres_families(sources.store.stats))
        return generate_latest(_Scrape(self.registry, families))
