"""Durable invoice creation versus a bare aiohttp handler, side by side in one run.

(a) the real gateway (`cryptocity serve`, SQLite WAL + synchronous=FULL, group commit), answering
    POST /v1/invoices with a fresh address per asset, the quote, the outbox event and the idempotency record
    all committed before the 201;
(b) a bare aiohttp handler on the same path that parses and validates the same request with the same
    pydantic model and returns a precomputed body of the same size, and does nothing else.

Both run as one server process each and take the same load from a client on loopback: wrk (C, -t2) when
installed, else a multi-process aiohttp client. Every request carries a unique Idempotency-Key, as a
careful merchant sends. Prints a table and writes bench/results/api_create.json.

    python bench/api_create.py            # 10 s per server, 64 connections (the figures in docs/performance.md)
    python bench/api_create.py --quick    # CI: small and short; fails only on errors, never on timing
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
PAYLOAD = {"amount": "5300.00", "currency": "KZT", "order_id": "bench", "description": "Lunch at the canteen"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited early with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"server on port {port} did not start")


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop a server we started, by its PID: SIGTERM, then SIGKILL if it lingers."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def cli(env: dict[str, str], *args: str) -> str:
    return subprocess.run(
        [sys.executable, "-m", "sandbox.cli", *args],
        env=env,
        check=True,
        capture_output=True,
        text=True,
        cwd=ROOT,
    ).stdout


def start_gateway(workdir: Path) -> tuple[subprocess.Popen[bytes], int, str, dict[str, str]]:
    port = free_port()
    env = {
        **os.environ,
        "CRYPTOCITY_STORE__PATH": str(workdir / "bench.sqlite3"),
        "CRYPTOCITY_SERVER__PORT": str(port),
        "CRYPTOCITY_LOGGING__LEVEL": "warning",
        "CRYPTOCITY_ADDRESSES__POOL_SIZE": "4096",
        "CRYPTOCITY_CONFIG": str(ROOT / "config.toml"),
    }
    sys.path.insert(0, str(ROOT))
    from sandbox.demo import demo_account_keys

    btc, eth = demo_account_keys()
    created = json.loads(
        cli(env, "merchants", "create", "--name", "Bench Canteen", "--btc-xpub", btc, "--eth-xpub", eth)
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "sandbox.cli", "serve"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    wait_for_port(port, proc)
    return proc, port, created["api_key"], env


def start_bare(body_size: int) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "bare_server.py"), str(port), str(body_size)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    wait_for_port(port, proc)
    return proc, port


WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = [[%(body)s]]
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer %(key)s"
local counter = 0
local thread_id = 0
local threads = {}
function setup(thread)
  thread_id = thread_id + 1
  thread:set("tid", thread_id)
  table.insert(threads, thread)
end
function request()
  counter = counter + 1
  wrk.headers["Idempotency-Key"] = "k-" .. tid .. "-" .. counter .. "-" .. "%(run)s"
  return wrk.format(nil, "/v1/invoices")
end
function response(status, headers, body)
  if status ~= 201 then bad = (bad or 0) + 1 end
end
function done(summary, latency, requests)
  local bad_total = 0
  for _, thread in ipairs(threads) do bad_total = bad_total + (thread:get("bad") or 0) end
  io.write(string.format("JSON{\\"requests\\":%%d,\\"bad\\":%%d,\\"p50_ms\\":%%.3f,\\"p99_ms\\":%%.3f," ..
    "\\"seconds\\":%%.3f,\\"socket_errors\\":%%d}\\n", summary.requests, bad_total,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, summary.duration / 1e6,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
"""


def run_wrk(port: int, key: str, seconds: float, connections: int, tag: str) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(WRK_SCRIPT % {"body": json.dumps(PAYLOAD), "key": key, "run": tag})
    try:
        out = subprocess.run(
            [
                "wrk",
                "-t2",
                f"-c{connections}",
                f"-d{max(1, round(seconds))}s",
                "--latency",
                "-s",
                script.name,
                f"http://127.0.0.1:{port}/v1/invoices",
            ],
            capture_output=True,
            text=True,
            check=True,
            timeout=seconds + 60,
        ).stdout
    finally:
        os.unlink(script.name)
    match = re.search(r"JSON(\{.*\})", out)
    if match is None:
        raise RuntimeError(f"wrk printed no summary:\n{out}")
    result: dict[str, Any] = json.loads(match.group(1))
    result["rps"] = result["requests"] / result["seconds"]
    result["errors"] = result.pop("bad") + result.pop("socket_errors")
    return result


