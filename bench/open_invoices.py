"""Memory of the gateway process with many open invoices (issue "Reliability, security and performance
proof"): target <= 300 MB RSS for the gateway process with 100,000 open invoices.

Why this is a real risk: every open invoice's addresses sit in the chain watchers' watch dicts (a BTC
script and an Ethereum address per invoice), the address pool keeps derived addresses ready, and a
restart loads every open invoice again. So this runs the real `cryptocity serve` against a real bcoin
regtest node and a real anvil node (watchers on, SQLite store, sandbox as configured), then:

1. idle: RSS of the fresh gateway with no invoice;
2. creates ``--invoices`` invoices over the API (7-day expiry, so none expires during the run) and waits
   until both watchers watch all of them (``cryptocity_chain_watched_addresses`` on /metrics);
3. restarts the gateway on the same store and waits the same way: the start-up path that loads every
   open invoice at once.

RSS (VmRSS) and peak RSS (VmHWM) are read from /proc for the gateway process itself; its address-
derivation worker processes are reported beside it, not counted in the target (they hold no invoice).

    python bench/open_invoices.py                 # 100,000 invoices (a few minutes)
    python bench/open_invoices.py --quick         # CI: 2,000 invoices; fails only on errors
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.api_create import create_merchant, gateway_env  # noqa: E402
from bench.create_load import PAYLOAD, python_client  # noqa: E402
from bench.store_processes import Server, process_tree, role_of, start_server, wait_idle  # noqa: E402
from sandbox.devnets.bitcoin import REGTEST_HRP, BitcoinDevnet  # noqa: E402
from sandbox.devnets.ethereum import EthereumDevnet  # noqa: E402

RESULTS = ROOT / "bench" / "results"
TARGET_MB = 300.0
WEEK_SECONDS = 7 * 24 * 3600
_WATCHED = re.compile(r'^cryptocity_chain_watched_addresses\{chain="(\w+)"\} ([0-9.e+]+)$', re.MULTILINE)


def memory_mb(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM of one process, in MB (10^6 bytes, as the target is written)."""
    values: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            values[name] = int(rest.split()[0]) * 1024 / 1e6
    return {"rss_mb": round(values["VmRSS"], 1), "peak_rss_mb": round(values["VmHWM"], 1)}


def tree_memory(top: int) -> list[dict[str, Any]]:
    """Memory of every process of the gateway's tree, with its role (gateway, address derivation, …)."""
    rows = []
    for pid in process_tree(top):
        try:
            rows.append({"pid": pid, "role": role_of(pid), **memory_mb(pid)})
        except FileNotFoundError:
            continue
    return rows


