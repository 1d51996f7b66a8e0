"""What the chain benchmarks share: a gateway in this process, a clock on its events, a latency summary, and
a sink that only counts the payment facts a watcher hands on (for timing block processing alone).

The gateway is built as `cryptocity serve` builds it (create_app, the configured watcher, the SQLite store),
with one extra outbox consumer that notes when each invoice's `invoice.processing` event reaches it, i.e.
after the durable commit. Each benchmark sends payments its own way and measures from its own start
moment (sendrawtransaction for Bitcoin, block inclusion for Ethereum) to that note.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from gateway.accounts.merchants import MerchantRegistry
from gateway.api.state import REGISTRY
from gateway.app import create_app
from gateway.config import Config, load_config
from gateway.extensions import Extensions
from gateway.money import Asset
from gateway.outbox import OutboxEvent
from gateway.store import Tx
from sandbox.demo import demo_account_keys


class CountingSink:
    """A watcher's payment sink that counts facts; drops and unaccounted money are benchmark errors."""

    def __init__(self) -> None:
        self.facts = 0

    async def record_payment(self, fact: Any) -> None:
        self.facts += 1

    async def payment_dropped(self, *args: Any) -> None:
        raise AssertionError("nothing is dropped in this benchmark")

    async def record_unaccounted(self, *args: Any) -> None:
        raise AssertionError("every transfer is of the accepted token")


class ProcessingClock:
    """An outbox consumer that notes when each invoice's `invoice.processing` event reaches it."""

    name = "bench-detection"

    def __init__(self) -> None:
        self.seen: dict[str, float] = {}

    async def handle(self, tx: Tx, events: Sequence[OutboxEvent]) -> None:
        now = time.perf_counter()
        for event in events:
            if event.type == "invoice.processing" and event.invoice_id is not None:
                self.seen.setdefault(event.invoice_id, now)

    async def wait_for(self, invoice_id: str, since: float, *, seconds: float = 30.0) -> float:
        """Seconds from ``since`` (a perf_counter reading) until the invoice's processing event."""
        deadline = since + seconds
        while invoice_id not in self.seen:
            if time.perf_counter() > deadline:
                raise RuntimeError(f"invoice {invoice_id} was not detected within {seconds:g} s")
            await asyncio.sleep(0.002)
        return self.seen[invoice_id] - since


@dataclass
class BenchGateway:
    http: aiohttp.ClientSession  # authenticated as the bench merchant
    clock: ProcessingClock
    config: Config

    async def create_invoice(self, amount: str) -> dict[str, Any]:
        async with self.http.post("/v1/invoices", json={"amount": amount, "currency": "KZT"}) as response:
            body: dict[str, Any] = await response.json()
            if response.status != 201:
                raise RuntimeError(f"invoice creation answered {response.status}: {body}")
            return body


@asynccontextmanager
async def bench_gateway(
    workdir: Path, env: dict[str, str], assets: Sequence[Asset]
) -> AsyncIterator[BenchGateway]:
    config = load_config(
        None,
        environ={
            "CRYPTOCITY_STORE__PATH": str(workdir / "gateway.sqlite3"),
            "CRYPTOCITY_LOGGING__LEVEL": "warning",
            "CRYPTOCITY_ADDRESSES__DERIVE_WORKERS": "0",
            **env,
        },
    )
    clock = ProcessingClock()
    app = create_app(config, Extensions(consumers=[clock]))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        registry: MerchantRegistry = app[REGISTRY]
        btc, eth = demo_account_keys()
        _, key = await registry.create(
            "Bench Shop", btc_account_key=btc, eth_account_key=eth, accepted_assets=list(assets)
        )
        async with aiohttp.ClientSession(
            base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {key.plaintext}"}
        ) as http:
            await asyncio.sleep(1.5)  # the watcher's first poll: its checkpoint is the tip
            yield BenchGateway(http, clock, config)
    finally:
        await runner.cleanup()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def latency_summary(latencies: list[float], poll_interval_s: float) -> dict[str, Any]:
    """p50/p99/max in ms against the target p99 <= poll interval + 200 ms."""
    return {
        "payments": len(latencies),
        "poll_interval_s": poll_interval_s,
        "p50_ms": round(1000 * statistics.median(latencies), 1),
        "p99_ms": round(1000 * percentile(latencies, 99), 1),
        "max_ms": round(1000 * max(latencies), 1),
        "target_p99_ms": round(1000 * poll_interval_s + 200),
        "target_met": percentile(latencies, 99) <= poll_interval_s + 0.2,
    }
