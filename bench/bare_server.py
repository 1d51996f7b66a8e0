"""The baseline of bench/api_create.py: parse and validate like the gateway, answer a precomputed body.

Usage: bare_server.py PORT BODY_SIZE. Nothing else happens per request: no auth, no store, no maths.
"""

from __future__ import annotations

import sys
from pathlib import Path

from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway.api.models import CreateInvoiceRequest


def make_app(body_size: int) -> web.Application:
    body = (b'{"padding":"' + b"x" * max(0, body_size - 14) + b'"}')[:body_size]

    async def create(request: web.Request) -> web.Response:
        CreateInvoiceRequest.model_validate_json(await request.read())
        return web.Response(status=201, body=body, content_type="application/json")

    app = web.Application(client_max_size=65536)
    app.router.add_post("/v1/invoices", create)
    return app


if __name__ == "__main__":
    web.run_app(
        make_app(int(sys.argv[2])), host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None
    )
