"""A small async client for the JSON-RPC that Bitcoin Core and bcoin share.

Only calls both nodes answer the same way are wrapped (raw blocks and transactions, hashes, heights, the
mempool), and raw bytes are parsed locally (bitcoin_blocks.py), so the watcher runs unchanged against
Bitcoin Core on testnet4/signet and against the local bcoin regtest node.

Failure policy, because a node that hiccups must not cost a payment:
- the node answered with an ``error`` object: :class:`RpcError`, not retried (except "warming up", -28);
- the node could not be reached, timed out, or sent something that is not a JSON-RPC answer (truncated or
  garbled), or an answer to another request (its id is not the one asked with: crossed wires in a proxy
  would otherwise hand one call's result to another): retried with exponential backoff, then
  :class:`RpcUnavailable`;
- authentication refused: :class:`RpcUnavailable` at once (retrying cannot help).
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

_WARMING_UP = -28  # Bitcoin Core: "Loading block index…" while starting


class RpcError(Exception):
    """The node refused the call (bad parameters, unknown block, rejected transaction)."""

    def __init__(self, method: str, code: int, message: str) -> None:
        super().__init__(f"{method}: {message} (code {code})")
        self.method, self.code, self.message = method, code, message


class RpcUnavailable(Exception):
    """The node could not be asked: unreachable, too slow, garbled answers, or refused credentials."""


@dataclass(frozen=True, slots=True)
class RpcEndpoint:
    url: str
    user: str
    password: str

    @classmethod
    def from_cookie(cls, url: str, cookie_file: Path) -> RpcEndpoint:
        """Bitcoin Core's ``.cookie`` holds ``__cookie__:<password>``, rewritten at every node start."""
        try:
            user, sep, password = cookie_file.read_text(encoding="ascii").strip().partition(":")
        except OSError as exc:
            raise RpcUnavailable(f"cannot read the RPC cookie file {cookie_file}: {exc}") from None
        if not sep or not password:
            raise RpcUnavailable(f"{cookie_file} is not a user:password cookie file")
        return cls(url, user, password)


