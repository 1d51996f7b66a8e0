"""Object identifiers: a type prefix, a millisecond time part and 80 random bits, in Crockford base32.

Ids are unguessable (the checkout page is reachable by invoice id alone: 80 random bits), carry their type
so a support person can tell an invoice from an event at a glance, and sort in creation order within a
process (an id never repeats or sorts before an earlier one), which gives list pagination a stable, meaningful
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
_RANDOM_CHARS = 26 - _TIME_CHARS
_RANDOM_LIMIT = 1 << (5 * _RANDOM_CHARS)  # 80 bits
_STEP_BITS = 60  # within one millisecond, the next id's random part is the last one's plus 1 to 2^60
_last_time_part = 0
_last_random_part = 0


def _encode(value: int, n_chars: int) -> str:
    out = []
    for _ in range(n_chars):
        value, digit = divmod(value, 32)
        out.append(_ALPHABET[digit])
    return "".join(reversed(out))


def new_id(prefix: str) -> str:
    """``<prefix>_`` + 10 chars of milliseconds + 16 chars (80 bits) of randomness, strictly increasing.

    Within one millisecond (or if the wall clock steps back) the time part stays and the random part grows
    by a random step, instead of the time part moving on by a millisecond per id: a process creating more
    than a thousand ids a second (the full-city simulation registers a quarter of a million wallets) would
    otherwise push the time part minutes ahead of the wall clock, and "created since T" scans built with
    :func:`id_floor` (the chain watchers' address refresh) would read far more than they ask for. The step
    keeps 60 bits of an id unguessable from the one before it.
    """
    global _last_time_part, _last_random_part
    now = time.time_ns() // 1_000_000
    if now > _last_time_part:
        _last_time_part, _last_random_part = now, secrets.randbits(5 * _RANDOM_CHARS - 1)
    else:
        _last_random_part += 1 + secrets.randbits(_STEP_BITS)
        if _last_random_part >= _RANDOM_LIMIT:  # about 2^19 ids in one millisecond: borrow the next one
            _last_time_part, _last_random_part = _last_time_part + 1, secrets.randbits(5 * _RANDOM_CHARS - 1)
    return f"{prefix}_{_encode(_last_time_part, _TIME_CHARS)}{_encode(_last_random_part, _RANDOM_CHARS)}"


def looks_like_id(text: str, prefix: str) -> bool:
    body = text.removeprefix(f"{prefix}_")
    return body != text and len(body) == 26 and all(c in _ALPHABET for c in body)


def id_floor(prefix: str, unix_ms: int) -> str:
    """The smallest id of type ``prefix`` created at or after ``unix_ms`` (for "created since" range scans)."""
    return f"{prefix}_{_encode(max(0, unix_ms), _TIME_CHARS)}"
