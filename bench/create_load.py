"""The Python load generator of bench/api_create.py: POST /v1/invoices from N keep-alive connections.

It runs in the bench process (one event loop), so what it costs shows up as the bench's own CPU, never
as the gateway's. Every request carries a unique Idempotency-Key, as a careful merchant sends; any answer
other than 201, and any request that got no answer, counts as an error.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from typing import Any

PAYLOAD = {"amount": "5300.00", "currency": "KZT", "order_id": "bench", "description": "Lunch at the canteen"}


async def python_client(
    port: int,
    key: str,
    seconds: float,
    connections: int,
    tag: str,
    *,
    payload: dict[str, Any] | None = None,
    total: int | None = None,
) -> dict[str, Any]:
    """``connections`` clients, each sending one create after another for ``seconds`` (or until ``total``
    creates were sent, if given first)."""
    import aiohttp

    latencies: list[float] = []
    errors = 0
    sent = 0
    body = json.dumps(payload or PAYLOAD).encode()
    deadline = time.perf_counter() + seconds
    url = f"http://127.0.0.1:{port}/v1/invoices"
    timeout = aiohttp.ClientTimeout(total=60)

    async def worker(n: int, session: aiohttp.ClientSession) -> None:
        nonlocal errors, sent
        i = 0
        while time.perf_counter() < deadline and (total is None or sent < total):
            i += 1
            sent += 1
            headers = {
                "Content-Type": "application/json",
                "Authorization": f"Bearer {key}",
                "Idempotency-Key": f"p-{tag}-{n}-{i}",
            }
            started = time.perf_counter()
            try:
                async with session.post(url, data=body, headers=headers, timeout=timeout) as response:
                    await response.read()
                    if response.status != 201:
                        errors += 1
            except (aiohttp.ClientError, TimeoutError):
                errors += 1
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=connections)) as session:
        await asyncio.gather(*(worker(n, session) for n in range(connections)))
    elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "requests": len(latencies),
        "seconds": elapsed,
        "rps": len(latencies) / elapsed,
        "errors": errors,
        "p50_ms": 1000 * statistics.median(latencies) if latencies else 0.0,
        "p99_ms": 1000 * latencies[max(0, int(len(latencies) * 0.99) - 1)] if latencies else 0.0,
    }
