"""The audit log as an outbox consumer: one entry per audited event, appended in the consumer's transaction.

The ``OutboxRunner`` advances the ``audit`` cursor in the same transaction as :func:`append`, so an event
is recorded exactly once: a crash before the commit loses both the entries and the cursor move (the batch
is handed again), and a batch handed again after a commit (a reset cursor) finds its event ids recorded
and appends nothing (``event_id`` is UNIQUE as a last guard). One head is signed per batch, not per
event, so a busy gateway pays one HMAC per commit.

The outbox's parsed payloads come from orjson, which reads integers beyond 64 bits (wei, metadata) as
floats; an event whose payload holds a float is therefore parsed again from its stored text with the
standard library, which keeps such integers exact. A float that is still there was written as one: the
consumer raises, the batch rolls back and the runner retries with backoff, logging
``outbox.consumer_failed``. The audit log stops rather than records something else than what happened; the
other consumers are unaffected.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from typing import Any

from gateway.clock import Clock, SystemClock
from gateway.extensions import Extensions
from gateway.outbox import OutboxEvent
from gateway.store import Tx
from sandbox.audit.canonical import contains_float
from sandbox.audit.chain import EntryDraft
from sandbox.audit.events import draft_for_event, is_audited
from sandbox.audit.keys import AuditKey
from sandbox.audit.store import append


class AuditConsumer:
    """gateway.outbox.OutboxConsumer that appends the sandbox's hash-chained audit log."""

    name = "audit"

    def __init__(self, key: AuditKey | None, clock: Clock | None = None, name: str = "audit") -> None:
        self.name = name
        self._key = key
        self._clock = clock or SystemClock()

    async def handle(self, tx: Tx, events: Sequence[OutboxEvent]) -> None:
        drafts: list[EntryDraft] = []
        for event in events:
            if not is_audited(event.type):
                continue
            if contains_float(event.payload):
                event = dataclasses.replace(event, payload=await exact_payload(tx, event))
            draft = draft_for_event(event)
            assert draft is not None
            drafts.append(draft)
        if drafts:
            await append(tx, drafts, self._clock.now(), self._key)


async def exact_payload(tx: Tx, event: OutboxEvent) -> dict[str, Any]:
    """The event's payload parsed from its stored text with exact integers (orjson turns 2**64+ into floats)."""
    row = await tx.fetchone("SELECT payload FROM outbox WHERE seq = ?", (event.seq,))
    if row is None:
        return event.payload
    payload: dict[str, Any] = json.loads(row["payload"])
    return payload


def audit_extensions(key: AuditKey | None, clock: Clock | None = None) -> Extensions:
    """What the audit log adds to the gateway: its outbox consumer (merge its ``consumers``)."""
    return Extensions(consumers=[AuditConsumer(key, clock)])
