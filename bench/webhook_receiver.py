"""A webhook receiver for bench/webhooks.py, in its own process so it does not share the gateway's CPU.

It answers 200 to every POST on /hook at once, remembers when (wall clock) each event id first arrived,
and serves the tally on GET /stats. Verifying signatures is left out on purpose: the benchmark measures
the gateway, and a merchant's verification cost is the merchant's.

    python bench/webhook_receiver.py PORT
"""

from __future__ import annotations

import json
import sys
import time

from aiohttp import web


def make_app() -> web.Application:
    arrived: dict[str, float] = {}
    counts = {"requests": 0}

    async def hook(request: web.Request) -> web.Response:
        await request.read()
        counts["requests"] += 1
        event_id = request.headers.get("CryptoCity-Event-Id", "")
        arrived.setdefault(event_id, time.time())
        return web.Response(text="ok")

    async def stats(request: web.Request) -> web.Response:
        return web.Response(
            text=json.dumps({"requests": counts["requests"], "arrived": arrived}),
            content_type="application/json",
        )

    app = web.Application()
    app.router.add_post("/hook", hook)
    app.router.add_get("/stats", stats)
    return app


if __name__ == "__main__":
    web.run_app(make_app(), host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
