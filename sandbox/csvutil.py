"""One CSV row as bytes, for the streamed exports (the regulator's and the merchant's ledger statements)."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from typing import Any


def csv_line(values: Iterable[Any]) -> bytes:
    """A row in RFC 4180 quoting with a newline; None is written as an empty field."""
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(["" if v is None else v for v in values])
    return buffer.getvalue().encode()
