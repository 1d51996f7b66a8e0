"""An ``AsyncWeb3`` over HTTP that keeps its connections open.

web3's ``AsyncHTTPProvider`` builds its own aiohttp session with ``force_close=True`` when none is given:
every JSON-RPC call opens and closes a TCP connection. A watcher asking for a span's blocks and receipts,
or a wallet signing a payment, makes several calls at once and many per second; measured in the city
simulation, connection set-up was a fifth of the CPU the main process spent on web3. Handing the provider
a session with a keep-alive connector reuses the sockets; ``await w3.provider.disconnect()`` closes it.

web3 checks that an answer is well-formed JSON-RPC but not that its id is the one the request carried.
An answer with another id belongs to another request (crossed wires in a proxy or load balancer); taken
as ours, a block number could pass for a chain id, or another span's empty log list for this span's
transfers, and the watcher would store a block without its payments. :class:`IdCheckedHTTPProvider`
refuses such answers (``BadResponseFormat``), which the watcher treats like any unreachable node.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any

import aiohttp
from web3 import AsyncHTTPProvider, AsyncWeb3
from web3.exceptions import BadResponseFormat
from web3.types import RPCEndpoint, RPCRequest, RPCResponse

DEFAULT_CONNECTIONS = 32

# The id of the request being made, per task: set while web3 forms the request inside make_request (the
# same task), read once the answer is back. Concurrent requests run in tasks of their own.
_REQUEST_ID: ContextVar[object] = ContextVar("web3_request_id", default=None)


class IdCheckedHTTPProvider(AsyncHTTPProvider):
    """``AsyncHTTPProvider`` that refuses an answer whose id is not its request's (see the module doc)."""

    def form_request(self, method: RPCEndpoint, params: Any = None) -> RPCRequest:
        request = super().form_request(method, params)
        _REQUEST_ID.set(request["id"])
        return request

    async def make_request(self, method: RPCEndpoint, params: Any) -> RPCResponse:
        response = await super().make_request(method, params)
        expected = _REQUEST_ID.get()
        if not isinstance(response, dict) or response.get("id") != expected:
            got = response.get("id") if isinstance(response, dict) else None
            raise BadResponseFormat(f"{method}: an answer to another request (id {got!r}, not {expected!r})")
        return response


async def keep_alive_web3(
    url: str,
    *,
    timeout_seconds: float,
    connections: int = DEFAULT_CONNECTIONS,
    retry: bool = True,
) -> AsyncWeb3[AsyncHTTPProvider]:
    """``AsyncWeb3`` on ``url`` with up to ``connections`` reused sockets; ``retry=False`` turns off
    web3's own retries (callers that handle an unreachable node themselves)."""
    options: dict[str, Any] = {"request_kwargs": {"timeout": aiohttp.ClientTimeout(total=timeout_seconds)}}
    if not retry:
        options["exception_retry_configuration"] = None
    provider = IdCheckedHTTPProvider(url, **options)
    session = aiohttp.ClientSession(
        raise_for_status=True,  # as web3's own session: an HTTP error status is an exception
        connector=aiohttp.TCPConnector(limit=connections, keepalive_timeout=4.0),
    )
    await provider.cache_async_session(session)
    return AsyncWeb3(provider)
