"""Durable invoice creation versus a bare aiohttp handler, side by side in one run.

(a) the real gateway (`cryptocity serve`, SQLite WAL + synchronous=FULL, group commit), answering
    POST /v1/invoices with a fresh address per asset, the quote, the outbox event and the idempotency record
    all committed before the 201;
(b) a bare aiohttp handler on the same path that parses and validates the same request with the same
    pydantic model and returns a precomputed body of the same size, and does nothing else.

Both run as one server process each and take the same load from a client on loopback: wrk (C, -t2) when
installed, else the aiohttp client of bench/create_load.py. Every request carries a unique Idempotency-Key,
as a careful merchant sends.

Then, in the same run, durable creates by store and process count (bench/store_processes.py): SQLite with
1 process, PostgreSQL with 1 and with 2 (`serve --processes 2`) on a fresh schema of the database in
--pg-dsn (default CRYPTOCITY_TEST_PG_DSN; without one those rows are skipped, saying so), each loaded by
the aiohttp client in this process, with the gateway's CPU seconds and creates per gateway CPU-second;
target: 2 processes >= 0.9x of 1 process per CPU-second.

Prints the tables and writes bench/results/api_create.json.

    python bench/api_create.py            # 10 s per server, 64 connections (the figures in docs/performance.md)
    python bench/api_create.py --quick    # CI: small and short; fails only on errors, never on timing
    python bench/api_create.py --only processes --out /tmp/rows.json   # just the store/process rows
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
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results"

from bench.create_load import PAYLOAD, python_client  # noqa: E402
from bench.store_processes import print_rows, process_cpu_seconds, run_rows  # noqa: E402
from sandbox.devnets.process import free_port  # noqa: E402


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


def gateway_env() -> dict[str, str]:
    """What every gateway of this bench runs with (the store and the port are added per server)."""
    env = {
        **os.environ,
        "CRYPTOCITY_LOGGING__LEVEL": "warning",
        "CRYPTOCITY_ADDRESSES__POOL_SIZE": "4096",
        "CRYPTOCITY_CONFIG": str(ROOT / "config.toml"),
    }
    env.pop("CRYPTOCITY_STORE__DSN", None)
    env.pop("CRYPTOCITY_STORE__SCHEMA", None)
    return env


def create_merchant(env: dict[str, str]) -> str:
    """A merchant with the demo keys in the store ``env`` names; its API key."""
    from sandbox.demo import demo_account_keys

    btc, eth = demo_account_keys()
    created = json.loads(
        cli(env, "merchants", "create", "--name", "Bench Canteen", "--btc-xpub", btc, "--eth-xpub", eth)
    )
    return str(created["api_key"])


def start_gateway(workdir: Path) -> tuple[subprocess.Popen[bytes], int, str, dict[str, str]]:
    port = free_port()
    env = {
        **gateway_env(),
        "CRYPTOCITY_STORE__PATH": str(workdir / "bench.sqlite3"),
        "CRYPTOCITY_SERVER__PORT": str(port),
    }
    key = create_merchant(env)
    proc = subprocess.Popen(
        [sys.executable, "-m", "sandbox.cli", "serve"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    wait_for_port(port, proc)
    return proc, port, key, env


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


def load(port: int, key: str, seconds: float, connections: int, tag: str, client: str) -> dict[str, Any]:
    if client == "wrk" or (client == "auto" and shutil.which("wrk")):
        return {"client": "wrk", **run_wrk(port, key, seconds, connections, tag)}
    return {"client": "python-aiohttp", **asyncio.run(python_client(port, key, seconds, connections, tag))}


def measure_durable_vs_bare(seconds: float, connections: int, tag: str, client: str) -> dict[str, Any]:
    """The original comparison: the real gateway on SQLite against the bare handler, one process each."""
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
            load(bare_port, key, min(1.0, seconds), connections, tag + "w", client)  # warm-up both
            load(gw_port, key, min(1.0, seconds), connections, tag + "w", client)
            cpu0 = process_cpu_seconds(bare.pid)
            results["bare"] = load(bare_port, key, seconds, connections, tag + "b", client)
            results["bare"]["server_cpu_seconds"] = process_cpu_seconds(bare.pid) - cpu0
            cpu0 = process_cpu_seconds(gateway.pid)
            results["durable"] = load(gw_port, key, seconds, connections, tag + "d", client)
            results["durable"]["server_cpu_seconds"] = process_cpu_seconds(gateway.pid) - cpu0
            results["response_bytes"] = len(sample)
        finally:
            stop(gateway)
            if bare is not None:
                stop(bare)
    return results


def print_durable_vs_bare(results: dict[str, Any], ratio: float) -> None:
    print(f"{'server':<10}{'client':<16}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'errors':>8}{'cpu s':>8}")
    for name in ("bare", "durable"):
        r = results[name]
        print(
            f"{name:<10}{r['client']:<16}{r['rps']:>10.0f}{r['p50_ms']:>10.2f}{r['p99_ms']:>10.2f}"
            f"{r['errors']:>8}{r['server_cpu_seconds']:>8.1f}"
        )
    print(f"durable / bare throughput: {ratio:.2f}x (target >= 0.5x: {'met' if ratio >= 0.5 else 'MISSED'})")


def python_load(port: int, key: str, seconds: float, connections: int, tag: str) -> dict[str, Any]:
    return asyncio.run(python_client(port, key, seconds, connections, tag))


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
        help="load generator of durable vs bare: wrk if installed (auto), or the aiohttp client",
    )
    parser.add_argument(
        "--pg-dsn",
        default=os.environ.get("CRYPTOCITY_TEST_PG_DSN", ""),
        help="PostgreSQL for the store/process rows (a fresh schema per row, dropped afterwards);"
        " default CRYPTOCITY_TEST_PG_DSN; none: those rows are skipped",
    )
    parser.add_argument(
        "--only",
        choices=("bare", "processes"),
        help="measure only durable vs bare, or only the store/process rows (default: both)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="measure the store/process rows this many times, taking turns; medians decide (default 3; --quick: 1)",
    )
    parser.add_argument(
        "--py-spy",
        type=Path,
        metavar="DIR",
        help="record py-spy raw stacks of every gateway process during each store/process row into DIR",
    )
    args = parser.parse_args()
    seconds, connections = (2.0, 16) if args.quick else (args.seconds, args.connections)
    out = args.out or RESULTS / ("api_create.quick.json" if args.quick else "api_create.json")
    tag = str(int(time.time()))
    report: dict[str, Any] = {
        "benchmark": "api_create",
        "quick": args.quick,
        "connections": connections,
        "seconds": seconds,
        "cpus": os.cpu_count(),
    }
    errors = 0
    if args.only != "processes":
        results = measure_durable_vs_bare(seconds, connections, tag, args.client)
        ratio = results["durable"]["rps"] / results["bare"]["rps"] if results["bare"]["rps"] else 0.0
        report.update(
            {"ratio_durable_to_bare": round(ratio, 3), "target_ratio": 0.5, "target_met": ratio >= 0.5}
        )
        report.update(results)
        print_durable_vs_bare(results, ratio)
        errors += results["durable"]["errors"] + results["bare"]["errors"]
    if args.only != "bare":
        with tempfile.TemporaryDirectory() as tmp:
            rows = run_rows(
                gateway_env(),
                Path(tmp),
                dsn=args.pg_dsn,
                seconds=seconds,
                warmup=0.5 if args.quick else 2.0,
                connections=connections,
                tag=tag,
                load=python_load,
                make_merchant=create_merchant,
                profile_dir=args.py_spy,
                rounds=1 if args.quick else max(1, args.rounds),
            )
        report["processes"] = rows
        print_rows(rows)
        errors += sum(row["errors"] for row in rows["rows"])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    if errors:
        print(f"{errors} requests failed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
