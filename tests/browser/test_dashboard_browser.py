"""The regulator dashboard in a real browser: Debian's Chromium, driven by Playwright, on a desk-sized screen.

A gateway with the sandbox's extensions gets three days of pilot data the way the other sandbox tests
make it: residents and merchant categories in the registry, invoices through the merchant API, payments as
a watcher hands them to ``InvoiceService.record_payment`` (judged by the sandbox's policy; some are held).
The regulator then does what a regulator does: signs in with a real token, reads the tiles (compared with
``/sandbox/v1/summary``), looks at the charts (checked in the DOM and in the pixels of a screenshot), picks
a period, and decides holds with the buttons. Console errors and CSP violations fail every test, but for
the refusals a test provokes on purpose (a wrong token's 401, an already decided hold's 409).

Launch and skip rule are the checkout's (tests/browser/test_checkout_browser.py): without Chromium the
module skips on a developer's machine, never in CI.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from PIL import Image
from playwright.async_api import Locator, Page, ViewportSize, expect

from gateway.checkout.render import format_kzt
from gateway.clock import isoformat
from gateway.config import SandboxConfig
from gateway.invoices.service import PaymentFact
from gateway.money import ASSETS, Asset, Chain, format_minor_units
from sandbox.extension import sandbox_extensions
from sandbox.limits import Tier
from sandbox.registry import Category, Registry
from sandbox.regulator.tokens import RegulatorTokens
from tests.api.test_sandbox import SCRIPT_A, SCRIPT_B, regulator, resident, txid
from tests.browser.test_checkout_browser import OpenBrowser, Problems, open_browser, page_url
from tests.conftest import Gateway, GatewayFactory
from tests.integration.settlement_helpers import eventually

__all__ = ["open_browser"]  # the checkout's fixture, used here as it is

pytestmark = pytest.mark.integration

SCRIPT_C = "0014" + "cc" * 20
ETH_PAYER = "0x" + "ab" * 20
DESK: ViewportSize = {"width": 1280, "height": 1000}
NBSP = "\u00a0"
CHARTS = (
    "chart-volume-day",
    "chart-volume-asset",
    "chart-volume-category",
    "chart-invoice-status",
    "chart-held-reason",
    "chart-utilisation",
    "chart-settlement",
)
# Chromium reports every HTTP error answer to fetch() on the console; these are the answers a test provokes
# on purpose (a wrong token, an already decided hold). Anything else there fails the test.
EXPECTED_REFUSAL = re.compile(
    r"^error: Failed to load resource: the server responded with a status of (401|403|409) "
)


@dataclass
class Pilot:
    gateway: Gateway
    token: str
    anonymous_id: str
    release_key: str  # held: an unregistered wallet paid
    refund_key: str  # held: the same
    contested_key: str  # held: over the anonymous tier's per-operation limit

    async def api(self, path: str, method: str = "GET", body: Any = None) -> Any:
        status, answer = await regulator(self.gateway, method, path, self.token, body)
        assert status == 200, answer
        return answer

    async def summary_when(self, ready: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        """This month's summary once it shows a change just committed (reads may lag a commit a little)."""
        found: dict[str, Any] = {}

        async def check() -> bool:
            found.update(await self.api("/summary"))
            return ready(found)

        await eventually(check)
        return found


async def pay(
    gateway: Gateway, invoice: dict[str, Any], key: str, *, script: str, amount: int | None = None
) -> None:
    """A Bitcoin payment as the watcher hands it over, with the payer script it recovered (six confirmations).

    Unlike tests/api/test_sandbox.py's helper this does not read the judged row back at once: a store read
    that overlaps another read on the same SQLite reader connection shares that read's older snapshot, so
    a read straight after a commit may miss it now and then; nothing here needs the row.
    """
    method = next(m for m in invoice["payment_methods"] if m["asset"] == "BTC")
    paid = int(method["amount_due_minor"]) if amount is None else amount
    fact = PaymentFact(
        Chain.BITCOIN, method["address"], key, Asset.BTC, paid, 6, payer=script, payer_scripts=(script,)
    )
    await gateway.service.record_payment(fact)


async def pay_eth(gateway: Gateway, invoice: dict[str, Any], key: str, payer: str) -> None:
    method = next(m for m in invoice["payment_methods"] if m["asset"] == "ETH")
    fact = PaymentFact(
        Chain.ETHEREUM, method["address"], key, Asset.ETH, method["amount_due_minor"], 12, payer=payer
    )
    await gateway.service.record_payment(fact)


