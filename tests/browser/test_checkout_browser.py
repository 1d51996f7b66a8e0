"""The checkout page in a real browser: Debian's Chromium, driven by Playwright, on a phone-sized screen.

What a payer does is what the tests do: read the QR code off the screen (zxing-cpp decodes the screenshot),
switch tabs and languages, and watch the status change while a real wallet pays on a real bcoin regtest
node. Playwright never downloads a browser here; it drives /usr/bin/chromium with a fresh profile.

Without Chromium the tests skip on a developer's machine, but never in CI (CI set), where they must run.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from pathlib import Path

import pytest
from embit import bip39
from playwright.async_api import (
    BrowserContext,
    ConsoleMessage,
    Page,
    ViewportSize,
    async_playwright,
    expect,
)

from gateway.checkout.i18n import catalogue
from gateway.invoices.service import PaymentFact
from gateway.money import Asset, Chain
from sandbox.devnets.bitcoin import REGTEST_HRP, BitcoinDevnet
from tests.conftest import Gateway, GatewayFactory
from tests.integration.settlement_helpers import method, wait_state
from tests.integration.test_bitcoin_settlement import devnet_env, rpc_of, wait_tip
from wallets.bitcoin import BitcoinWallet
from wallets.qr import read_qr_text

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PHONE: ViewportSize = {"width": 390, "height": 844}
MEDIUM = "100000.00"  # one confirmation by the default policy
SMALL = "12500.00"  # no confirmation needed

if not CHROMIUM.exists() and not os.environ.get("CI"):
    pytest.skip(
        "Debian's Chromium is not installed (apt-get install chromium; scripts/setup.sh does it)",
        allow_module_level=True,
    )

pytestmark = pytest.mark.integration

OpenBrowser = Callable[..., Awaitable[BrowserContext]]


@pytest.fixture
async def open_browser(tmp_path: Path) -> AsyncIterator[OpenBrowser]:
    """Start Chromium with a fresh profile (one per call); everything started is closed afterwards."""
    contexts: list[BrowserContext] = []
    async with async_playwright() as playwright:

        async def start(*, javascript: bool = True) -> BrowserContext:
            profile = tmp_path / f"chromium-profile-{len(contexts)}"
            context = await playwright.chromium.launch_persistent_context(
                str(profile),
                executable_path=str(CHROMIUM),
                args=CHROMIUM_ARGS,
                headless=True,
                viewport=PHONE,
                java_script_enabled=javascript,
                locale="en-US",
            )
            contexts.append(context)
            return context

        try:
            yield start
        finally:
            for context in contexts:
                await context.close()


class Problems:
    """Console errors and page errors, so a CSP violation or a script error fails the test."""

    def __init__(self, page: Page) -> None:
        self.messages: list[str] = []
        page.on("console", self._console)
        page.on("pageerror", lambda error: self.messages.append(f"pageerror: {error}"))

    def _console(self, message: ConsoleMessage) -> None:
        if message.type in ("error", "warning"):
            self.messages.append(f"{message.type}: {message.text}")


def page_url(gateway: Gateway, path: str) -> str:
    return str(gateway.client.make_url(path))


async def scan(page: Page, asset: str, tmp_path: Path) -> str:
    """What a wallet camera reads from the visible QR code of ``asset``'s tab."""
    qr = page.locator(f"#panel-{asset} .qr")
    await expect(qr).to_be_visible()
    shot = tmp_path / f"qr-{asset}-{os.urandom(4).hex()}.png"
    await qr.screenshot(path=str(shot))
    return read_qr_text(shot)


async def phase_is(page: Page, phase: str, timeout_ms: float = 20_000) -> None:
    await expect(page.locator("#live .live")).to_have_attribute("data-phase", phase, timeout=timeout_ms)


async def test_qr_codes_scan_to_the_invoice_uris_tabs_and_languages_switch(
    gateway: Gateway, open_browser: OpenBrowser, tmp_path: Path
) -> None:
    invoice = await gateway.create_invoice(SMALL, description="Latte")
    browser = await open_browser()
    page = await browser.new_page()
    problems = Problems(page)
    await page.goto(page_url(gateway, f"/i/{invoice['id']}"))
    await expect(page.locator(".status-title")).to_have_text(catalogue("en")["status.waiting.title"])
    await page.evaluate("window.__sameDocument = true")

    for asset in ("BTC", "ETH", "USDT"):
        await page.click(f"#tab-{asset}")
        assert await scan(page, asset, tmp_path) == method(invoice, asset)["uri"]
        await expect(page.locator(f"#panel-{asset} .copy").first).to_be_visible()  # the script shows them
    assert page.url.endswith("asset=USDT")  # the tab is in the address, so a reload keeps it
    assert await page.evaluate("window.__sameDocument") is True  # tabs switched without a reload
    # a phone-sized screen: nothing is wider than it, the QR code and the wallet button fit
    assert await page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    box = await page.locator("#panel-USDT .qr").bounding_box()
    assert box is not None and 200 <= box["width"] <= PHONE["width"]

    await page.click("a[data-lang=kk]")
    await expect(page.locator("html")).to_have_attribute("lang", "kk")
    await expect(page.locator(".status-title")).to_have_text(catalogue("kk")["status.waiting.title"])
    await expect(page.locator("#panel-USDT")).to_be_visible()  # the switcher kept the open tab
    await expect(page.locator(".amount")).to_have_text("12\u00a0500,00\u00a0₸")
    await page.goto(page_url(gateway, f"/i/{invoice['id']}"))  # no ?lang: the cookie remembers
    await expect(page.locator(".countdown-label")).to_have_text(catalogue("kk")["countdown.label"])
    await page.click("a[data-lang=ru]")
    await expect(page.locator(".status-title")).to_have_text("Ожидаем оплату")
    await expect(page.locator("#tab-BTC")).to_have_text("BTC")
    assert problems.messages == []


