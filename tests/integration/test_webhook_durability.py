"""No webhook is lost to a crash: 50 deliveries pending (the receiver failing), SIGKILL, restart, all arrive.

A real `cryptocity serve` process, a real receiver on loopback. While the receiver answers 503, every
invoice.created event is attempted and scheduled for retry; the gateway is then killed with SIGKILL (no
clean shutdown), the receiver recovers, and a new process must deliver every one of the 50 events: the
deliveries live in the store, written in the outbox's transaction, not in the dead process's memory.
"""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from merchants.sdk.webhooks import verify_webhook
from tests.integration.gateway_process import GatewayProcess, cli_env, create_merchant, start_gateway

pytestmark = pytest.mark.integration

INVOICES = 50


class FlakyReceiver:
    def __init__(self) -> None:
        self.up = False
        self.failed = 0
        self.delivered: dict[str, int] = {}  # event id -> times received with a 200
        self.secret = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if not self.up:
            self.failed += 1
            return web.Response(status=503, text="down for maintenance")
        event = verify_webhook(self.secret, request.headers, body, tolerance=600)
        self.delivered[event["id"]] = self.delivered.get(event["id"], 0) + 1
        return web.Response(text="ok")


async def until(check: Any, seconds: float, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not check():
        assert asyncio.get_running_loop().time() < deadline, what
        await asyncio.sleep(0.1)


async def test_pending_deliveries_survive_sigkill(tmp_path: Path, aiohttp_server: Any) -> None:
    receiver = FlakyReceiver()
    app = web.Application()
    app.router.add_post("/hook", receiver.handle)
    server = await aiohttp_server(app)
    key = create_merchant(tmp_path)["api_key"]
    env = cli_env(
        tmp_path,
        CRYPTOCITY_WEBHOOKS__RETRY_SCHEDULE_SECONDS="[1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]",
        CRYPTOCITY_WEBHOOKS__JITTER="0",
    )
    gateway: GatewayProcess = await asyncio.to_thread(start_gateway, tmp_path, env=dict(env))
    headers = {"Authorization": f"Bearer {key}"}
    try:
        async with aiohttp.ClientSession(base_url=gateway.base_url, headers=headers) as http:
            async with http.post(
                "/v1/webhook-endpoints",
                json={"url": str(server.make_url("/hook")), "event_types": ["invoice.created"]},
            ) as response:
                assert response.status == 201
                receiver.secret = (await response.json())["secret"]
            created = []
            for n in range(INVOICES):
                async with http.post(
                    "/v1/invoices", json={"amount": f"{1000 + n}.00", "currency": "KZT"}
                ) as response:
                    assert response.status == 201
                    created.append((await response.json())["id"])
        # Every delivery has been attempted and failed at least once: all 50 are pending retries now.
        await until(lambda: receiver.failed >= INVOICES, 60, "the 50 first attempts did not happen")
        pid = gateway.process.pid
        children = (await asyncio.to_thread(Path(f"/proc/{pid}/task/{pid}/children").read_text)).split()
        assert children, "the gateway runs an address-derivation worker process"
        gateway.process.send_signal(signal.SIGKILL)
        assert gateway.process.wait(timeout=30) == -signal.SIGKILL
        # Its worker processes do not outlive it (they watch their parent and exit).
        await until(lambda: not any(Path(f"/proc/{c}").exists() for c in children), 15, "orphaned workers")
    finally:
        gateway.stop()

    receiver.up = True
    restarted = await asyncio.to_thread(start_gateway, tmp_path, env=dict(env))
    try:
        await until(
            lambda: len(receiver.delivered) >= INVOICES, 90, f"delivered only {len(receiver.delivered)}"
        )
        async with aiohttp.ClientSession(base_url=restarted.base_url, headers=headers) as http:
            async with http.get("/v1/events?type=invoice.created&limit=200") as response:
                events = (await response.json())["data"]
            assert {e["data"]["invoice"]["id"] for e in events} == set(created)
            assert set(receiver.delivered) == {e["id"] for e in events}
            # The gateway's own record says so too: every event has a succeeded attempt after failed ones.
            # The receiver counts a delivery when it answers; the gateway records the answer a moment
            # later, so its record is awaited (briefly), not assumed.
            for event in events[:5]:
                deadline = asyncio.get_running_loop().time() + 15
                while True:
                    async with http.get(f"/v1/events/{event['id']}/deliveries") as response:
                        attempts = (await response.json())["data"]
                    if attempts[-1]["status"] == "succeeded":
                        break
                    assert asyncio.get_running_loop().time() < deadline, attempts[-1]
                    await asyncio.sleep(0.1)
                assert any(a["status"] == "failed" and a["response_status"] == 503 for a in attempts)
    finally:
        assert restarted.stop() == 0
    duplicates = sum(n - 1 for n in receiver.delivered.values())
    print(
        json.dumps(
            {
                "delivered": len(receiver.delivered),
                "duplicates": duplicates,
                "failed_attempts": receiver.failed,
            }
        )
    )
