"""API latency at a fixed load: p50/p99 of invoice creation and invoice reads while the gateway serves a
steady, moderate request rate (not its ceiling, which bench/api_create.py measures).

Why open-loop: a merchant's checkouts arrive when shoppers click, not when the previous answer came back.
So requests are sent on a fixed schedule (``--rate`` per second, alternately a create and a read of an
invoice created earlier), each on its own connection slot, whether or not earlier ones were answered, and
each latency counts from the request's scheduled moment: a stall shows as the wait of every request
scheduled during it (no coordinated omission).

The gateway is the real `cryptocity serve` on the embedded SQLite store (durable creates: group commit,
synchronous=FULL), in its own process; the client runs in this one. Target (docs/performance.md):
p99 <= 100 ms for both operations at 100 requests per second.

    python bench/api_latency.py              # 100 req/s for 20 s
    python bench/api_latency.py --quick      # CI: 20 req/s for 3 s; fails only on errors
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.api_create import start_gateway, stop  # noqa: E402
from bench.create_load import PAYLOAD  # noqa: E402
from bench.detection_harness import percentile  # noqa: E402

RESULTS = ROOT / "bench" / "results"
TARGET_P99_MS = 100.0
TARGET_RATE = 100.0


async def measure(port: int, key: str, rate: float, seconds: float) -> dict[str, Any]:
    import aiohttp

    base = f"http://127.0.0.1:{port}"
    auth = {"Authorization": f"Bearer {key}"}
    latencies: dict[str, list[float]] = {"create": [], "read": []}
    errors: dict[str, int] = {"create": 0, "read": 0}
    created: list[str] = []
    timeout = aiohttp.ClientTimeout(total=30)

    async def create(session: aiohttp.ClientSession, n: int, due: float) -> None:
        headers = {**auth, "Idempotency-Key": f"lat-{os.getpid()}-{n}"}
        async with session.post(f"{base}/v1/invoices", json=PAYLOAD, headers=headers, timeout=timeout) as r:
            body = await r.json()
            if r.status != 201:
                errors["create"] += 1
            else:
                created.append(body["id"])
        latencies["create"].append(time.perf_counter() - due)

    async def read(session: aiohttp.ClientSession, n: int, due: float) -> None:
        invoice_id = created[n % len(created)]
        async with session.get(f"{base}/v1/invoices/{invoice_id}", headers=auth, timeout=timeout) as r:
            await r.read()
            if r.status != 200:
                errors["read"] += 1
        latencies["read"].append(time.perf_counter() - due)

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        for n in range(10):  # warm-up, and invoices for the first reads
            await create(session, -1 - n, time.perf_counter())
        for values in latencies.values():
            values.clear()
        interval = 1.0 / rate
        start = time.perf_counter()
        tasks = []
        for n in range(int(rate * seconds)):
            due = start + n * interval
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            operation = create if n % 2 == 0 else read
            tasks.append(asyncio.create_task(operation(session, n, due)))
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    failures = [o for o in outcomes if isinstance(o, BaseException)]
    result: dict[str, Any] = {"rate": rate, "seconds": seconds, "exceptions": len(failures)}
    for name, values in latencies.items():
        ms = [v * 1000 for v in values]
        result[name] = {
            "requests": len(ms),
            "errors": errors[name],
            "p50_ms": round(percentile(ms, 50), 2) if ms else 0.0,
            "p99_ms": round(percentile(ms, 99), 2) if ms else 0.0,
            "max_ms": round(max(ms), 2) if ms else 0.0,
        }
    if failures:
        result["first_exception"] = repr(failures[0])
    return result


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="20 req/s for 3 s (CI); fails only on errors")
    parser.add_argument("--rate", type=float, default=TARGET_RATE, help="requests per second (half creates)")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--out", type=Path, help="default: bench/results/api_latency[.quick].json")
    args = parser.parse_args()
    rate, seconds = (20.0, 3.0) if args.quick else (args.rate, args.seconds)
    out = args.out or RESULTS / ("api_latency.quick.json" if args.quick else "api_latency.json")
    with tempfile.TemporaryDirectory() as tmp:
        gateway, port, key, _ = start_gateway(Path(tmp))
        try:
            result = asyncio.run(measure(port, key, rate, seconds))
        finally:
            stop(gateway)
    judged = rate >= TARGET_RATE
    met = all(result[name]["p99_ms"] <= TARGET_P99_MS for name in ("create", "read"))
    report = {
        "benchmark": "api_latency",
        "quick": args.quick,
        "cpus": os.cpu_count(),
        "target_p99_ms": TARGET_P99_MS,
        "target_rate": TARGET_RATE,
        "target_met": met if judged else None,
        **result,
    }
    print(f"{'operation':<10}{'requests':>10}{'errors':>8}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}")
    for name in ("create", "read"):
        r = result[name]
        print(
            f"{name:<10}{r['requests']:>10}{r['errors']:>8}{r['p50_ms']:>9.1f}{r['p99_ms']:>9.1f}{r['max_ms']:>9.1f}"
        )
    verdict = ("met" if met else "MISSED") if judged else f"not judged below {TARGET_RATE:.0f} req/s"
    print(f"at {rate:.0f} req/s: p99 target <= {TARGET_P99_MS:.0f} ms: {verdict}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    bad = result["exceptions"] + result["create"]["errors"] + result["read"]["errors"]
    if bad:
        print(f"{bad} requests failed: {result.get('first_exception', '')}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
