"""Object identifiers: a type prefix, a millisecond time part and 80 random bits, in Crockford base32.

Ids are unguessable (the checkout page is reachable by invoice id alone: 80 random bits), carry their type
so a support person can tell an invoice from an event at a glance, and sort in creation order within a
process (the time part never repeats or goes back), which gives list pagination a stable, meaningful
tie-break. The time part is wall-clock: it orders ids and is never used as domain time.
"""

from __future__ import annotations

import secrets
import time

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"


def random_base32(n_chars: int) -> str:
    value = secrets.randbits(5 * n_chars)
    out = []
    for _ in range(n_chars):
        value, digit = divmod(value, 32)
        out.append(_ALPHABET[digit])
    return "".join(out)


_TIME_CHARS = 10
_last_time_part = 0


def _encode(value: int, n_chars: int) -> str:
    out = []
    for _ in range(n_chars):
        value, digit = divmod(value, 32)
        out.append(_ALPHABET[digit])
    return "".join(reversed(out))


def new_id(prefix: str) -> str:
    """``<prefix>_`` + 10 chars of strictly increasing milliseconds + 16 random chars (80 bits)."""
    global _last_time_part
    _last_time_part = max(_last_time_part + 1, time.time_ns() // 1_000_000)
    return f"{prefix}_{_encode(_last_time_part, _TIME_CHARS)}{random_base32(26 - _TIME_CHARS)}"


def looks_like_id(text: str, prefix: str) -> bool:
    body = text.removeprefix(f"{prefix}_")
    return body != text and len(body) == 26 and all(c in _ALPHABET for c in body)


def id_floor(prefix: str, unix_ms: int) -> str:
    """The smallest id of type ``prefix`` created at or after ``unix_ms`` (for "created since" range scans)."""
    return f"{prefix}_{_encode(max(0, unix_ms), _TIME_CHARS)}"
