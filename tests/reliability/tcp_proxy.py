"""A loopback TCP proxy in front of a node, to make the node unreachable on command while it keeps running.

The node itself is never touched: the tests that use this go on mining and paying through the node's own
port while the gateway, configured with the proxy's port, cannot reach it. That is what an outage looks
like from the gateway (a network partition, a firewall, a dead load balancer) and, unlike SIGSTOP, it
leaves the chain free to move on during the outage.

Modes:

- ``FORWARD``: bytes flow both ways (and whatever was held while hanging is delivered);
- ``HANG``: connections stay open, new ones are accepted, nothing is forwarded in either direction (a
  black hole: only the client's own timeouts notice);
- ``DROP``: every open connection is aborted and new ones are closed as soon as they are accepted (the
  client sees resets and empty answers at once).
"""

from __future__ import annotations

import asyncio
import contextlib
from enum import StrEnum
from typing import Any


class ProxyMode(StrEnum):
    FORWARD = "forward"
    HANG = "hang"
    DROP = "drop"


class TcpProxy:
    """``async with TcpProxy(port) as proxy``: listens on 127.0.0.1 at a free port, forwards to ``port``."""

    def __init__(self, target_port: int, *, target_host: str = "127.0.0.1") -> None:
        self._target = (target_host, target_port)
        self._server: asyncio.Server | None = None
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._mode = ProxyMode.FORWARD
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0
        self.connections = 0  # accepted since start, for tests that check the client reconnected

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    @property
    def mode(self) -> ProxyMode:
        return self._mode

    def set_mode(self, mode: ProxyMode) -> None:
        self._mode = mode
        if mode is ProxyMode.FORWARD:
            self._flowing.set()
            return
        self._flowing.clear()
        if mode is ProxyMode.DROP:
            for writer in list(self._writers):
                writer.transport.abort()
            self._writers.clear()

    async def start(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> TcpProxy:
        return await self.start()

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        if self._mode is ProxyMode.DROP:
            writer.transport.abort()
            return
        self._writers.add(writer)
        try:
            await self._flowing.wait()  # a connection made while hanging reaches the node only afterwards
            if self._mode is ProxyMode.DROP or writer.transport.is_closing():
                return
            up_reader, up_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.transport.abort()
            self._writers.discard(writer)
            return
        self._writers.add(up_writer)
        pumps = [
            asyncio.create_task(self._pump(reader, up_writer)),
            asyncio.create_task(self._pump(up_reader, writer)),
        ]
        self._tasks.update(pumps)
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pump in pumps:
                pump.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            self._tasks.difference_update(pumps)
            for end in (writer, up_writer):
                self._writers.discard(end)
                end.transport.abort()

    async def _pump(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        while True:
            data = await source.read(65536)
            if not data:
                return
            await self._flowing.wait()  # held while hanging; aborted with the connection when dropped
            if sink.transport.is_closing():
                return
            sink.write(data)
            await sink.drain()
