"""The composite's maths: paths, median, freshness windows, the outlier rule, the spread, Retry-After."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from structlog.testing import capture_logs

from gateway.money import ASSETS, Asset, crypto_due
from gateway.rates.base import RateSource, RatesUnavailable
from gateway.rates.composite import (
    RATE_QUANTUM,
    CompositeRates,
    apply_spread,
    median,
    path_label,
)
from gateway.rates.nationalbank import publication_moment
from gateway.rates.quotes import Pair, Quote, QuoteBatch

MONDAY = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)  # 17:00 in Kazakhstan
FRIDAY_PUBLICATION = publication_moment(datetime(2026, 11, 20).date())  # 2026-11-19 19:00 UTC

BTCUSDT, ETHUSDT, USDTKZT = Decimal("97000.01"), Decimal("3612.45"), Decimal("513.10")
XBTUSD, ETHUSD, USDTUSD = Decimal("96985.3"), Decimal("3611.9"), Decimal("1.00012")
USDKZT = Decimal("512.34")


def batch(
    source: str, at: datetime, prices: dict[tuple[str, str, str], Decimal], official: bool = False
) -> QuoteBatch:
    """prices: (base, quote, provider symbol) → price."""
    quotes = {
        Pair(base, quote): Quote(Pair(base, quote), price, source, symbol, at, official)
        for (base, quote, symbol), price in prices.items()
    }
    return QuoteBatch(source, at, quotes)


def binance(at: datetime = MONDAY, usdtkzt: Decimal = USDTKZT, btcusdt: Decimal = BTCUSDT) -> QuoteBatch:
    return batch(
        "binance",
        at,
        {
            ("BTC", "USDT", "BTCUSDT"): btcusdt,
            ("ETH", "USDT", "ETHUSDT"): ETHUSDT,
            ("USDT", "KZT", "USDTKZT"): usdtkzt,
        },
    )


def kraken(at: datetime = MONDAY) -> QuoteBatch:
    return batch(
        "kraken",
        at,
        {
            ("BTC", "USD", "XBTUSD"): XBTUSD,
            ("ETH", "USD", "ETHUSD"): ETHUSD,
            ("USDT", "USD", "USDTUSD"): USDTUSD,
        },
    )


def nbk(at: datetime = publication_moment(MONDAY.date())) -> QuoteBatch:
    return batch("nbk", at, {("USD", "KZT", "USD"): USDKZT}, official=True)


def composite(*batches: QuoteBatch, **options: object) -> CompositeRates:
    rates = CompositeRates(**options)  # type: ignore[arg-type]
    for b in batches:
        rates.update(b)
    return rates


def q(value: Decimal) -> Decimal:
    return value.quantize(RATE_QUANTUM)


def test_the_composite_is_what_invoice_creation_reads() -> None:
    source: RateSource = composite(binance())  # checked by mypy against the protocol
    assert source.current(Asset.USDT, MONDAY).kzt_per_unit == USDTKZT


# -- paths -------------------------------------------------------------------------------------------------


def test_all_three_providers_give_three_btc_paths_and_their_median() -> None:
    rates = composite(binance(), kraken(), nbk())
    derivation = rates.explain(Asset.BTC, MONDAY)
    values = {p.label: p.kzt_per_unit for p in derivation.used}
    assert values == {
        "binance:BTCUSDT*USDTKZT": BTCUSDT * USDTKZT,
        "binance:BTCUSDT*kraken:USDTUSD*nbk:USD": BTCUSDT * USDTUSD * USDKZT,
        "kraken:XBTUSD*nbk:USD": XBTUSD * USDKZT,
    }
    rate = rates.current(Asset.BTC, MONDAY)
    assert rate.kzt_per_unit == q(sorted(values.values())[1])
    assert rate.sources == tuple(sorted(values))
    assert rate.observed_at == MONDAY  # the market observation, not the official rate's date
    assert derivation.outliers == () and derivation.stale == ()


def test_usdt_has_a_direct_and_a_usd_path() -> None:
    rate = composite(binance(), kraken(), nbk()).current(Asset.USDT, MONDAY)
    assert rate.sources == ("binance:USDTKZT", "kraken:USDTUSD*nbk:USD")
    assert rate.kzt_per_unit == q((USDTKZT + USDTUSD * USDKZT) / 2)  # median of two is their mean


def test_binance_alone_prices_every_asset_through_usdtkzt() -> None:
    rates = composite(binance())
    assert rates.current(Asset.BTC, MONDAY).kzt_per_unit == q(BTCUSDT * USDTKZT)
    assert rates.current(Asset.ETH, MONDAY).sources == ("binance:ETHUSDT*USDTKZT",)
    assert rates.current(Asset.USDT, MONDAY).kzt_per_unit == USDTKZT


def test_kraken_and_national_bank_alone_price_every_asset_through_usd() -> None:
    rates = composite(kraken(), nbk())
    assert rates.current(Asset.BTC, MONDAY).sources == ("kraken:XBTUSD*nbk:USD",)
    assert rates.current(Asset.ETH, MONDAY).kzt_per_unit == q(ETHUSD * USDKZT)
    assert rates.current(Asset.USDT, MONDAY).kzt_per_unit == q(USDTUSD * USDKZT)


@pytest.mark.parametrize("asset", list(Asset))
def test_national_bank_alone_cannot_price_crypto(asset: Asset) -> None:
    rates = composite(nbk())
    with pytest.raises(RatesUnavailable) as caught:
        rates.current(asset, MONDAY)
    assert caught.value.asset is asset
    assert rates.explain(asset, MONDAY).reason == "no path to KZT"


def test_max_legs_limits_the_paths() -> None:
    rates = composite(binance(), kraken(), nbk(), max_legs=2)
    assert len(rates.explain(Asset.BTC, MONDAY).used) == 2


def test_path_label_names_a_source_once_per_run_of_legs() -> None:
    legs = (
        binance().quotes[Pair("BTC", "USDT")],
        kraken().quotes[Pair("USDT", "USD")],
        nbk().quotes[Pair("USD", "KZT")],
    )
    assert path_label(legs) == "binance:BTCUSDT*kraken:USDTUSD*nbk:USD"
    assert path_label(legs[:1]) == "binance:BTCUSDT"


def test_median() -> None:
    assert median([Decimal(3), Decimal(1), Decimal(2)]) == 2
    assert median([Decimal(1), Decimal(2)]) == Decimal("1.5")
    assert median([Decimal("0.1"), Decimal("0.2"), Decimal("0.4"), Decimal("0.3")]) == Decimal("0.25")
    with pytest.raises(ValueError):
        median([])


def test_an_older_batch_does_not_replace_a_newer_quote() -> None:
    rates = composite(binance(MONDAY, usdtkzt=Decimal(500)))
    rates.update(binance(MONDAY - timedelta(seconds=10), usdtkzt=Decimal(400)))
    assert rates.current(Asset.USDT, MONDAY).kzt_per_unit == Decimal(500)


def test_generic_paths_from_any_provider() -> None:
    direct = batch("otc", MONDAY, {("BTC", "KZT", "BTCKZT"): Decimal("49700000")})
    rate = composite(direct).current(Asset.BTC, MONDAY)
    assert rate.sources == ("otc:BTCKZT",)
    assert rate.kzt_per_unit == Decimal("49700000.000000")


# -- freshness ---------------------------------------------------------------------------------------------


def test_crypto_quotes_are_fresh_for_sixty_seconds() -> None:
    rates = composite(binance(MONDAY))
    assert rates.current(Asset.BTC, MONDAY + timedelta(seconds=60)).sources == ("binance:BTCUSDT*USDTKZT",)
    with pytest.raises(RatesUnavailable):
        rates.current(Asset.BTC, MONDAY + timedelta(seconds=60, microseconds=1))
    assert rates.explain(Asset.BTC, MONDAY + timedelta(seconds=61)).reason == "all paths are stale"


def test_max_crypto_age_is_configurable() -> None:
    rates = composite(binance(MONDAY), max_crypto_age=timedelta(seconds=10))
    with pytest.raises(RatesUnavailable):
        rates.current(Asset.BTC, MONDAY + timedelta(seconds=11))


def test_a_stale_path_drops_out_and_the_fresh_ones_price() -> None:
    later = MONDAY + timedelta(seconds=45)
    rates = composite(binance(MONDAY), kraken(later), nbk())
    now = MONDAY + timedelta(seconds=90)  # Binance 90 s old, Kraken 45 s
    derivation = rates.explain(Asset.BTC, now)
    assert [p.label for p in derivation.used] == ["kraken:XBTUSD*nbk:USD"]
    assert {p.label for p in derivation.stale} == {
        "binance:BTCUSDT*USDTKZT",
        "binance:BTCUSDT*kraken:USDTUSD*nbk:USD",
    }
    assert derivation.rate is not None
    assert derivation.rate.observed_at == later


def test_friday_publication_serves_the_weekend_and_monday_within_four_days() -> None:
    # Walked back from Sunday/Monday morning, the newest publication is Friday's (2026-11-19 19:00 UTC).
    sunday = datetime(2026, 11, 22, 9, 0, tzinfo=UTC)
    monday_evening = FRIDAY_PUBLICATION + timedelta(days=4)
    for now in (sunday, monday_evening):
        rates = composite(kraken(now), nbk(FRIDAY_PUBLICATION))
        assert rates.current(Asset.BTC, now).sources == ("kraken:XBTUSD*nbk:USD",)
    too_late = FRIDAY_PUBLICATION + timedelta(days=4, seconds=1)
    rates = composite(kraken(too_late), nbk(FRIDAY_PUBLICATION))
    with pytest.raises(RatesUnavailable):
        rates.current(Asset.BTC, too_late)


def test_official_window_is_configurable() -> None:
    now = FRIDAY_PUBLICATION + timedelta(days=2)
    rates = composite(kraken(now), nbk(FRIDAY_PUBLICATION), max_official_age=timedelta(days=1))
    with pytest.raises(RatesUnavailable):
        rates.current(Asset.USDT, now)


def test_an_old_official_rate_leaves_the_binance_path() -> None:
    now = FRIDAY_PUBLICATION + timedelta(days=6)
    rates = composite(binance(now), kraken(now), nbk(FRIDAY_PUBLICATION))
    assert rates.current(Asset.ETH, now).sources == ("binance:ETHUSDT*USDTKZT",)


# -- outliers ----------------------------------------------------------------------------------------------


def test_with_three_paths_one_more_than_20_percent_off_is_discarded_and_logged() -> None:
    thin_book = USDTKZT * Decimal("1.3")  # Binance's USDTKZT 30% off; BTCUSDT is fine
    rates = composite(binance(usdtkzt=thin_book), kraken(), nbk())
    with capture_logs() as logs:
        derivation = rates.explain(Asset.BTC, MONDAY)
        rates.explain(Asset.BTC, MONDAY)  # logged once per distinct outlier, not per call
    assert [p.label for p in derivation.outliers] == ["binance:BTCUSDT*USDTKZT"]
    assert derivation.rate is not None
    assert derivation.rate.sources == ("binance:BTCUSDT*kraken:USDTUSD*nbk:USD", "kraken:XBTUSD*nbk:USD")
    assert derivation.rate.kzt_per_unit == q((BTCUSDT * USDTUSD * USDKZT + XBTUSD * USDKZT) / 2)
    outlier_logs = [e for e in logs if e["event"] == "rates.outlier_discarded"]
    assert len(outlier_logs) == 1
    assert outlier_logs[0]["path"] == "binance:BTCUSDT*USDTKZT"
    assert outlier_logs[0]["asset"] == "BTC"


def test_within_20_percent_nothing_is_discarded() -> None:
    rates = composite(binance(usdtkzt=USDTKZT * Decimal("1.19")), kraken(), nbk())
    derivation = rates.explain(Asset.BTC, MONDAY)
    assert derivation.outliers == ()
    assert len(derivation.used) == 3


def test_with_two_paths_the_outlier_rule_does_not_apply() -> None:
    far = USDTKZT * 2
    rate = composite(binance(usdtkzt=far), kraken(), nbk()).current(Asset.USDT, MONDAY)
    assert len(rate.sources) == 2
    assert rate.kzt_per_unit == q((far + USDTUSD * USDKZT) / 2)


def test_sources_too_far_apart_give_no_rate() -> None:
    rates = composite(
        batch("a", MONDAY, {("BTC", "KZT", "X"): Decimal(1)}),
        batch("b", MONDAY, {("BTC", "KZT", "X"): Decimal("1.1")}),
        batch("c", MONDAY, {("BTC", "KZT", "X"): Decimal(100)}),
    )
    with capture_logs() as logs, pytest.raises(RatesUnavailable):
        rates.current(Asset.BTC, MONDAY)
    assert any(e["event"] == "rates.no_consensus" for e in logs)


def test_outlier_threshold_is_configurable() -> None:
    rates = composite(
        binance(usdtkzt=USDTKZT * Decimal("1.12")), kraken(), nbk(), outlier_threshold=Decimal("0.1")
    )
    assert len(rates.explain(Asset.BTC, MONDAY).outliers) == 1


# -- spread ------------------------------------------------------------------------------------------------


def test_zero_spread_is_the_mid_rate() -> None:
    rates = composite(binance())
    quoted = rates.quote(Asset.BTC, MONDAY)
    assert quoted.kzt_per_unit == quoted.mid_kzt_per_unit == rates.current(Asset.BTC, MONDAY).kzt_per_unit
    assert quoted.spread_bps == 0


def test_spread_lowers_the_rate_so_the_customer_pays_more_coin() -> None:
    rates = composite(binance())
    mid = rates.current(Asset.BTC, MONDAY).kzt_per_unit
    quoted = rates.quote(Asset.BTC, MONDAY, spread_bps=150)
    assert quoted.spread_bps == 150
    assert quoted.mid_kzt_per_unit == mid
    assert quoted.kzt_per_unit == (mid * Decimal("0.985")).quantize(RATE_QUANTUM)
    assert quoted.sources == ("binance:BTCUSDT*USDTKZT",)
    assert quoted.as_asset_rate().kzt_per_unit == quoted.kzt_per_unit
    price_tiyn = 1_250_000  # 12,500.00 KZT
    decimals = ASSETS[Asset.BTC].decimals
    assert crypto_due(price_tiyn, quoted.kzt_per_unit, decimals) > crypto_due(price_tiyn, mid, decimals)


def test_spread_rounds_down() -> None:
    assert apply_spread(Decimal("0.000019"), 5000) == Decimal("0.000009")  # 0.0000095 → down
    assert apply_spread(Decimal("513.1"), 1) == Decimal("513.048690")


@pytest.mark.parametrize("bad", [-1, 10_000, 20_000, True, 1.5])
def test_spread_must_be_whole_basis_points_below_100_percent(bad: object) -> None:
    rates = composite(binance())
    with pytest.raises(ValueError):
        rates.quote(Asset.BTC, MONDAY, spread_bps=bad)  # type: ignore[arg-type]


def test_quote_without_a_rate_is_unavailable() -> None:
    with pytest.raises(RatesUnavailable):
        composite().quote(Asset.ETH, MONDAY, spread_bps=100)


# -- refusals and snapshots --------------------------------------------------------------------------------


def test_retry_after_is_the_wait_for_the_next_refresh() -> None:
    rates = composite(retry_after_seconds=17)
    with pytest.raises(RatesUnavailable) as caught:
        rates.current(Asset.BTC, MONDAY)
    assert caught.value.retry_after_seconds == 17
    rates.set_next_refresh(MONDAY + timedelta(seconds=12.3))
    with pytest.raises(RatesUnavailable) as caught:
        rates.current(Asset.BTC, MONDAY)
    assert caught.value.retry_after_seconds == 13
    rates.set_next_refresh(MONDAY - timedelta(seconds=5))
    with pytest.raises(RatesUnavailable) as caught:
        rates.current(Asset.BTC, MONDAY)
    assert caught.value.retry_after_seconds == 1


def test_snapshot_lists_rates_and_why_others_are_missing() -> None:
    rates = composite(kraken(), nbk(), binance(MONDAY - timedelta(minutes=5)))
    snapshot = rates.snapshot(MONDAY)
    assert set(snapshot.rates) == set(Asset)
    doc = snapshot.as_dict()
    assert doc["taken_at"] == "2026-11-23T12:00:00.000Z"
    assert doc["rates"]["BTC"]["sources"] == ["kraken:XBTUSD*nbk:USD"]
    assert doc["rates"]["BTC"]["kzt_per_unit"] == str(q(XBTUSD * USDKZT))
    assert doc["unavailable"] == {}
    empty = composite(nbk()).snapshot(MONDAY).as_dict()
    assert empty["rates"] == {}
    assert empty["unavailable"] == {
        "BTC": "no path to KZT",
        "ETH": "no path to KZT",
        "USDT": "no path to KZT",
    }
