"""Webhook endpoints: a merchant's URLs, the event types each wants, its signing secret and its health.

Every change writes an outbox event (``webhook_endpoint.*``) in the same transaction, like every other
state change, so the audit log sees who pointed the merchant's notifications where. Deleting keeps the row
(``deleted_at``) because past deliveries and attempts refer to it; a deleted endpoint is invisible and
receives nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from gateway import jsonutil
from gateway.clock import Clock, isoformat, parse_isoformat
from gateway.ids import new_id
from gateway.outbox import insert_event, prepare_event
from gateway.store import Row, Store, Tx
from gateway.webhooks.signing import new_secret
from gateway.webhooks.targets import TargetPolicy, TargetRefused

# The events a merchant can subscribe to: the lifecycle's invoice.* and payment.* notifications.
EVENT_TYPES: tuple[str, ...] = (
    "invoice.created",
    "invoice.processing",
    "invoice.settled",
    "invoice.expired",
    "invoice.cancelled",
    "invoice.reversed",
    "invoice.new",
    "invoice.underpaid",
    "invoice.overpaid",
    "invoice.paid_late",
    "invoice.on_hold",
    "invoice.reorged",
    "payment.detected",
    "payment.confirmed",
    "payment.dropped",
    "payment.held",
    "payment.released",
    "payment.refunded",
)
ALL_EVENTS = "*"


def is_deliverable(event_type: str) -> bool:
    """Merchant-facing events (invoices and payments); merchant.* and internal events are not sent."""
    return event_type.startswith(("invoice.", "payment."))


class EndpointError(ValueError):
    """Invalid endpoint data; ``field`` is the JSON pointer of the offending field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class EndpointNotFound(LookupError):
    pass


@dataclass(frozen=True, slots=True)
class WebhookEndpoint:
    id: str
    merchant_id: str
    url: str
    event_types: tuple[str, ...]
    description: str | None
    status: str
    secret: str
    previous_secret: str | None
    previous_secret_expires_at: str | None
    disabled_reason: str | None
    disabled_at: str | None
    failing_since: str | None
    created_at: str
    updated_at: str

    def wants(self, event_type: str) -> bool:
        return ALL_EVENTS in self.event_types or event_type in self.event_types

    def signing_secrets(self, now: datetime) -> tuple[str, ...]:
        """The secrets to sign with now: the current one, and the previous one while its overlap lasts."""
        expires = self.previous_secret_expires_at
        if self.previous_secret and expires and parse_isoformat(expires) > now:
            return (self.secret, self.previous_secret)
        return (self.secret,)

    def resource(self, *, with_secret: bool = False) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": self.id,
            "object": "webhook_endpoint",
            "url": self.url,
            "event_types": list(self.event_types),
            "description": self.description,
            "status": self.status,
            "disabled_reason": self.disabled_reason,
            "disabled_at": self.disabled_at,
            "failing_since": self.failing_since,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }
        if with_secret:
            body["secret"] = self.secret
        return body