class BitcoinRpc:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        endpoint: RpcEndpoint,
        *,
        timeout_seconds: float = 10.0,
        retries: int = 3,
        backoff_seconds: float = 0.25,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._session = session
        self._endpoint = endpoint
        token = base64.b64encode(f"{endpoint.user}:{endpoint.password}".encode()).decode("ascii")
        self._headers = {"Authorization": f"Basic {token}"}
        self._timeout = aiohttp.ClientTimeout(total=timeout_seconds)
        self._retries = retries
        self._backoff = backoff_seconds
        self._sleep = sleep
        self._next_id = 0

    # -- transport -----------------------------------------------------------------------------------

    async def _post(self, payload: Any) -> Any:
        """POST once; the decoded JSON body, whatever the HTTP status (nodes put RPC errors in 500s)."""
        try:
            async with self._session.post(
                self._endpoint.url,
                json=payload,
                headers=self._headers,
                timeout=self._timeout,
                allow_redirects=False,
            ) as response:
                if response.status in (401, 403):
                    raise _Fatal(f"the node refused the RPC credentials (HTTP {response.status})")
                body = await response.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _Transient(f"{type(exc).__name__}: {exc}") from None
        try:
            return json.loads(body)
        except ValueError:
            raise _Transient(f"not JSON ({len(body)} bytes): {body[:80]!r}") from None

    async def _with_retries(self, payload: Any, check: Callable[[Any], Any]) -> Any:
        delay = self._backoff
        last = ""
        for attempt in range(self._retries + 1):
            if attempt:
                await self._sleep(delay)
                delay *= 2
            try:
                return check(await self._post(payload))
            except _Transient as exc:
                last = str(exc)
            except _Fatal as exc:
                raise RpcUnavailable(str(exc)) from None
        raise RpcUnavailable(
            f"bitcoin node at {self._endpoint.url} unavailable after {self._retries + 1} attempts: {last}"
        )

    def _request(self, method: str, params: Sequence[Any]) -> dict[str, Any]:
        self._next_id += 1
        return {"jsonrpc": "1.0", "id": self._next_id, "method": method, "params": list(params)}

    # -- calls ---------------------------------------------------------------------------------------

    async def call(self, method: str, *params: Any) -> Any:
        request = self._request(method, params)

        def check(answer: Any) -> Any:
            if isinstance(answer, dict) and answer.get("id") != request["id"]:
                raise _Transient(
                    f"an answer to another request (id {answer.get('id')!r}, not {request['id']})"
                )
            return _result_of(method, answer)

        return await self._with_retries(request, check)

    async def batch(self, calls: Sequence[tuple[str, Sequence[Any]]]) -> list[Any]:
        """Several calls in one round trip; each item is its result or the RpcError it raised."""
        if not calls:
            return []
        requests = [self._request(method, params) for method, params in calls]
        by_id = {r["id"]: r["method"] for r in requests}

        def check(answer: Any) -> list[Any]:
            if not isinstance(answer, list) or len(answer) != len(requests):
                raise _Transient("the batch answer is not a list of one answer per call")
            results = {}
            for item in answer:
                if not isinstance(item, dict) or item.get("id") not in by_id:
                    raise _Transient("a batch answer item has no known id")
                try:
                    results[item["id"]] = _result_of(by_id[item["id"]], item)
                except RpcError as exc:
                    results[item["id"]] = exc
            return [results[r["id"]] for r in requests]

        return list(await self._with_retries(requests, check))

    async def best_block_hash(self) -> str:
        return str(await self.call("getbestblockhash"))

    async def block_count(self) -> int:
        return int(await self.call("getblockcount"))

    async def block_hash(self, height: int) -> str:
        return str(await self.call("getblockhash", height))

    async def block_header(self, block_hash: str) -> dict[str, Any]:
        header = await self.call("getblockheader", block_hash)
        if not isinstance(header, dict):
            raise RpcUnavailable("getblockheader answered something that is not an object")
        return header

    async def raw_block(self, block_hash: str) -> bytes:
        """The serialised block (`getblock <hash> false`: bcoin's verbosity is a boolean)."""
        return _hex(await self.call("getblock", block_hash, False), "getblock")

    async def raw_transaction(self, txid: str) -> bytes:
        return _hex(await self.call("getrawtransaction", txid, False), "getrawtransaction")

    async def mempool_txids(self) -> list[str]:
        txids = await self.call("getrawmempool")
        if not isinstance(txids, list):
            raise RpcUnavailable("getrawmempool answered something that is not a list")
        return [str(t) for t in txids]

    async def mempool_entry(self, txid: str) -> dict[str, Any] | None:
        """The mempool entry, or None when the transaction is not in the mempool."""
        try:
            entry = await self.call("getmempoolentry", txid)
        except RpcError as exc:
            # Bitcoin Core: -5 "Transaction not in mempool"; bcoin: -1 "Transaction not in mempool."
            if exc.code == -5 or "not in mempool" in exc.message.lower():
                return None
            raise
        return entry if isinstance(entry, dict) else None

    async def send_raw_transaction(self, raw: bytes) -> str:
        return str(await self.call("sendrawtransaction", raw.hex()))

    async def blockchain_info(self) -> dict[str, Any]:
        info = await self.call("getblockchaininfo")
        if not isinstance(info, dict):
            raise RpcUnavailable("getblockchaininfo answered something that is not an object")
        return info


class _Transient(Exception):
    pass


class _Fatal(Exception):
    pass


def _result_of(method: str, answer: Any) -> Any:
    if not isinstance(answer, dict) or ("result" not in answer and "error" not in answer):
        raise _Transient("not a JSON-RPC answer")
    error = answer.get("error")
    if error:
        code = int(error.get("code", 0)) if isinstance(error, dict) else 0
        message = str(error.get("message", error)) if isinstance(error, dict) else str(error)
        if code == _WARMING_UP:
            raise _Transient(f"node warming up: {message}")
        raise RpcError(method, code, message)
    return answer.get("result")


def _hex(value: Any, method: str) -> bytes:
    try:
        return bytes.fromhex(str(value))
    except ValueError:
        raise RpcUnavailable(f"{method} answered something that is not hex") from None
