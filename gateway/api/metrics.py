"""``GET /metrics`` for Prometheus: no API key, like /healthz, so operators must keep it off the internet.

It needs no key because a scraper is infrastructure, not a merchant, and the output is aggregate only: counts
and tiyn sums over the whole gateway, labelled by status, flag, asset, chain, provider or consumer, never by
merchant, invoice or endpoint. docs/metrics.md lists every series and says how to firewall the path.
"""

from __future__ import annotations

from collections.abc import Mapping

from aiohttp import web

from gateway.api.state import CLOCK, EXTENSIONS, LEADERSHIP, RATES, STORE, WATCHERS
from gateway.metrics import CONTENT_TYPE, MetricsExporter, MetricSources
from gateway.metrics.families import Watched
from gateway.webhooks.fanout import WebhookFanout

METRICS = web.AppKey("metrics", MetricsExporter)

routes = web.RouteTableDef()


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    app = request.app
    running = app.get(WATCHERS)  # empty, or absent, when no node is configured
    watchers: Mapping[str, Watched] = {} if running is None else running
    sources = MetricSources(
        store=app[STORE],
        clock=app[CLOCK],
        watchers=watchers,
        rates_view=app[RATES].view(),
        # The consumers app.py's outbox context runs: the webhook fan-out, then the extensions' own.
        consumers=[WebhookFanout.name, *(consumer.name for consumer in app[EXTENSIONS].consumers)],
        leader=app[LEADERSHIP].is_leader if LEADERSHIP in app else True,
    )
    body = await app[METRICS].scrape(sources)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


def setup_metrics(app: web.Application) -> None:
    """Give ``app`` its own exporter (and so its own registry) and the /metrics route; call before start."""
    app[METRICS] = MetricsExporter()
    app.add_routes(routes)
