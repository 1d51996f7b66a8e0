"""Liveness and readiness: /healthz says the process answers, /readyz that it can take payments."""

from __future__ import annotations

import json

from aiohttp import web

from gateway.api.state import STORE, WATCHERS
from gateway.store import StoreError, Tx

routes = web.RouteTableDef()


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "checks": {}})


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
    return web.Response(status=200 if ready else 503, text=json.dumps(body), content_type="application/json")