def watched(port: int) -> dict[str, int]:
    """Addresses each chain watcher matches against, from the gateway's /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as response:
        text = response.read().decode()
    return {chain: int(float(value)) for chain, value in _WATCHED.findall(text)}


def wait_watching(port: int, invoices: int, *, limit: float = 600.0) -> tuple[dict[str, int], float]:
    """Wait until both watchers watch at least ``invoices`` addresses; what they watch and the seconds."""
    started = time.monotonic()
    while True:
        now = watched(port)
        if len(now) >= 2 and all(count >= invoices for count in now.values()):
            return now, time.monotonic() - started
        if time.monotonic() - started > limit:
            raise RuntimeError(f"watchers still watch {now} of {invoices} invoices after {limit:.0f} s")
        time.sleep(0.5)


def snapshot(server: Server, label: str, **extra: Any) -> dict[str, Any]:
    wait_idle(server.process.pid, limit=120.0)
    processes = tree_memory(server.process.pid)
    gateway = next(p for p in processes if p["role"] == "gateway")
    print(
        f"{label:<28}{gateway['rss_mb']:>10.1f}{gateway['peak_rss_mb']:>12.1f}"
        f"{sum(p['rss_mb'] for p in processes if p is not gateway):>14.1f}"
    )
    return {"phase": label, "gateway": gateway, "processes": processes, **extra}


async def run(invoices: int, connections: int, workdir: Path) -> dict[str, Any]:
    async with (
        BitcoinDevnet(log_path=workdir / "bcoin.log") as btc,
        EthereumDevnet(log_path=workdir / "anvil.log") as eth,
    ):
        env = {
            **gateway_env(),
            "CRYPTOCITY_STORE__PATH": str(workdir / "open.sqlite3"),
            "CRYPTOCITY_BITCOIN__HRP": REGTEST_HRP,
            "CRYPTOCITY_BITCOIN__RPC__URL": btc.url,
            "CRYPTOCITY_BITCOIN__RPC__USER": "cryptocity",
            "CRYPTOCITY_BITCOIN__RPC__PASSWORD": btc.api_key,
            "CRYPTOCITY_ETHEREUM__RPC__URL": eth.url,
            "CRYPTOCITY_ETHEREUM__CHAIN_ID": str(eth.chain_id),
            "CRYPTOCITY_ETHEREUM__TOKEN_ADDRESS": eth.token_address,
        }
        key = create_merchant(env)
        phases = []
        print(f"{'phase':<28}{'gateway MB':>10}{'peak MB':>12}{'others MB':>14}")
        server = await asyncio.to_thread(start_server, env, 1, workdir / "serve-1.log")
        try:
            await asyncio.to_thread(wait_watching, server.port, 0)
            phases.append(await asyncio.to_thread(snapshot, server, "idle, no invoice"))
            load = await python_client(
                server.port,
                key,
                3600.0,
                connections,
                f"open-{int(time.time())}",
                payload={**PAYLOAD, "expires_in": WEEK_SECONDS},
                total=invoices,
            )
            if load["errors"]:
                raise RuntimeError(f"{load['errors']} of {load['requests']} creates failed")
            seen, waited = await asyncio.to_thread(wait_watching, server.port, invoices)
            phases.append(
                await asyncio.to_thread(
                    snapshot,
                    server,
                    f"{invoices:,} created",
                    creates_per_second=round(load["rps"], 1),
                    watching_after_seconds=round(waited, 1),
                    watched=seen,
                )
            )
        finally:
            await asyncio.to_thread(server.stop)
        started = time.monotonic()
        server = await asyncio.to_thread(start_server, env, 1, workdir / "serve-2.log")
        try:
            seen, _ = await asyncio.to_thread(wait_watching, server.port, invoices)
            phases.append(
                await asyncio.to_thread(
                    snapshot,
                    server,
                    f"restarted with {invoices:,} open",
                    watching_after_seconds=round(time.monotonic() - started, 1),
                    watched=seen,
                )
            )
        finally:
            await asyncio.to_thread(server.stop)
    worst = max(max(p["gateway"]["rss_mb"], p["gateway"]["peak_rss_mb"]) for p in phases)
    return {"invoices": invoices, "phases": phases, "gateway_worst_mb": worst}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="2,000 invoices (CI); fails only on errors")
    parser.add_argument("--invoices", type=int, default=100_000)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--out", type=Path, help="default: bench/results/open_invoices[.quick].json")
    args = parser.parse_args()
    invoices = 2_000 if args.quick else args.invoices
    out = args.out or RESULTS / ("open_invoices.quick.json" if args.quick else "open_invoices.json")
    with tempfile.TemporaryDirectory() as tmp:
        result = asyncio.run(run(invoices, args.connections, Path(tmp)))
    met = result["gateway_worst_mb"] <= TARGET_MB
    report = {
        "benchmark": "open_invoices",
        "quick": args.quick,
        "target_mb": TARGET_MB,
        "target_invoices": 100_000,
        "target_met": met if invoices >= 100_000 else None,
        **result,
    }
    verdict = ("met" if met else "MISSED") if invoices >= 100_000 else "not judged below 100,000 invoices"
    print(
        f"gateway process, worst of RSS and peak RSS: {result['gateway_worst_mb']:.1f} MB"
        f" (target <= {TARGET_MB:.0f} MB with 100,000 open invoices: {verdict})"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
