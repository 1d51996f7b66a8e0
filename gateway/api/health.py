"""Liveness and readiness: /healthz says the process answers, /readyz that it can take payments.

Both say which role this process has (gateway/cluster/): /readyz always, under ``cluster``; /healthz
only when the store is shared (PostgreSQL), so that a load balancer or an operator polling several
processes sees which one leads, while a single SQLite gateway's liveness answer stays as it always was.
A follower is ready as much as the leader: it serves the whole API; its chain watchers simply run
elsewhere (they appear under ``chains`` on the leader only).
"""

from __future__ import annotations

import json

from aiohttp import web

from gateway.api.state import LEADERSHIP, STORE, WATCHERS
from gateway.store import StoreError, Tx

routes = web.RouteTableDef()


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    body: dict[str, object] = {"status": "ok", "checks": {}}
    leadership = request.app.get(LEADERSHIP)
    if leadership is not None and leadership.clustered:
        body["cluster"] = leadership.view()
    return web.json_response(body)


@routes.get("/readyz")
async def readyz(request: web.Request) -> web.Response:
    checks: dict[str, str] = {}

    async def ping(tx: Tx) -> None:
        await tx.fetchone("SELECT 1 AS ok")

    try:
        await request.app[STORE].read(ping)
        checks["store"] = "ok"
    except StoreError as exc:
        checks["store"] = f"unavailable: {exc}"
    watchers: dict[str, dict[str, object]] = {}
    for name, watcher in request.app.get(WATCHERS, {}).items():
        status = watcher.status
        if status.refused:
            checks[name] = f"refused: {status.refused}"
        elif status.last_poll_ok:
            checks[name] = "ok"
        else:
            checks[name] = f"unavailable: {status.last_error or 'not synced yet'}"
        watchers[name] = {"tip_height": status.tip_height, "tip_hash": status.tip_hash}
    ready = all(v == "ok" for v in checks.values())
    body: dict[str, object] = {"status": "ok" if ready else "unavailable", "checks": checks}
    if watchers:
        body["chains"] = watchers
    leadership = request.app.get(LEADERSHIP)
    if leadership is not None:
        body["cluster"] = leadership.view()
    return web.Response(status=200 if ready else 503, text=json.dumps(body), content_type="application/json")