def endpoint_from_row(row: Row) -> WebhookEndpoint:
    return WebhookEndpoint(
        id=row["id"],
        merchant_id=row["merchant_id"],
        url=row["url"],
        event_types=tuple(jsonutil.loads(row["event_types"])),
        description=row["description"],
        status=row["status"],
        secret=row["secret"],
        previous_secret=row["previous_secret"],
        previous_secret_expires_at=row["previous_secret_expires_at"],
        disabled_reason=row["disabled_reason"],
        disabled_at=row["disabled_at"],
        failing_since=row["failing_since"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def validate_event_types(event_types: Sequence[str]) -> tuple[str, ...]:
    if not event_types:
        raise EndpointError("/event_types", 'list at least one event type, or ["*"] for all')
    chosen = tuple(dict.fromkeys(event_types))
    for index, name in enumerate(chosen):
        if name != ALL_EVENTS and name not in EVENT_TYPES:
            raise EndpointError(f"/event_types/{index}", f"unknown event type {name!r}")
    return chosen


_LIVE = "deleted_at IS NULL"


class EndpointRegistry:
    def __init__(self, store: Store, clock: Clock, policy: TargetPolicy, *, max_per_merchant: int) -> None:
        self._store = store
        self._clock = clock
        self._policy = policy
        self._max = max_per_merchant

    @property
    def policy(self) -> TargetPolicy:
        return self._policy

    def _check_url(self, url: str) -> str:
        try:
            return str(self._policy.check_url(url))
        except TargetRefused as exc:
            raise EndpointError("/url", str(exc)) from None

    async def create(
        self, merchant_id: str, url: str, event_types: Sequence[str], description: str | None
    ) -> WebhookEndpoint:
        checked_url = self._check_url(url)
        types = validate_event_types(event_types)
        stamp = isoformat(self._clock.now())
        endpoint_id = new_id("whe")
        secret = new_secret()

        async def unit(tx: Tx) -> Row:
            count = await tx.fetchone(
                f"SELECT count(*) AS n FROM webhook_endpoints WHERE merchant_id = ? AND {_LIVE}",  # noqa: S608
                (merchant_id,),
            )
            if count is not None and int(count["n"]) >= self._max:
                raise EndpointError("/url", f"a merchant may have at most {self._max} webhook endpoints")
            await tx.execute(
                "INSERT INTO webhook_endpoints (id, merchant_id, url, event_types, description, status, secret,"
                " created_at, updated_at) VALUES (?, ?, ?, ?, ?, 'enabled', ?, ?, ?)",
                (
                    endpoint_id,
                    merchant_id,
                    checked_url,
                    jsonutil.dumps(list(types)),
                    description,
                    secret,
                    stamp,
                    stamp,
                ),
            )
            row = await self._row(tx, merchant_id, endpoint_id)
            await self._event(tx, "webhook_endpoint.created", endpoint_from_row(row))
            return row

        return endpoint_from_row(await self._store.transaction(unit))

    async def get(self, merchant_id: str, endpoint_id: str) -> WebhookEndpoint:
        return endpoint_from_row(await self._store.read(lambda tx: self._row(tx, merchant_id, endpoint_id)))

    async def list(self, merchant_id: str) -> list[WebhookEndpoint]:
        rows = await self._store.read(
            lambda tx: tx.fetchall(
                f"SELECT * FROM webhook_endpoints WHERE merchant_id = ? AND {_LIVE}"  # noqa: S608
                " ORDER BY created_at, id",
                (merchant_id,),
            )
        )
        return [endpoint_from_row(row) for row in rows]

    async def update(self, merchant_id: str, endpoint_id: str, changes: dict[str, Any]) -> WebhookEndpoint:
        """Apply ``changes`` (any of url, event_types, description, status); re-enabling clears the failure."""
        values: dict[str, Any] = {}
        if "url" in changes:
            values["url"] = self._check_url(changes["url"])
        if "event_types" in changes:
            values["event_types"] = jsonutil.dumps(list(validate_event_types(changes["event_types"])))
        if "description" in changes:
            values["description"] = changes["description"]
        stamp = isoformat(self._clock.now())
        if "status" in changes:
            if changes["status"] not in ("enabled", "disabled"):
                raise EndpointError("/status", "must be enabled or disabled")
            values["status"] = changes["status"]
            if changes["status"] == "enabled":
                values.update(disabled_reason=None, disabled_at=None, failing_since=None)
            else:
                values.update(disabled_reason="disabled by the merchant", disabled_at=stamp)

        async def unit(tx: Tx) -> Row:
            await self._row(tx, merchant_id, endpoint_id)
            if values:
                assignments = ", ".join(f"{column} = ?" for column in values)
                await tx.execute(
                    f"UPDATE webhook_endpoints SET {assignments}, updated_at = ? WHERE id = ?",  # noqa: S608
                    (*values.values(), stamp, endpoint_id),
                )
            row = await self._row(tx, merchant_id, endpoint_id)
            await self._event(tx, "webhook_endpoint.updated", endpoint_from_row(row), sorted(values))
            return row

        return endpoint_from_row(await self._store.transaction(unit))

    async def delete(self, merchant_id: str, endpoint_id: str) -> None:
        stamp = isoformat(self._clock.now())

        async def unit(tx: Tx) -> None:
            row = await self._row(tx, merchant_id, endpoint_id)
            await tx.execute(
                "UPDATE webhook_endpoints SET deleted_at = ?, status = 'disabled', disabled_reason = 'deleted',"
                " updated_at = ? WHERE id = ?",
                (stamp, stamp, endpoint_id),
            )
            # Nothing more goes to a deleted endpoint: its pending deliveries end here.
            await tx.execute(
                "UPDATE webhook_deliveries SET status = 'failed', next_attempt_at = NULL, updated_at = ?"
                " WHERE endpoint_id = ? AND status = 'pending'",
                (stamp, endpoint_id),
            )
            await self._event(tx, "webhook_endpoint.deleted", endpoint_from_row(row))

        await self._store.transaction(unit)

    async def rotate_secret(
        self, merchant_id: str, endpoint_id: str, expire_previous_in_seconds: int
    ) -> WebhookEndpoint:
        """A new secret; the old one keeps signing beside it for the overlap (0 = retire it now)."""
        now = self._clock.now()
        secret = new_secret()
        until = isoformat(now + timedelta(seconds=expire_previous_in_seconds))

        async def unit(tx: Tx) -> Row:
            old = await self._row(tx, merchant_id, endpoint_id)
            await tx.execute(
                "UPDATE webhook_endpoints SET secret = ?, previous_secret = ?, previous_secret_expires_at = ?,"
                " updated_at = ? WHERE id = ?",
                (
                    secret,
                    old["secret"] if expire_previous_in_seconds > 0 else None,
                    until if expire_previous_in_seconds > 0 else None,
                    isoformat(now),
                    endpoint_id,
                ),
            )
            row = await self._row(tx, merchant_id, endpoint_id)
            await self._event(tx, "webhook_endpoint.secret_rotated", endpoint_from_row(row))
            return row

        return endpoint_from_row(await self._store.transaction(unit))

    async def _row(self, tx: Tx, merchant_id: str, endpoint_id: str) -> Row:
        row = await tx.fetchone(
            f"SELECT * FROM webhook_endpoints WHERE id = ? AND merchant_id = ? AND {_LIVE}",  # noqa: S608
            (endpoint_id, merchant_id),
        )
        if row is None:
            raise EndpointNotFound(endpoint_id)
        return row

    async def _event(
        self, tx: Tx, event_type: str, endpoint: WebhookEndpoint, changed: Sequence[str] = ()
    ) -> None:
        data: dict[str, Any] = {"webhook_endpoint": endpoint.resource()}
        if changed:
            data["changed"] = list(changed)
        await insert_event(
            tx,
            prepare_event(
                event_type=event_type, now=self._clock.now(), merchant_id=endpoint.merchant_id, data=data
            ),
        )
