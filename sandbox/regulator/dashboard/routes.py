"""HTTP handlers of the regulator dashboard: the page and its static files, nothing else.

The page is a shell: tiles, chart frames, the held queue's table and a login form. Its script
(``static/dashboard.js``) keeps the regulator's token in ``sessionStorage`` (this tab only, never a cookie,
so the browser never sends it by itself and no cross-site request can borrow it), calls ``/sandbox/v1`` with
``Authorization: Bearer``, draws the charts as inline SVG and polls every ``refresh_seconds``.

So that the Content-Security-Policy can be the checkout's strict one (``default-src 'self'``, no inline
script or style), every file is served from ``static/`` under ``<prefix>/static/``, linked with its content
hash so browsers may cache it for good; a name that is not on the list is a 404, whatever it contains.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Final

import jinja2
from aiohttp import web

from gateway.api.problems import Problem
from gateway.api.requests import query_int
from gateway.checkout.render import CONTENT_SECURITY_POLICY, StaticFile
from gateway.money import ASSETS

__all__ = ["DASHBOARD_PREFIX", "DEFAULT_REFRESH_SECONDS", "DashboardSettings", "dashboard_app", "static_file"]

DASHBOARD_PREFIX: Final = "/sandbox/dashboard"
REGULATOR_API_PREFIX: Final = "/sandbox/v1"
DEFAULT_REFRESH_SECONDS: Final = 5
MAX_REFRESH_SECONDS: Final = 3600

_HERE: Final = Path(__file__).parent
_STATIC_TYPES: Final = {
    "dashboard.css": "text/css",
    "dashboard.js": "text/javascript",
    "favicon.svg": "image/svg+xml",
}


@dataclass(frozen=True, slots=True)
class DashboardSettings:
    prefix: str  # where the dashboard is mounted, for its static URLs
    api_prefix: str  # where the regulator API is mounted, for the script's calls
    timezone: str  # the pilot's zone: periods and days are calendar days there, as in the API
    refresh_seconds: int


SETTINGS: Final = web.AppKey("dashboard_settings", DashboardSettings)


@cache
def static_file(name: str) -> StaticFile | None:
    """A file of ``static/`` by name, read once; None for anything not on the list (no path tricks)."""
    content_type = _STATIC_TYPES.get(name)
    if content_type is None:
        return None
    body = (_HERE / "static" / name).read_bytes()
    return StaticFile(body, content_type, hashlib.sha256(body).hexdigest()[:16])


@cache
def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(_HERE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def _secure(response: web.StreamResponse, *, cache_control: str = "no-store") -> web.StreamResponse:
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Cache-Control"] = cache_control
    return response


def render_page(settings: DashboardSettings, refresh_seconds: int) -> str:
    def static_url(name: str) -> str:
        found = static_file(name)
        assert found is not None, name
        return f"{settings.prefix}/static/{name}{found.url_suffix}"

    return (
        _environment()
        .get_template("dashboard.html")
        .render(
            static_url=static_url,
            api_prefix=settings.api_prefix,
            timezone=settings.timezone,
            refresh_seconds=refresh_seconds,
            # "BTC:8 ETH:18 USDT:6": the script formats crypto amounts (minor units in the API) with these
            asset_decimals=" ".join(f"{asset.value}:{info.decimals}" for asset, info in ASSETS.items()),
        )
    )


async def dashboard_page(request: web.Request) -> web.StreamResponse:
    settings = request.app[SETTINGS]
    # ?refresh=N polls every N seconds instead (a wall screen may want 30); bad values are a 400
    refresh = query_int(request, "refresh", settings.refresh_seconds, 1, MAX_REFRESH_SECONDS)
    response = web.Response(text=render_page(settings, refresh), content_type="text/html", charset="utf-8")
    return _secure(response)


async def dashboard_static(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    found = static_file(name)
    if found is None:
        raise Problem(404, "Not found", "no such dashboard file", "not-found")
    current = request.query.get("v") == found.version
    response = web.Response(body=found.body, content_type=found.content_type, charset="utf-8")
    response.headers["ETag"] = f'"{found.version}"'
    return _secure(response, cache_control="public, max-age=31536000, immutable" if current else "no-cache")


def dashboard_app(
    timezone: str,
    *,
    prefix: str = DASHBOARD_PREFIX,
    api_prefix: str = REGULATOR_API_PREFIX,
    refresh_seconds: int = DEFAULT_REFRESH_SECONDS,
) -> web.Application:
    """The sub-application to mount at ``prefix``; ``api_prefix`` is where the regulator API lives."""
    if not 1 <= refresh_seconds <= MAX_REFRESH_SECONDS:
        raise ValueError(f"refresh_seconds must be from 1 to {MAX_REFRESH_SECONDS}")
    app = web.Application()
    app[SETTINGS] = DashboardSettings(prefix.rstrip("/"), api_prefix.rstrip("/"), timezone, refresh_seconds)
    app.router.add_get("", dashboard_page)
    app.router.add_get("/", dashboard_page)
    app.router.add_get("/static/{name}", dashboard_static)
    return app
