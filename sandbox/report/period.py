"""The month a report covers: parsing ``YYYY-MM`` strictly, and its bounds in the pilot's time zone.

A month is a calendar month in ``sandbox.timezone`` (Asia/Almaty), exactly as the limits count it
(``SandboxRules.month_bounds``): a payment at 23:59:59 on the 30th of November in Almaty is November's,
one at 00:00:00 on the 1st of December is December's, whatever UTC says.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from gateway.clock import isoformat
from sandbox.limits import SandboxRules
from sandbox.regulator.metrics import Period

_MONTH = re.compile(r"^(\d{4})-(\d{2})$")
FIRST_YEAR, LAST_YEAR = 1970, 9998  # month_bounds needs the year after the month to exist


class BadMonth(ValueError):
    """Not a month this command can report on; the message says what was expected."""


def parse_month(text: str) -> str:
    """``"2026-11"`` → ``"2026-11"``; anything else (``"2026-13"``, ``"june"``, ``"2026-1"``) raises BadMonth."""
    match = _MONTH.match(text.strip())
    if match is None:
        raise BadMonth(f"{text!r} is not a month: write YYYY-MM, e.g. 2026-11")
    year, number = int(match.group(1)), int(match.group(2))
    if not 1 <= number <= 12:
        raise BadMonth(f"{text!r} is not a month: the month must be 01 to 12")
    if not FIRST_YEAR <= year <= LAST_YEAR:
        raise BadMonth(
            f"{text!r} is not a month this report covers: the year must be {FIRST_YEAR} to {LAST_YEAR}"
        )
    return f"{year:04d}-{number:02d}"


def month_argument(text: str) -> str:
    """``parse_month`` for argparse: a bad month is a usage error (exit 2) with the reason."""
    try:
        return parse_month(text)
    except BadMonth as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


@dataclass(frozen=True, slots=True)
class ReportPeriod:
    """``[start, end)`` of one calendar month; both aware datetimes in the pilot's zone."""

    month: str
    start: datetime
    end: datetime
    timezone: str

    @classmethod
    def of(cls, rules: SandboxRules, month: str) -> ReportPeriod:
        start, end = rules.month_bounds(parse_month(month))
        return cls(month, start, end, rules.config.timezone)

    @property
    def metrics_period(self) -> Period:
        """The same bounds as the regulator API's ``?from=&to=``."""
        return Period(self.start, self.end)

    @property
    def bounds_utc(self) -> tuple[str, str]:
        """RFC 3339 UTC strings, the store's form: compare with ``decided_at``, ``posted_at`` etc."""
        return isoformat(self.start), isoformat(self.end)

    def days(self) -> list[date]:
        """Every calendar day of the month, in order."""
        first, last = self.start.date(), (self.end - timedelta(days=1)).date()
        return [first + timedelta(days=n) for n in range((last - first).days + 1)]
