"""Object identifiers: a type prefix and 128 random bits in Crockford base32.

Ids are unguessable (the checkout page is reachable by invoice id alone) and carry their type so a
support person can tell an invoice from an event at a glance.
"""

from __future__ import annotations

import secrets

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"


def random_base32(n_chars: int) -> str:
    value = secrets.randbits(5 * n_chars)
    out = []
    for _ in range(n_chars):
        value, digit = divmod(value, 32)
        out.append(_ALPHABET[digit])
    return "".join(out)


def new_id(prefix: str) -> str:
    """``<prefix>_`` followed by 26 base32 characters (130 random bits)."""
    return f"{prefix}_{random_base32(26)}"


def looks_like_id(text: str, prefix: str) -> bool:
    body = text.removeprefix(f"{prefix}_")
    return body != text and len(body) == 26 and all(c in _ALPHABET for c in body)
