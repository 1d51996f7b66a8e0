"""The JSON-RPC client against a scripted node on loopback: answers, errors, garbage, timeouts, batches.

This is the unit level (a fake node); the integration tests against a real bcoin node come with the
Bitcoin watcher.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gateway.chains.bitcoin_rpc import BitcoinRpc, RpcEndpoint, RpcError, RpcUnavailable

Script = Callable[[dict[str, Any] | list[Any], int], web.Response | None]


class FakeNode:
    """Answers with whatever ``script`` returns for (request body, call number); records what it got."""

    def __init__(self) -> None:
        self.script: Script = lambda body, n: None
        self.requests: list[Any] = []
        self.auth_headers: list[str] = []
        self.delay = 0.0

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests.append(body)
        self.auth_headers.append(request.headers.get("Authorization", ""))
        if self.delay:
            await asyncio.sleep(self.delay)
        response = self.script(body, len(self.requests))
        return (
            response if response is not None else web.json_response({"result": None, "error": None, "id": 0})
        )


def ok(result: Any, body: Any) -> web.Response:
    return web.json_response({"result": result, "error": None, "id": body["id"]})


@pytest.fixture
async def node(aiohttp_server: Any) -> tuple[FakeNode, str]:
    fake = FakeNode()
    app = web.Application()
    app.router.add_post("/", fake.handle)
    server = await aiohttp_server(app)
    return fake, str(server.make_url("/"))


async def _client(url: str, **kwargs: Any) -> tuple[BitcoinRpc, aiohttp.ClientSession, list[float]]:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    session = aiohttp.ClientSession()
    rpc = BitcoinRpc(session, RpcEndpoint(url, "user", "secret"), sleep=sleep, **kwargs)
    return rpc, session, slept


async def test_calls_send_json_rpc_with_basic_auth_and_decode_results(node: tuple[FakeNode, str]) -> None:
    fake, url = node
    fake.script = lambda body, n: ok(
        {"getblockcount": 432, "getblock": "00ff", "getbestblockhash": "ab" * 32}[body["method"]], body
    )  # type: ignore[index]
    rpc, session, _ = await _client(url)
    try:
        assert await rpc.block_count() == 432
        assert await rpc.raw_block("cd" * 32) == b"\x00\xff"
        assert await rpc.best_block_hash() == "ab" * 32
    finally:
        await session.close()
    assert fake.requests[1]["params"] == ["cd" * 32, False]  # raw block, verbosity as a boolean
    assert all(h.startswith("Basic ") for h in fake.auth_headers)


async def test_an_error_object_is_an_rpc_error_and_not_retried(node: tuple[FakeNode, str]) -> None:
    fake, url = node
    fake.script = lambda body, n: web.json_response(
        {"result": None, "error": {"code": -8, "message": "Block height out of range"}, "id": body["id"]},
        status=500,
    )
    rpc, session, slept = await _client(url)
    try:
        with pytest.raises(RpcError) as caught:
            await rpc.block_hash(10_000)
    finally:
        await session.close()
    assert caught.value.code == -8 and "out of range" in str(caught.value)
    assert len(fake.requests) == 1 and slept == []


async def test_garbled_and_truncated_answers_are_retried_with_backoff(node: tuple[FakeNode, str]) -> None:
    fake, url = node
    answers = [
        web.Response(text="<html>proxy error</html>"),
        web.Response(text='{"result": 43', content_type="application/json"),
    ]
    fake.script = lambda body, n: answers[n - 1] if n <= len(answers) else ok(433, body)
    rpc, session, slept = await _client(url, retries=3, backoff_seconds=0.5)
    try:
        assert await rpc.block_count() == 433
    finally:
        await session.close()
    assert slept == [0.5, 1.0]


async def test_a_node_that_stays_broken_is_unavailable_after_the_retries(node: tuple[FakeNode, str]) -> None:
    fake, url = node
    fake.script = lambda body, n: web.Response(text="not json")
    rpc, session, slept = await _client(url, retries=2)
    try:
        with pytest.raises(RpcUnavailable, match="after 3 attempts"):
            await rpc.block_count()
    finally:
        await session.close()
    assert len(fake.requests) == 3 and len(slept) == 2


async def test_warming_up_is_retried(node: tuple[FakeNode, str]) -> None:
    fake, url = node
    fake.script = lambda body, n: (
        web.json_response(
            {"result": None, "error": {"code": -28, "message": "Loading block index"}, "id": body["id"]}
        )
        if n == 1
        else ok(1, body)
    )
    rpc, session, _ = await _client(url)
    try:
        assert await rpc.block_count() == 1
    finally:
        await session.close()


async def test_refused_credentials_fail_at_once(node: tuple[FakeNode, str]) -> None:
    fake, url = node
    fake.script = lambda body, n: web.Response(status=401)
    rpc, session, slept = await _client(url)
    try:
        with pytest.raises(RpcUnavailable, match="credentials"):
            await rpc.block_count()
    finally:
        await session.close()
    assert slept == []


async def test_timeouts_are_retried_then_unavailable(node: tuple[FakeNode, str]) -> None:
    fake, url = node
    fake.delay = 1.0
    rpc, session, _ = await _client(url, timeout_seconds=0.1, retries=1)
    try:
        with pytest.raises(RpcUnavailable, match=r"Timeout"):
            await rpc.block_count()
    finally:
        await session.close()
    assert len(fake.requests) == 2


async def test_unreachable_node_is_unavailable() -> None:
    rpc, session, _ = await _client("http://127.0.0.1:9/", retries=1)  # discard port: nothing listens
    try:
        with pytest.raises(RpcUnavailable):
            await rpc.block_count()
    finally:
        await session.close()


async def test_batch_returns_results_and_errors_in_call_order(node: tuple[FakeNode, str]) -> None:
    fake, url = node

    def answer(body: Any, n: int) -> web.Response:
        items = []
        for request in reversed(body):  # nodes may answer in any order
            if request["method"] == "getblockhash" and request["params"] == [99]:
                items.append(
                    {"result": None, "error": {"code": -8, "message": "out of range"}, "id": request["id"]}
                )
            else:
                items.append({"result": f"hash{request['params'][0]}", "error": None, "id": request["id"]})
        return web.json_response(items)

    fake.script = answer
    rpc, session, _ = await _client(url)
    try:
        results = await rpc.batch([("getblockhash", [1]), ("getblockhash", [99]), ("getblockhash", [2])])
    finally:
        await session.close()
    assert results[0] == "hash1" and results[2] == "hash2"
    assert isinstance(results[1], RpcError) and results[1].code == -8
    assert isinstance(fake.requests[0], list) and len(fake.requests) == 1  # one round trip


async def test_mempool_entry_of_an_absent_transaction_is_none(node: tuple[FakeNode, str]) -> None:
    fake, url = node
    fake.script = lambda body, n: web.json_response(
        {"result": None, "error": {"code": -5, "message": "Transaction not in mempool"}, "id": body["id"]}
    )
    rpc, session, _ = await _client(url)
    try:
        assert await rpc.mempool_entry("ab" * 32) is None
    finally:
        await session.close()


def test_cookie_file_credentials(tmp_path: Path) -> None:
    cookie = tmp_path / ".cookie"
    cookie.write_text("__cookie__:9f1e2d\n")
    assert RpcEndpoint.from_cookie("http://127.0.0.1:18443/", cookie) == RpcEndpoint(
        "http://127.0.0.1:18443/", "__cookie__", "9f1e2d"
    )
    cookie.write_text("garbage")
    with pytest.raises(RpcUnavailable, match="cookie"):
        RpcEndpoint.from_cookie("http://127.0.0.1:18443/", cookie)
    with pytest.raises(RpcUnavailable, match="cannot read"):
        RpcEndpoint.from_cookie("http://127.0.0.1:18443/", tmp_path / "missing")


def test_requests_are_plain_json_rpc() -> None:
    session_free = BitcoinRpc.__new__(BitcoinRpc)
    session_free._next_id = 0  # type: ignore[attr-defined]
    request = session_free._request("getblockhash", [7])  # type: ignore[attr-defined]
    assert json.loads(json.dumps(request)) == {
        "jsonrpc": "1.0",
        "id": 1,
        "method": "getblockhash",
        "params": [7],
    }


async def test_an_answer_to_another_request_is_retried_never_used(node: tuple[FakeNode, str]) -> None:
    """Crossed wires (a proxy handing one request's answer to another): a height answered for
    getblockchaininfo once made the watcher refuse a healthy node for good. The id tells them apart."""
    fake, url = node
    fake.script = lambda body, n: (
        web.json_response({"result": 432, "error": None, "id": body["id"] + 1000})
        if n == 1
        else ok({"chain": "regtest"}, body)
    )
    rpc, session, slept = await _client(url, retries=1)
    try:
        assert await rpc.blockchain_info() == {"chain": "regtest"}
    finally:
        await session.close()
    assert len(fake.requests) == 2 and len(slept) == 1
    fake.script = lambda body, n: web.json_response({"result": 432, "error": None, "id": None})
    rpc, session, _ = await _client(url, retries=0)
    try:
        with pytest.raises(RpcUnavailable, match="another request"):
            await rpc.block_count()
    finally:
        await session.close()
