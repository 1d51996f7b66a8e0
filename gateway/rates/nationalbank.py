"""Official tenge rates of the National Bank of Kazakhstan (NBK), from its RSS/XML feed.

``GET <base>/rss/get_rates.cfm?fdate=DD.MM.YYYY`` answers::

    <rates>
      <date>20.11.2026</date>
      <item><fullname>ДОЛЛАР США</fullname><title>USD</title><description>512.34</description>
            <quant>1</quant><index>UP</index><change>+0.55</change></item>
      ...
    </rates>

The rate in KZT per one unit is ``description / quant`` (some currencies are quoted per 10 or 100 units).
The bank publishes nothing for weekends and holidays, so the adapter walks back day by day, at most
``max_days_back`` days, to the last published day, and the observation time is that publication date (its
midnight in Kazakhstan), not the moment we asked: the composite then judges freshness by the official
window of days, not the seconds a market price lives.

A day with no publication is recognised as a well-formed ``<rates>`` with no ``<item>``. If the bank answers
a holiday date with the last published rates instead, dated by their own ``<date>``, that date is used.
Past days never change once published (or not published), so their answers are cached; today's is always
asked again, both to notice a new publication and so that an outage shows up in the health view.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal

import aiohttp

from gateway.clock import Clock
from gateway.rates.errors import ErrorPage, InvalidPrice, MalformedResponse, MissingSymbol, NoPublication
from gateway.rates.http import describe_body, http_get, looks_like_html, require_ok
from gateway.rates.quotes import Pair, Quote, QuoteBatch, parse_price

NAME = "nbk"
# Kazakhstan has one time zone, UTC+5, since 1 March 2024; the bank's dates are local dates.
KAZAKHSTAN_TZ = timezone(timedelta(hours=5), "UTC+05")
RATES_PATH = "/rss/get_rates.cfm"
_DATE_FORMAT = "%d.%m.%Y"


@dataclass(frozen=True, slots=True)
class NbkPublication:
    """The rates published for one day: KZT per one unit of each currency asked for."""

    date: date
    kzt_per_unit: Mapping[str, Decimal]


def _text(element: ET.Element, tag: str) -> str | None:
    child = element.find(tag)
    if child is None or child.text is None:
        return None
    return child.text.strip()


def parse_nbk_rates(
    body: bytes, currencies: Sequence[str] = ("USD",), provider: str = NAME
) -> NbkPublication | None:
    """Parse one ``get_rates.cfm`` answer; None when that day has no publication.

    Only the currencies asked for are validated, so a broken line for a currency nobody uses cannot take
    the tenge rate down. Raises :class:`ErrorPage`, :class:`MalformedResponse` (not XML, truncated, no
    date, duplicated currency), :class:`MissingSymbol` or :class:`InvalidPrice` (description or quant not a
    positive number).
    """
    if looks_like_html(body):
        raise ErrorPage(provider, f"expected the rates XML, got {describe_body(body)}")
    head = body[:2048].upper()
    if b"<!DOCTYPE" in head or b"<!ENTITY" in head:
        # The feed has no DTD; refusing one keeps entity-expansion tricks out of the parser.
        raise MalformedResponse(provider, "the rates XML must not carry a DTD")
    try:
        root = ET.fromstring(body)  # noqa: S314 - DTDs refused above; size bounded by http_get
    except ET.ParseError as exc:
        raise MalformedResponse(provider, f"not well-formed XML ({exc}); {describe_body(body)}") from None
    if root.tag != "rates":
        raise MalformedResponse(provider, f"root element <{root.tag}>, expected <rates>")
    items = root.findall("item")
    date_text = _text(root, "date")
    if date_text is None:
        if not items:
            return None
        raise MalformedResponse(provider, "rates without a <date>")
    try:
        published = datetime.strptime(date_text, _DATE_FORMAT).date()
    except ValueError:
        raise MalformedResponse(provider, f"<date>{date_text}</date> is not DD.MM.YYYY") from None
    if not items:
        return None

    lines: dict[str, ET.Element] = {}
    for item in items:
        code = (_text(item, "title") or "").upper()
        if not code:
            raise MalformedResponse(provider, "an <item> without a <title>")
        if code in lines:
            raise MalformedResponse(provider, f"{code} appears twice")
        lines[code] = item

    missing = tuple(code for code in currencies if code not in lines)
    if missing:
        raise MissingSymbol(provider, missing)
    rates: dict[str, Decimal] = {}
    for code in currencies:
        item = lines[code]
        description = parse_price(provider, code, _text(item, "description"))
        quant_text = _text(item, "quant")
        if quant_text is None or not quant_text.isdigit() or int(quant_text) <= 0:
            raise InvalidPrice(provider, f"{code} quant", quant_text)
        rates[code] = description / int(quant_text)
    return NbkPublication(published, rates)


def publication_moment(day: date, tz: timezone = KAZAKHSTAN_TZ) -> datetime:
    """When a publication's rates start to apply: midnight of its date in Kazakhstan, in UTC."""
    return datetime.combine(day, time(0), tzinfo=tz).astimezone(UTC)


class NationalBankRates:
    """Adapter for the NBK feed; quotes ``(<currency>, "KZT")``, marked official."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        clock: Clock,
        *,
        timeout_seconds: float = 10.0,
        currencies: Sequence[str] = ("USD",),
        max_days_back: int = 7,
        tz: timezone = KAZAKHSTAN_TZ,
        name: str = NAME,
    ) -> None:
        if max_days_back < 0:
            raise ValueError("max_days_back must not be negative")
        self._session = session
        self._url = base_url.rstrip("/") + RATES_PATH
        self._clock = clock
        self._timeout = timeout_seconds
        self._currencies = tuple(code.upper() for code in currencies)
        self._max_days_back = max_days_back
        self._tz = tz
        self._name = name
        self._past: dict[date, NbkPublication | None] = {}

    @property
    def name(self) -> str:
        return self._name

    async def fetch(self) -> QuoteBatch:
        today = self._clock.now().astimezone(self._tz).date()
        oldest = today - timedelta(days=self._max_days_back)
        for day in list(self._past):
            if day < oldest:
                del self._past[day]
        for back in range(self._max_days_back + 1):
            day = today - timedelta(days=back)
            if day in self._past:
                publication = self._past[day]
            else:
                publication = await self.fetch_day(day)
                if day < today:
                    self._past[day] = publication
            if publication is not None:
                return self._batch(publication)
        raise NoPublication(self._name, f"no rates published from {oldest:%d.%m.%Y} to {today:%d.%m.%Y}")

    async def fetch_day(self, day: date) -> NbkPublication | None:
        """The publication the bank serves for ``day`` (None: nothing published that day)."""
        answer = await http_get(
            self._session,
            self._name,
            self._url,
            params={"fdate": day.strftime(_DATE_FORMAT)},
            timeout_seconds=self._timeout,
            now=self._clock.now(),
        )
        require_ok(self._name, answer)
        publication = parse_nbk_rates(answer.body, self._currencies, self._name)
        if publication is not None and publication.date > day:
            raise MalformedResponse(
                self._name, f"asked for {day:%d.%m.%Y}, got rates dated {publication.date:%d.%m.%Y}"
            )
        return publication

    def _batch(self, publication: NbkPublication) -> QuoteBatch:
        observed = publication_moment(publication.date, self._tz)
        quotes = {
            Pair(code, "KZT"): Quote(Pair(code, "KZT"), rate, self._name, code, observed, official=True)
            for code, rate in publication.kzt_per_unit.items()
        }
        return QuoteBatch(self._name, observed, quotes)
