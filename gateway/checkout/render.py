"""HTML for the checkout page: one Jinja environment (autoescaped) and the page's static files.

The live part of the page (status, countdown, payment tabs) is one template, ``_live.html``, rendered both
inside the full page and alone for each Server-Sent Event, so the page a browser without JavaScript
reloads and the page a script updates in place are the same HTML from the same code.

Everything the page needs comes from the gateway itself: the stylesheet and the script are files in
``static/`` served under ``/i/static/`` (their content hash in the URL, so they can be cached for good),
and QR codes are inline SVG, which is what lets the Content-Security-Policy say ``default-src 'self'``
with no inline script or style at all.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlencode

import jinja2
from markupsafe import Markup

from gateway.checkout.i18n import LANGUAGES, catalogue, translator
from gateway.checkout.view import CheckoutView
from gateway.money import format_tiyn
from gateway.qr import qr_svg_cached

__all__ = [
    "CONTENT_SECURITY_POLICY",
    "NOSCRIPT_REFRESH_SECONDS",
    "StaticFile",
    "clock_text",
    "format_kzt",
    "render_live",
    "render_not_found",
    "render_page",
    "static_file",
]

_HERE: Final = Path(__file__).parent
NOSCRIPT_REFRESH_SECONDS: Final = 10
STATIC_PREFIX: Final = "/i/static/"

# Nothing inline, nothing from elsewhere: the page's only script and stylesheet are gateway files, its
# images inline SVG, and its only connection the gateway's own event stream.
CONTENT_SECURITY_POLICY: Final = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


@dataclass(frozen=True, slots=True)
class StaticFile:
    body: bytes
    content_type: str
    version: str  # the first hex digits of its SHA-256: changes whenever the file does

    @property
    def url_suffix(self) -> str:
        return f"?v={self.version}"


_STATIC_TYPES: Final = {
    "checkout.css": "text/css",
    "checkout.js": "text/javascript",
    "favicon.svg": "image/svg+xml",
}


@cache
def static_file(name: str) -> StaticFile | None:
    """A file of ``static/`` by name, read once; None for anything not on the list (no path tricks)."""
    content_type = _STATIC_TYPES.get(name)
    if content_type is None:
        return None
    body = (_HERE / "static" / name).read_bytes()
    return StaticFile(body, content_type, hashlib.sha256(body).hexdigest()[:16])


def _static_url(name: str) -> str:
    found = static_file(name)
    assert found is not None, name
    return STATIC_PREFIX + name + found.url_suffix


def format_kzt(amount_tiyn: int, language: str) -> str:
    """Tenge as people write it in that language: ``12,500.00 ₸`` (en) or ``12 500,00 ₸`` (ru, kk)."""
    messages = catalogue(language)
    whole, _, fraction = format_tiyn(amount_tiyn).partition(".")
    groups = []
    while whole:
        groups.append(whole[-3:])
        whole = whole[:-3]
    number = messages["number.group"].join(reversed(groups)) + messages["number.decimal"] + fraction
    return messages["amount.kzt"].format(amount=number)


def clock_text(seconds: int) -> str:
    """A countdown as ``mm:ss`` (``h:mm:ss`` from an hour up), the same format the script ticks in."""
    hours, rest = divmod(max(0, seconds), 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


def _qr(uri: str) -> Markup:
    # The SVG is generated from the URI's modules alone (no text of the URI appears in it), so it is safe.
    return Markup(qr_svg_cached(uri))  # noqa: S704 - our own generated markup, no user text inside


@cache
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(_HERE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.globals.update(static_url=_static_url, qr_svg=_qr, format_kzt=format_kzt, clock_text=clock_text)
    return env


def _query(**params: str | None) -> str:
    return "?" + urlencode({k: v for k, v in params.items() if v})


def _context(view: CheckoutView, language: str, asset: str | None) -> dict[str, Any]:
    assets = [m.asset.value for m in view.methods]
    selected = asset if asset in assets else (assets[0] if assets else None)
    return {
        "view": view,
        "lang": language,
        "t": translator(language),
        "selected": selected,
        "tab_href": lambda a: _query(lang=language, asset=a),
        "switcher": [
            (code, catalogue(code)["language.name"], _query(lang=code, asset=selected)) for code in LANGUAGES
        ],
        "events_url": f"/i/{view.invoice_id}/events" + _query(lang=language),
        "refresh_seconds": NOSCRIPT_REFRESH_SECONDS,
    }


def render_page(view: CheckoutView, language: str, asset: str | None = None) -> str:
    """The whole page; ``asset`` is the tab to open (a no-JavaScript tab link sets it)."""
    return _environment().get_template("page.html").render(_context(view, language, asset))


def render_live(view: CheckoutView, language: str, asset: str | None = None) -> str:
    """Only the live region (what an SSE event carries to replace it in place)."""
    return _environment().get_template("_live.html").render(_context(view, language, asset))


def render_not_found(language: str) -> str:
    return (
        _environment()
        .get_template("not_found.html")
        .render(
            lang=language,
            t=translator(language),
            switcher=[(code, catalogue(code)["language.name"], _query(lang=code)) for code in LANGUAGES],
        )
    )