async def _python_client(port: int, key: str, seconds: float, connections: int, tag: str) -> dict[str, Any]:
    import aiohttp

    latencies: list[float] = []
    errors = 0
    body = json.dumps(PAYLOAD).encode()
    deadline = time.perf_counter() + seconds
    url = f"http://127.0.0.1:{port}/v1/invoices"

    async def worker(n: int, session: aiohttp.ClientSession) -> None:
        nonlocal errors
        i = 0
        while time.perf_counter() < deadline:
            i += 1
            headers = {
                "Content-Type": "application/json",
                "Authorization": f"Bearer {key}",
                "Idempotency-Key": f"p-{tag}-{n}-{i}",
            }
            started = time.perf_counter()
            async with session.post(url, data=body, headers=headers) as response:
                await response.read()
                if response.status != 201:
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
        "p99_ms": 1000 * latencies[int(len(latencies) * 0.99) - 1] if latencies else 0.0,
    }


def load(port: int, key: str, seconds: float, connections: int, tag: str, client: str) -> dict[str, Any]:
    if client == "wrk" or (client == "auto" and shutil.which("wrk")):
        return {"client": "wrk", **run_wrk(port, key, seconds, connections, tag)}
    return {"client": "python-aiohttp", **asyncio.run(_python_client(port, key, seconds, connections, tag))}


def process_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="short CI run: fail only on errors")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--out", type=Path, help="default: bench/results/api_create[.quick].json")
    parser.add_argument(
        "--client",
        choices=("auto", "wrk", "python"),
        default="auto",
        help="load generator: wrk if installed (auto), or the multi-connection aiohttp client",
    )
    args = parser.parse_args()
    seconds, connections = (2.0, 16) if args.quick else (args.seconds, args.connections)
    out = args.out or RESULTS / ("api_create.quick.json" if args.quick else "api_create.json")
    tag = str(int(time.time()))
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        gateway, gw_port, key, _ = start_gateway(Path(tmp))
        bare = None
        try:
            import urllib.request

            request = urllib.request.Request(
                f"http://127.0.0.1:{gw_port}/v1/invoices",
                data=json.dumps(PAYLOAD).encode(),
                method="POST",
                headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"},
            )
            with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
                sample = response.read()
            bare, bare_port = start_bare(len(sample))
            load(bare_port, key, min(1.0, seconds), connections, tag + "w", args.client)  # warm-up both
            load(gw_port, key, min(1.0, seconds), connections, tag + "w", args.client)
            cpu0 = process_cpu_seconds(bare.pid)
            results["bare"] = load(bare_port, key, seconds, connections, tag + "b", args.client)
            results["bare"]["server_cpu_seconds"] = process_cpu_seconds(bare.pid) - cpu0
            cpu0 = process_cpu_seconds(gateway.pid)
            results["durable"] = load(gw_port, key, seconds, connections, tag + "d", args.client)
            results["durable"]["server_cpu_seconds"] = process_cpu_seconds(gateway.pid) - cpu0
            results["response_bytes"] = len(sample)
        finally:
            stop(gateway)
            if bare is not None:
                stop(bare)
    ratio = results["durable"]["rps"] / results["bare"]["rps"] if results["bare"]["rps"] else 0.0
    report = {
        "benchmark": "api_create",
        "quick": args.quick,
        "connections": connections,
        "seconds": seconds,
        "cpus": os.cpu_count(),
        "ratio_durable_to_bare": round(ratio, 3),
        "target_ratio": 0.5,
        "target_met": ratio >= 0.5,
        **results,
    }
    print(f"{'server':<10}{'client':<16}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'errors':>8}{'cpu s':>8}")
    for name in ("bare", "durable"):
        r = results[name]
        print(
            f"{name:<10}{r['client']:<16}{r['rps']:>10.0f}{r['p50_ms']:>10.2f}{r['p99_ms']:>10.2f}"
            f"{r['errors']:>8}{r['server_cpu_seconds']:>8.1f}"
        )
    print(f"durable / bare throughput: {ratio:.2f}x (target >= 0.5x: {'met' if ratio >= 0.5 else 'MISSED'})")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    errors = results["durable"]["errors"] + results["bare"]["errors"]
    if errors:
        print(f"{errors} requests failed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
