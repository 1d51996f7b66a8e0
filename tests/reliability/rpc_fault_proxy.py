"""A loopback JSON-RPC proxy in front of a node that, on command, answers the ways broken middleboxes do.

It speaks just enough HTTP/1.1 to sit between the gateway and a node: it reads each request (keep-alive,
``Content-Length`` bodies, which is what aiohttp and web3 send), forwards it to the node with aiohttp, and
writes the answer back itself, so it can shape every byte of the answer:

- ``HONEST``: the node's answer as it is;
- ``MALFORMED_JSON``: HTTP 200 with a body that is not JSON at all;
- ``TRUNCATED``: HTTP 200 with the first half of the node's JSON, framed consistently (the HTTP layer is
  happy, the JSON is cut);
- ``CLOSE_MID_BODY``: the headers promise the whole body, half of it is sent, then the connection closes;
- ``WRONG_ID``: the answer the node gave to an *earlier, different* request (with that request's id):
  crossed wires, as a pipelining or caching proxy gets them (a retry of the same request is not a
  different one: its answer would be right);
- ``HTTP_500``: HTTP 500 with an HTML error page;
- ``NULL_RESULT``: a well-formed JSON-RPC answer, right id, whose result is ``null``;
- ``FLAKY``: every other request is answered HTTP 500, the rest honestly (faults between the calls of one
  poll rather than around it).

The request is always forwarded, also when the answer is then spoiled: a node that did the work and whose
answer was lost on the way is the nasty case (``sendrawtransaction`` went through, the client does not know).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import Counter
from enum import StrEnum
from typing import Any

import aiohttp

_ERROR_PAGE = b"<html><body><h1>500 Internal Server Error</h1>upstream failed</body></html>"
_REASONS = {200: "OK", 500: "Internal Server Error"}


class FaultMode(StrEnum):
    HONEST = "honest"
    MALFORMED_JSON = "malformed_json"
    TRUNCATED = "truncated"
    CLOSE_MID_BODY = "close_mid_body"
    WRONG_ID = "wrong_id"
    HTTP_500 = "http_500"
    NULL_RESULT = "null_result"
    FLAKY = "flaky"


def null_result(body: bytes) -> bytes:
    """The same answer (a single one or a batch) with every result replaced by null, errors kept."""
    answer = json.loads(body)
    items = answer if isinstance(answer, list) else [answer]
    for item in items:
        if isinstance(item, dict) and "result" in item:
            item["result"] = None
    return json.dumps(answer).encode()


class RpcFaultProxy:
    """``async with RpcFaultProxy(node_url) as proxy``: 127.0.0.1 at a free port; set ``mode`` at any time."""

    def __init__(self, node_url: str) -> None:
        self._node_url = node_url
        self._server: asyncio.Server | None = None
        self._session: aiohttp.ClientSession | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        # The node's latest answers by request body, for WRONG_ID. By body, not just the last answer: a
        # client retrying sends the same body (and id) again, and the answer to that is no wrong answer.
        self._answers: dict[bytes, bytes] = {}
        self._flaky = 0
        self.mode = FaultMode.HONEST
        self.port = 0
        self.spoiled: Counter[FaultMode] = Counter()  # answers spoiled, by mode

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    async def start(self) -> RpcFaultProxy:
        self._session = aiohttp.ClientSession()
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> RpcFaultProxy:
        return await self.start()

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()

    # -- one connection, many requests -----------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                request = await _read_request(reader)
                if request is None:
                    return
                headers, body = request
                status, answer = await self._forward(headers, body)
                if not await self._answer(writer, body, status, answer):
                    return
        except (OSError, asyncio.IncompleteReadError, ValueError):
            return
        finally:
            self._writers.discard(writer)
            writer.transport.abort()

    async def _forward(self, headers: dict[str, str], body: bytes) -> tuple[int, bytes]:
        assert self._session is not None
        passed = {k: v for k, v in headers.items() if k in ("authorization", "content-type")}
        async with self._session.post(self._node_url, data=body, headers=passed) as response:
            return response.status, await response.read()

    async def _answer(self, writer: asyncio.StreamWriter, request: bytes, status: int, answer: bytes) -> bool:
        """Write the (possibly spoiled) answer; False when the connection is to be closed."""
        mode = asked = self.mode
        earlier = next((a for r, a in reversed(self._answers.items()) if r != request), None)
        self._answers.pop(request, None)
        self._answers[request] = answer
        if len(self._answers) > 16:
            del self._answers[next(iter(self._answers))]
        if mode is FaultMode.FLAKY:
            self._flaky += 1
            mode = FaultMode.HTTP_500 if self._flaky % 2 else FaultMode.HONEST
        if mode is not FaultMode.HONEST:
            self.spoiled[asked] += 1
        content_type = "application/json"
        if mode is FaultMode.MALFORMED_JSON:
            answer = b"this is {not json"
        elif mode is FaultMode.TRUNCATED:
            answer = answer[: len(answer) // 2]
        elif mode is FaultMode.WRONG_ID:
            answer = earlier if earlier is not None else answer.replace(b'"id":', b'"id":9', 1)
        elif mode is FaultMode.HTTP_500:
            status, answer, content_type = 500, _ERROR_PAGE, "text/html"
        elif mode is FaultMode.NULL_RESULT:
            with contextlib.suppress(ValueError):
                answer = null_result(answer)
        head = (
            f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}\r\n"
            f"Content-Type: {content_type}\r\n"
            f"Content-Length: {len(answer)}\r\n"
            "Connection: keep-alive\r\n\r\n"
        ).encode()
        if mode is FaultMode.CLOSE_MID_BODY:
            writer.write(head + answer[: len(answer) // 2])
            await writer.drain()
            return False
        writer.write(head + answer)
        await writer.drain()
        return True


async def _read_request(reader: asyncio.StreamReader) -> tuple[dict[str, str], bytes] | None:
    """One request's headers (lower-case names) and body, or None when the client closed the connection."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return headers, body
