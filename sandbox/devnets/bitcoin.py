"""A bcoin regtest node (the npm package, a real full node in JavaScript) on a free loopback port.

Recipe and pitfalls: ../shared/devnets.md. The node keeps its chain in memory, listens on 127.0.0.1 only,
takes no peers, and answers the same JSON-RPC as Bitcoin Core (Basic auth, the API key as password). It
is stopped by the PID this module started, never by name (bcoin renames its process to "bcoin").
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import socket
import subprocess
from pathlib import Path
from typing import IO, Any

import aiohttp

from gateway.chains.bitcoin_rpc import BitcoinRpc, RpcEndpoint, RpcUnavailable

PROJECT_ROOT = Path(__file__).resolve().parents[2]
REGTEST_HRP = "rb"  # bcoin's regtest bech32 prefix (Bitcoin Core uses "bcrt")
SEGWIT_HEIGHT = 432  # P2WPKH spends are accepted only from this height on


class DevnetError(RuntimeError):
    """The local node could not be installed, started or stopped."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def bcoin_entry_point(root: Path = PROJECT_ROOT) -> Path:
    entry = Path(os.environ.get("CRYPTOCITY_NODE_MODULES", root / "node_modules")) / "bcoin" / "bin" / "node"
    if not entry.exists():
        raise DevnetError(f"bcoin is not installed at {entry}; run `bash scripts/setup.sh` (npm ci)")
    return entry


class BitcoinDevnet:
    def __init__(self, *, port: int | None = None, log_path: Path | None = None) -> None:
        self.port = port or _free_port()
        self.api_key = secrets.token_hex(16)
        self.url = f"http://127.0.0.1:{self.port}/"
        self.endpoint = RpcEndpoint(self.url, "cryptocity", self.api_key)
        self._log_path = log_path
        self._log: IO[bytes] | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._session: aiohttp.ClientSession | None = None
        self.rpc: BitcoinRpc | None = None

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    async def start(self, *, deadline_seconds: float = 30.0) -> BitcoinDevnet:
        node = shutil.which("node")
        if node is None:
            raise DevnetError("Node.js is not installed (bcoin needs it)")
        args = [
            node,
            str(bcoin_entry_point()),
            "--network=regtest",
            "--memory=true",
            "--http-host=127.0.0.1",
            f"--http-port={self.port}",
            f"--api-key={self.api_key}",
            "--workers=false",
            "--listen=false",
            "--index-tx=true",
        ]
        self._process = await asyncio.to_thread(self._spawn, args)
        self._session = aiohttp.ClientSession()
        self.rpc = BitcoinRpc(self._session, self.endpoint, timeout_seconds=5, retries=0)
        loop = asyncio.get_running_loop()
        until = loop.time() + deadline_seconds
        while True:
            if self._process.poll() is not None:
                await self.stop()
                raise DevnetError(f"bcoin exited at start with code {self._process.returncode}")
            with contextlib.suppress(RpcUnavailable):
                await self.rpc.block_count()
                return self
            if loop.time() > until:
                await self.stop()
                raise DevnetError(f"bcoin did not answer on {self.url} within {deadline_seconds} s")
            await asyncio.sleep(0.1)

    def _spawn(self, args: list[str]) -> subprocess.Popen[bytes]:
        self._log = open(self._log_path, "ab") if self._log_path else None  # noqa: SIM115 - closed in stop()
        return subprocess.Popen(  # noqa: S603 - fixed arguments, our own node
            args, stdout=self._log or subprocess.DEVNULL, stderr=subprocess.STDOUT, cwd=PROJECT_ROOT
        )

    async def mine(self, blocks: int, address: str) -> list[str]:
        """Mine ``blocks`` blocks paying their coinbase to ``address`` (an ``rb1…`` address)."""
        assert self.rpc is not None, "start the devnet first"
        hashes = await self.rpc.call("generatetoaddress", blocks, address)
        return [str(h) for h in hashes]

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop the node we started, by its PID: SIGTERM, then SIGKILL if it lingers."""
        if self._session is not None:
            await self._session.close()
            self._session = None
        process = self._process
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                await asyncio.to_thread(process.wait, timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                await asyncio.to_thread(process.wait)
        if self._log is not None:
            self._log.close()
            self._log = None

    async def __aenter__(self) -> BitcoinDevnet:
        return await self.start()

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()
