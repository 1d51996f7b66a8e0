"""An ``AsyncWeb3`` over HTTP that keeps its connections open.

web3's ``AsyncHTTPProvider`` builds its own aiohttp session with ``force_close=True`` when none is given:
every JSON-RPC call opens and closes a TCP connection. A watcher asking for a span's blocks and receipts,
or a wallet signing a payment, makes several calls at once and many per second; measured in the city
simulation, connection set-up was a fifth of the CPU the main process spent on web3. Handing the provider
a session with a keep-alive connector reuses the sockets; ``await w3.provider.disconnect()`` closes it.
"""

from __future__ import annotations

from typing import Any

import aiohttp
from web3 import AsyncHTTPProvider, AsyncWeb3

DEFAULT_CONNECTIONS = 32


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
    provider = AsyncHTTPProvider(url, **options)
    session = aiohttp.ClientSession(
        raise_for_status=True,  # as web3's own session: an HTTP error status is an exception
        connector=aiohttp.TCPConnector(limit=connections, keepalive_timeout=4.0),
    )
    await provider.cache_async_session(session)
    return AsyncWeb3(provider)
