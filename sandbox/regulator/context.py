"""What every regulator handler shares: the sandbox's rules and policy on the app, the period a request asks
for, and the JSON response."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from aiohttp import web

from gateway import jsonutil
from gateway.api.requests import bad_query, query_time
from gateway.api.state import CLOCK
from gateway.clock import parse_isoformat
from sandbox.limits import SandboxRules
from sandbox.policy import SandboxPolicy
from sandbox.regulator.metrics import Period

RULES = web.AppKey("sandbox_rules", SandboxRules)
POLICY = web.AppKey("sandbox_policy", SandboxPolicy)


def json_response(body: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=jsonutil.dumps_bytes(body), content_type="application/json")


def period_of(request: web.Request) -> Period:
    """[from, to): by default the current calendar month in the pilot's time zone."""
    rules = request.app[RULES]
    now = request.config_dict[CLOCK].now()
    default_start, default_end = rules.month_bounds(rules.month_of(now))
    start_text, end_text = query_time(request, "from"), query_time(request, "to")
    start = parse_isoformat(start_text) if start_text else default_start
    end = parse_isoformat(end_text) if end_text else default_end
    if end <= start:
        raise bad_query("to", "to must be after from", "must be after from")
    if end - start > timedelta(days=3660):
        raise bad_query("to", "a period may span at most ten years", "at most ten years after from")
    return Period(start, end)
