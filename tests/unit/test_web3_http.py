"""The keep-alive web3 client against a scripted JSON-RPC server: answers to other requests are refused."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import web
from web3.exceptions import BadResponseFormat

from gateway.chains.web3_http import keep_alive_web3


async def test_an_answer_carrying_another_requests_id_is_refused(aiohttp_server: Any) -> None:
    """web3 checks an answer's shape, not its id. A crossed answer (here a block number where the chain id
    was asked) would have been taken as the chain id: a healthy node refused as "another chain", or
    another span's logs taken for this span's (found with tests/reliability/rpc_fault_proxy.py)."""
    shift = {"by": 1}

    async def handle(request: web.Request) -> web.Response:
        body = await request.json()
        return web.json_response({"jsonrpc": "2.0", "id": body["id"] + shift["by"], "result": "0x5"})

    app = web.Application()
    app.router.add_post("/", handle)
    server = await aiohttp_server(app)
    w3 = await keep_alive_web3(str(server.make_url("/")), timeout_seconds=5, retry=False)
    try:
        with pytest.raises(BadResponseFormat, match="another request"):
            await w3.eth.chain_id
        shift["by"] = 0
        assert await w3.eth.chain_id == 5
    finally:
        await w3.provider.disconnect()
