"""Slow clients cannot starve a real gateway process, and the gateway sheds them within bounded time.

Against `cryptocity serve` on loopback, with the shipped defaults:
- 200 "slowloris" connections each send a request head one byte a second and never finish it;
- a few send complete headers with a Content-Length under the limit, then the body a byte a second;
- a few announce a Content-Length far over the limit, then trickle the body;
- oversized bodies sent at once (with a Content-Length, and chunked without one).
While all of them are open, an authenticated POST /v1/invoices and GET /healthz must each answer within
the liveness deadline (2 s). Then every slow connection must be answered or closed by the server:
heads closed at ``server.header_timeout_seconds``, trickled bodies answered 408 at
``server.body_timeout_seconds``, announced oversized bodies answered 413 at once; after a 408 or 413 the
connection closes once aiohttp's bounded drain of the unread body (10 s) gives up.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from gateway.config import ServerConfig
from tests.integration.gateway_process import GatewayProcess, create_merchant, start_gateway

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SLOW_HEADS = 200
SLOW_BODIES = 5
HUGE_ANNOUNCED = 3
LIVENESS_SECONDS = 2.0
DEFAULTS = ServerConfig()  # the shipped settings are what is tested
HEADER_TIMEOUT = DEFAULTS.header_timeout_seconds
BODY_TIMEOUT = DEFAULTS.body_timeout_seconds
LINGER_SECONDS = 10.0  # aiohttp's lingering_time: how long it drains a refused body before closing
SLACK = 5.0  # scheduling on a shared 2-core machine
ALL_CLOSED_WITHIN = 60.0


@dataclass
class SlowClient:
    """What one slow connection saw: the server's first answer and when the server closed it."""

    kind: str
    answer: bytes = b""
    answered_after: float | None = None  # seconds from opening (heads) or from the headers (bodies)
    closed_after: float | None = None

    @property
    def status(self) -> int | None:
        return int(self.answer.split(b" ", 2)[1]) if self.answer.startswith(b"HTTP/1.1 ") else None


def request_head(method: str, path: str, host: str, headers: dict[str, str]) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def slow_connection(
    host: str, port: int, client: SlowClient, sent_at_once: bytes, trickled: bytes
) -> None:
    """Send ``sent_at_once``, then ``trickled`` one byte a second, and read until the server closes."""
    reader, writer = await asyncio.open_connection(host, port)
    loop = asyncio.get_running_loop()
    started = loop.time()

    async def trickle() -> None:
        try:
            writer.write(sent_at_once)
            await writer.drain()
            for byte in trickled:
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(1.0)
        except (ConnectionError, OSError):
            pass  # the server closed it: that is what is being waited for

    sender = asyncio.create_task(trickle())
    try:
        while chunk := await reader.read(65536):
            if client.answered_after is None:
                client.answered_after = loop.time() - started
            client.answer += chunk
    except (ConnectionError, OSError):
        pass  # a reset is a close too
    finally:
        client.closed_after = loop.time() - started
        sender.cancel()
        writer.close()


async def answer_once(host: str, port: int, raw: bytes) -> tuple[int, str, float]:
    """Send a whole request at once; the status, content type and seconds until the answer's head."""
    started = time.monotonic()
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(raw)
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10.0)
    finally:
        writer.close()
    elapsed = time.monotonic() - started
    lines = head.decode().split("\r\n")
    content_type = next(
        (x.split(":", 1)[1].strip() for x in lines if x.lower().startswith("content-type:")), ""
    )
    return int(lines[0].split(" ", 2)[1]), content_type, elapsed


def timed(call: Callable[[], tuple[int, Any]]) -> tuple[int, Any, float]:
    """Run a blocking request and time it where it runs (a thread), not on the test's busy event loop."""
    started = time.monotonic()
    status, body = call()
    return status, body, time.monotonic() - started


async def liveness(gateway: GatewayProcess, key: str, order: int) -> list[float]:
    """A normal authenticated create and a health check, each within the deadline; their latencies."""
    body = {"amount": "2500.00", "currency": "KZT", "order_id": f"live-{order}"}
    status, created, create_s = await asyncio.to_thread(
        timed, lambda: gateway.request("POST", "/v1/invoices", body, key)
    )
    assert status == 201, created
    status, health, health_s = await asyncio.to_thread(timed, lambda: gateway.request("GET", "/healthz"))
    assert status == 200, health
    assert create_s < LIVENESS_SECONDS and health_s < LIVENESS_SECONDS, (create_s, health_s)
    return [create_s, health_s]


