"""The merchant's webhook endpoint in the crash harness: checks every signature, counts every delivery.

Delivery is at least once (docs/webhooks.md): a gateway killed after the receiver answered but before it
recorded the attempt sends the event again once the lease runs out. So the receiver counts deliveries per
event id instead of keeping a set (duplicates are allowed, and reported), and keeps the first body of each
event: a later delivery must carry the same bytes, and the harness compares them with the store's outbox.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from aiohttp import web

from merchants.sdk.webhooks import EVENT_ID_HEADER, WebhookVerificationError, verify_webhook

# The harness's clock and the gateway's are the same machine's; the slack only covers a slow attempt.
TOLERANCE_SECONDS = 600


@dataclass
class WebhookTally:
    """Every delivery that arrived with a valid signature, per event id; and what was refused, and why."""

    secret: str = ""
    counts: Counter[str] = field(default_factory=Counter)
    bodies: dict[str, bytes] = field(default_factory=dict)
    refused: list[str] = field(default_factory=list)
    changed_bodies: list[str] = field(default_factory=list)
    # Set at every accepted delivery: a kill aimed just after it falls between the receiver's answer and
    # the gateway's record of the attempt, the window that makes a duplicate.
    delivered: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def deliveries(self) -> int:
        return sum(self.counts.values())

    @property
    def duplicates(self) -> int:
        """Deliveries beyond the first of each event."""
        return sum(n - 1 for n in self.counts.values())

    def duplicated(self) -> dict[str, int]:
        return {event_id: n for event_id, n in self.counts.items() if n > 1}

    async def handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        if not self.secret:  # the endpoint's answer has not reached the harness yet: ask for a retry
            return web.Response(status=503, text="not configured yet")
        try:
            event = verify_webhook(self.secret, request.headers, raw, tolerance=TOLERANCE_SECONDS)
        except WebhookVerificationError as exc:
            self.refused.append(exc.reason)
            return web.Response(status=401, text=exc.reason)
        event_id = str(event["id"])
        if request.headers.get(EVENT_ID_HEADER) != event_id:
            self.refused.append(f"{EVENT_ID_HEADER} {request.headers.get(EVENT_ID_HEADER)} for {event_id}")
            return web.Response(status=400, text="event id header does not match the body")
        first = self.bodies.setdefault(event_id, raw)
        if first != raw:
            self.changed_bodies.append(event_id)
        self.counts[event_id] += 1
        self.delivered.set()
        return web.Response(text="ok")


@contextlib.asynccontextmanager
async def serve_tally(tally: WebhookTally) -> AsyncIterator[str]:
    """Run the receiver on a free loopback port for the duration of the block; yields its URL."""
    app = web.Application()
    app.router.add_post("/hook", tally.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        host, port = runner.addresses[0][:2]
        yield f"http://{host}:{port}/hook"
    finally:
        await runner.cleanup()
