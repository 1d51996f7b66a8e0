"""``GET /metrics``: the gateway's figures in the Prometheus text format.

- ``store_figures`` reads the durable figures (invoices, payments, webhooks, outbox, ledger) from the store in
  one statement at scrape time, so they survive restarts and agree across processes;
- ``families`` turns those figures, the chain watchers' status and the rates view into metric families;
- ``exporter`` owns a registry per app (with the process collectors) and renders a scrape.

The route lives in gateway/api/metrics.py; what every metric means is in docs/metrics.md.
"""

from gateway.metrics.exporter import CONTENT_TYPE, MetricsExporter, MetricSources
from gateway.metrics.store_figures import StoreFigures, read_store_figures

__all__ = ["CONTENT_TYPE", "MetricSources", "MetricsExporter", "StoreFigures", "read_store_figures"]
