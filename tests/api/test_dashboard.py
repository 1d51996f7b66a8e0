"""The regulator dashboard's page and files as HTTP sees them: content types, the strict CSP, nothing from
other hosts, and no way out of its static directory. What the page shows is tested in Chromium
(tests/browser/test_dashboard_browser.py)."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from gateway.config import SandboxConfig
from sandbox.extension import sandbox_extensions
from sandbox.regulator import dashboard
from sandbox.regulator.dashboard import static_file
from tests.conftest import Gateway, GatewayFactory

PAGE = "/sandbox/dashboard"
STATIC_DIR = Path(dashboard.__file__).parent / "static"
# XML namespace names are identifiers, never fetched; they are the only absolute URLs allowed.
NAMESPACES = {"http://www.w3.org/2000/svg"}


@pytest.fixture
async def sandbox(make_gateway: GatewayFactory) -> Gateway:
    return await make_gateway(sandbox_extensions(SandboxConfig()))


def linked_files(html: str) -> list[str]:
    return re.findall(r'(?:src|href)="([^"]+)"', html)


def csp_directives(header: str) -> dict[str, str]:
    return {
        part.strip().split(" ", 1)[0]: part.strip().partition(" ")[2]
        for part in header.split(";")
        if part.strip()
    }


async def test_the_page_is_public_html_with_a_strict_csp_and_links_only_its_own_files(
    sandbox: Gateway,
) -> None:
    for path in (PAGE, PAGE + "/"):
        response = await sandbox.client.get(path)  # no token: the page holds no data
        assert response.status == 200
        assert response.content_type == "text/html" and response.charset == "utf-8"
        csp = csp_directives(response.headers["Content-Security-Policy"])
        assert csp["default-src"] == "'self'" and csp["script-src"] == "'self'"
        assert csp["style-src"] == "'self'" and csp["connect-src"] == "'self'"
        assert csp["frame-ancestors"] == "'none'" and csp["object-src"] == "'none'"
        assert "unsafe" not in response.headers["Content-Security-Policy"]
        assert response.headers["X-Frame-Options"] == "DENY"
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["Referrer-Policy"] == "no-referrer"
        assert response.headers["Cache-Control"] == "no-store"
    html = await response.text()
    assert 'data-api="/sandbox/v1"' in html
    assert 'data-timezone="Asia/Almaty"' in html
    assert 'data-refresh-seconds="5"' in html
    assert 'data-asset-decimals="BTC:8 ETH:18 USDT:6"' in html
    assert 'id="login-form"' in html and 'type="password"' in html
    # nothing inline for the CSP to refuse: no script bodies, no style elements or attributes, no handlers
    scripts = re.findall(r"<script\b([^>]*)>(.*?)</script>", html, flags=re.DOTALL)
    assert len(scripts) == html.count("<script") == 1
    assert all("src=" in attrs and not text.strip() for attrs, text in scripts)
    assert "<style" not in html and " style=" not in html
    assert re.search(r"\son[a-z]+=", html) is None
    links = linked_files(html)
    assert sorted(link.split("?")[0] for link in links) == [
        "/sandbox/dashboard/static/dashboard.css",
        "/sandbox/dashboard/static/dashboard.js",
        "/sandbox/dashboard/static/favicon.svg",
    ]


async def test_static_files_have_their_types_and_are_cached_by_content_hash(sandbox: Gateway) -> None:
    html = await (await sandbox.client.get(PAGE)).text()
    types = {".css": "text/css", ".js": "text/javascript", ".svg": "image/svg+xml"}
    for link in linked_files(html):
        path, _, query = link.partition("?")
        response = await sandbox.client.get(link)
        assert response.status == 200, link
        assert response.content_type == types[Path(path).suffix]
        assert "default-src 'self'" in response.headers["Content-Security-Policy"]
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["Cache-Control"] == "public, max-age=31536000, immutable"
        found = static_file(Path(path).name)
        assert found is not None and query == f"v={found.version}"
        assert response.headers["ETag"] == f'"{found.version}"'
        assert await response.read() == (STATIC_DIR / Path(path).name).read_bytes()
        stale = await sandbox.client.get(path + "?v=0000")  # an old link: served, but revalidated
        assert stale.status == 200 and stale.headers["Cache-Control"] == "no-cache"


async def test_no_file_refers_to_another_host(sandbox: Gateway) -> None:
    html = await (await sandbox.client.get(PAGE)).text()
    texts = {"page": html}
    for link in linked_files(html):
        texts[link] = await (await sandbox.client.get(link)).text()
    assert len(texts) == 4
    for name, text in texts.items():
        urls = set(re.findall(r"https?://[^\s\"'<>)]+", text, flags=re.IGNORECASE))
        assert urls <= NAMESPACES, (name, urls - NAMESPACES)
        # nor protocol-relative links, imports or CSS urls that could leave the origin
        assert re.search(r"""(?:src|href)\s*=\s*["']//""", text) is None, name
        assert "@import" not in text and "url(" not in text, name
        assert "import(" not in text and "importScripts" not in text, name
    assert "localStorage" not in texts[next(k for k in texts if ".js" in k)]  # the token stays in the tab
    assert "document.cookie" not in texts[next(k for k in texts if ".js" in k)]


