"""The outbox consumer that turns each merchant-facing event into one delivery per subscribed endpoint.

It runs in the OutboxRunner like the ledger: its deliveries are inserted in the same transaction that
advances its cursor, so after a crash either both happened or neither did, and the event is fanned out
again (a delivery per (event, endpoint) is unique, so a replay adds nothing). The dispatcher then only
works from ``webhook_deliveries``; a state change therefore reaches every endpoint that existed and was
enabled when the event was fanned out, however often the gateway is killed in between.
"""

from __future__ import annotations

from collections.abc import Sequence

from gateway.clock import Clock, isoformat
from gateway.ids import new_id
from gateway.outbox import OutboxEvent
from gateway.store import Tx
from gateway.webhooks.endpoints import WebhookEndpoint, endpoint_from_row, is_deliverable


class WebhookFanout:
    name = "webhooks"

    def __init__(self, clock: Clock) -> None:
        self._clock = clock

    async def handle(self, tx: Tx, events: Sequence[OutboxEvent]) -> None:
        wanted = [e for e in events if e.merchant_id is not None and is_deliverable(e.type)]
        if not wanted:
            return
        stamp = isoformat(self._clock.now())
        endpoints: dict[str, list[WebhookEndpoint]] = {}
        for event in wanted:
            merchant = event.merchant_id
            assert merchant is not None
            if merchant not in endpoints:
                rows = await tx.fetchall(
                    "SELECT * FROM webhook_endpoints WHERE merchant_id = ? AND status = 'enabled'"
                    " AND deleted_at IS NULL",
                    (merchant,),
                )
                endpoints[merchant] = [endpoint_from_row(row) for row in rows]
            for endpoint in endpoints[merchant]:
                if not endpoint.wants(event.type):
                    continue
                exists = await tx.fetchone(
                    "SELECT 1 FROM webhook_deliveries WHERE event_id = ? AND endpoint_id = ? AND reason = 'event'",
                    (event.id, endpoint.id),
                )
                if exists is not None:
                    continue
                await tx.execute(
                    "INSERT INTO webhook_deliveries (id, event_id, endpoint_id, merchant_id, status, attempts,"
                    " next_attempt_at, reason, created_at, updated_at)"
                    " VALUES (?, ?, ?, ?, 'pending', 0, ?, 'event', ?, ?)",
                    (new_id("whd"), event.id, endpoint.id, merchant, stamp, stamp, stamp),
                )
