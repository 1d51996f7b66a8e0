"""``GET /v1/rates``: the KZT price of each asset now, the sources behind it, and every provider's health.

Merchants (and their support) use it to see why a quote is what it is, or why creation answers 503.
"""

from __future__ import annotations

from aiohttp import web

from gateway.api.state import RATES

routes = web.RouteTableDef()


@routes.get("/v1/rates")
async def current_rates(request: web.Request) -> web.Response:
    return web.json_response(request.app[RATES].view())
