"""Delivers webhook deliveries: signed POSTs, retried on a schedule, durable across restarts.

Everything the dispatcher knows is in the store (``webhook_deliveries``, written by the fan-out consumer in
the outbox's transaction), so a kill at any moment loses nothing:

1. **Claim.** Due deliveries (``pending``, ``next_attempt_at`` reached, no live lease, endpoint enabled) are
   read, then leased in one transaction (``lease_until``). A peek on a reader comes first, so an idle
   dispatcher never commits (every commit wakes the outbox consumers). Every gateway process sharing a
   PostgreSQL store runs a dispatcher; there the claim reads its rows ``FOR UPDATE OF d SKIP LOCKED``, so
   two processes claiming at once take disjoint rows instead of reading the same ones and having one
   unit rolled back and retried by the serializable store. The lease, written in the same unit, is what
   makes a delivery attempted by one dispatcher at a time (SKIP LOCKED only spares the conflict); the
   row locks last until the claim commits, a few milliseconds. SQLite has one process and one writer,
   and keeps the plain query. At most ``max_in_flight`` attempts
   run at once, and ``max_in_flight_per_endpoint`` to one endpoint, so a slow receiver cannot take the
   capacity every other merchant needs.
2. **Attempt.** The body is the event as stored in the outbox, byte for byte; the signature is computed
   now, with this attempt's time (the injected clock). 10 s timeout, redirects never followed (a 3xx is a
   failure), the target checked against the policy before any socket is opened (targets.py).
3. **Record.** The attempt row and the delivery's next state are written in one transaction: 2xx ends it
   as ``succeeded``; anything else schedules the next attempt after the configured wait (with jitter), or
   ends it as ``failed`` when the schedule is used up. An endpoint that has failed without a single
   success for ``disable_after_seconds`` is disabled, with the reason, and an outbox event says so.

A process killed between attempt and record leaves the lease to expire; the delivery is attempted again
(at least once: receivers deduplicate by the event id, which the SDK's docs show).

Time: schedules are on the injected clock; the loop waits in real time for at most ``poll_seconds`` between
looks, and wakes at once on every store commit (new deliveries) and when an attempt finishes.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import aiohttp
import structlog
from aiohttp.abc import AbstractResolver

from gateway.aio import cancel_and_wait, wait_for_event
from gateway.clock import Clock, isoformat, parse_isoformat
from gateway.config import WebhooksConfig
from gateway.ids import new_id
from gateway.outbox import insert_event, prepare_event
from gateway.store import Store, Tx
from gateway.webhooks.endpoints import endpoint_from_row
from gateway.webhooks.signing import SIGNATURE_HEADER, signature_header
from gateway.webhooks.targets import GuardedResolver, TargetPolicy, TargetRefused, refusal_of

log = structlog.get_logger("gateway.webhooks")

USER_AGENT = "CryptoCity-Webhooks/1"
_ERROR_SNIPPET = 200


@dataclass(frozen=True, slots=True)
class DispatchSettings:
    timeout_seconds: float = 10.0
    retry_schedule_seconds: Sequence[float] = (5, 30, 120, 300, 600)
    jitter: float = 0.2
    disable_after_seconds: float = 3 * 24 * 3600.0
    max_in_flight: int = 256
    max_in_flight_per_endpoint: int = 32
    lease_seconds: float = 60.0
    poll_seconds: float = 0.5

    @property
    def max_attempts(self) -> int:
        return len(self.retry_schedule_seconds) + 1


@dataclass(frozen=True, slots=True)
class Job:
    delivery_id: str
    event_id: str
    event_type: str
    endpoint_id: str
    url: str
    secrets: tuple[str, ...]
    attempts: int
    body: bytes


@dataclass(frozen=True, slots=True)
class Outcome:
    succeeded: bool
    response_status: int | None
    latency_ms: int
    error: str | None


class WebhookDispatcher:
    def __init__(
        self,
        store: Store,
        clock: Clock,
        settings: DispatchSettings,
        policy: TargetPolicy,
        *,
        resolver: AbstractResolver | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._store = store
        self._clock = clock
        self._settings = settings
        self._policy = policy
        self._resolver = resolver
        self._rng = rng or random.Random()  # jitter, not a secret
        self._session: aiohttp.ClientSession | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self._inflight: dict[str, asyncio.Task[None]] = {}
        self._per_endpoint: Counter[str] = Counter()
        self._wakeup = asyncio.Event()
        self.attempts_made = 0
        self._stopping = False
        store.on_commit(self._wakeup.set)

    # -- lifecycle -------------------------------------------------------------------------------------

    def start(self) -> None:
        if self._loop_task is not None:
            return
        self._stopping = False
        resolver = GuardedResolver(self._policy, self._resolver or aiohttp.ThreadedResolver())
        connector = aiohttp.TCPConnector(
            resolver=resolver,
            limit=self._settings.max_in_flight,
            limit_per_host=self._settings.max_in_flight_per_endpoint,
        )
        self._session = aiohttp.ClientSession(
            connector=connector, headers={"User-Agent": USER_AGENT}, auto_decompress=False
        )
        self._loop_task = asyncio.create_task(self._loop(), name="webhooks-dispatcher")
        log.info("webhooks.dispatcher_started", max_in_flight=self._settings.max_in_flight)

    async def stop(self) -> None:
        """Stop claiming and cancel attempts in flight: their leases run out and they are attempted again."""
        self._stopping = True
        task, self._loop_task = self._loop_task, None
        await cancel_and_wait(task)
        pending = list(self._inflight.values())
        for attempt in pending:
            attempt.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def in_flight(self) -> int:
        return len(self._inflight)

    def wake(self) -> None:
        self._wakeup.set()

    # -- the loop --------------------------------------------------------------------------------------

    async def _loop(self) -> None:
        failures = 0
        while not self._stopping:
            self._wakeup.clear()
            try:
                jobs = await self._claim()
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception:
                failures += 1
                log.exception("webhooks.claim_failed", failures=failures)
                await asyncio.sleep(min(30.0, 0.25 * 2 ** min(failures, 7)))
                continue
            for job in jobs:
                self._spawn(job)
            if jobs and self.in_flight < self._settings.max_in_flight:
                continue
            await wait_for_event(self._wakeup, self._settings.poll_seconds)

    def _spawn(self, job: Job) -> None:
        self._per_endpoint[job.endpoint_id] += 1
        task = asyncio.create_task(self._run(job), name=f"webhook:{job.delivery_id}")
        self._inflight[job.delivery_id] = task

        def done(_: asyncio.Task[None]) -> None:
            self._inflight.pop(job.delivery_id, None)
            self._per_endpoint[job.endpoint_id] -= 1
            if self._per_endpoint[job.endpoint_id] <= 0:
                del self._per_endpoint[job.endpoint_id]
            self._wakeup.set()

        task.add_done_callback(done)

    # -- claim -----------------------------------------------------------------------------------------

    _DUE = (
        "SELECT d.id, d.event_id, d.endpoint_id, d.attempts FROM webhook_deliveries d"
        " JOIN webhook_endpoints e ON e.id = d.endpoint_id"
        " WHERE d.status = 'pending' AND d.next_attempt_at <= ? AND (d.lease_until IS NULL OR d.lease_until <= ?)"
        " AND e.status = 'enabled' AND e.deleted_at IS NULL ORDER BY d.next_attempt_at LIMIT ?"
    )

    # Rows other claimers hold are skipped, not waited for (PostgreSQL; see the module docstring).
    _DUE_SKIP_LOCKED = _DUE + " FOR UPDATE OF d SKIP LOCKED"

    @property
    def _claim_sql(self) -> str:
        return self._DUE_SKIP_LOCKED if self._store.backend == "postgresql" else self._DUE

    async def _claim(self) -> list[Job]:
        free = self._settings.max_in_flight - self.in_flight
        if free <= 0:
            return []
        now = self._clock.now()
        stamp = isoformat(now)
        window = free * 4  # room to skip deliveries of endpoints already at their limit
        candidates = await self._store.read(lambda tx: tx.fetchall(self._DUE, (stamp, stamp, window)))
        if not any(row["id"] not in self._inflight for row in candidates):
            return []  # nothing due: no transaction (a commit would wake every consumer)
        lease = isoformat(now + timedelta(seconds=self._settings.lease_seconds))
        claim_sql = self._claim_sql

        async def unit(tx: Tx) -> list[Job]:
            rows = await tx.fetchall(claim_sql, (stamp, stamp, window))
            taken: Counter[str] = Counter()
            jobs: list[Job] = []
            endpoints: dict[str, Any] = {}
            for row in rows:
                if len(jobs) >= free:
                    break
                if row["id"] in self._inflight:
                    continue
                endpoint_id = row["endpoint_id"]
                busy = self._per_endpoint[endpoint_id] + taken[endpoint_id]
                if busy >= self._settings.max_in_flight_per_endpoint:
                    continue
                if endpoint_id not in endpoints:
                    found = await tx.fetchone("SELECT * FROM webhook_endpoints WHERE id = ?", (endpoint_id,))
                    endpoints[endpoint_id] = endpoint_from_row(found) if found is not None else None
                endpoint = endpoints[endpoint_id]
                event = await tx.fetchone("SELECT type, payload FROM outbox WHERE id = ?", (row["event_id"],))
                if endpoint is None or event is None:
                    continue
                taken[endpoint_id] += 1
                await tx.execute(
                    "UPDATE webhook_deliveries SET lease_until = ? WHERE id = ?", (lease, row["id"])
                )
                jobs.append(
                    Job(
                        delivery_id=row["id"],
                        event_id=row["event_id"],
                        event_type=event["type"],
                        endpoint_id=endpoint_id,
                        url=endpoint.url,
                        secrets=endpoint.signing_secrets(now),
                        attempts=int(row["attempts"]),
                        body=event["payload"].encode(),
                    )
                )
            return jobs

        return await self._store.transaction(unit)

    # -- attempt ---------------------------------------------------------------------------------------

    async def _run(self, job: Job) -> None:
        try:
            outcome = await self.attempt(job)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug in the attempt must not lose the delivery: it is retried
            log.exception("webhooks.attempt_bug", delivery_id=job.delivery_id)
            outcome = Outcome(False, None, 0, f"internal error: {type(exc).__name__}")
        for retry in range(5):
            try:
                await self._record(job, outcome)
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                # The store is down: the lease will run out and the delivery be attempted again anyway.
                log.exception("webhooks.record_failed", delivery_id=job.delivery_id, retry=retry)
                await asyncio.sleep(0.2 * 2**retry)

    async def attempt(self, job: Job) -> Outcome:
        """One signed POST of ``job``; never raises for what the receiver or the network does."""
        assert self._session is not None, "start() the dispatcher first"
        started = time.monotonic()
        timestamp = int(self._clock.now().timestamp())
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: signature_header(job.secrets, timestamp, job.body),
            "CryptoCity-Event-Id": job.event_id,
            "CryptoCity-Event-Type": job.event_type,
            "CryptoCity-Delivery-Id": job.delivery_id,
            "CryptoCity-Attempt": str(job.attempts + 1),
        }
        self.attempts_made += 1

        def elapsed() -> int:
            return round((time.monotonic() - started) * 1000)

        try:
            self._policy.check_url(job.url)
            timeout = aiohttp.ClientTimeout(total=self._settings.timeout_seconds)
            async with self._session.post(
                job.url, data=job.body, headers=headers, allow_redirects=False, timeout=timeout
            ) as response:
                status = response.status
                snippet = await response.content.read(_ERROR_SNIPPET)
                location = response.headers.get("Location")
        except TargetRefused as exc:
            return Outcome(False, None, elapsed(), f"refused before connecting: {exc}")
        except TimeoutError:
            return Outcome(False, None, elapsed(), f"timed out after {self._settings.timeout_seconds:g} s")
        except aiohttp.ClientError as exc:
            refusal = refusal_of(exc)
            if refusal is not None:
                return Outcome(False, None, elapsed(), f"refused before connecting: {refusal}")
            return Outcome(False, None, elapsed(), f"{type(exc).__name__}: {exc}"[: _ERROR_SNIPPET * 2])
        if 200 <= status < 300:
            return Outcome(True, status, elapsed(), None)
        if 300 <= status < 400:
            return Outcome(False, status, elapsed(), f"HTTP {status}: redirect to {location!r} not followed")
        text = snippet.decode("utf-8", "replace").strip()
        return Outcome(False, status, elapsed(), f"HTTP {status}" + (f": {text}" if text else ""))

    # -- record ----------------------------------------------------------------------------------------

    def next_wait(self, attempts_made: int) -> float | None:
        """Seconds until the next attempt after ``attempts_made`` attempts, or None when none is left."""
        schedule = self._settings.retry_schedule_seconds
        if attempts_made > len(schedule):
            return None
        base = float(schedule[attempts_made - 1])
        spread = self._settings.jitter
        return max(0.0, base * (1 + self._rng.uniform(-spread, spread)))

    async def _record(self, job: Job, outcome: Outcome) -> None:
        now = self._clock.now()
        stamp = isoformat(now)
        attempt_no = job.attempts + 1
        wait = None if outcome.succeeded else self.next_wait(attempt_no)

        async def unit(tx: Tx) -> None:
            await tx.execute(
                "INSERT INTO webhook_attempts (id, delivery_id, event_id, endpoint_id, attempt, attempted_at,"
                " succeeded, response_status, latency_ms, error) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    new_id("wha"),
                    job.delivery_id,
                    job.event_id,
                    job.endpoint_id,
                    attempt_no,
                    stamp,
                    1 if outcome.succeeded else 0,
                    outcome.response_status,
                    outcome.latency_ms,
                    outcome.error,
                ),
            )
            if outcome.succeeded:
                status, next_at = "succeeded", None
            elif wait is None:
                status, next_at = "failed", None
            else:
                status, next_at = "pending", isoformat(now + timedelta(seconds=wait))
            await tx.execute(
                "UPDATE webhook_deliveries SET status = ?, attempts = ?, next_attempt_at = ?, lease_until = NULL,"
                " updated_at = ? WHERE id = ? AND status = 'pending'",
                (status, attempt_no, next_at, stamp, job.delivery_id),
            )
            await self._endpoint_health(tx, job.endpoint_id, outcome, now)

        await self._store.transaction(unit)
        log.info(
            "webhooks.attempt",
            delivery_id=job.delivery_id,
            event_id=job.event_id,
            endpoint_id=job.endpoint_id,
            attempt=attempt_no,
            succeeded=outcome.succeeded,
            response_status=outcome.response_status,
            latency_ms=outcome.latency_ms,
            error=outcome.error,
        )

    async def _endpoint_health(self, tx: Tx, endpoint_id: str, outcome: Outcome, now: datetime) -> None:
        stamp = isoformat(now)
        if outcome.succeeded:
            await tx.execute(
                "UPDATE webhook_endpoints SET failing_since = NULL WHERE id = ? AND failing_since IS NOT NULL",
                (endpoint_id,),
            )
            return
        row = await tx.fetchone(
            "SELECT merchant_id, status, failing_since FROM webhook_endpoints WHERE id = ?", (endpoint_id,)
        )
        if row is None or row["status"] != "enabled":
            return
        if row["failing_since"] is None:
            await tx.execute(
                "UPDATE webhook_endpoints SET failing_since = ? WHERE id = ?", (stamp, endpoint_id)
            )
            return
        since = parse_isoformat(row["failing_since"])
        if (now - since).total_seconds() < self._settings.disable_after_seconds:
            return
        reason = f"every attempt failed since {row['failing_since']}; last error: {outcome.error}"
        await tx.execute(
            "UPDATE webhook_endpoints SET status = 'disabled', disabled_reason = ?, disabled_at = ?,"
            " updated_at = ? WHERE id = ?",
            (reason, stamp, stamp, endpoint_id),
        )
        await insert_event(
            tx,
            prepare_event(
                event_type="webhook_endpoint.disabled",
                now=now,
                merchant_id=row["merchant_id"],
                data={"webhook_endpoint_id": endpoint_id, "reason": reason},
            ),
        )
        log.warning("webhooks.endpoint_disabled", endpoint_id=endpoint_id, reason=reason)


def settings_from_config(config: WebhooksConfig) -> DispatchSettings:
    """DispatchSettings from a ``WebhooksConfig``."""
    return DispatchSettings(
        timeout_seconds=config.timeout_seconds,
        retry_schedule_seconds=tuple(config.retry_schedule_seconds),
        jitter=config.jitter,
        disable_after_seconds=config.disable_after_seconds,
        max_in_flight=config.max_in_flight,
        max_in_flight_per_endpoint=config.max_in_flight_per_endpoint,
        lease_seconds=config.lease_seconds,
    )
