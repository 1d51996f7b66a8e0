"""Brute-force protection for credentials: failed authentications are rate-limited per client address.

An API key or regulator token that does not authenticate answers 401. Each such answer takes one token
from the client's bucket; the bucket holds ``burst`` tokens and refills at ``per_minute``. While it holds
less than one token, the HTTP layer answers 429 to every request from that client that carries
credentials, a valid key included: otherwise the one answer that is not a 429 would tell a guesser which
guess was right. Successful authentications take nothing, so a busy merchant is never slowed down.

Why a token bucket: it allows the few typos a person makes (the burst) and then exactly the configured
long-run rate, with two numbers of state per client and no timers.

The check comes before authentication and the charge after it, so requests in flight at the same moment
all pass the check and are all charged: the bucket goes below zero, and the client waits off that debt
before its next attempt. The long-run rate holds even for a client that sends its guesses concurrently.

Memory is bounded: at most ``max_clients`` buckets; adding one more forgets the client whose last failure
is oldest (its bucket is the most likely to have refilled anyway, and a full bucket is the same as none).
IPv6 clients are counted by /64, the block one host or household is normally given, so a client cannot
step around the limit by changing the low bits of its address.

Pure logic on the injected clock (gateway/clock.py): tests drive it with a ``ManualClock``.
"""

from __future__ import annotations

import functools
import ipaddress
import math
from collections import OrderedDict
from dataclasses import dataclass

from gateway.clock import Clock


@dataclass(frozen=True, slots=True)
class AuthFailureLimits:
    """The limiter's settings (``server.auth_failures_per_minute``, ``auth_failure_burst``,
    ``auth_failure_max_clients``)."""

    per_minute: int
    burst: int
    max_clients: int

    def __post_init__(self) -> None:
        if self.per_minute < 1 or self.burst < 1 or self.max_clients < 1:
            raise ValueError("per_minute, burst and max_clients must all be at least 1")


@dataclass(slots=True)
class _Bucket:
    tokens: float
    at: float  # seconds on the clock's time line when ``tokens`` was last brought up to date


@functools.lru_cache(maxsize=4096)
def client_key(remote: str | None) -> str:
    """Who is counted: the IPv4 address, or the /64 of an IPv6 one (an IPv4-mapped address as IPv4)."""
    if not remote:
        return "unknown"  # no peer address (a Unix socket): all such clients share one bucket
    try:
        address = ipaddress.ip_address(remote)
    except ValueError:
        return remote
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


class AuthFailureLimiter:
    """Token buckets of failed authentications, one per client key, at most ``max_clients`` of them."""

    def __init__(self, limits: AuthFailureLimits, clock: Clock) -> None:
        self.limits = limits
        self._clock = clock
        self._per_second = limits.per_minute / 60
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def __len__(self) -> int:
        """How many clients are remembered now (never more than ``max_clients``)."""
        return len(self._buckets)

    def _seconds(self) -> float:
        return self._clock.now().timestamp()

    def _refilled(self, bucket: _Bucket, now: float) -> float:
        elapsed = max(0.0, now - bucket.at)
        return min(float(self.limits.burst), bucket.tokens + elapsed * self._per_second)

    def retry_after(self, client: str) -> int | None:
        """Whole seconds until ``client`` may try credentials again, or None if it may now."""
        if not self._buckets:  # the usual case: nobody has failed lately
            return None
        bucket = self._buckets.get(client)
        if bucket is None:
            return None
        tokens = self._refilled(bucket, self._seconds())
        if tokens >= self.limits.burst:
            del self._buckets[client]  # refilled: the same as never having failed
            return None
        return self._wait(tokens)

    def record_failure(self, client: str) -> int | None:
        """Charge one failed authentication; returns the wait it now faces (None while it may go on)."""
        now = self._seconds()
        bucket = self._buckets.pop(client, None)
        if bucket is None:
            bucket = _Bucket(float(self.limits.burst), now)
        bucket.tokens = self._refilled(bucket, now) - 1
        bucket.at = now
        self._buckets[client] = bucket  # (re)inserted last: the most recently failing client
        while len(self._buckets) > self.limits.max_clients:
            self._buckets.popitem(last=False)
        return self._wait(bucket.tokens)

    def _wait(self, tokens: float) -> int | None:
        """Whole seconds until a bucket holding ``tokens`` has one again; None if it has one now."""
        if tokens >= 1:
            return None
        return max(1, math.ceil((1 - tokens) / self._per_second))
