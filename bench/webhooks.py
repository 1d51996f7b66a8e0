"""Webhook delivery: throughput to one local receiver, and latency from state change to delivery.

The gateway runs in this process, built as `cryptocity serve` builds it (SQLite store, group commit); the
receiver (bench/webhook_receiver.py) runs in its own process on loopback and answers 200 at once.

1. Throughput: with the dispatcher stopped, N invoices are created (N `invoice.created` events, fanned out
   to one endpoint as N durable deliveries). The dispatcher is then started and timed until every delivery
   is recorded `succeeded` in the store: each one claimed (leased), signed, POSTed, answered and its
   attempt written. Target: >= 1,000 deliveries/s on one process.
2. Latency at light load: invoices created one at a time, ~20 a second, with the dispatcher running; the
   clock runs from the 201 (the state change has committed) to the receiver's arrival time of that
   invoice's event (wall clock, same machine). Target: p99 <= 200 ms.

    python bench/webhooks.py          # 5,000 deliveries, 200 latency samples
    python bench/webhooks.py --quick  # CI: 300 deliveries, 20 samples; fails only on errors
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from aiohttp import web  # noqa: E402

from bench.api_create import free_port, stop, wait_for_port  # noqa: E402
from bench.detection_harness import percentile  # noqa: E402
from gateway.api.state import REGISTRY, STORE, WEBHOOKS  # noqa: E402
from gateway.app import create_app  # noqa: E402
from gateway.config import load_config  # noqa: E402
from gateway.logging import configure_logging  # noqa: E402
from gateway.money import Asset  # noqa: E402
from sandbox.demo import demo_account_keys  # noqa: E402


async def _count(app: web.Application, sql: str) -> int:
    row = await app[STORE].read(lambda tx: tx.fetchone(sql))
    return int(row["n"]) if row is not None else 0


async def _until(check: Any, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not await check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out: {what}")
        await asyncio.sleep(0.01)


async def run(deliveries: int, samples: int, workdir: Path, port: int) -> dict[str, Any]:
    """Measure against the receiver listening on ``port``."""
    config = load_config(
        None,
        environ={
            "CRYPTOCITY_STORE__PATH": str(workdir / "gateway.sqlite3"),
            "CRYPTOCITY_LOGGING__LEVEL": "warning",
            "CRYPTOCITY_ADDRESSES__DERIVE_WORKERS": "0",
        },
    )
    app = create_app(config)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        gateway_port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        btc, eth = demo_account_keys()
        _, key = await app[REGISTRY].create(
            "Bench Shop", btc_account_key=btc, eth_account_key=eth, accepted_assets=[Asset.BTC]
        )
        async with aiohttp.ClientSession(
            base_url=f"http://127.0.0.1:{gateway_port}", headers={"Authorization": f"Bearer {key.plaintext}"}
        ) as http:
            hook = {"url": f"http://127.0.0.1:{port}/hook", "event_types": ["invoice.created"]}
            async with http.post("/v1/webhook-endpoints", json=hook) as r:
                assert r.status == 201, await r.text()
            throughput = await _throughput(app, http, deliveries)
            latency = await _latency(http, port, samples)
    finally:
        await runner.cleanup()
    return {"throughput": throughput, "latency": latency}


async def _create(http: aiohttp.ClientSession, n: int) -> str:
    async with http.post("/v1/invoices", json={"amount": f"{1000 + n % 5000}.00", "currency": "KZT"}) as r:
        body = await r.json()
        if r.status != 201:
            raise RuntimeError(f"create answered {r.status}: {body}")
        return str(body["id"])


async def _throughput(app: web.Application, http: aiohttp.ClientSession, deliveries: int) -> dict[str, Any]:
    dispatcher = app[WEBHOOKS]
    await dispatcher.stop()
    queue = iter(range(deliveries))

    async def creator() -> None:
        for n in queue:
            await _create(http, n)

    await asyncio.gather(*(creator() for _ in range(16)))

    async def fanned_out() -> bool:
        return await _count(app, "SELECT count(*) AS n FROM webhook_deliveries") >= deliveries

    await _until(fanned_out, 120, "fan-out of the deliveries")
    started = time.perf_counter()
    dispatcher.start()

    async def all_succeeded() -> bool:
        done = await _count(app, "SELECT count(*) AS n FROM webhook_deliveries WHERE status = 'succeeded'")
        return done >= deliveries

    await _until(all_succeeded, 600, "every delivery succeeded")
    seconds = time.perf_counter() - started
    attempts = await _count(app, "SELECT count(*) AS n FROM webhook_attempts")
    rate = deliveries / seconds
    return {
        "deliveries": deliveries,
        "attempts": attempts,
        "seconds": round(seconds, 3),
        "per_second": round(rate, 1),
        "target_per_second": 1000,
        "target_met": rate >= 1000,
    }


async def _latency(http: aiohttp.ClientSession, port: int, samples: int) -> dict[str, Any]:
    sent: dict[str, float] = {}
    ids: list[str] = []
    for n in range(samples):
        invoice_id = await _create(http, n)
        sent[invoice_id] = time.time()
        ids.append(invoice_id)
        await asyncio.sleep(0.05)
    events: dict[str, str] = {}
    async with http.get("/v1/events?type=invoice.created&limit=200") as r:
        for event in (await r.json())["data"]:
            events[event["data"]["invoice"]["id"]] = event["id"]
    async with aiohttp.ClientSession() as plain:

        async def arrived_all() -> bool:
            async with plain.get(f"http://127.0.0.1:{port}/stats") as r:
                arrived = (await r.json())["arrived"]
            return all(events.get(i) in arrived for i in ids)

        await _until(arrived_all, 60, "the latency samples to arrive")
        async with plain.get(f"http://127.0.0.1:{port}/stats") as r:
            arrived = (await r.json())["arrived"]
    latencies = [max(0.0, arrived[events[i]] - sent[i]) for i in ids]
    p99 = percentile(latencies, 99)
    return {
        "samples": samples,
        "p50_ms": round(1000 * sorted(latencies)[len(latencies) // 2], 1),
        "p99_ms": round(1000 * p99, 1),
        "max_ms": round(1000 * max(latencies), 1),
        "target_p99_ms": 200,
        "target_met": p99 <= 0.2,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--deliveries", type=int, default=5000)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    configure_logging("warning", "console")
    deliveries, samples = (300, 20) if args.quick else (args.deliveries, args.samples)
    port = free_port()
    receiver = subprocess.Popen([sys.executable, str(ROOT / "bench" / "webhook_receiver.py"), str(port)])
    try:
        wait_for_port(port, receiver)
        with tempfile.TemporaryDirectory(prefix="bench-webhooks-") as tmp:
            result = asyncio.run(run(deliveries, samples, Path(tmp), port))
    finally:
        stop(receiver)
    t, lat = result["throughput"], result["latency"]
    print(f"{'measure':<44}{'value':>12}{'target':>12}{'':>8}")
    rows = [
        ("deliveries/s (claim, sign, POST, record)", t["per_second"], ">= 1000", t["target_met"]),
        ("state change -> delivery p50 ms", lat["p50_ms"], "", True),
        ("state change -> delivery p99 ms", lat["p99_ms"], "<= 200", lat["target_met"]),
    ]
    for name, value, target, met in rows:
        print(f"{name:<44}{value:>12}{target:>12}{'' if not target else ('met' if met else 'MISSED'):>8}")
    report = {"benchmark": "webhooks", "quick": args.quick, "cpus": os.cpu_count(), **result}
    out = args.out or ROOT / "bench" / "results" / ("webhooks.quick.json" if args.quick else "webhooks.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
