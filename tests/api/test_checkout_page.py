"""The hosted checkout page /i/{id} and its event stream, over real HTTP on a real SQLite store.

Changes are made the way production makes them (through the InvoiceService, as the chain watchers and the
expiry sweeper do), so the stream is shown to follow the transactional outbox, not a test back door.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import string
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gateway.api.state import REGISTRY
from gateway.app import create_app
from gateway.checkout import HUB
from gateway.checkout.i18n import LANGUAGES, catalogue, choose_language, parse_accept_language
from gateway.checkout.render import format_kzt
from gateway.checkout.view import Confirmations, Phase, confirmations_of, phase_of, remaining_uri
from gateway.clock import ManualClock
from gateway.invoices.lifecycle import (
    AssetTerms,
    Flag,
    InvoiceState,
    Payment,
    PaymentStatus,
    Status,
    amount_remaining_minor,
)
from gateway.invoices.service import PaymentFact
from gateway.money import Asset, Chain, format_minor_units
from gateway.payment_uri import Bip21Request, Eip681Native, Eip681TokenTransfer, parse_payment_uri
from gateway.qr import qr_svg
from sandbox.demo import demo_account_keys
from tests.conftest import Gateway, GatewayFactory, make_config
from tests.integration.settlement_helpers import eventually, method

MEDIUM = "100000.00"  # one confirmation by the default policy
SVG_NAMESPACE = "http://www.w3.org/2000/svg"


# -- helpers ---------------------------------------------------------------------------------------


@dataclass
class SseMessage:
    event: str | None
    data: str | None
    id: str | None
    comment: str | None

    def json(self) -> dict[str, Any]:
        assert self.data is not None
        body: dict[str, Any] = json.loads(self.data)
        return body


class SseReader:
    """Reads Server-Sent Events messages (blank-line separated) from a streamed aiohttp response."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response

    async def message(self, timeout: float = 10.0) -> SseMessage:
        fields: dict[str, str] = {}
        comment = None
        async with asyncio.timeout(timeout):
            while True:
                raw = await self.response.content.readline()
                if not raw:
                    raise EOFError("the stream ended")
                line = raw.decode().rstrip("\n")
                if not line:
                    if fields or comment is not None:
                        return SseMessage(fields.get("event"), fields.get("data"), fields.get("id"), comment)
                    continue
                if line.startswith(":"):
                    comment = line[1:].strip()
                    continue
                name, _, value = line.partition(":")
                fields[name] = value.removeprefix(" ")

    async def status(self, timeout: float = 10.0) -> dict[str, Any]:
        """The next ``status`` event's JSON (skipping heartbeats and the retry hint)."""
        while True:
            message = await self.message(timeout)
            if message.event == "status":
                return message.json()


class Streams:
    """Opens event streams on a gateway and closes whatever is still open when the test ends."""

    def __init__(self) -> None:
        self.opened: list[aiohttp.ClientResponse] = []

    async def open(self, gateway: Gateway, invoice_id: str, **params: str) -> SseReader:
        response = await gateway.client.get(f"/i/{invoice_id}/events", params=params)
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        self.opened.append(response)
        return SseReader(response)


@pytest.fixture
async def streams() -> AsyncIterator[Streams]:
    opened = Streams()
    yield opened
    for response in opened.opened:
        response.close()


def btc_fact(invoice: dict[str, Any], amount: int, key: str, confirmations: int = 0) -> PaymentFact:
    btc = method(invoice, "BTC")
    return PaymentFact(Chain.BITCOIN, btc["address"], key, Asset.BTC, amount, confirmations, payer="resident")


async def page(gateway: Gateway, invoice_id: str, **params: str) -> str:
    response = await gateway.client.get(f"/i/{invoice_id}", params=params)
    assert response.status == 200, await response.text()
    assert response.content_type == "text/html"
    return await response.text()