async def test_status_turns_paid_without_a_reload_when_a_wallet_pays_on_regtest(
    make_gateway: GatewayFactory, open_browser: OpenBrowser, tmp_path: Path
) -> None:
    async with BitcoinDevnet(log_path=tmp_path / "bcoin.log") as devnet:
        resident = BitcoinWallet.from_mnemonic(bip39.mnemonic_from_bytes(os.urandom(16)), REGTEST_HRP)
        await devnet.fund(resident)
        gateway = await make_gateway(**devnet_env(devnet))
        await wait_tip(gateway, devnet)
        shop = page_url(gateway, "/healthz")  # the merchant's "thank you" page, on loopback
        invoice = await gateway.create_invoice(MEDIUM, assets=["BTC"], redirect_url=shop)

        browser = await open_browser()
        page = await browser.new_page()
        problems = Problems(page)
        await page.goto(page_url(gateway, f"/i/{invoice['id']}"))
        await phase_is(page, "waiting")
        await page.evaluate("window.__sameDocument = true")

        uri = await scan(page, "BTC", tmp_path)  # the wallet pays what the screen shows
        assert uri == method(invoice, "BTC")["uri"]
        await resident.pay_uri(rpc_of(devnet), uri)
        await phase_is(page, "detected")
        await expect(page.locator(".confirmations")).to_have_text("Confirmations: 0 of 1")
        await expect(page.locator(".qr")).to_have_count(0)  # nothing more to pay

        await devnet.mine(1, resident.address(0))
        await phase_is(page, "paid")
        await expect(page.locator(".status-title")).to_have_text("Paid")
        assert await page.evaluate("window.__sameDocument") is True  # it changed in place, no reload
        await wait_state(gateway, invoice["id"], "settled")
        await page.wait_for_url(shop, timeout=10_000)  # then back to the shop
        assert problems.messages == []


async def test_countdown_reaches_zero_then_the_page_shows_the_expiry_by_the_sweeper(
    make_gateway: GatewayFactory, open_browser: OpenBrowser
) -> None:
    gateway = await make_gateway(CRYPTOCITY_INVOICES__EXPIRY_SWEEP_SECONDS="0.1")
    invoice = await gateway.create_invoice(SMALL, assets=["BTC"], expires_in=60)
    gateway.clock.advance(timedelta(seconds=57))  # the gateway's clock, not the browser's, says 3 s left
    browser = await open_browser()
    page = await browser.new_page()
    problems = Problems(page)
    await page.goto(page_url(gateway, f"/i/{invoice['id']}?lang=ru"))
    await expect(page.locator(".countdown-value")).to_have_text("00:03")
    await expect(page.locator(".time-up")).to_be_visible(timeout=6_000)  # zero: "checking the invoice"
    await expect(page.locator(".countdown-value")).to_have_text("00:00")
    await phase_is(page, "waiting")  # still open until the gateway says otherwise
    gateway.clock.advance(timedelta(seconds=4))
    await phase_is(page, "expired", timeout_ms=10_000)
    await expect(page.locator(".status-title")).to_have_text("Срок действия счёта истёк")
    assert problems.messages == []


@pytest.mark.slow
async def test_without_javascript_the_page_still_works_and_refreshes_itself(
    gateway: Gateway, open_browser: OpenBrowser
) -> None:
    invoice = await gateway.create_invoice(SMALL, assets=["BTC", "ETH"])
    browser = await open_browser(javascript=False)
    page = await browser.new_page()
    await page.goto(page_url(gateway, f"/i/{invoice['id']}"))
    await expect(page.locator(".status-title")).to_have_text("Waiting for your payment")
    await expect(page.locator(".noscript")).to_be_visible()
    await expect(page.locator("#panel-BTC .copy").first).to_be_hidden()  # copying needs the script
    await page.click("#tab-ETH")  # a plain link: the server opens the tab
    await expect(page.locator("#panel-ETH")).to_be_visible()
    await expect(page.locator("#panel-BTC")).to_be_hidden()
    assert page.url.endswith("asset=ETH")

    btc = method(invoice, "BTC")
    fact = PaymentFact(
        Chain.BITCOIN,
        btc["address"],
        "ee" * 32 + ":0",
        Asset.BTC,
        btc["amount_due_minor"],
        0,
        payer="resident",
    )
    await gateway.service.record_payment(fact)
    await phase_is(page, "paid", timeout_ms=15_000)  # the <noscript> refresh brings the news
    await expect(page.locator(".status-title")).to_have_text("Paid")