def test_every_file_in_the_static_directory_is_served() -> None:
    names = sorted(p.name for p in STATIC_DIR.iterdir() if p.is_file())
    assert names == ["dashboard.css", "dashboard.js", "favicon.svg"]
    assert all(static_file(name) is not None for name in names)


@pytest.mark.parametrize(
    "path",
    [
        "/static/nope.js",
        "/static/dashboard.JS",
        "/static/..%2Froutes.py",
        "/static/..%2F..%2Fapi.py",
        "/static/%2e%2e%2f__init__.py",
        "/static/..%5Croutes.py",
        "/static/templates%2Fdashboard.html",
        "/static/",
        "/routes.py",
        "/templates/dashboard.html",
    ],
)
async def test_unknown_files_and_path_tricks_are_404(sandbox: Gateway, path: str) -> None:
    response = await sandbox.client.get(PAGE + path)
    assert response.status == 404
    assert response.content_type == "application/problem+json"
    text = await response.text()
    assert "import " not in text and "<html" not in text


async def test_a_raw_dot_dot_path_never_reaches_a_file(sandbox: Gateway) -> None:
    """What a client that does not normalise the path sends: the server must not serve what is above."""
    server = sandbox.client.server
    for target in (
        "/sandbox/dashboard/static/../routes.py",
        "/sandbox/dashboard/static/../../api.py",
        "/sandbox/dashboard/static/./../__init__.py",
    ):
        reader, writer = await asyncio.open_connection(server.host, server.port)
        writer.write(f"GET {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        answer = (await reader.read()).decode(errors="replace")
        writer.close()
        await writer.wait_closed()
        status = int(answer.split(" ", 2)[1])
        assert status in (400, 404), (target, answer[:200])
        assert "def " not in answer and "import " not in answer


async def test_the_refresh_interval_can_be_chosen_within_bounds(sandbox: Gateway) -> None:
    html = await (await sandbox.client.get(PAGE + "?refresh=30")).text()
    assert 'data-refresh-seconds="30"' in html
    for bad in ("0", "3601", "abc", "-1"):
        response = await sandbox.client.get(PAGE + f"?refresh={bad}")
        problem = await response.json(content_type="application/problem+json")
        assert response.status == 400 and "refresh" in problem["detail"]


async def test_the_page_needs_no_token_but_everything_it_shows_does(sandbox: Gateway) -> None:
    assert (await sandbox.client.get(PAGE)).status == 200
    assert (await sandbox.client.get("/sandbox/v1/summary")).status == 401
    assert (await sandbox.client.post(PAGE)).status == 405  # a page, nothing to post to


async def test_the_bare_gateway_has_no_dashboard(gateway: Gateway) -> None:
    assert (await gateway.client.get(PAGE)).status == 404