def due(invoice: dict[str, Any]) -> int:
    return int(next(m for m in invoice["payment_methods"] if m["asset"] == "BTC")["amount_due_minor"])


@pytest.fixture
async def pilot(make_gateway: GatewayFactory) -> Pilot:
    """Three days of a pilot month: accepted, under- and overpaid, late and held payments, two categories."""
    gateway = await make_gateway(
        sandbox_extensions(SandboxConfig()), CRYPTOCITY_INVOICES__EXPIRY_SWEEP_SECONDS="0.05"
    )
    token = (await RegulatorTokens(gateway.store, gateway.clock).issue("dashboard test")).plaintext
    registry = Registry(gateway.store, gateway.clock)
    basic = await resident(registry, Tier.BASIC, SCRIPT_A)
    await registry.register_wallet(basic, "ethereum", ETH_PAYER)
    anonymous = await resident(registry, Tier.ANONYMOUS, SCRIPT_C)
    await registry.set_merchant_profile(gateway.merchant_id, category=Category.CAFE)
    await registry.set_merchant_profile(gateway.other_merchant_id, category=Category.GROCERY)
    other = gateway.other_api_key

    late = await gateway.create_invoice("1500.00", assets=["BTC"], expires_in=60)
    quick = await gateway.create_invoice("5300.00", assets=["BTC"])
    gateway.clock.advance(timedelta(seconds=30))
    await pay(gateway, quick, txid(1), script=SCRIPT_A)  # settles after 30 s
    big = await gateway.create_invoice("300000.00", assets=["BTC"])
    gateway.clock.advance(timedelta(seconds=90))
    await pay(gateway, big, txid(2), script=SCRIPT_A)  # settles after 90 s; ~60 % of the basic month

    async def expired() -> bool:
        return (await gateway.service.get(None, late["id"])).state.status.value == "expired"

    await eventually(expired)
    await pay(gateway, late, txid(3), script=SCRIPT_A)  # paid late
    gateway.clock.advance(timedelta(days=1))
    grocery = await gateway.create_invoice("12000.00", key=other, assets=["BTC"])
    await pay(gateway, grocery, txid(4), script=SCRIPT_C)
    coffee = await gateway.create_invoice("4000.00", assets=["ETH"])
    await pay_eth(gateway, coffee, f"0x{1:064x}:0", ETH_PAYER)
    gateway.clock.advance(timedelta(days=1))
    over = await gateway.create_invoice("2000.00", assets=["BTC"])
    await pay(gateway, over, txid(5), script=SCRIPT_A, amount=due(over) + 5_000)
    under = await gateway.create_invoice("3000.00", assets=["BTC"])
    await pay(gateway, under, txid(6), script=SCRIPT_A, amount=due(under) // 2)
    for n, amount in ((7, "2000.00"), (8, "2500.00")):
        held = await gateway.create_invoice(amount, assets=["BTC"])
        await pay(gateway, held, txid(n), script=SCRIPT_B)  # an unregistered wallet: held
    contested = await gateway.create_invoice("15000.00", key=other, assets=["BTC"])
    await pay(gateway, contested, txid(9), script=SCRIPT_C)  # above 3 MRP: held
    await gateway.create_invoice("100.00")  # left open
    return Pilot(gateway, token, anonymous, txid(7), txid(8), txid(9))


async def open_dashboard(open_browser: OpenBrowser, pilot: Pilot, query: str = "") -> tuple[Page, Problems]:
    browser = await open_browser()
    page = await browser.new_page()
    await page.set_viewport_size(DESK)
    problems = Problems(page)
    await page.goto(page_url(pilot.gateway, "/sandbox/dashboard" + query))
    await expect(page.locator("#login")).to_be_visible()
    return page, problems


async def sign_in(page: Page, token: str) -> None:
    await page.fill("#token", token)
    await page.click("#login-submit")
    await expect(page.locator("#dashboard")).to_have_attribute("data-loaded", "true")


def unexpected(problems: Problems) -> list[str]:
    return [m for m in problems.messages if not EXPECTED_REFUSAL.match(m)]


def percent(rate: float) -> str:
    return f"{round(rate * 10000) / 100:.2f}{NBSP}%"


def duration(seconds: float) -> str:
    """The dashboard's text for a settlement time (whole seconds here: no halves to round either way)."""
    assert seconds == int(seconds)
    if seconds < 10:
        return f"{seconds:g}{NBSP}s"
    total = round(seconds)
    if total < 60:
        return f"{total}{NBSP}s"
    return f"{total // 60}{NBSP}min {total % 60:02d}{NBSP}s"


def row(page: Page, payment_key: str) -> Locator:
    return page.locator(f'#holds-table tbody tr[data-key="bitcoin/{payment_key}"]')


def pixels(png: bytes) -> tuple[int, int]:
    """How many distinct colours an element's screenshot has, and how many of its pixels are chart colours
    (saturated: the text, grid and background of a chart are greys)."""
    image = Image.open(io.BytesIO(png)).convert("RGB")
    colours = image.getcolors(maxcolors=image.width * image.height) or []
    saturated = 0
    for n, colour in colours:
        assert isinstance(colour, tuple)
        if max(colour) - min(colour) > 60:
            saturated += n
    return len(colours), saturated


async def test_a_wrong_token_is_refused_with_the_apis_reason_and_nothing_is_kept(
    open_browser: OpenBrowser, pilot: Pilot
) -> None:
    page, problems = await open_dashboard(open_browser, pilot, "?refresh=1")
    await page.fill("#token", "crt_" + "0" * 38)
    await page.click("#login-submit")
    await expect(page.locator("#login-error")).to_contain_text("unknown or revoked regulator token")
    await page.fill("#token", pilot.gateway.api_key)  # a merchant's key is a key, but not for this
    await page.click("#login-submit")
    await expect(page.locator("#login-error")).to_contain_text(
        "merchant API keys are refused on the regulator API"
    )
    await expect(page.locator("#dashboard")).to_be_hidden()
    assert await page.evaluate("sessionStorage.length") == 0
    await page.fill("#token", "")
    await page.click("#login-submit")
    await expect(page.locator("#login-error")).to_have_text("Paste your regulator token (crt_…).")
    assert len(problems.messages) == 2  # the 401 and the 403, nothing else

    # a token revoked while the dashboard is open: the next refresh signs out and says why
    tokens = RegulatorTokens(pilot.gateway.store, pilot.gateway.clock)
    issued = await tokens.issue("revoked soon")
    await sign_in(page, issued.plaintext)
    await tokens.revoke(issued.id)
    await expect(page.locator("#login-error")).to_contain_text("unknown or revoked regulator token")
    await expect(page.locator("#dashboard")).to_be_hidden()
    assert await page.evaluate("sessionStorage.length") == 0
    assert unexpected(problems) == []


async def test_tiles_show_the_summary_and_every_chart_is_drawn(
    open_browser: OpenBrowser, pilot: Pilot, tmp_path: Path
) -> None:
    gateway = pilot.gateway
    page, problems = await open_dashboard(open_browser, pilot, "?refresh=1")
    await sign_in(page, pilot.token)
    summary = await pilot.api("/summary")
    exposure = await pilot.api("/exposure")
    holds = (await pilot.api("/holds"))["data"]

    volume, payments, invoices = summary["volume"], summary["payments"], summary["invoices"]
    await expect(page.locator("#tile-volume .value")).to_have_text(format_kzt(volume["total_tiyn"], "en"))
    assert len(volume["by_day"]) == 3 and len(volume["by_asset"]) == 2 and len(volume["by_category"]) == 2
    await expect(page.locator("#tile-payments .value")).to_have_text(str(payments["judged"]))
    await expect(page.locator("#tile-held .value")).to_have_text(str(payments["held"]))
    await expect(page.locator("#tile-held .sub")).to_contain_text(percent(payments["held_rate"]))
    await expect(page.locator("#tile-payers .value")).to_have_text(str(summary["unique_payers"]["residents"]))
    await expect(page.locator("#tile-payers .sub")).to_contain_text("1 unregistered wallet")
    await expect(page.locator("#tile-invoices .value")).to_have_text(str(invoices["created"]))
    settlement = summary["settlement_seconds"]
    assert settlement["count"] >= 2
    await expect(page.locator("#tile-settlement-p50 .value")).to_have_text(duration(settlement["p50"]))
    await expect(page.locator("#tile-settlement-p90 .value")).to_have_text(duration(settlement["p90"]))
    await expect(page.locator("#rate-held")).to_have_text(percent(payments["held_rate"]))
    for flag in ("underpaid", "overpaid", "paid_late"):
        assert invoices["rates"][flag] > 0, flag  # the data has one of each
        await expect(page.locator(f"#rate-{flag}")).to_have_text(percent(invoices["rates"][flag]))
    totals = exposure["totals"]
    await expect(page.locator("#tile-exposure .value")).to_have_text(
        format_kzt(totals["current_value_tiyn"], "en")
    )
    await expect(page.locator("#exposure-booked")).to_contain_text(format_kzt(totals["booked_tiyn"], "en"))
    await expect(page.locator("#exposure-fx")).to_have_attribute(
        "data-value", str(totals["unrealised_fx_tiyn"])
    )
    await expect(page.locator("#exposure-table tbody tr")).to_have_count(len(exposure["assets"]))
    btc = exposure["assets"]["BTC"]
    on_addresses = format_minor_units(int(btc["on_addresses_minor"]), 8) + " BTC"
    await expect(page.locator('#exposure-table tr[data-asset="BTC"]')).to_contain_text(on_addresses)
    await expect(page.locator("#tile-queue .value")).to_have_text(str(len(holds)))

    # the held queue: pseudonymous residents only, amounts and values as the API gives them
    await expect(page.locator("#holds-table tbody tr")).to_have_count(len(holds))
    for hold in holds:
        shown = row(page, hold["payment_key"])
        amount = format_minor_units(int(hold["amount_minor"]), ASSETS[Asset(hold["asset"])].decimals)
        await expect(shown.locator(".amount")).to_have_text(f"{amount} {hold['asset']}")
        await expect(shown.locator(".value")).to_have_text(format_kzt(hold["value_tiyn"], "en"))
        await expect(shown).to_contain_text(hold["invoice_id"])
        await expect(shown).to_contain_text(hold["resident_id"] or "unregistered wallet")
    await expect(row(page, pilot.contested_key)).to_contain_text(pilot.anonymous_id)
    await expect(row(page, pilot.contested_key).locator(".reason")).to_have_text(
        "Over the per-operation limit"
    )
    text = await page.locator("body").inner_text()
    for wallet in (SCRIPT_A, SCRIPT_B, SCRIPT_C, ETH_PAYER):
        assert wallet not in text

    # every chart: drawn in the DOM with as many points as the data has ...
    util = summary["limit_utilisation"]
    expected_points = {
        "chart-volume-day": len(volume["by_day"]),
        "chart-volume-asset": len(volume["by_asset"]),
        "chart-volume-category": len(volume["by_category"]),
        "chart-invoice-status": len(invoices["by_status"]),
        "chart-held-reason": len(payments["held_by_reason"]),
        "chart-utilisation": sum(1 for n in util["buckets_percent"].values() if n),
        "chart-settlement": 4,
    }
    assert expected_points["chart-utilisation"] == 2 and expected_points["chart-held-reason"] == 2
    for chart in CHARTS:
        svg = page.locator(f"#{chart} svg")
        await expect(svg).to_have_attribute("data-points", str(expected_points[chart]))
        assert await svg.locator("rect.bar, path.slice").count() == expected_points[chart], chart
        await expect(page.locator(f"#{chart}")).not_to_contain_text("No data for this period")
    by_day = page.locator("#chart-volume-day rect.bar")
    assert [int(v) for v in await by_day.evaluate_all("bars => bars.map(b => b.dataset.value)")] == list(
        volume["by_day"].values()
    )
    slices = await page.locator("#chart-volume-asset path.slice").evaluate_all(
        "paths => paths.map(p => [p.dataset.label, Number(p.dataset.value)])"
    )
    assert dict(slices) == volume["by_asset"]

    # ... and in the pixels: a screenshot of each chart has the chart's colours, not one flat colour
    shot = tmp_path / "dashboard.png"
    await page.screenshot(path=str(shot), full_page=True)
    assert Image.open(shot).size[0] == DESK["width"]
    for chart in CHARTS:
        distinct, saturated = pixels(await page.locator(f"#{chart} svg").screenshot())
        assert distinct > 1 and saturated > 200, (chart, distinct, saturated)

    # live: a payment judged now shows up without anyone touching the page
    before = await page.get_attribute("#updated", "data-updated-at")
    fresh = await gateway.create_invoice("7000.00", assets=["BTC"])
    await pay(gateway, fresh, txid(10), script=SCRIPT_A)
    now = await pilot.summary_when(lambda s: s["payments"]["judged"] == payments["judged"] + 1)
    assert now["volume"]["total_tiyn"] > volume["total_tiyn"]
    await expect(page.locator("#tile-volume .value")).to_have_text(
        format_kzt(now["volume"]["total_tiyn"], "en"), timeout=10_000
    )
    await expect(page.locator("#tile-payments .value")).to_have_text(str(now["payments"]["judged"]))
    assert await page.get_attribute("#updated", "data-updated-at") != before
    await expect(page.locator("#updated")).to_contain_text("Updated ")

    # a period without data: every chart says so, and draws nothing
    await page.fill("#period-from", "2020-01-01")
    await page.fill("#period-to", "2020-01-31")
    await page.click("#period-apply")
    await expect(page.locator("#tile-volume .value")).to_have_text(format_kzt(0, "en"))
    await expect(page.locator("#period-label")).to_have_text(f"1{NBSP}Jan 2020 – 31{NBSP}Jan 2020")
    for chart in CHARTS:
        await expect(page.locator(f"#{chart} svg")).to_have_attribute("data-points", "0")
        await expect(page.locator(f"#{chart}")).to_contain_text("No data for this period")
        assert await page.locator(f"#{chart} svg").locator("rect, path").count() == 0
        distinct, saturated = pixels(await page.locator(f"#{chart} svg").screenshot())
        assert saturated == 0, chart
    empty = await pilot.api("/summary?from=2019-12-31T19:00:00Z&to=2020-01-31T19:00:00Z")  # Almaty days
    await expect(page.locator("#tile-invoices .value")).to_have_text(str(empty["invoices"]["created"]))
    # one day, from midnight to midnight in the pilot's time zone (the last day chosen is included)
    zone = ZoneInfo(SandboxConfig().timezone)
    today = gateway.clock.now().astimezone(zone).date()
    midnight = datetime.combine(today, time(0), zone)
    one_day = await pilot.api(
        f"/summary?from={isoformat(midnight)}&to={isoformat(midnight + timedelta(days=1))}"
    )
    assert one_day["volume"]["total_tiyn"] == now["volume"]["by_day"][today.isoformat()]
    assert one_day["volume"]["total_tiyn"] < now["volume"]["total_tiyn"]
    await page.fill("#period-from", today.isoformat())
    await page.fill("#period-to", today.isoformat())
    await page.click("#period-apply")
    await expect(page.locator("#tile-volume .value")).to_have_text(
        format_kzt(one_day["volume"]["total_tiyn"], "en")
    )
    await expect(page.locator("#tile-payments .value")).to_have_text(str(one_day["payments"]["judged"]))
    await expect(page.locator("#chart-volume-day svg")).to_have_attribute("data-points", "1")
    await page.fill("#period-to", "2020-01-01")
    await page.click("#period-apply")
    await expect(page.locator("#period-error")).to_have_text("The last day is before the first.")
    await page.click("#period-month")
    await expect(page.locator("#period-error")).to_be_hidden()
    await expect(page.locator("#chart-volume-asset svg")).to_have_attribute("data-points", "2")

    # the token lives in this tab's sessionStorage only, and logging out forgets it and the figures
    assert await page.evaluate("sessionStorage.getItem('cryptocity.regulator-token')") == pilot.token
    assert await page.evaluate("localStorage.length") == 0
    assert await page.evaluate("document.cookie") == ""
    await page.reload()  # same tab: still signed in
    await expect(page.locator("#dashboard")).to_have_attribute("data-loaded", "true")
    await page.click("#logout")
    await expect(page.locator("#login")).to_be_visible()
    await expect(page.locator("#dashboard")).to_be_hidden()
    assert await page.evaluate("sessionStorage.length") == 0
    assert await page.locator("#holds-table tbody tr").count() == 0
    await expect(page.locator("#tile-volume .value")).to_have_text("—")
    await page.reload()
    await expect(page.locator("#login")).to_be_visible()
    assert problems.messages == []


async def test_holds_are_released_and_refunded_with_the_buttons(
    open_browser: OpenBrowser, pilot: Pilot
) -> None:
    gateway = pilot.gateway
    page, problems = await open_dashboard(open_browser, pilot, "?refresh=1")
    await sign_in(page, pilot.token)
    before = await pilot.api("/summary")
    await expect(page.locator("#holds-table tbody tr")).to_have_count(3)

    released = row(page, pilot.release_key)
    hold = next(h for h in (await pilot.api("/holds"))["data"] if h["payment_key"] == pilot.release_key)
    await released.locator("button.release").click()
    await expect(released).to_have_count(0)
    await expect(page.locator("#hold-message")).to_have_attribute("data-kind", "ok")
    await expect(page.locator("#hold-message")).to_contain_text(
        f"Released {format_kzt(hold['value_tiyn'], 'en')} on invoice {hold['invoice_id']}"
    )
    total = before["volume"]["total_tiyn"] + hold["value_tiyn"]  # the released payment counts now
    after = await pilot.summary_when(lambda s: s["volume"]["total_tiyn"] == total)
    await expect(page.locator("#tile-volume .value")).to_have_text(
        format_kzt(after["volume"]["total_tiyn"], "en")
    )
    await expect(page.locator("#tile-queue .value")).to_have_text("2")

    async def settled() -> bool:
        return (await gateway.service.get(None, hold["invoice_id"])).state.status.value == "settled"

    await eventually(settled)  # released: the invoice proceeded

    refunded = row(page, pilot.refund_key)
    await refunded.locator("button.refund").click()
    form = refunded.locator("form.refund-form")
    await expect(form).to_be_visible()
    await form.locator('input[name="refund_address"]').fill("bcrt1qrefundtothepayer")
    await form.locator('input[name="note"]').fill("unknown wallet, returned")
    await form.locator("button.confirm-refund").click()
    await expect(refunded).to_have_count(0)
    await expect(page.locator("#hold-message")).to_contain_text("ordered to bcrt1qrefundtothepayer")
    decided: dict[str, Any] = {}

    async def both_decided() -> bool:
        decided.update({h["payment_key"]: h for h in (await pilot.api("/holds/decided"))["data"]})
        return len(decided) == 2

    await eventually(both_decided)
    assert decided[pilot.refund_key]["resolution"] == "refunded"
    assert decided[pilot.refund_key]["refund_address"] == "bcrt1qrefundtothepayer"
    assert decided[pilot.refund_key]["note"] == "unknown wallet, returned"
    assert decided[pilot.release_key]["resolution"] == "released"

    # another regulator decides the last hold first: this page's click gets the API's 409, shown as such.
    # Same tab, so still signed in; this time the page does not poll, or it could drop the row before the click.
    await page.goto(page_url(gateway, "/sandbox/dashboard?refresh=3600"))
    await expect(page.locator("#dashboard")).to_have_attribute("data-loaded", "true")
    contested = row(page, pilot.contested_key)
    await expect(contested).to_have_count(1)
    await expect(page.locator("#holds-table tbody tr")).to_have_count(1)
    await pilot.api(f"/holds/bitcoin/{pilot.contested_key}/release", "POST", {"note": "other desk"})
    await contested.locator("button.release").click()
    await expect(page.locator("#hold-message")).to_have_attribute("data-kind", "error")
    await expect(page.locator("#hold-message")).to_contain_text("Already decided")
    await expect(page.locator("#hold-message")).to_contain_text("this hold was already released")
    await expect(contested).to_have_count(0)  # the refresh after the error shows the queue as it is
    await expect(page.locator("#holds-empty")).to_be_visible()
    await expect(page.locator("#tile-queue .value")).to_have_text("0")
    assert (await pilot.api("/holds"))["data"] == []
    assert unexpected(problems) == []
    assert len(problems.messages) == 1 and "status of 409" in problems.messages[0]
    events = await gateway.store.read(
        lambda tx: tx.fetchall(
            "SELECT type, payload FROM outbox WHERE type LIKE 'sandbox.hold_%' ORDER BY seq"
        )
    )
    assert [e["type"] for e in events] == [
        "sandbox.hold_released",
        "sandbox.hold_refunded",
        "sandbox.hold_released",
    ]
    assert json.loads(events[1]["payload"])["data"]["refund_address"] == "bcrt1qrefundtothepayer"