async def run_slow_clients(gateway: GatewayProcess, key: str) -> dict[str, Any]:
    host, port_text = gateway.base_url.removeprefix("http://").split(":")
    port = int(port_text)
    auth = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    clients: list[SlowClient] = []
    tasks: list[asyncio.Task[None]] = []

    def start(kind: str, at_once: bytes, trickled: bytes) -> None:
        client = SlowClient(kind)
        clients.append(client)
        tasks.append(asyncio.create_task(slow_connection(host, port, client, at_once, trickled)))

    endless_head = b"POST /v1/invoices HTTP/1.1\r\nHost: " + host.encode() + b"\r\nX-Slow: " + b"s" * 4000
    for _ in range(SLOW_HEADS):
        start("head", b"", endless_head)
    for _ in range(SLOW_BODIES):  # under the size limit: only the body deadline ends these
        start(
            "body",
            request_head("POST", "/v1/invoices", host, {**auth, "Content-Length": "60000"}),
            b"{" * 60000,
        )
    for _ in range(HUGE_ANNOUNCED):
        headers = {**auth, "Content-Length": str(100 * DEFAULTS.max_body_bytes)}
        start("huge", request_head("POST", "/v1/invoices", host, headers), b"{" * 60000)
    opened = time.monotonic()
    await asyncio.sleep(3.0)  # every slow client is connected and part-way through its head or body

    latencies: list[float] = []
    for order in range(5):
        assert all(c.closed_after is None for c in clients if c.kind in ("head", "body")), "closed too early"
        latencies += await liveness(gateway, key, order)
        await asyncio.sleep(0.5)

    oversized = b'{"amount": "' + b"1" * (DEFAULTS.max_body_bytes + 10) + b'", "currency": "KZT"}'
    with_length = request_head("POST", "/v1/invoices", host, {**auth, "Content-Length": str(len(oversized))})
    chunked = request_head("POST", "/v1/invoices", host, {**auth, "Transfer-Encoding": "chunked"})
    chunked_body = f"{len(oversized):x}\r\n".encode() + oversized + b"\r\n0\r\n\r\n"
    refusals = [
        await answer_once(host, port, with_length + oversized),
        await answer_once(host, port, chunked + chunked_body),
    ]
    for status, content_type, seconds in refusals:
        assert (status, content_type) == (413, "application/problem+json")
        assert seconds < LIVENESS_SECONDS, seconds

    _, pending = await asyncio.wait(tasks, timeout=ALL_CLOSED_WITHIN - (time.monotonic() - opened))
    for task in pending:
        task.cancel()
    assert not pending, f"{len(pending)} slow connections still open after {ALL_CLOSED_WITHIN} s"
    return {"clients": clients, "latencies": latencies, "refusals": refusals}


def test_slow_clients_neither_starve_the_gateway_nor_hold_their_connections(tmp_path: Path) -> None:
    merchant = create_merchant(tmp_path)
    gateway = start_gateway(tmp_path)
    try:
        seen = asyncio.run(run_slow_clients(gateway, merchant["api_key"]))
        status, _ = gateway.request("GET", "/healthz")
        assert status == 200  # and it is still fine afterwards
    finally:
        assert gateway.stop() == 0
    clients: list[SlowClient] = seen["clients"]
    heads = [c for c in clients if c.kind == "head"]
    bodies = [c for c in clients if c.kind == "body"]
    huge = [c for c in clients if c.kind == "huge"]
    assert len(heads) == SLOW_HEADS
    for client in heads:  # closed at the header deadline, without an answer
        assert client.answer == b"", client.answer[:200]
        assert client.closed_after is not None
        assert HEADER_TIMEOUT - 1 <= client.closed_after <= HEADER_TIMEOUT + SLACK, client.closed_after
    for client in bodies:  # 408 at the body deadline, then closed
        assert client.status == 408, client.answer[:300]
        assert client.answered_after is not None and client.closed_after is not None
        assert BODY_TIMEOUT - 1 <= client.answered_after <= BODY_TIMEOUT + SLACK, client.answered_after
        assert client.closed_after - client.answered_after <= LINGER_SECONDS + SLACK
        assert b"application/problem+json" in client.answer
        problem = json.loads(client.answer.split(b"\r\n\r\n", 1)[1])
        assert problem["status"] == 408
    for client in huge:  # 413 at once, before the body; closed once the bounded drain gives up
        assert client.status == 413, client.answer[:300]
        assert client.answered_after is not None and client.answered_after < LIVENESS_SECONDS
        assert client.closed_after is not None and client.closed_after <= LINGER_SECONDS + SLACK
    print(  # the measured figures, for docs/reliability.md (pytest -s shows them)
        json.dumps(
            {
                "slow_connections": len(clients),
                "max_liveness_latency_s": round(max(seen["latencies"]), 4),
                "heads_closed_after_s": [
                    round(min(c.closed_after or 0 for c in heads), 2),
                    round(max(c.closed_after or 0 for c in heads), 2),
                ],
                "bodies_408_after_s": round(max(c.answered_after or 0 for c in bodies), 2),
                "huge_413_after_s": round(max(c.answered_after or 0 for c in huge), 3),
                "huge_closed_after_s": round(max(c.closed_after or 0 for c in huge), 2),
                "oversized_413_after_s": [round(s, 3) for _, _, s in seen["refusals"]],
            }
        )
    )
