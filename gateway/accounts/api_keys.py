"""API keys: ``cc_<env>_<lookup><secret>``, shown once, stored only as a SHA-256 hash.

A key carries 190 random bits, so a fast hash is enough (no password stretching, which would cost
milliseconds per request); the row is found by the public ``lookup`` part and the hash compared in
constant time. Authentication results are cached briefly in memory because every API call needs one.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

from gateway.ids import random_base32

LOOKUP_CHARS = 12
SECRET_CHARS = 26
_KEY = re.compile(rf"^cc_(test|live)_([0-9a-z]{{{LOOKUP_CHARS}}})([0-9a-z]{{{SECRET_CHARS}}})$")


@dataclass(frozen=True, slots=True)
class IssuedKey:
    """A freshly made key: ``plaintext`` is shown to the merchant once and never stored."""

    plaintext: str
    lookup: str
    secret_hash: str


def issue_key(environment: str) -> IssuedKey:
    lookup = random_base32(LOOKUP_CHARS)
    plaintext = f"cc_{environment}_{lookup}{random_base32(SECRET_CHARS)}"
    return IssuedKey(plaintext, lookup, hash_key(plaintext))


def hash_key(plaintext: str) -> str:
    return hashlib.sha256(plaintext.encode("ascii")).hexdigest()


def split_key(plaintext: str) -> tuple[str, str] | None:
    """(environment, lookup) of a well-formed key, or None."""
    match = _KEY.match(plaintext)
    return (match.group(1), match.group(2)) if match else None


def key_matches(plaintext: str, secret_hash: str) -> bool:
    return hmac.compare_digest(hash_key(plaintext), secret_hash)


@dataclass(frozen=True, slots=True)
class CachedAuth:
    merchant_id: str | None  # None: the key is unknown, revoked or its merchant disabled
    secret_hash: str
    expires_at: float


class AuthCache:
    """Short-lived memory of key lookups; ``invalidate_all`` runs after any key or merchant change here."""

    def __init__(self, ttl_seconds: float, max_entries: int = 100_000) -> None:
        self._ttl = ttl_seconds
        self._max = max_entries
        self._entries: dict[str, CachedAuth] = {}
        self._listeners: list[Callable[[], None]] = []

    def on_invalidate(self, listener: Callable[[], None]) -> None:
        """Also clear ``listener``'s cache whenever keys or merchants change (e.g. the merchant cache)."""
        self._listeners.append(listener)

    def get(self, lookup: str) -> CachedAuth | None:
        entry = self._entries.get(lookup)
        if entry is None or entry.expires_at < time.monotonic():
            return None
        return entry

    def put(self, lookup: str, merchant_id: str | None, secret_hash: str) -> None:
        if self._ttl <= 0:
            return
        if len(self._entries) >= self._max:
            self._entries.clear()
        self._entries[lookup] = CachedAuth(merchant_id, secret_hash, time.monotonic() + self._ttl)

    def invalidate_all(self) -> None:
        self._entries.clear()
        for listener in self._listeners:
            listener()
