"""Where webhooks may be sent: no private, loopback or link-local targets unless config.toml allows them.

A merchant chooses the URL, so without this check the gateway could be made to POST into the pilot's own
network (a cloud metadata service at 169.254.169.254, an admin port on 10.x). The check happens twice:

- when an endpoint is created or changed: the scheme, the host, and an IP-literal host against the policy,
  so an obviously bad URL gets a 422 at once;
- at every attempt, through :class:`GuardedResolver`, the resolver of the dispatcher's connector: every
  address a name resolves to is checked BEFORE a connection is made, so a name that later points inside
  (DNS rebinding) is refused without a socket being opened. IP-literal hosts never reach a resolver, so
  :func:`check_url` is called before each attempt too.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from typing import Any

from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class TargetRefused(ValueError):
    """The URL may not be called; the message says why (shown to the merchant)."""


@dataclass(frozen=True, slots=True)
class TargetPolicy:
    allow_loopback: bool = False
    allow_private: bool = False
    require_https: bool = False

    def check_address(self, address: IpAddress) -> None:
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped  # ::ffff:10.0.0.1 is 10.0.0.1
        if address.is_loopback:
            if not self.allow_loopback:
                raise TargetRefused(f"{address} is a loopback address")
            return
        if address.is_link_local:
            raise TargetRefused(f"{address} is a link-local address (e.g. a cloud metadata service)")
        if address.is_unspecified or address.is_multicast or address.is_reserved:
            raise TargetRefused(f"{address} is not a unicast address")
        if address.is_private and not self.allow_private:
            raise TargetRefused(f"{address} is a private address")

    def check_url(self, url: str) -> URL:
        """Parse and check a target URL; returns it normalised, or raises TargetRefused."""
        try:
            parsed = URL(url)
        except (ValueError, TypeError) as exc:
            raise TargetRefused(f"not a URL: {exc}") from None
        if parsed.scheme not in ("http", "https"):
            raise TargetRefused("must be an http:// or https:// URL")
        if self.require_https and parsed.scheme != "https":
            raise TargetRefused("must be an https:// URL")
        host = parsed.host
        if not host:
            raise TargetRefused("has no host")
        if parsed.user or parsed.password:
            raise TargetRefused("must not carry a user name or password")
        if len(url) > 2048:
            raise TargetRefused("must be at most 2048 characters")
        literal = _ip_literal(host)
        if literal is not None:
            self.check_address(literal)
        elif host.rstrip(".").lower() == "localhost" or host.lower().endswith(".localhost"):
            self.check_address(ipaddress.ip_address("127.0.0.1"))
        return parsed


def _ip_literal(host: str) -> IpAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


class GuardedResolver(AbstractResolver):
    """Resolves through ``inner`` and drops every address the policy refuses; none left → refused."""

    def __init__(self, policy: TargetPolicy, inner: AbstractResolver) -> None:
        self._policy = policy
        self._inner = inner

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        allowed: list[ResolveResult] = []
        refusals: list[str] = []
        for result in results:
            try:
                self._policy.check_address(ipaddress.ip_address(result["host"]))
            except TargetRefused as exc:
                refusals.append(str(exc))
                continue
            allowed.append(result)
        if not allowed:
            reason = "; ".join(refusals) or "no address"
            raise TargetRefused(f"{host} resolves only to refused addresses: {reason}")
        return allowed

    async def close(self) -> None:
        await self._inner.close()


def refusal_of(exc: BaseException) -> TargetRefused | None:
    """The TargetRefused behind an aiohttp connection error, if that is what it was."""
    seen: set[int] = set()
    current: Any = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, TargetRefused):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__ or getattr(current, "os_error", None)
    return None
