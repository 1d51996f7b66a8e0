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
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import aiohttp
from bitcoin.core import CBlock, CTransaction, b2lx

from gateway.addresses import btc_script_for_address
from gateway.chains.bitcoin_rpc import BitcoinRpc, RpcEndpoint, RpcUnavailable
from sandbox.devnets.bitcoin_reorg import build_block, median_time_past
from sandbox.devnets.process import PROJECT_ROOT, DevnetError, NodeProcess, free_port

REGTEST_HRP = "rb"  # bcoin's regtest bech32 prefix (Bitcoin Core uses "bcrt")
SEGWIT_HEIGHT = 432  # P2WPKH spends are accepted only from this height on
# Coinbase of competing blocks when the caller names no payee: OP_TRUE, which anyone can spend (regtest only).
ANYONE_CAN_SPEND = b"\x51"


def bcoin_entry_point(root: Path = PROJECT_ROOT) -> Path:
    entry = Path(os.environ.get("CRYPTOCITY_NODE_MODULES", root / "node_modules")) / "bcoin" / "bin" / "node"
    if not entry.exists():
        raise DevnetError(f"bcoin is not installed at {entry}; run `bash scripts/setup.sh` (npm ci)")
    return entry


class FundableWallet(Protocol):
    """What :meth:`BitcoinDevnet.fund` needs from a wallet (wallets.bitcoin.BitcoinWallet has it)."""

    def address(self, index: int) -> str: ...

    async def scan(self, rpc: BitcoinRpc, from_height: int | None = None) -> Any: ...