class _Links(HTMLParser):
    """Every URL-bearing attribute and every inline script/style a page has."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[tuple[str, str, str]] = []
        self.inline_scripts = 0
        self.style_attributes = 0
        self.event_handlers: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        for name, value in attrs:
            if name in ("src", "href", "action", "formaction", "poster", "srcset", "data") and value:
                self.urls.append((tag, name, value))
            if name == "style":
                self.style_attributes += 1
            if name.startswith("on"):
                self.event_handlers.append(name)
        if tag == "meta" and (values.get("http-equiv") or "").lower() == "refresh":
            self.urls.append((tag, "refresh", values.get("content") or ""))
        if tag == "script" and "src" not in values:
            self.inline_scripts += 1
        if tag == "style":
            self.inline_scripts += 1


# -- languages -------------------------------------------------------------------------------------


def test_catalogues_have_the_same_keys_and_placeholders() -> None:
    def placeholders(text: str) -> set[str]:
        return {name for _, name, _, _ in string.Formatter().parse(text) if name}

    english = catalogue("en")
    for language in LANGUAGES:
        messages = catalogue(language)
        assert set(messages) == set(english), language
        for key, text in messages.items():
            assert text, (language, key)
            assert placeholders(text) == placeholders(english[key]), (language, key)
    # nothing left untranslated: every prose text differs from the English one (names and formats aside)
    same_everywhere = {"amount.kzt", "asset.USDT", "footer.powered"}
    for language in ("kk", "ru"):
        untranslated = [
            key
            for key, text in catalogue(language).items()
            if text == english[key] and key not in same_everywhere and not key.startswith("number.")
        ]
        assert untranslated == [], language


@pytest.mark.parametrize(
    ("query", "cookie", "header", "expected"),
    [
        ("ru", "kk", "en", "ru"),  # an explicit choice wins
        ("xx", "kk", "en", "kk"),  # an unknown one is ignored: then the remembered cookie
        (None, None, "kk-KZ,kk;q=0.9,ru;q=0.8", "kk"),
        (None, None, "en;q=0.5, ru;q=0.9", "ru"),  # q-values, not order
        (None, None, "de-DE, ru-RU;q=0.3", "ru"),  # the first language we have
        (None, None, "ru;q=0, en;q=0.1", "en"),  # q=0 means "not Russian"
        (None, None, "de, fr", "en"),
        (None, None, "", "en"),
        (None, None, "*;q=0.5", "en"),
        (None, None, "ru;q=abc, kk", "kk"),  # a malformed part is skipped, not fatal
    ],
)
def test_language_choice(query: str | None, cookie: str | None, header: str, expected: str) -> None:
    assert choose_language(query, cookie, header) == expected


def test_accept_language_ranking_keeps_order_for_ties() -> None:
    assert parse_accept_language("ru, kk;q=0.9, en, de;q=0") == ["ru", "en", "kk"]


def test_tenge_is_written_as_each_language_writes_it() -> None:
    assert format_kzt(1_250_000, "en") == "12,500.00\u00a0₸"
    assert format_kzt(1_250_000, "ru") == "12\u00a0500,00\u00a0₸"
    assert format_kzt(123_456_789_01, "kk") == "123\u00a0456\u00a0789,01\u00a0₸"
    assert format_kzt(5, "en") == "0.05\u00a0₸"


async def test_page_follows_lang_links_remembers_them_and_else_accept_language(gateway: Gateway) -> None:
    invoice = await gateway.create_invoice(description="Latte")
    jar = gateway.client.session.cookie_jar
    english = await page(gateway, invoice["id"])
    assert '<html lang="en">' in english and "Waiting for your payment" in english

    headers = {"Accept-Language": "kk-KZ,kk;q=0.9,ru;q=0.8"}
    response = await gateway.client.get(f"/i/{invoice['id']}", headers=headers)
    kazakh = await response.text()
    assert '<html lang="kk">' in kazakh and catalogue("kk")["status.waiting.title"] in kazakh
    assert response.headers["Vary"] == "Accept-Language, Cookie"
    assert "cc_lang" not in response.headers.get("Set-Cookie", "")  # a header choice is not remembered

    response = await gateway.client.get(f"/i/{invoice['id']}", params={"lang": "ru"}, headers=headers)
    russian = await response.text()
    assert "Ожидаем оплату" in russian and "12\u00a0500,00\u00a0₸" in russian
    assert "cc_lang=ru" in response.headers["Set-Cookie"] and "Path=/i/" in response.headers["Set-Cookie"]
    # the switcher offers every language by its own name, keeping the open tab
    for code in LANGUAGES:
        assert catalogue(code)["language.name"] in russian
    assert 'href="?lang=kk&amp;asset=BTC"' in russian

    remembered = await gateway.client.get(f"/i/{invoice['id']}", headers={"Accept-Language": "en"})
    assert "Ожидаем оплату" in await remembered.text()  # the cookie beats the browser's header
    jar.clear()
    assert "Waiting for your payment" in await page(gateway, invoice["id"])


def _state(status: Status, *flags: Flag, payments: tuple[Payment, ...] = ()) -> InvoiceState:
    terms = {Asset.BTC: AssetTerms(Asset.BTC, Decimal("48450000"), 8, 3)}
    fresh = InvoiceState.new(1_000_000, Decimal(0), datetime(2026, 11, 23, 12, 15, tzinfo=UTC), terms)
    return dataclasses.replace(
        fresh, status=status, flags=frozenset(flags), payments={p.payment_id: p for p in payments}
    )


def _payment(key: str, confirmations: int, status: PaymentStatus = PaymentStatus.ACCEPTED) -> Payment:
    return Payment(key, Asset.BTC, 1000, confirmations, False, status, False, None)


@pytest.mark.parametrize(
    ("state", "phase"),
    [
        (_state(Status.NEW), Phase.WAITING),
        (_state(Status.NEW, Flag.UNDERPAID), Phase.UNDERPAID),
        (_state(Status.NEW, Flag.UNDERPAID, Flag.ON_HOLD), Phase.HELD),  # held money is not "pay the rest"
        (_state(Status.PROCESSING, payments=(_payment("a", 0),)), Phase.DETECTED),
        (_state(Status.PROCESSING, payments=(_payment("a", 2), _payment("b", 1))), Phase.CONFIRMING),
        (_state(Status.PROCESSING, Flag.REORGED, payments=(_payment("a", 1),)), Phase.CONFIRMING),
        (_state(Status.SETTLED, Flag.OVERPAID), Phase.PAID),
        (_state(Status.EXPIRED, Flag.PAID_LATE), Phase.EXPIRED),
        (_state(Status.CANCELLED), Phase.CANCELLED),
        (_state(Status.REVERSED, Flag.REORGED), Phase.REVERSED),
    ],
)
def test_every_status_and_flag_maps_to_what_the_payer_is_told(state: InvoiceState, phase: Phase) -> None:
    assert phase_of(state) is phase


def test_confirmations_follow_the_least_confirmed_counted_payment() -> None:
    state = _state(
        Status.PROCESSING,
        payments=(_payment("a", 2), _payment("b", 1), _payment("held", 0, PaymentStatus.HELD)),
    )
    assert confirmations_of(state) == Confirmations(1, 3)


# -- what the page is made of ------------------------------------------------------------------------


async def test_unknown_invoice_gets_a_friendly_html_404_in_the_chosen_language(gateway: Gateway) -> None:
    paths = (
        "/i/inv_00000000000000000000000000",
        "/i/not-an-id",
        "/i/mer_00000000000000000000000000",
        "/i/",
        "/i/inv_00000000000000000000000000/something/else",
    )
    for path in paths:
        response = await gateway.client.get(path, headers={"Accept-Language": "ru"})
        assert response.status == 404
        assert response.content_type == "text/html"
        body = await response.text()
        assert "Счёт не найден" in body and "problem" not in body
        assert "default-src 'self'" in response.headers["Content-Security-Policy"]
    response = await gateway.client.get("/i/inv_00000000000000000000000000/events", params={"lang": "kk"})
    assert response.status == 404 and "Шот табылмады" in await response.text()
    assert gateway.app[HUB].subscriber_count == 0


async def test_page_is_public_strictly_confined_and_loads_nothing_from_elsewhere(gateway: Gateway) -> None:
    invoice = await gateway.create_invoice(metadata={"secret": "do-not-show"}, order_id="A-17")
    response = await gateway.client.get(f"/i/{invoice['id']}")  # no Authorization header at all
    assert response.status == 200
    csp = response.headers["Content-Security-Policy"]
    directives = dict(part.strip().split(" ", 1) for part in csp.split(";"))
    assert directives["default-src"] == "'self'"
    assert directives["script-src"] == "'self'" and directives["style-src"] == "'self'"
    assert directives["frame-ancestors"] == "'none'" and directives["object-src"] == "'none'"
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Cache-Control"] == "no-store"

    html = await response.text()
    links = _Links()
    links.feed(html)
    assert links.inline_scripts == 0 and links.style_attributes == 0 and links.event_handlers == []
    schemes = {"bitcoin:", "ethereum:"}
    for tag, attribute, url in links.urls:
        if attribute == "refresh":
            assert url.isdigit(), url  # reloads itself, goes nowhere else
            continue
        same_origin = url.startswith("/") and not url.startswith("//")
        assert same_origin or url.startswith("?") or any(url.startswith(s) for s in schemes), (tag, url)
    assert re.findall(r"https?://[^\s\"'<>]+", html) == [SVG_NAMESPACE] * html.count(SVG_NAMESPACE)
    assert "do-not-show" not in html and gateway.merchant_id not in html
    assert "A-17" in html and "Alatau Coffee" in html

    stylesheets = [url for tag, _, url in links.urls if tag == "link"]
    scripts = [url for tag, _, url in links.urls if tag == "script"]
    assert len(scripts) == 1 and len(stylesheets) == 2  # the stylesheet and the icon
    for url in [*stylesheets, *scripts]:
        asset = await gateway.client.get(url)
        assert asset.status == 200
        assert "immutable" in asset.headers["Cache-Control"]
        assert asset.headers["X-Content-Type-Options"] == "nosniff"
        assert not re.search(r"https?://", (await asset.text()).replace(SVG_NAMESPACE, ""))
    missing = await gateway.client.get("/i/static/../../config.toml")
    assert missing.status == 404


async def test_every_asset_has_a_tab_with_its_qr_address_amount_and_wallet_link(gateway: Gateway) -> None:
    invoice = await gateway.create_invoice(description="Latte")
    html = await page(gateway, invoice["id"])
    for asset in ("BTC", "ETH", "USDT"):
        m = method(invoice, asset)
        assert qr_svg(m["uri"]).strip() in html
        assert f'href="{m["uri"].replace("&", "&amp;")}"' in html
        assert m["address"] in html and f">{m['amount_due']}</code>" in html
        assert f'id="tab-{asset}"' in html
    assert invoice["payment_methods"][2]["token_address"] in html
    # the first tab is open; ?asset= opens another without any script (a plain link)
    assert re.search(r'id="panel-BTC"[^>]*data-asset="BTC"[^>]*>', html)
    eth_open = await page(gateway, invoice["id"], asset="ETH")
    assert re.search(r'id="panel-BTC"[^>]*hidden', eth_open)
    assert not re.search(r'id="panel-ETH"[^>]*hidden', eth_open)
    assert 'aria-selected="true" data-asset="ETH"' in eth_open


async def test_without_javascript_the_page_refreshes_itself_and_the_countdown_follows_the_gateway_clock(
    gateway: Gateway,
) -> None:
    invoice = await gateway.create_invoice(expires_in=900)
    html = await page(gateway, invoice["id"])
    assert re.search(r'<noscript>\s*<meta http-equiv="refresh" content="10">\s*</noscript>', html)
    assert 'data-seconds-left="900"' in html and ">15:00<" in html
    gateway.clock.advance(timedelta(seconds=899))
    html = await page(gateway, invoice["id"])
    assert 'data-seconds-left="1"' in html and ">00:01<" in html
    gateway.clock.advance(timedelta(seconds=1))  # the deadline, before the sweeper has run
    html = await page(gateway, invoice["id"])
    assert ">00:00<" in html and catalogue("en")["countdown.time_up"] in html


# -- the event stream --------------------------------------------------------------------------------


async def test_stream_sends_the_status_on_connect_and_on_every_change(
    gateway: Gateway, streams: Streams
) -> None:
    invoice = await gateway.create_invoice(MEDIUM, assets=["BTC"], redirect_url="https://shop.example/done")
    stream = await streams.open(gateway, invoice["id"], lang="ru")
    first = await stream.status()
    assert first["phase"] == "waiting" and first["status"] == "new" and first["version"] == 0
    assert first["title"] == "Ожидаем оплату" and first["redirect_url"] is None
    assert first["seconds_left"] == 900 and first["methods"][0]["uri"] == method(invoice, "BTC")["uri"]
    assert 'data-phase="waiting"' in first["html"]

    due = method(invoice, "BTC")["amount_due_minor"]
    await gateway.service.record_payment(btc_fact(invoice, due, "aa" * 32 + ":0"))
    detected = await stream.status()
    assert detected["phase"] == "detected" and detected["status"] == "processing"
    assert detected["confirmations"] == {"have": 0, "need": 1}
    assert "Подтверждений: 0 из 1" in detected["html"] and detected["methods"] == []

    await gateway.service.record_payment(btc_fact(invoice, due, "aa" * 32 + ":0", confirmations=1))
    paid = await stream.status()
    assert paid["phase"] == "paid" and paid["status"] == "settled" and paid["title"] == "Оплачено"
    assert paid["redirect_url"] == "https://shop.example/done"
    assert 'data-redirect="https://shop.example/done"' in paid["html"]
    assert paid["version"] > detected["version"] > first["version"]


async def test_stream_reconnect_starts_with_the_current_status(gateway: Gateway, streams: Streams) -> None:
    invoice = await gateway.create_invoice(MEDIUM, assets=["BTC"])
    due = method(invoice, "BTC")["amount_due_minor"]
    await gateway.service.record_payment(btc_fact(invoice, due, "ab" * 32 + ":0"))
    stream = await streams.open(gateway, invoice["id"])
    assert (await stream.status())["phase"] == "detected"


async def test_underpaid_shows_the_remaining_amount_with_a_fresh_uri_and_qr(
    gateway: Gateway, streams: Streams
) -> None:
    invoice = await gateway.create_invoice(MEDIUM, description="Dinner")
    stream = await streams.open(gateway, invoice["id"])
    assert (await stream.status())["phase"] == "waiting"
    btc = method(invoice, "BTC")
    half = btc["amount_due_minor"] // 2
    record = await gateway.service.record_payment(btc_fact(invoice, half, "bb" * 32 + ":0"))
    assert record is not None

    event = await stream.status()
    assert event["phase"] == "underpaid" and event["flags"] == ["underpaid"]
    html = await page(gateway, invoice["id"])
    assert "Partly paid" in html and event["html"].strip() in html
    assert format_kzt(record.state.price_tiyn, "en") in html
    offered = {m["asset"]: m for m in event["methods"]}
    assert set(offered) == {"BTC", "ETH", "USDT"}
    for m in invoice["payment_methods"]:
        asset = Asset(m["asset"])
        remaining = amount_remaining_minor(record.state, asset)
        assert 0 < remaining < m["amount_due_minor"]
        new = offered[asset.value]
        assert new["amount_minor"] == str(remaining)
        assert new["amount"] == format_minor_units(remaining, m["decimals"])
        assert new["uri"] != m["uri"] and new["uri"] == remaining_uri(m["uri"], remaining)
        assert qr_svg(new["uri"]).strip() in html and qr_svg(m["uri"]).strip() not in html
        assert f">{new['amount']}</code>" in html
        request = parse_payment_uri(new["uri"])
        if isinstance(request, Bip21Request):
            assert request == Bip21Request(m["address"], remaining, "Alatau Coffee", "Dinner")
        elif isinstance(request, Eip681Native):
            assert (request.address, request.value_wei) == (m["address"], remaining)
        else:
            assert isinstance(request, Eip681TokenTransfer)
            assert (request.to, request.amount_units) == (m["address"], remaining)
    assert catalogue("en")["method.send_remaining"] in html


async def test_a_cancelled_invoice_tells_the_payer_not_to_pay_and_stops_refreshing(
    gateway: Gateway, streams: Streams
) -> None:
    invoice = await gateway.create_invoice()
    stream = await streams.open(gateway, invoice["id"], lang="kk")
    await stream.status()
    cancelled = await gateway.client.post(f"/v1/invoices/{invoice['id']}/cancel", headers=gateway.auth())
    assert cancelled.status == 200
    event = await stream.status()
    assert event["phase"] == "cancelled" and event["title"] == catalogue("kk")["status.cancelled.title"]
    html = await page(gateway, invoice["id"])
    assert 'http-equiv="refresh"' not in html and 'class="qr"' not in html


async def test_the_open_page_learns_of_the_expiry_from_the_sweeper(
    make_gateway: GatewayFactory, streams: Streams
) -> None:
    gateway = await make_gateway(CRYPTOCITY_INVOICES__EXPIRY_SWEEP_SECONDS="0.05")
    invoice = await gateway.create_invoice(expires_in=60, assets=["BTC"])
    stream = await streams.open(gateway, invoice["id"])
    assert (await stream.status())["seconds_left"] == 60
    gateway.clock.advance(timedelta(seconds=61))
    expired = await stream.status()
    assert expired["phase"] == "expired" and expired["methods"] == [] and expired["seconds_left"] == 0
    assert "Invoice expired" in expired["html"] and "countdown" not in expired["html"]


async def test_heartbeats_are_comments_between_events(gateway: Gateway) -> None:
    gateway.app[HUB].heartbeat_seconds = 0.1
    invoice = await gateway.create_invoice()
    response = await gateway.client.get(f"/i/{invoice['id']}/events")
    try:
        reader = SseReader(response)
        retry = await reader.message()
        assert retry.event is None and retry.comment is None  # the "retry:" hint alone
        assert (await reader.message()).event == "status"
        beat = await reader.message(timeout=5)
        assert beat.comment == "keep-alive" and beat.event is None
    finally:
        response.close()


async def test_streams_of_other_invoices_are_not_woken(gateway: Gateway, streams: Streams) -> None:
    watched = await gateway.create_invoice(assets=["BTC"])
    other = await gateway.create_invoice(MEDIUM, assets=["BTC"])
    stream = await streams.open(gateway, watched["id"])
    await stream.status()
    await gateway.service.record_payment(btc_fact(other, 1000, "cc" * 32 + ":0"))
    with pytest.raises(TimeoutError):
        await stream.status(timeout=0.5)


async def test_changes_arrive_on_the_commit_wake_up_not_the_fallback_poll(
    gateway: Gateway, streams: Streams
) -> None:
    gateway.app[HUB].poll_seconds = 60.0
    invoice = await gateway.create_invoice(MEDIUM, assets=["BTC"])
    stream = await streams.open(gateway, invoice["id"])
    await stream.status()
    await gateway.service.record_payment(btc_fact(invoice, 1000, "dd" * 32 + ":0"))
    assert (await stream.status(timeout=2))["phase"] == "underpaid"


async def test_commits_by_another_process_arrive_by_the_fallback_poll(
    make_gateway: GatewayFactory, streams: Streams
) -> None:
    writer = await make_gateway()
    reader = await make_gateway()  # a second gateway on the same database file: its store sees no commit
    invoice = await writer.create_invoice(MEDIUM, assets=["BTC"])
    stream = await streams.open(reader, invoice["id"])
    await stream.status()
    await writer.service.record_payment(btc_fact(invoice, 1000, "de" * 32 + ":0"))
    assert (await stream.status(timeout=5))["phase"] == "underpaid"


# -- nothing leaks -----------------------------------------------------------------------------------


def _tasks() -> set[asyncio.Task[Any]]:
    return {t for t in asyncio.all_tasks() if not t.done()}


async def test_disconnected_streams_leave_no_subscription_task_or_polling(gateway: Gateway) -> None:
    hub = gateway.app[HUB]
    invoice = await gateway.create_invoice()
    await asyncio.sleep(0.1)
    before = _tasks()
    responses = []
    for _ in range(5):
        response = await gateway.client.get(f"/i/{invoice['id']}/events")
        await SseReader(response).status()
        responses.append(response)
    assert hub.subscriber_count == 5
    for response in responses:
        response.close()

    async def idle() -> bool:
        return hub.subscriber_count == 0 and _tasks() <= before

    await eventually(idle, seconds=5)
    reads = hub.reads
    await gateway.create_invoice()  # commits (and wakes the hub) with no one listening
    await asyncio.sleep(1.5)  # past the fallback poll
    assert hub.reads == reads


async def test_disconnects_are_noticed_without_handler_cancellation(tmp_path: Path) -> None:
    """Production's AppRunner does not cancel handlers on disconnect (the test server does): still no leak."""
    app = create_app(make_config(tmp_path), clock=ManualClock())
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        btc, eth = demo_account_keys()
        _, key = await app[REGISTRY].create(
            "Alatau Coffee", btc_account_key=btc, eth_account_key=eth, accepted_assets=[Asset.BTC]
        )
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        base = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as session:
            created = await session.post(
                f"{base}/v1/invoices",
                json={"amount": "12500.00", "currency": "KZT"},
                headers={"Authorization": f"Bearer {key.plaintext}"},
            )
            invoice_id = (await created.json())["id"]
            response = await session.get(f"{base}/i/{invoice_id}/events")
            assert (await SseReader(response).status())["phase"] == Phase.WAITING
            assert app[HUB].subscriber_count == 1
            response.close()

            async def gone() -> bool:
                return app[HUB].subscriber_count == 0

            await eventually(gone, seconds=5)
    finally:
        await runner.cleanup()


async def test_shutdown_ends_open_streams_at_once(gateway: Gateway, streams: Streams) -> None:
    invoice = await gateway.create_invoice()
    stream = await streams.open(gateway, invoice["id"])
    await stream.status()
    gateway.app[HUB].close_streams()
    with pytest.raises(EOFError):
        await stream.status(timeout=5)
    assert gateway.app[HUB].subscriber_count == 0
    refused = await gateway.client.get(f"/i/{invoice['id']}/events")
    assert refused.status == 503


async def test_the_gateway_answers_favicon_requests_with_its_icon(gateway: Gateway) -> None:
    response = await gateway.client.get("/favicon.ico")
    assert response.status == 200 and response.content_type == "image/svg+xml"
    assert (await response.read()).lstrip().startswith(b"<svg")
