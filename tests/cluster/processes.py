"""Real `cryptocity serve` processes on one PostgreSQL schema: started on free loopback ports, their output in
files (a full pipe can never stall them), stopped by PID."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from gateway.accounts.merchants import MerchantRegistry
from gateway.clock import SystemClock
from gateway.money import Asset
from gateway.store import PostgresStore
from sandbox.demo import demo_account_keys
from tests.conftest import pg_dsn


def cluster_env(workdir: Path, schema: str, **extra: str) -> dict[str, str]:
    """What every process of one test's cluster runs with: the schema, fast webhook retries, quiet logs."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(workdir),
        "CRYPTOCITY_STORE__DSN": pg_dsn(),
        "CRYPTOCITY_STORE__SCHEMA": schema,
        "CRYPTOCITY_STORE__POOL_SIZE": "5",
        "CRYPTOCITY_STORE__PATH": str(workdir / "unused.sqlite3"),
        "CRYPTOCITY_SERVER__HOST": "127.0.0.1",
        "CRYPTOCITY_SERVER__PORT": "0",
        "CRYPTOCITY_LOGGING__LEVEL": "info",
        "CRYPTOCITY_ADDRESSES__DERIVE_WORKERS": "0",  # 2 cores: no extra worker process per gateway
        "CRYPTOCITY_SANDBOX__ENABLED": "false",
        "CRYPTOCITY_WEBHOOKS__RETRY_SCHEDULE_SECONDS": "[1, 1, 2]",
        "CRYPTOCITY_WEBHOOKS__JITTER": "0",
        "CRYPTOCITY_INVOICES__MIN_EXPIRY_SECONDS": "30",  # the failover test's invoice expires soon
    }
    env.update(extra)
    return env


@dataclass
class ServeProcess:
    """One `cryptocity serve` (or its supervisor) with its output files."""

    process: subprocess.Popen[bytes]
    stdout: Path
    stderr: Path
    base_url: str = ""

    @property
    def pid(self) -> int:
        return self.process.pid

    def output(self) -> str:
        return self.stdout.read_text(errors="replace") + self.stderr.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL by PID: the process gets no chance to clean up (its sessions end with its sockets)."""
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM by PID and wait; SIGKILL if it hangs (the caller's exit-status check then fails)."""
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        return self.process.returncode


def start_serve(
    workdir: Path,
    env: dict[str, str],
    *args: str,
    name: str = "gateway",
    pattern: str = r"listening on (http://\S+)",
) -> ServeProcess:
    """Start `python -m sandbox.cli serve ARGS` and wait for the line ``pattern`` finds its URL in."""
    out, err = workdir / f"{name}.out", workdir / f"{name}.err"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-u", "-m", "sandbox.cli", "serve", *args],
            env=env,
            cwd=workdir,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
        )
    started = ServeProcess(process, out, err)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        match = re.search(pattern, out.read_text(errors="replace"))
        if match:
            started.base_url = match.group(1)
            return started
        if process.poll() is not None:
            break
        time.sleep(0.05)
    started.stop(timeout=5)
    raise AssertionError(f"{name} did not start:\n{started.output()}")


@dataclass
class Cluster:
    """Gateways started separately on one schema, each on its own port, so each can be asked directly."""

    workdir: Path
    env: dict[str, str]
    processes: list[ServeProcess] = field(default_factory=list)

    def start(self, n: int) -> None:
        for _ in range(n):
            self.processes.append(start_serve(self.workdir, self.env, name=f"gateway{len(self.processes)}"))

    def alive(self) -> list[ServeProcess]:
        return [p for p in self.processes if p.process.poll() is None]

    def stop(self) -> None:
        for process in self.processes:
            process.stop()


async def health(session: aiohttp.ClientSession, base_url: str) -> dict[str, Any] | None:
    """GET /healthz, or None if the process does not answer."""
    try:
        async with session.get(base_url + "/healthz", timeout=aiohttp.ClientTimeout(total=3)) as response:
            body: dict[str, Any] = await response.json()
            return body
    except (aiohttp.ClientError, TimeoutError):
        return None


async def leaders(session: aiohttp.ClientSession, processes: list[ServeProcess]) -> list[int]:
    """PIDs of the processes that say they lead, asked at (nearly) the same moment."""
    answers = await asyncio.gather(*(health(session, p.base_url) for p in processes))
    return [
        answer["cluster"]["pid"]
        for answer in answers
        if answer is not None and answer.get("cluster", {}).get("role") == "leader"
    ]


async def wait_for_leader(
    session: aiohttp.ClientSession, processes: list[ServeProcess], seconds: float
) -> tuple[int, list[list[int]]]:
    """The one leader's PID once exactly one says it leads, and every poll's answer until then."""
    deadline = asyncio.get_running_loop().time() + seconds
    seen: list[list[int]] = []
    while True:
        found = await leaders(session, processes)
        seen.append(found)
        if len(found) == 1:
            return found[0], seen
        assert asyncio.get_running_loop().time() < deadline, (
            f"no single leader within {seconds} s: {seen[-5:]}"
        )
        await asyncio.sleep(0.1)


async def create_merchant(schema: str, dsn: str | None = None) -> tuple[str, str]:
    """A merchant with the demo keys, made directly in the shared schema (of ``dsn``, default the test
    server); its id and API key."""
    store = await PostgresStore.open(dsn or pg_dsn(), schema=schema, pool_size=2)
    try:
        registry = MerchantRegistry(store, SystemClock(), key_environment="test", auth_cache_seconds=0)
        btc, eth = demo_account_keys()
        merchant, key = await registry.create(
            "Cluster Shop",
            btc_account_key=btc,
            eth_account_key=eth,
            accepted_assets=[Asset.BTC, Asset.ETH, Asset.USDT],
        )
        return merchant.id, key.plaintext
    finally:
        await store.close()


def pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(FileNotFoundError):
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
        if state == "Z":  # exited, not yet reaped
            return False
    return True
