"""``GET /v1/rates`` (the KZT price of each asset now, its sources, every provider's health) and
``GET /v1/rates/history`` (every distinct rate derived, oldest first, keyset-paginated).

Merchants (and their support) use the first to see why a quote is what it is, or why creation answers 503;
reports and reconciliations use the second to compare a locked quote with the market of its moment.
"""

from __future__ import annotations

from aiohttp import web

from gateway.api.requests import bad_query, query_int, query_time
from gateway.api.state import RATES
from gateway.money import Asset

routes = web.RouteTableDef()


@routes.get("/v1/rates")
async def current_rates(request: web.Request) -> web.Response:
    return web.json_response(request.app[RATES].view())


@routes.get("/v1/rates/history")
async def rate_history(request: web.Request) -> web.Response:
    history = request.app[RATES].history
    asset = None
    if "asset" in request.query:
        raw = request.query["asset"]
        try:
            asset = Asset(raw.upper())
        except ValueError:
            known = ", ".join(a.value for a in Asset)
            raise bad_query("asset", f"asset must be one of {known}", f"unknown asset {raw!r}") from None
    since, until = query_time(request, "from"), query_time(request, "to")
    if since is not None and until is not None and until <= since:
        raise bad_query("to", "to must be after from", "must be after from")
    limit = query_int(request, "limit", default=100, low=1, high=1000)
    after = query_int(request, "starting_after", default=0, low=0, high=2**62)
    if history is None:
        return web.json_response(
            {"object": "list", "data": [], "has_more": False, "next_starting_after": None}
        )
    page = await history.page(asset, since=since, until=until, after_id=after, limit=limit)
    data = [rate.as_dict() for rate in page.rates]
    return web.json_response(
        {
            "object": "list",
            "data": data,
            "has_more": page.has_more,
            "next_starting_after": data[-1]["id"] if page.has_more and data else None,
        }
    )