class BitcoinDevnet:
    def __init__(self, *, port: int | None = None, log_path: Path | None = None) -> None:
        self.port = port or free_port()
        self.api_key = secrets.token_hex(16)
        self.url = f"http://127.0.0.1:{self.port}/"
        self.endpoint = RpcEndpoint(self.url, "cryptocity", self.api_key)
        self._node = NodeProcess(log_path)
        self._session: aiohttp.ClientSession | None = None
        self.rpc: BitcoinRpc | None = None

    @property
    def pid(self) -> int | None:
        return self._node.pid

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
            # bcoin's wallet plugin (unused: wallets live in Python) listens on the fixed regtest wallet port
            # 48334 whatever --http-port says, so a second node on the machine would die with EADDRINUSE.
            "--no-wallet",
        ]
        await self._node.spawn(args)
        self._session = aiohttp.ClientSession()
        self.rpc = BitcoinRpc(self._session, self.endpoint, timeout_seconds=5, retries=0)
        loop = asyncio.get_running_loop()
        until = loop.time() + deadline_seconds
        while True:
            if self._node.exit_code() is not None:
                await self.stop()
                raise DevnetError(f"bcoin exited at start with code {self._node.exit_code()}")
            with contextlib.suppress(RpcUnavailable):
                await self.rpc.block_count()
                return self
            if loop.time() > until:
                await self.stop()
                raise DevnetError(f"bcoin did not answer on {self.url} within {deadline_seconds} s")
            await asyncio.sleep(0.1)

    async def mine(self, blocks: int, address: str) -> list[str]:
        """Mine ``blocks`` blocks paying their coinbase to ``address`` (an ``rb1…`` address)."""
        assert self.rpc is not None, "start the devnet first"
        hashes = await self.rpc.call("generatetoaddress", blocks, address)
        return [str(h) for h in hashes]

    async def set_mock_time(self, unix: int) -> None:
        """``setmocktime``: the node's clock, and so the time of blocks mined afterwards (devnets.md)."""
        await self._started().call("setmocktime", unix)

    async def fund(self, wallet: FundableWallet, *, blocks: int = SEGWIT_HEIGHT) -> None:
        """Mine ``blocks`` coinbases to ``wallet.address(0)`` and let the wallet scan them.

        The default of 432 blocks both activates segwit (so the wallet's P2WPKH spends are accepted) and
        leaves the first 333 coinbases mature (100 confirmations), i.e. hundreds of independent coins.
        """
        rpc = self._started()
        await self.mine(blocks, wallet.address(0))
        await wallet.scan(rpc)

    async def submit_block(self, raw: bytes) -> str:
        """Submit a serialised block; its hash. Raises DevnetError with the node's reason if refused.

        ``submitblock`` answers null when the block was stored, on the main chain or on a side branch,
        and a ``"rejected: <reason>"`` string otherwise.
        """
        rpc = self._started()
        answer = await rpc.call("submitblock", raw.hex())
        if answer is not None:
            raise DevnetError(f"the node refused block {b2lx(CBlock.deserialize(raw).GetHash())}: {answer}")
        return str(b2lx(CBlock.deserialize(raw).GetHash()))

    async def reorg(
        self,
        depth: int,
        *,
        txs_in_branch: Sequence[bytes | CTransaction] = (),
        coinbase_address: str | None = None,
        not_before: int | None = None,
        txs_at: int = 0,
    ) -> list[str]:
        """Replace the last ``depth`` blocks by a longer competing branch; the new branch's block hashes.

        Builds ``depth + 1`` blocks on top of the block at height ``tip - depth`` (``depth=0`` just extends
        the chain through submitblock), the one at offset ``txs_at`` (0, the first, by default; ``depth``
        is the new tip) carrying ``txs_in_branch`` (raw or parsed, in order), and submits them. The node
        switches branches when the last one arrives, exactly as on a network: the blocks it disconnects
        become stale (``getblockhash`` at their heights answers the new hashes), and their transactions
        return to the mempool only when bcoin allows it (see devnets.md).

        Coinbases pay the subsidy only (no fees claimed, which is valid) to ``coinbase_address``, or to an
        anyone-can-spend script when None. Each block's time is its parent's plus one second, raised above
        the median of the 11 blocks before it when needed, so it always passes bcoin's time checks; with
        ``not_before`` (unix seconds) no block of the branch is older than that (a simulated clock's time).

        Raises DevnetError if a block is refused or the node's best block is not the new tip afterwards.
        """
        rpc = self._started()
        tip = await rpc.block_count()
        if not 0 <= depth <= tip:
            raise DevnetError(f"cannot reorganise {depth} blocks of a chain whose tip is at height {tip}")
        if not 0 <= txs_at <= depth:
            raise DevnetError(f"block offset {txs_at} is outside the {depth + 1}-block branch")
        fork_height = tip - depth
        script = ANYONE_CAN_SPEND
        if coinbase_address is not None:
            script = btc_script_for_address(coinbase_address, REGTEST_HRP)
        heights = list(range(max(0, fork_height - 10), fork_height + 1))
        hashes = await rpc.batch([("getblockhash", [h]) for h in heights])
        headers = await rpc.batch([("getblockheader", [h]) for h in hashes])
        for answer in (*hashes, *headers):
            if isinstance(answer, Exception):
                raise DevnetError(f"could not read the chain below the fork point: {answer}")
        times = [int(header["time"]) for header in headers]
        prev = str(hashes[-1])
        branch: list[str] = []
        for offset in range(depth + 1):
            height = fork_height + 1 + offset
            time = max(times[-1] + 1, median_time_past(times) + 1, (not_before or 0) + offset)
            raw = build_block(
                prev,
                height,
                time,
                list(txs_in_branch) if offset == txs_at else [],
                script,
                segwit=height >= SEGWIT_HEIGHT,
            )
            prev = await self.submit_block(raw)
            branch.append(prev)
            times.append(time)
        best = await rpc.best_block_hash()
        if best != branch[-1]:
            raise DevnetError(
                f"after submitting a {depth + 1}-block branch from height {fork_height}, the node's best "
                f"block is {best} at height {await rpc.block_count()}, not the branch tip {branch[-1]}"
            )
        return branch

    def _started(self) -> BitcoinRpc:
        if self.rpc is None:
            raise DevnetError("start the devnet first")
        return self.rpc

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop the node we started, by its PID: SIGTERM, then SIGKILL if it lingers."""
        if self._session is not None:
            await self._session.close()
            self._session = None
        await self._node.stop(timeout)

    async def __aenter__(self) -> BitcoinDevnet:
        return await self.start()

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()
