"""The three providers' parsers on recorded answers: the good ones, and every way an answer can be bad."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

import pytest

from gateway.rates.binance import DEFAULT_SYMBOLS, build_batch, error_code, parse_binance_prices
from gateway.rates.errors import (
    ErrorPage,
    InvalidPrice,
    MalformedResponse,
    MissingSymbol,
    ProviderError,
    RateLimited,
    UpstreamError,
)
from gateway.rates.http import looks_like_html, parse_retry_after
from gateway.rates.kraken import DEFAULT_PAIRS, parse_kraken_ticker
from gateway.rates.nationalbank import parse_nbk_rates, publication_moment
from gateway.rates.quotes import Pair, parse_price
from tests.fixtures.rates.fake_providers import sample

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
HTML_PAGES = ["html_error_502.html", "html_maintenance.html"]


# -- shared pieces ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("97000.01000000", Decimal("97000.01")), ("1", Decimal(1)), (" 512.34 ", Decimal("512.34"))],
)
def test_prices_are_plain_positive_decimal_strings(raw: str, expected: Decimal) -> None:
    assert parse_price("p", "X", raw) == expected


@pytest.mark.parametrize(
    "raw", ["0", "0.00000000", "-1.5", "NaN", "Infinity", "1e5", "1,5", "", "abc", None, 97000.01, 5, [1]]
)
def test_anything_else_is_an_invalid_price(raw: object) -> None:
    with pytest.raises(InvalidPrice):
        parse_price("p", "X", raw)


def test_retry_after_as_seconds_or_http_date() -> None:
    assert parse_retry_after("120", NOW) == 120.0
    assert parse_retry_after("Mon, 23 Nov 2026 12:01:30 GMT", NOW) == 90.0
    assert parse_retry_after("Mon, 23 Nov 2026 11:00:00 GMT", NOW) == 0.0
    assert parse_retry_after("soon", NOW) is None
    assert parse_retry_after(None, NOW) is None


@pytest.mark.parametrize("page", HTML_PAGES)
def test_html_pages_are_recognised(page: str) -> None:
    assert looks_like_html(sample(page))
    assert not looks_like_html(sample("nbk/rates_23.11.2026.xml"))
    assert not looks_like_html(sample("binance/prices.json"))


# -- National Bank -----------------------------------------------------------------------------------------


def test_nbk_publication_gives_kzt_per_unit_and_ignores_the_channel_header() -> None:
    publication = parse_nbk_rates(sample("nbk/rates_23.11.2026.xml"), ("USD", "EUR", "UZS", "JPY"))
    assert publication is not None
    assert publication.date == date(2026, 11, 23)
    assert publication.kzt_per_unit == {
        "USD": Decimal("512.34"),
        "EUR": Decimal("538.06"),
        "UZS": Decimal("0.0427"),  # 4.27 per 100
        "JPY": Decimal("3.305"),  # 33.05 per 10
    }
    assert all(isinstance(v, Decimal) for v in publication.kzt_per_unit.values())


def test_nbk_rate_is_description_over_quant() -> None:
    publication = parse_nbk_rates(sample("nbk/quant_100_usd.xml"))
    assert publication is not None
    assert publication.kzt_per_unit["USD"] == Decimal("512.34")


def test_nbk_day_without_items_is_no_publication() -> None:
    assert parse_nbk_rates(sample("nbk/no_publication.xml")) is None
    assert parse_nbk_rates(b"<rates></rates>") is None


def test_nbk_publication_moment_is_local_midnight() -> None:
    assert publication_moment(date(2026, 11, 20)) == datetime(2026, 11, 19, 19, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("fixture", "error"),
    [
        ("nbk/truncated.xml", MalformedResponse),
        ("nbk/bad_date.xml", MalformedResponse),
        ("nbk/wrong_root.xml", MalformedResponse),
        ("nbk/entity_expansion.xml", MalformedResponse),
        ("nbk/missing_usd.xml", MissingSymbol),
        ("nbk/zero_usd.xml", InvalidPrice),
        ("nbk/negative_usd.xml", InvalidPrice),
        ("nbk/non_numeric_usd.xml", InvalidPrice),
        ("nbk/zero_quant_usd.xml", InvalidPrice),
        ("html_error_502.html", ErrorPage),
        ("html_maintenance.html", ErrorPage),
        ("binance/prices.json", MalformedResponse),
    ],
)
def test_nbk_bad_answers(fixture: str, error: type[ProviderError]) -> None:
    with pytest.raises(error) as caught:
        parse_nbk_rates(sample(fixture))
    assert caught.value.provider == "nbk"


def test_nbk_only_validates_the_currencies_asked_for() -> None:
    body = sample("nbk/rates_23.11.2026.xml").replace(
        b"<description>538.06</description>", b"<description>x</description>"
    )
    publication = parse_nbk_rates(body, ("USD",))
    assert publication is not None
    assert publication.kzt_per_unit == {"USD": Decimal("512.34")}
    with pytest.raises(InvalidPrice):
        parse_nbk_rates(body, ("USD", "EUR"))


def test_nbk_duplicate_currency_is_malformed() -> None:
    body = sample("nbk/rates_23.11.2026.xml").replace(b"<title>EUR</title>", b"<title>USD</title>")
    with pytest.raises(MalformedResponse, match="twice"):
        parse_nbk_rates(body)


# -- Binance -----------------------------------------------------------------------------------------------


def test_binance_prices_are_strings_parsed_to_decimal() -> None:
    raw = parse_binance_prices(sample("binance/prices.json"))
    batch = build_batch("binance", raw, DEFAULT_SYMBOLS, NOW)
    assert batch.price(("BTC", "USDT")) == Decimal("97000.01")
    assert batch.price(("ETH", "USDT")) == Decimal("3612.45")
    assert batch.price(("USDT", "KZT")) == Decimal("513.10")
    assert {q.symbol for q in batch.quotes.values()} == {"BTCUSDT", "ETHUSDT", "USDTKZT"}
    assert all(q.observed_at == NOW and not q.official for q in batch.quotes.values())


def test_binance_single_symbol_answer_is_one_object() -> None:
    assert parse_binance_prices(sample("binance/single_USDTKZT.json")) == {"USDTKZT": "513.10000000"}


def test_binance_missing_symbol_keeps_the_others_as_partial() -> None:
    raw = parse_binance_prices(sample("binance/missing_usdtkzt.json"))
    with pytest.raises(MissingSymbol) as caught:
        build_batch("binance", raw, DEFAULT_SYMBOLS, NOW)
    assert caught.value.symbols == ("USDTKZT",)
    assert caught.value.partial is not None
    assert set(caught.value.partial.quotes) == {Pair("BTC", "USDT"), Pair("ETH", "USDT")}


@pytest.mark.parametrize(
    ("fixture", "bad_symbol"),
    [
        ("binance/zero_price.json", "ETHUSDT"),
        ("binance/negative_price.json", "USDTKZT"),
        ("binance/non_numeric_price.json", "BTCUSDT"),
        ("binance/number_price.json", "BTCUSDT"),
    ],
)
def test_binance_bad_price_is_refused_and_the_rest_kept(fixture: str, bad_symbol: str) -> None:
    raw = parse_binance_prices(sample(fixture))
    with pytest.raises(InvalidPrice) as caught:
        build_batch("binance", raw, DEFAULT_SYMBOLS, NOW)
    assert caught.value.symbol == bad_symbol
    assert caught.value.partial is not None
    assert len(caught.value.partial.quotes) == 2
    assert bad_symbol not in {q.symbol for q in caught.value.partial.quotes.values()}


@pytest.mark.parametrize(
    ("fixture", "error"),
    [
        ("binance/truncated.json", MalformedResponse),
        ("binance/not_a_list.json", MalformedResponse),
        ("binance/invalid_symbol.json", UpstreamError),
        ("html_error_502.html", ErrorPage),
        ("html_maintenance.html", ErrorPage),
        ("nbk/rates_23.11.2026.xml", MalformedResponse),
    ],
)
def test_binance_bad_answers(fixture: str, error: type[ProviderError]) -> None:
    with pytest.raises(error):
        parse_binance_prices(sample(fixture))


def test_binance_error_codes() -> None:
    assert error_code(sample("binance/invalid_symbol.json")) == -1121
    assert error_code(sample("binance/rate_limited.json")) == -1003
    assert error_code(sample("binance/prices.json")) is None
    assert error_code(b"<html>") is None


# -- Kraken ------------------------------------------------------------------------------------------------


def test_kraken_uses_the_last_trade_price_under_internal_pair_names() -> None:
    batch = parse_kraken_ticker(sample("kraken/ticker.json"), DEFAULT_PAIRS, NOW)
    assert batch.price(("BTC", "USD")) == Decimal("96985.30000")  # c[0], not the ask a[0]
    assert batch.price(("ETH", "USD")) == Decimal("3611.90000")
    assert batch.price(("USDT", "USD")) == Decimal("1.00012000")
    assert {q.label for q in batch.quotes.values()} == {"kraken:XBTUSD", "kraken:ETHUSD", "kraken:USDTUSD"}


def test_kraken_warnings_do_not_invalidate_the_result() -> None:
    batch = parse_kraken_ticker(sample("kraken/warning.json"), DEFAULT_PAIRS, NOW)
    assert len(batch.quotes) == 3


def test_kraken_missing_pair_keeps_the_others_as_partial() -> None:
    with pytest.raises(MissingSymbol) as caught:
        parse_kraken_ticker(sample("kraken/missing_pair.json"), DEFAULT_PAIRS, NOW)
    assert caught.value.symbols == ("USDTUSD",)
    assert caught.value.partial is not None
    assert set(caught.value.partial.quotes) == {Pair("BTC", "USD"), Pair("ETH", "USD")}


@pytest.mark.parametrize(
    ("fixture", "bad_pair"),
    [
        ("kraken/zero_price.json", "XBTUSD"),
        ("kraken/negative_price.json", "ETHUSD"),
        ("kraken/non_numeric_price.json", "USDTUSD"),
    ],
)
def test_kraken_bad_price_is_refused(fixture: str, bad_pair: str) -> None:
    with pytest.raises(InvalidPrice) as caught:
        parse_kraken_ticker(sample(fixture), DEFAULT_PAIRS, NOW)
    assert caught.value.symbol == bad_pair
    assert caught.value.partial is not None
    assert len(caught.value.partial.quotes) == 2


@pytest.mark.parametrize(
    ("fixture", "error"),
    [
        ("kraken/error_unknown_pair.json", UpstreamError),
        ("kraken/error_unavailable.json", UpstreamError),
        ("kraken/rate_limited.json", RateLimited),
        ("kraken/truncated.json", MalformedResponse),
        ("kraken/no_result.json", MalformedResponse),
        ("kraken/no_last_trade.json", MalformedResponse),
        ("binance/prices.json", MalformedResponse),
        ("html_error_502.html", ErrorPage),
        ("html_maintenance.html", ErrorPage),
    ],
)
def test_kraken_bad_answers(fixture: str, error: type[ProviderError]) -> None:
    with pytest.raises(error) as caught:
        parse_kraken_ticker(sample(fixture), DEFAULT_PAIRS, NOW)
    assert caught.value.provider == "kraken"
    assert caught.value.partial is None


def test_kraken_error_array_message_is_kept() -> None:
    with pytest.raises(UpstreamError, match="EQuery:Unknown asset pair"):
        parse_kraken_ticker(sample("kraken/error_unknown_pair.json"), DEFAULT_PAIRS, NOW)
    with pytest.raises(RateLimited) as caught:
        parse_kraken_ticker(sample("kraken/rate_limited.json"), DEFAULT_PAIRS, NOW)
    assert caught.value.retry_after_seconds is None
